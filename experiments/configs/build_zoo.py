"""Config of ``experiments/build_zoo.py``: one base predictor per (device, batch size).

    python -m experiments.build_zoo --config=experiments/configs/build_zoo.py \
      --config.sources=A_batch1.csv,B_batch64.csv,runs/main/latency.sqlite \
      --config.devices=A_batch1.csv:2080ti,B_batch64.csv:titan_rtx --workdir=zoo

Each CSV file is one member (its device from ``devices``, else the file name;
its batch from ``batch_sizes``, else ``batchN`` in the file name, else 1);
each latency store gives one member per (device, batch size) it holds at
``dtype`` and ``width`` with at least ``min_rows`` distinct archs. Every member
is fitted by the fit job (:mod:`experiments.jobs.fit_predictor`) with the
``fit`` section, whose ``data``, ``device`` and ``batch`` are filled per member.
"""

import ml_collections

from experiments.configs import fit_predictor


def get_config() -> ml_collections.ConfigDict:
    """Additive members (the fit job's defaults otherwise)."""
    c = ml_collections.ConfigDict()
    c.sources = ()  # OFA CSV files and latency stores (.sqlite), comma separated
    c.devices = ()  # FILE:DEVICE pairs for CSV files (ofa_jax.hardware names or any label)
    c.batch_sizes = ()  # FILE:BATCH pairs for CSV files
    c.width = 1.2
    c.dtype = 'float32'  # store rows of this dtype
    c.min_rows = 20  # store groups with fewer distinct archs are skipped (and listed)
    c.reference_resolutions = ()  # () = the resolutions every member's rows cover
    c.fit = fit_predictor.get_config()
    c.fit.width = c.get_ref('width')
    c.fit.dtype = c.get_ref('dtype')
    c.fit.model = 'additive'
    return c
