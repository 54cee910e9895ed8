"""Config of ``experiments/transfer.py`` (leave-one-device-out adaptation).

    D=../shared/data/external/help_ofa_w1.2
    python -m experiments.transfer --config=experiments/configs/transfer.py \
      --config.sources=$D/2080ti_batch64.csv,$D/titan_rtx_batch64.csv \
      --config.target=$D/titan_xp_batch64.csv --config.shots=0,10,20,50,100 --config.seeds=5 \
      --config.devices=2080ti_batch64.csv:2080ti,titan_rtx_batch64.csv:titan_rtx,\
titan_xp_batch64.csv:titan_xp \
      --config.reference_index=$D/reference_arch_index.json --workdir=/tmp/transfer

The training fields of the base models (``learning_rate`` ... ``huber_delta``)
are those of :class:`predictors.train.TrainParams`.
"""

import dataclasses

import ml_collections

from predictors import train as train_lib


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.sources = ()  # OFA CSV files, one device and batch size each
    c.target = ''
    c.devices = ()  # FILE:DEVICE pairs (ofa_jax.hardware names or aliases)
    c.batch_sizes = ()  # FILE:BATCH pairs; default: "batchN" in the file name, else 1
    c.shots = (0, 10, 20, 50, 100)
    c.seeds = 5
    c.strategies = ('paper_head', 'paper_affine', 'hw_zero_affine', 'hw_finetune', 'help_affine',
                    'help_finetune', 'stack_affine', 'stack_refs', 'blend_refs')
    c.reference_index = ''  # JSON list of reference-arch rows (help, stack_refs)
    c.adapt_fraction = 0.8  # shots come from the target's first 80% of rows
    c.width = 1.2
    c.context_hidden = (256, 256, 256)  # hidden widths of the hw/help context MLPs
    c.max_rows = 0
    c.seed = 0
    c.finetune_steps = 300  # paper's head-only fine-tuning
    c.finetune_lr = 1e-3
    c.full_finetune_steps = 200  # full fine-tuning anchored to the base weights
    c.full_finetune_lr = 1e-4
    c.anchor_weight = 1e-3
    c.update(dataclasses.asdict(train_lib.TrainParams()))
    # Base models: Huber within 2% of the mean latency (the additive models'
    # 'scale' target), so outlier rows do not pull the fit.
    c.loss = 'huber'
    c.huber_delta = 0.02
    c.calibration_delta = 0.05  # affine/stack calibration: Huber at 5% (0: least squares)
    # Pull of the stack weights toward equal shares. Weak: with 9 reference
    # archs + k shots the data pick the sources.
    c.stack_ridge = 0.03
    # Baseline row (not a strategy): the target fit on the sources' measured
    # latencies of the same rows (predictors.proxy_fit), with beats_proxy_fit
    # per strategy in metrics.json.
    c.proxy_fit = True
    return c
