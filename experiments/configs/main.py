"""Config of the main job (``experiments/main.py``): measure, LUT, predictors, search, report.

The defaults run on this machine's CPU in about a quarter of an hour::

    python -m experiments.main --workdir=runs/main

Variants are a few overrides, e.g. a GPU host with a bigger campaign::

    python -m experiments.main --workdir=runs/gpu --config.device=gpu:0 \
      --config.num_archs=1000 --config.resolutions=160,192,224 --config.batch=64

Every stage is also its own experiment (``measure_latency``, ``build_lut``,
``fit_predictor``, ``search``) with its own config; this one only chains them.
"""

import ml_collections

from experiments.configs import measure_latency


def get_config() -> ml_collections.ConfigDict:
    """Defaults sized for 2 CPU cores and about 15 minutes."""
    c = ml_collections.ConfigDict()
    c.width = 1.2
    c.resolutions = '128,160'
    c.batch = 1
    c.dtype = 'float32'
    c.device = ''  # '' = JAX's default device; or 'cpu', 'gpu:0', 'tpu:0'.
    c.store = ''  # '' = WORKDIR/latency.sqlite; point it at an existing store to reuse rows.
    # Whole-network measurements for the predictors: up to num_archs, as many as fit in
    # measure_time_budget_s (about 9-10 per minute on 2 cores, mostly XLA compile
    # time). Rerunning the same command measures the rest, so the data set grows.
    c.num_archs = 300
    c.measure_time_budget_s = 540.0  # 0 = no limit.
    c.seed = 0
    c.cpu_affinity = ''  # '' = as launched; '1' = one core (lower noise, slower).
    c.depthwise = 'auto'
    c.num_classes = 1000

    # A shorter protocol than a dedicated campaign: the CPU budget of the main job
    # goes to many sub-networks rather than many repeats of few.
    c.protocol = measure_latency.get_config().protocol
    c.protocol.warmup = 3
    c.protocol.repeats = 15
    c.protocol.min_time = 0.15
    c.protocol.rounds = 1

    # Rows measured while a re-timed reference sub-network moved by more than this
    # are flagged and left out of training. On a shared 2-core CPU the same program's
    # median moves ~10-20% between processes, so 0.15 (the campaign default)
    # discarded a third of the rows; 0.3 still catches real throttling.
    c.drift_tolerance = 0.3

    c.lut_min_time = 0.1  # Per layer of the lookup table.

    # Predictors trained on the first 70% of measured rows, early-stopped on the
    # next 15%; every estimator is scored on the last 15%.
    c.predictors = 'mlp,additive'
    c.split = '0.7,0.15,0.15'
    c.max_steps = 6000

    # Search: '' = the 25th, 50th and 75th percentiles of the measured latencies.
    c.budgets_ms = ''
    c.seeds = 1
    c.accuracy = ''  # OFA acc_predictor.pth or our accuracy checkpoint; '' = MACs proxy.
    c.population_size = 100
    c.num_generations = 500
    c.verify = True  # Measure the found sub-networks on this device.
    c.progress = True
    return c
