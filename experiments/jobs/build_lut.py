"""The lookup-table job (``experiments/build_lut.py``): time every layer alone, write OFA yaml.

:func:`run` validates the config, takes the device's gauge baseline from the
latency store (paired protocol; shared with the campaigns that measure whole
networks, so layer and network latencies are on one scale), times every
layer with :func:`predictors.lut_builder.build_lut` (resumable through its
layer cache) and writes ``WORKDIR/lut/{r}_lookup_table.yaml`` and
``WORKDIR/lut/provenance.json``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import ml_collections

from experiments import config_fields as cf
from ofa_jax import files
from ofa_jax.latency import fingerprint as fp_lib
from ofa_jax.latency import gauges
from ofa_jax.latency import store as store_lib
from predictors import lut
from predictors import lut_builder

ConfigError = cf.ConfigError


def check(config: ml_collections.ConfigDict) -> None:
    """Every check that needs no device (ConfigError naming the field)."""
    cf.resolutions(config.resolutions)
    cf.network(config)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Builds the LUT of ``config`` into ``WORKDIR/lut/{r}_lookup_table.yaml``.

    Returns:
      the summary written to ``provenance.json`` (layers, times, fingerprint,
      protocol, gauge).

    Raises:
      ConfigError: bad resolution, device, dtype, store or protocol field.
    """
    check(config)
    cf.set_affinity(config.cpu_affinity)
    resolutions = cf.resolutions(config.resolutions)
    batch = cf.one_int('batch', config.batch)
    protocol = cf.protocol(config.protocol)
    device = cf.device(config.device)
    depthwise = cf.depthwise(config.depthwise, device)
    width = cf.width(config.width)
    out_dir = os.path.join(workdir, 'lut')
    os.makedirs(out_dir, exist_ok=True)
    fp = fp_lib.fingerprint(device, microbenchmarks=bool(config.microbenchmarks))
    cache = os.path.join(
        workdir, f'lut_layers-{fp["fingerprint_id"]}-b{batch}-{config.dtype}-'
        f'{depthwise}-{protocol.name}.jsonl')
    gauge = None
    with contextlib.ExitStack() as lease:
        if protocol.paired:
            # The baseline lives in the latency store, shared with the campaigns that
            # measure whole networks on this device: both end up on one scale. The
            # store's writer lease keeps a campaign from timing beside the build.
            store = lease.enter_context(cf.open_store(cf.store_path(config.store, workdir)))
            try:
                lease.enter_context(store.writer_lease('build_lut'))
            except store_lib.StoreError as err:
                raise ConfigError(f'config.store: {err}') from None
            store.add_device(fp)
            gauge = gauges.open_gauge(store,
                                      fp['fingerprint_id'],
                                      batch=batch,
                                      dtype=config.dtype,
                                      device=device,
                                      width=width,
                                      num_classes=int(config.num_classes),
                                      depthwise=depthwise)
        table, summary = lut_builder.build_lut(resolutions,
                                               batch=batch,
                                               width=width,
                                               num_classes=int(config.num_classes),
                                               dtype=config.dtype,
                                               device=device,
                                               protocol=protocol,
                                               depthwise=depthwise,
                                               cache_path=cache,
                                               progress=bool(config.progress),
                                               gauge=gauge)
    summary['paths'] = lut.save_lut(out_dir, table)
    summary.update({
        'fingerprint':
            fp,
        'protocol':
            protocol.to_dict(),
        'batch':
            batch,
        'dtype':
            config.dtype,
        'gauge':
            None if gauge is None else {
                'arch_key': gauge.arch_key,
                'baseline_ms': gauge.baseline_ms
            },
    })
    files.write_json(os.path.join(out_dir, 'provenance.json'), summary)
    print(f'LUT with {summary["layers"]} layers -> {out_dir}', file=sys.stderr)
    return summary
