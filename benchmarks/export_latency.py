"""Does the exported program run as fast as the sub-network the search measured?

For each ``found/<budget>ms/`` folder of a main job's searches, in this fresh
process: the program is read back (``jax.export.deserialize``), compiled for
batch ``--batch`` and timed through the main job's protocol with the store's
gauge baseline (the scale of the stored rows). The Flax sub-network of the
same arch is measured again beside it, in the same run and protocol, without
the store: its distance to the stored row is this machine's noise floor
between processes (the stored row was timed minutes earlier), and
``exported / flax now`` is the program's own cost or gain, free of that drift.

Run after a main job (``python -m experiments.main --workdir=W``)::

    python -m benchmarks.export_latency --workdir=W

Writes ``benchmarks/results/export_latency_cpu.json`` (``--out`` to change).
"""

from __future__ import annotations

import glob
import json
import os

from absl import app
from absl import flags
import jax
import numpy as np

from experiments import config_fields as cf
from ofa_jax import export as export_lib
from ofa_jax import space
from ofa_jax.latency import gauges
from ofa_jax.latency import measure
from ofa_jax.latency import store as store_lib

flags.DEFINE_string('workdir', None, 'A main job workdir (summary.json, search_*/found/).')
flags.DEFINE_string('out', 'benchmarks/results/export_latency_cpu.json', 'Where to write.')
FLAGS = flags.FLAGS


def _folders(workdir: str) -> list[str]:
    return sorted(
        os.path.dirname(p)
        for p in glob.glob(os.path.join(workdir, 'search_*', 'found', '*', 'export.json')))


def time_program(folder: str, protocol: measure.Protocol, gauge: measure.Gauge | None,
                 batch: int) -> float:
    """The exported program's latency (ms) at ``batch`` under ``protocol``."""
    program = export_lib.load_program(folder)
    r = int(program.in_avals[0].shape[1])
    x = np.random.default_rng(0).normal(size=(batch, r, r, 3)).astype(np.float32)
    compiled = jax.jit(program.call).lower(x).compile()
    timing = measure.time_executable(compiled, (x,), protocol, gauge)
    return float(timing.stats['latency'])


def main(argv):
    del argv
    with open(os.path.join(FLAGS.workdir, 'summary.json')) as f:
        summary = json.load(f)
    scfg = summary['config']['search']
    protocol = cf.protocol(scfg['protocol'])
    device = cf.device(scfg['device'])
    batch = int(scfg['verify_batch'])
    net = dict(batch=batch,
               dtype=str(scfg['dtype']),
               width=float(scfg['width']),
               num_classes=int(scfg['num_classes']),
               depthwise=cf.depthwise(scfg['depthwise'], device))
    with store_lib.LatencyStore(summary['store']) as store:
        _, gauge = gauges.device_gauge(store, device, **net)
    gauge = gauge if protocol.paired else None
    rows = []
    for folder in _folders(FLAGS.workdir):
        with open(os.path.join(folder, 'export.json')) as f:
            meta = json.load(f)
        stored = (meta.get('measured') or {}).get('latency_ms')
        if stored is None:
            continue
        with open(os.path.join(folder, 'arch.json')) as f:
            arch = space.from_ofa_dict(json.load(f))
        exported = time_program(folder, protocol, gauge, batch)
        flax_now = float(
            gauges.measure_archs([arch], device=device, protocol=protocol, gauge=gauge, **net)[0])
        rows.append({
            'folder': os.path.relpath(folder, FLAGS.workdir),
            'stored_ms': float(stored),
            'flax_now_ms': flax_now,
            'exported_ms': exported,
        })
        print(f'{rows[-1]["folder"]:40s} stored {stored:7.3f}  flax now {flax_now:7.3f}  '
              f'exported {exported:7.3f} ms')
    if not rows:
        raise SystemExit(f'no measured export folders under {FLAGS.workdir}/search_*/found')
    ratio = lambda a, b: np.array([r[a] / r[b] for r in rows])  # noqa: E731
    out = {
        'workdir':
            FLAGS.workdir,
        'protocol':
            protocol.to_dict(),
        'batch':
            batch,
        'rows':
            rows,
        'median_exported_over_stored':
            float(np.median(ratio('exported_ms', 'stored_ms'))),
        'median_flax_now_over_stored':
            float(np.median(ratio('flax_now_ms', 'stored_ms'))),
        'median_exported_over_flax_now':
            float(np.median(ratio('exported_ms', 'flax_now_ms'))),
        'median_abs_dev_flax_now_vs_stored':
            float(np.median(np.abs(ratio('flax_now_ms', 'stored_ms') - 1))),
        'median_abs_dev_exported_vs_stored':
            float(np.median(np.abs(ratio('exported_ms', 'stored_ms') - 1))),
    }
    print(f'{len(rows)} programs: exported / stored {out["median_exported_over_stored"]:.3f}, '
          f'flax now / stored {out["median_flax_now_over_stored"]:.3f} (noise floor: median '
          f'|dev| {100 * out["median_abs_dev_flax_now_vs_stored"]:.1f}%), exported / flax now '
          f'{out["median_exported_over_flax_now"]:.3f}')
    os.makedirs(os.path.dirname(FLAGS.out) or '.', exist_ok=True)
    with open(FLAGS.out, 'w') as f:
        json.dump(out, f, indent=1)


if __name__ == '__main__':
    flags.mark_flag_as_required('workdir')
    app.run(main)
