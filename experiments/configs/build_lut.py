"""Config of a lookup-table build (``experiments/build_lut.py``).

Launch::

    python -m experiments.build_lut --config=experiments/configs/build_lut.py \
      --config.resolutions=128,160 --config.batch=1 --workdir=/tmp/lut

Writes ``WORKDIR/lut/{r}_lookup_table.yaml`` (OFA's format) and
``provenance.json``; a killed build resumes from its layer cache.
"""

import ml_collections

from experiments.configs import measure_latency


def get_config() -> ml_collections.ConfigDict:
    """Layers of the w1.2 space at 128 and 160, batch 1, float32, a shorter protocol."""
    c = ml_collections.ConfigDict()
    c.resolutions = (128, 160)
    c.batch = 1
    c.width = 1.2
    c.num_classes = 1000
    c.dtype = 'float32'
    c.device = ''
    c.depthwise = 'auto'
    c.cpu_affinity = ''
    c.microbenchmarks = True
    c.progress = True
    c.protocol = measure_latency.protocol_config()
    c.protocol.min_time = 0.2  # Layers are short; many samples fit in little time.
    # Paired with the gauge network, each sample lasts >= 10 ms so the reference
    # call after it (~12 ms on a 2-core CPU) does not dominate the build time.
    c.protocol.min_sample = 0.01
    c.protocol.repeats = 9
    # Where the gauge baseline is kept (paired protocol): the store of the campaigns
    # whose networks this table is compared with. '' = WORKDIR/latency.sqlite.
    c.store = ''
    return c
