"""Config of ``experiments/onboard.py``: a latency predictor for a new device from a zoo.

    python -m experiments.onboard --config=experiments/configs/onboard.py \
      --config.device=cpu --config.zoo=zoo --config.shots=20 --workdir=runs/onboard_cpu

With the device's lookup table as one more prior (built here, resumable)::

    python -m experiments.onboard --config.device=cpu --config.zoo=zoo --config.shots=20 \
      --config.lut=True --workdir=runs/onboard_cpu

Values the measurements and the LUT build must agree on (batch, dtype, width,
device, store, ...) are set once at the top and tied into ``build_lut``; the
LUT's resolutions are filled in at run time (those of the onboarding). The
``distill`` section says how a combined adaptation becomes one additive
model: by the table's closed-form least squares (``closed_form``, the default)
or trained with its :class:`predictors.train.TrainParams` fields.
"""

import dataclasses

import ml_collections

from experiments.configs import build_lut
from experiments.configs import measure_latency
from predictors import train as train_lib

# In the order a tie is broken; the LUT ones run only with a LUT.
STRATEGIES = ('stack', 'affine', 'finetune', 'shots_only', 'work', 'lut', 'lut_affine', 'blend')
# Fields of the LUT build tied to the top-level field of the same name.
TIED_LUT_FIELDS = ('batch', 'dtype', 'width', 'num_classes', 'device', 'store', 'depthwise',
                   'microbenchmarks', 'progress')


def get_config() -> ml_collections.ConfigDict:
    """Reference archs + 20 informative shots, leave-one-out choice, no LUT."""
    c = ml_collections.ConfigDict()
    c.zoo = ''  # a folder written by experiments.build_zoo
    c.members = ()  # zoo members to adapt from; () = all
    c.device = ''  # '' = JAX's default device; or 'cpu', 'gpu:0', 'tpu:0'
    c.shots = 20  # sub-networks measured besides the reference archs
    c.references = 10  # how many of the zoo's reference archs are measured (the first N)
    c.selection = 'disagreement'  # disagreement | spread
    c.pool = 2000  # candidates the shots are chosen from (seeded sample)
    c.resolutions = ()  # () = the zoo's reference resolutions
    c.batch = 1
    c.dtype = 'float32'
    c.width = 1.2
    c.num_classes = 1000
    c.store = ''  # '' = WORKDIR/latency.sqlite
    c.depthwise = 'auto'
    c.cpu_affinity = ''
    c.microbenchmarks = True
    c.progress = True
    c.seed = 0
    c.protocol = measure_latency.protocol_config()

    c.lut = False  # build the device's lookup table (experiments.jobs.build_lut) as a prior
    c.lut_dir = ''  # or use this already built table ({r}_lookup_table.yaml folder)
    c.build_lut = build_lut.get_config()
    for name in TIED_LUT_FIELDS:
        c.build_lut[name] = c.get_ref(name)
    c.build_lut.cpu_affinity = ''  # Applied once, by the onboarding, before any device work.
    # The table is a prior here: every strategy that reads it fits its scale (or a
    # weight) on the measured rows, so its entries are timed with a shorter protocol
    # than a standalone build's. On the 2-core CPU (2026-12-04, 190 layers at 128 and
    # 160): 101 device-s against 141-165 s for build_lut's defaults; two builds with
    # the defaults disagreed by 1.40% (median over 500 archs of the table's sum,
    # after one scale factor), this protocol against them by 1.54% and 1.67%.
    # XLA's lowering and compile (about 0.37 s a layer) is the rest of the cost.
    c.build_lut.protocol.warmup = 2
    c.build_lut.protocol.repeats = 5
    c.build_lut.protocol.min_time = 0.05
    c.build_lut.protocol.min_sample = 0.005

    c.strategies = STRATEGIES
    c.curve = (0, 5, 10, 20, 50)  # shots at which the learning curve is cross-validated
    c.eval_archs = 0  # > 0: also measure this many seeded random sub-networks and score on them
    c.stack_ridge = 0.03
    c.calibration_delta = 0.05  # Huber threshold of the affine/stack fits (0: least squares)
    c.finetune_steps = 200
    c.finetune_lr = 1e-4
    c.anchor_weight = 1e-3

    # Folds of the cross-validation that scores the strategies (interleaved rows);
    # 0 = leave-one-out. With no more rows than folds it is leave-one-out. Five:
    # every strategy refits 5 times, not 10 or 60; on this CPU fine-tuning's 10
    # folds alone took 5 s of a 10.6 s adaptation.
    c.cv_folds = 5

    c.distill = ml_collections.ConfigDict(dataclasses.asdict(train_lib.TrainParams()))
    c.distill.archs = 2048  # archs labelled by the chosen adaptation
    # True: the additive table's least-squares solve on the labelled archs (no
    # residual MLP, about a second); False: trained with the fields below.
    c.distill.closed_form = True
    c.distill.max_steps = 2000
    c.distill.eval_every = 100
    return c
