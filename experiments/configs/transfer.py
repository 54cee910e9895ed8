"""Config of experiments/transfer.py (leave-one-device-out adaptation).

    D=../shared/data/external/help_ofa_w1.2
    python -m experiments.transfer --config=experiments/configs/transfer.py \
      --config.sources=$D/2080ti_batch64.csv,$D/titan_rtx_batch64.csv \
      --config.target=$D/titan_xp_batch64.csv --config.shots=0,10,20,50,100 --config.seeds=5 \
      --config.devices=2080ti_batch64.csv:2080ti,titan_rtx_batch64.csv:titan_rtx,\
titan_xp_batch64.csv:titan_xp \
      --config.reference_index=$D/reference_arch_index.json --workdir=/tmp/transfer
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            sources='',  # comma separated OFA CSV files, one device and batch size each
            target='',
            devices='',  # FILE:DEVICE pairs (ofa_jax.hardware names or aliases)
            batch_sizes='',  # FILE:BATCH pairs; default: "batchN" in the file name, else 1
            shots='0,10,20,50,100',
            seeds=5,
            strategies='paper_head,paper_affine,hw_zero_affine,hw_finetune,help_affine,'
            'help_finetune,stack_affine,stack_refs,blend_refs',
            reference_index='',  # JSON list of reference-arch rows (help, stack_refs)
            adapt_fraction=0.8,  # shots come from the target's first 80% of rows
            width=1.2,
            context_hidden='256,256,256',  # hidden widths of the hw/help context MLPs
            max_rows=0,
            seed=0,
            finetune_steps=300,  # paper's head-only fine-tuning
            finetune_lr=1e-3,
            full_finetune_steps=200,  # full fine-tuning anchored to the base weights
            full_finetune_lr=1e-4,
            anchor_weight=1e-3,
            learning_rate=1e-3,
            weight_decay=0.0,
            batch_size=256,
            max_steps=20000,
            eval_every=100,
            patience=20,
            lr_decay=True,
            # Base models: Huber within 2% of the mean latency (the additive
            # models' 'scale' target), so outlier rows do not pull the fit.
            loss='huber',
            huber_delta=0.02,
            calibration_delta=0.05,  # affine/stack calibration: Huber at 5% (0: least squares)
            # Pull of the stack weights toward equal shares. Weak: with 9 reference
            # archs + k shots the data pick the sources (HELP files: 20-shot MAPE
            # 3.7 -> 3.5% at batch 64, 7.2 -> 6.2% at 32 with 1.0 -> 0.03).
            stack_ridge=0.03,
        ))
