"""Noise floor of whole-network latency measurement on this host.

Measures the same ``--num_archs`` archs in ``--processes`` separate processes
(each a fresh ``experiments.measure_latency`` campaign with its own store,
started ``--pause_s`` apart), then reports, for each statistic the store
keeps (median, trimmed mean, min), the relative spread of each arch across
processes, ``(max - min) / median``, and its median and worst value over
archs. Rerunning with the same ``--workdir`` resumes.

Full scale (the issue's target is a median spread <= 3% at batch 1; run on a
quiet machine)::

    python -m benchmarks.noise_floor --num_archs=20 --processes=3 --pause_s=60

Writes ``benchmarks/results/noise_floor_<device>.json``.
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np

from ofa_jax.latency import store as store_lib

_NUM = flags.DEFINE_integer('num_archs', 20, 'Archs measured in every process.')
_PROCS = flags.DEFINE_integer('processes', 3, 'Separate processes (repetitions).')
_PAUSE = flags.DEFINE_float('pause_s', 60.0, 'Seconds between processes ("different times").')
_RES = flags.DEFINE_string('resolutions', '128,160', 'Resolutions to sample.')
_BATCH = flags.DEFINE_integer('batch', 1, 'Batch size.')
_SEED = flags.DEFINE_integer('seed', 0, 'Arch sampling seed (same archs in every process).')
_REPEATS = flags.DEFINE_integer('repeats', 30, 'protocol.repeats')
_MIN_TIME = flags.DEFINE_float('min_time', 0.5, 'protocol.min_time')
_ROUNDS = flags.DEFINE_integer('rounds', 1, 'protocol.rounds')
_STAT = flags.DEFINE_string('statistic', 'median', 'protocol.statistic (the stored latency).')
_AFFINITY = flags.DEFINE_string('cpu_affinity', '', "'' / 'N' / '0,1' for every process.")
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/ofa_noise_floor', 'Scratch/resume folder.')
_RESULTS = flags.DEFINE_string('results_dir', os.path.join(os.path.dirname(__file__), 'results'),
                               'Where the JSON result goes.')

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_process(i: int) -> str:
    run_dir = os.path.join(_WORKDIR.value, f'run{i}')
    store = os.path.join(_WORKDIR.value, f'run{i}.sqlite')
    args = [
        sys.executable, '-m', 'experiments.measure_latency',
        '--config=experiments/configs/measure_latency.py', f'--config.num_archs={_NUM.value}',
        f'--config.resolutions={_RES.value}', f'--config.batch_sizes={_BATCH.value}',
        f'--config.seed={_SEED.value}', f'--config.store={store}', f'--workdir={run_dir}',
        f'--config.protocol.repeats={_REPEATS.value}',
        f'--config.protocol.min_time={_MIN_TIME.value}',
        f'--config.protocol.rounds={_ROUNDS.value}', f'--config.protocol.statistic={_STAT.value}',
        f'--config.cpu_affinity={_AFFINITY.value}', '--config.drift.interval=0',
        '--config.microbenchmarks=False'
    ]
    env = dict(os.environ, PYTHONPATH=_ROOT)
    subprocess.run(args, cwd=_ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return store


def spread_table(per_run: list[dict[str, dict[str, float]]], stats: tuple[str, ...]):
    """{stat: (median spread, worst spread, n archs)} over archs present in every run."""
    common = set.intersection(*(set(r) for r in per_run))
    out = {}
    for s in stats:
        spreads = []
        for key in sorted(common):
            v = np.array([r[key][s] for r in per_run])
            spreads.append((v.max() - v.min()) / np.median(v))
        out[s] = (float(np.median(spreads)), float(np.max(spreads)), len(spreads))
    return out


def main(argv):
    del argv
    os.makedirs(_WORKDIR.value, exist_ok=True)
    stores = []
    for i in range(_PROCS.value):
        if i:
            time.sleep(_PAUSE.value)
        t0 = time.time()
        stores.append(_run_process(i))
        print(f'process {i}: {time.time() - t0:.0f} s', flush=True)
    per_run, device = [], ''
    for path in stores:
        with store_lib.LatencyStore(path) as s:
            rows = s.rows(batch=_BATCH.value)
            device = next(iter(s.devices().values()), {}).get('device_kind', 'unknown')
        per_run.append({r.key.arch_key: dict(r.stats, latency=r.latency_ms) for r in rows})
    stats = ('latency', 'median', 'trimmed_mean', 'min')
    table = spread_table(per_run, stats)
    cvs = [v['cv'] for run in per_run for v in run.values()]
    print(f'{_PROCS.value} processes x {table["latency"][2]} archs, resolutions '
          f'{_RES.value}, batch {_BATCH.value}, protocol repeats={_REPEATS.value} '
          f'min_time={_MIN_TIME.value} rounds={_ROUNDS.value} statistic={_STAT.value}')
    print(f'within-process CV: median {np.median(cvs):.3f}, max {np.max(cvs):.3f}')
    print(f'{"statistic":<14}{"median spread %":>17}{"worst spread %":>16}')
    for s, (med, worst, _) in table.items():
        print(f'{s:<14}{100 * med:>17.2f}{100 * worst:>16.2f}')
    os.makedirs(_RESULTS.value, exist_ok=True)
    out = os.path.join(_RESULTS.value, f'noise_floor_{device.replace(" ", "_")}.json')
    with open(out, 'w') as f:
        json.dump(
            {
                'flags': {
                    name: flags.FLAGS[name].value
                    for name in ('num_archs', 'processes', 'pause_s', 'resolutions', 'batch',
                                 'seed', 'repeats', 'min_time', 'rounds', 'statistic',
                                 'cpu_affinity')
                },
                'spread': {
                    s: {
                        'median': m,
                        'worst': w,
                        'archs': n
                    } for s, (m, w, n) in table.items()
                },
                'within_process_cv_median': float(np.median(cvs)),
                'load_average': os.getloadavg(),
            },
            f,
            indent=1)
    print(f'wrote {out}')


if __name__ == '__main__':
    app.run(main)
