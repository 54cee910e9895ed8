"""Does the exported program run as fast as the sub-network the search measured?

For each ``found/<budget>ms/`` folder of a main job's searches, in this fresh
process: the program is read back (``jax.export.deserialize``), compiled for
batch ``--batch`` and timed through the main job's protocol with the store's
gauge baseline (the scale of the stored rows). The Flax sub-network of the
same arch is measured again beside it, in the same run and protocol, without
the store: its distance to the stored row is this machine's noise floor
between processes (the stored row was timed minutes earlier), and
``exported / flax now`` is the program's own cost or gain, free of that drift.
The same weights exported as constants in the program (``weights_in_program``)
are timed beside them, to show what XLA's folding of constant weights gains.

Run after a main job (``python -m experiments.main --workdir=W``)::

    python -m benchmarks.export_latency --workdir=W

Writes ``benchmarks/results/export_latency_cpu.json`` (``--out`` to change).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

from absl import app
from absl import flags
import jax
import numpy as np

from experiments import config_fields as cf
from ofa_jax import export as export_lib
from ofa_jax import space
from ofa_jax import subnet
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


def time_program(program: Any, args: tuple, resolution: int, protocol: measure.Protocol,
                 gauge: measure.Gauge | None, batch: int) -> float:
    """An exported program's latency (ms) at ``batch`` under ``protocol``.

    ``args`` go before the images (the weights, or nothing for a program
    that holds them as constants).
    """
    x = np.random.default_rng(0).normal(size=(batch, resolution, resolution, 3))
    # On the device first, as the measured rows' arguments are: host arrays
    # would be copied in on every call and timed with it.
    args, x = jax.device_put((tuple(args), x.astype(np.float32)))
    compiled = jax.jit(program.call).lower(*args, x).compile()
    timing = measure.time_executable(compiled, args + (x,), protocol, gauge)
    return float(timing.stats['latency'])


def constant_program(folder: str, meta: dict[str, Any], arch: space.Arch) -> Any:
    """The folder's sub-network exported again with its weights baked in as constants."""
    model = subnet.build_subnet(arch,
                                float(meta['width']),
                                num_classes=int(meta['num_classes']),
                                depthwise=str(meta['depthwise']))
    blob = export_lib.serialize_program(model,
                                        export_lib.read_weights(folder),
                                        int(arch.resolution),
                                        str(meta['input']['dtype']),
                                        weights_in_program=True)
    return jax.export.deserialize(bytearray(blob))


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
        r = int(arch.resolution)
        exported = time_program(export_lib.load_program(folder), export_lib.program_args(folder), r,
                                protocol, gauge, batch)
        constant = time_program(constant_program(folder, meta, arch), (), r, protocol, gauge, batch)
        flax_now = float(
            gauges.measure_archs([arch], device=device, protocol=protocol, gauge=gauge, **net)[0])
        rows.append({
            'folder': os.path.relpath(folder, FLAGS.workdir),
            'stored_ms': float(stored),
            'flax_now_ms': flax_now,
            'exported_ms': exported,
            'program_args': meta.get('program_args', ['images']),
            'weights_constant_ms': constant,
        })
        print(f'{rows[-1]["folder"]:40s} stored {stored:7.3f}  flax now {flax_now:7.3f}  '
              f'exported {exported:7.3f}  weights as constants {constant:7.3f} ms')
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
        'median_weights_constant_over_flax_now':
            float(np.median(ratio('weights_constant_ms', 'flax_now_ms'))),
    }
    print(f'{len(rows)} programs: exported / stored {out["median_exported_over_stored"]:.3f}, '
          f'flax now / stored {out["median_flax_now_over_stored"]:.3f} (noise floor: median '
          f'|dev| {100 * out["median_abs_dev_flax_now_vs_stored"]:.1f}%), exported / flax now '
          f'{out["median_exported_over_flax_now"]:.3f}, weights as constants / flax now '
          f'{out["median_weights_constant_over_flax_now"]:.3f}')
    os.makedirs(os.path.dirname(FLAGS.out) or '.', exist_ok=True)
    with open(FLAGS.out, 'w') as f:
        json.dump(out, f, indent=1)


if __name__ == '__main__':
    flags.mark_flag_as_required('workdir')
    app.run(main)
