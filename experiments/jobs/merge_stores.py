"""The merge job: several latency stores (campaign shards, fleet hosts) into one.

:func:`run` is what ``experiments/merge_stores.py`` calls; the work is
:func:`ofa_jax.latency.merge.merge_stores`. It writes the summary to
``WORKDIR/merge.json``. A protocol or fingerprint conflict is one line naming
the store and the protocol or fingerprint, and the output is left unchanged.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from experiments import config_fields as cf
from ofa_jax import files
from ofa_jax.latency import merge as merge_lib


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Merges ``config.inputs`` into ``config.out``; returns the summary.

    Raises:
      ConfigError: no inputs, an input that is no store (or the output itself),
        or an output that cannot be used.
      MergeConflict: stores disagree on a protocol or a device fingerprint.
    """
    inputs = [str(p) for p in cf.items(config.inputs)]
    if not inputs:
        raise cf.ConfigError(
            f'config.inputs: {tuple(config.inputs)!r} is empty; allowed: a comma '
            'separated list of store paths, e.g. --config.inputs=a.sqlite,b.sqlite')
    out = cf.store_path(config.out, workdir, 'out')
    for p in inputs:
        if not os.path.isfile(p):
            raise cf.ConfigError(f'config.inputs: {p!r} is not a file; allowed: paths of latency '
                                 'stores')
    os.makedirs(workdir, exist_ok=True)
    try:
        summary = merge_lib.merge_stores(inputs, out)
    except ValueError as err:
        raise cf.ConfigError(f'config.inputs: {err}') from None
    files.write_json(os.path.join(workdir, 'merge.json'), summary)
    return summary
