"""Config of a merge of latency stores (``experiments/merge_stores.py``).

Launch::

    python -m experiments.merge_stores \
      --config.inputs=/data/shard_0.sqlite,/data/shard_1.sqlite \
      --config.out=/data/latency.sqlite --workdir=/data/merge
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Inputs (comma separated store paths) and the output store."""
    c = ml_collections.ConfigDict()
    # Comma separated store paths (a string: paths do not parse as a tuple flag), merged in
    # this order; the first copy of a row wins.
    c.inputs = ''
    c.out = ''  # '' = WORKDIR/latency.sqlite.
    return c
