"""Config of the main job (``experiments/main.py``): measure, LUT, predictors, search, report.

The defaults run on this machine's CPU in about a quarter of an hour::

    python -m experiments.main --workdir=runs/main

Variants are a few overrides, e.g. a GPU host with a bigger campaign::

    python -m experiments.main --workdir=runs/gpu --config.device=gpu:0 \
      --config.num_archs=1000 --config.resolutions=160,192,224 --config.batch=64

The config nests one section per stage, each the stage's own config
(``c.measure`` is ``experiments/configs/measure_latency.py``'s, and so on),
so any stage option is one override away (``--config.search.mutate_prob=0.2``,
``--config.fit.loss=huber``). Values every stage must agree on are set once
at the top and tied into the sections (ml_collections ``FieldReference``):
``--config.resolutions=128`` changes the campaign, the LUT and the search.
The job fills in only what is known at run time (store path, device id,
the fitted checkpoints, the budgets), and the report's ``commands.txt`` is
generated from the filled sections, so each command there reruns its stage.

With a predictor zoo (``experiments.build_zoo``) the job also onboards this
device from it (``--config.zoo=DIR``; the ``onboard`` section is
``experiments/configs/onboard.py``'s) on the same device, protocol and store,
and scores the onboarded checkpoint as one more estimator on the same
held-out rows::

    python -m experiments.main --workdir=runs/main --config.zoo=zoo --config.shots=20
"""

import ml_collections

from experiments.configs import build_lut
from experiments.configs import fit_predictor
from experiments.configs import measure_latency
from experiments.configs import onboard
from experiments.configs import search

PREDICTOR_MODELS = ('mlp', 'additive', 'additive_mlp')


def _tie(section: ml_collections.ConfigDict, top: ml_collections.ConfigDict,
         names: tuple[str, ...]) -> None:
    for name in names:
        section[name] = top.get_ref(name)


def get_config() -> ml_collections.ConfigDict:
    """Defaults sized for 2 CPU cores and about 15 minutes."""
    c = ml_collections.ConfigDict()
    # Shared by every stage.
    c.width = 1.2
    c.resolutions = (128, 160)
    c.batch = 1
    c.dtype = 'float32'
    c.device = ''  # '' = JAX's default device; or 'cpu', 'gpu:0', 'tpu:0'.
    c.store = ''  # '' = WORKDIR/latency.sqlite; point it at an existing store to reuse rows.
    c.seed = 0
    c.cpu_affinity = ''  # '' = as launched; '1' = one core (lower noise, slower).
    c.depthwise = 'auto'
    c.num_classes = 1000
    c.progress = True
    # A shorter protocol than a dedicated campaign: the CPU budget of the main job
    # goes to many sub-networks rather than many repeats of few. Campaign and
    # verification use it; the LUT shares all of it but its per-layer timing.
    c.protocol = measure_latency.protocol_config()
    c.protocol.warmup = 3
    c.protocol.repeats = 15
    c.protocol.min_time = 0.15
    c.protocol.rounds = 1

    # 1. Whole-network measurements for the predictors: up to num_archs, as many as
    #    fit in measure_time_budget_s (mostly XLA compile time on a CPU). Rerunning
    #    the same command measures the rest, so the data set grows.
    c.measure = measure_latency.get_config()
    _tie(c.measure, c, ('width', 'resolutions', 'dtype', 'device', 'store', 'seed', 'depthwise',
                        'num_classes', 'progress'))
    for name in c.protocol:
        c.measure.protocol[name] = c.protocol.get_ref(name)
    c.measure.cpu_affinity = ''  # Applied once, by the main job, before any stage.
    c.measure.num_archs = 300
    c.num_archs = c.measure.get_ref('num_archs')
    c.measure.time_budget_s = 540.0  # 0 = no limit.
    c.measure_time_budget_s = c.measure.get_ref('time_budget_s')
    # Rows measured while a re-timed reference sub-network moved by more than this
    # are flagged and left out of training. On a shared 2-core CPU the same program's
    # median moves ~10-20% between processes, so 0.15 (the campaign default)
    # discarded a third of the rows; 0.3 still catches real throttling.
    c.measure.drift.tolerance = 0.3
    c.drift_tolerance = c.measure.drift.get_ref('tolerance')

    # 2. The lookup table on the same device, with the campaign's protocol but for
    #    its per-layer sampling (build_lut's defaults: samples >= 10 ms, 9 repeats).
    c.lut = build_lut.get_config()
    _tie(c.lut, c, ('width', 'resolutions', 'batch', 'dtype', 'device', 'store', 'depthwise',
                    'num_classes', 'progress'))
    for name in c.protocol:
        if name not in ('min_time', 'min_sample', 'repeats'):
            c.lut.protocol[name] = c.protocol.get_ref(name)
    c.lut.cpu_affinity = ''
    c.lut.protocol.min_time = 0.1  # Per layer of the lookup table.
    c.lut_min_time = c.lut.protocol.get_ref('min_time')

    # 3. Predictors trained on the first 70% of measured rows, early-stopped on the
    #    next 15%; every estimator is scored on the last 15%. One fit section is
    #    the template of every predictor's (the model and data are set per fit).
    c.predictors = ('mlp', 'additive')
    c.fit = fit_predictor.get_config()
    _tie(c.fit, c, ('width', 'batch', 'dtype', 'seed', 'num_classes'))
    c.fit.lut_width = c.get_ref('width')
    c.fit.max_steps = 6000
    c.max_steps = c.fit.get_ref('max_steps')
    c.split = c.fit.get_ref('split')

    # 4-5. Search at each budget with every estimator, then measure what was found.
    c.budgets_ms = ml_collections.FieldReference((), field_type=tuple)  # () = auto
    c.search = search.get_config()
    _tie(c.search, c,
         ('width', 'resolutions', 'device', 'dtype', 'depthwise', 'num_classes', 'progress'))
    for name in c.protocol:
        c.search.protocol[name] = c.protocol.get_ref(name)
    c.search.verify_batch = c.get_ref('batch')
    c.search.verify = True  # Measure the found sub-networks on this device.
    c.verify = c.search.get_ref('verify')
    c.search.accuracy = ''  # OFA acc_predictor.pth or our accuracy checkpoint; '' = MACs.
    c.accuracy = c.search.get_ref('accuracy')
    c.search.seeds = 1
    c.seeds = c.search.get_ref('seeds')
    c.population_size = c.search.get_ref('population_size')
    c.num_generations = c.search.get_ref('num_generations')

    # 6. Optional: onboard this device from a predictor zoo (experiments.jobs.onboard)
    #    instead of only fitting from scratch: the zoo's reference archs plus `shots`
    #    chosen sub-networks, measured with the campaign's protocol into its store;
    #    the checkpoint is scored on the same held-out rows and searched like the others.
    c.zoo = ''  # '' = off; else a folder written by experiments.build_zoo.
    c.onboard = onboard.get_config()
    _tie(c.onboard, c, ('zoo', 'width', 'resolutions', 'batch', 'dtype', 'device', 'store', 'seed',
                        'depthwise', 'num_classes', 'progress'))
    for name in c.protocol:
        c.onboard.protocol[name] = c.protocol.get_ref(name)
    c.onboard.cpu_affinity = ''
    c.onboard.microbenchmarks = c.measure.get_ref('microbenchmarks')
    c.shots = c.onboard.get_ref('shots')
    return c
