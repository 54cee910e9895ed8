"""Config of a latency measurement campaign (``experiments/measure_latency.py``).

Launch (lists are tuples; ``--config.resolutions=128,160`` sets one)::

    python -m experiments.measure_latency \
      --config=experiments/configs/measure_latency.py \
      --config.num_archs=100 --config.resolutions=128,160 --config.batch_sizes=1 \
      --config.width=1.2 --config.seed=0 --config.store=/tmp/lat.sqlite --workdir=/tmp/lat

Cluster shards: same command with ``--config.shard_index=i --config.num_shards=n``
on each host (each with its own store file; merge them afterwards with
``python -m experiments.merge_stores``; ``scripts/slurm_campaign.sh`` does both on SLURM).

Fleet on Ray (``pip install -e '.[cluster]'``; see docs/cluster.md): the same command with
``--config.cluster=local`` (a Ray instance on this host), ``auto`` (the cluster of
``ray start``/``RAY_ADDRESS``), ``HOST:PORT`` or ``ray://HOST:PORT``: one actor per device
measures, this process is the one writer of the store.
"""

import ml_collections


def protocol_config() -> ml_collections.ConfigDict:
    """The timing protocol of a dedicated campaign (``ofa_jax.latency.measure.Protocol``)."""
    p = ml_collections.ConfigDict()
    p.warmup = 5
    p.repeats = 30
    p.min_time = 0.5
    p.max_time = 30.0
    p.number = 0
    p.min_sample = 0.002
    p.trim = 0.2
    p.statistic = 'median'
    p.rounds = 1
    # Time the fixed gauge network after every sample and report latencies relative
    # to it (measure.Protocol.paired): cancels the machine's speed drift.
    p.paired = True
    return p


def get_config() -> ml_collections.ConfigDict:
    """Default campaign: 100 archs at 128 and 160, batch 1, float32, this host's default device."""
    c = ml_collections.ConfigDict()
    c.num_archs = 100
    c.seed = 0
    c.resolutions = (128, 160)
    c.batch_sizes = (1,)
    c.width = 1.2
    c.num_classes = 1000
    c.dtype = 'float32'
    c.device = ''  # '' = default device; or 'cpu', 'gpu:0', 'tpu:0'.
    c.store = ''  # '' = WORKDIR/latency.sqlite.
    c.shard_index = 0
    c.num_shards = 1
    c.time_budget_s = 0.0  # 0 = no limit; else stop starting measurements after this.
    c.depthwise = 'auto'  # 'auto', 'conv' or 'shifted' (see ofa_jax.depthwise).
    c.cpu_affinity = ''  # '' = as launched; 'N' = first N allowed cores; '0,2' = these.
    c.microbenchmarks = True  # Copy-bandwidth and matmul features in the fingerprint.
    c.progress = True
    c.protocol = protocol_config()

    # Fleet on Ray (experiments/fleet.py). '' = this process measures (no Ray).
    c.cluster = ''  # '', 'local', 'auto', 'HOST:PORT' or 'ray://HOST:PORT'.
    c.fleet_size = 0  # Actors (one per device); 0 = every CPU (or GPU, device=gpu) of the cluster.
    c.fleet_restarts = 2  # Replacement actors started in all for actors that die.
    c.fleet_pin_cores = True  # CPU actors: each pinned to a core of its own on its node.

    c.drift = ml_collections.ConfigDict()
    # Drift detection for unpaired protocols (a paired one corrects drift instead).
    c.drift.interval = 20  # Re-time the reference after this many rows; 0 = off.
    c.drift.tolerance = 0.15  # Relative change of the reference that flags rows.
    c.drift.action = 'flag'  # 'flag', 'remeasure' (at the end, once back to baseline), 'none'.
    return c
