"""Noise floor of whole-network latency measurement on this host.

Measures the same ``--num_archs`` archs in ``--processes`` separate processes
(each a fresh ``experiments.measure_latency`` campaign with its own store,
started ``--pause_s`` apart), then reports, for each statistic the store
keeps (median, trimmed mean, min), the relative spread of each arch across
processes, ``(max - min) / median``, and its median and worst value over
archs. Rerunning with the same ``--workdir`` resumes.

With ``--paired`` (the default, as in campaigns) every sample is divided by a
sample of the fixed gauge network taken right after it (see
``measure.Protocol.paired``); the later processes get the first one's gauge
baseline, as a shared store would give them. Each row also keeps the
uncorrected median (``raw_median``), so one run compares both. A second
figure of merit: the relative RMSE of a linear fit of latency on XLA's FLOP
count within each process (what no predictor can get below).

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
_PAIRED = flags.DEFINE_bool('paired', True, 'protocol.paired (time the gauge after each sample).')
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
        f'--config.protocol.paired={_PAIRED.value}', '--config.microbenchmarks=False'
    ]
    env = dict(os.environ, PYTHONPATH=_ROOT)
    subprocess.run(args, cwd=_ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return store


def _share_gauge(source: str, target: str) -> None:
    """Copies the gauge baselines of ``source``'s store into ``target``'s."""
    with store_lib.LatencyStore(source) as src, store_lib.LatencyStore(target) as dst:
        for key, value in src.meta_items('gauge_baseline_ms/'):
            dst.set_meta(key, value)


def flops_fit_rmse(run: dict[str, dict[str, float]], stat: str) -> float | None:
    """Relative RMSE of ``stat ~ a + b * flops`` over one process's archs."""
    pairs = [(v['flops'], v[stat]) for v in run.values() if v.get('flops') and stat in v]
    if len(pairs) < 3:
        return None
    x, y = np.array(pairs, np.float64).T
    design = np.stack([np.ones_like(x), x], axis=1)
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    return float(np.sqrt(np.mean((y - design @ coef)**2)) / np.mean(y))


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
        if i and _PAIRED.value:
            _share_gauge(stores[0], os.path.join(_WORKDIR.value, f'run{i}.sqlite'))
        stores.append(_run_process(i))
        print(f'process {i}: {time.time() - t0:.0f} s', flush=True)
    per_run, device = [], ''
    for path in stores:
        with store_lib.LatencyStore(path) as s:
            rows = s.rows(batch=_BATCH.value)
            device = next(iter(s.devices().values()), {}).get('device_kind', 'unknown')
        per_run.append({
            r.key.arch_key: dict(r.stats, latency=r.latency_ms, flops=r.cost.get('flops'))
            for r in rows
        })
    stats = ('latency', 'median', 'trimmed_mean', 'min')
    if _PAIRED.value:
        stats += ('raw_median',)
    table = spread_table(per_run, stats)
    cvs = [v['cv'] for run in per_run for v in run.values()]
    print(f'{_PROCS.value} processes x {table["latency"][2]} archs, resolutions '
          f'{_RES.value}, batch {_BATCH.value}, protocol repeats={_REPEATS.value} '
          f'min_time={_MIN_TIME.value} rounds={_ROUNDS.value} statistic={_STAT.value}')
    print(f'within-process CV: median {np.median(cvs):.3f}, max {np.max(cvs):.3f}')
    fits = {s: [flops_fit_rmse(run, s) for run in per_run] for s in stats}
    print(f'{"statistic":<14}{"median spread %":>17}{"worst spread %":>16}'
          f'{"FLOPs-fit RMSE % per process":>30}')
    for s, (med, worst, _) in table.items():
        fit = ' '.join('-' if v is None else f'{100 * v:.1f}' for v in fits[s])
        print(f'{s:<14}{100 * med:>17.2f}{100 * worst:>16.2f}{fit:>30}')
    if _PAIRED.value:
        print('paired: latency/median/trimmed_mean/min are gauge-corrected; raw_median is not')
    os.makedirs(_RESULTS.value, exist_ok=True)
    out = os.path.join(_RESULTS.value, f'noise_floor_{device.replace(" ", "_")}.json')
    with open(out, 'w') as f:
        json.dump(
            {
                'flags': {
                    name: flags.FLAGS[name].value
                    for name in ('num_archs', 'processes', 'pause_s', 'resolutions', 'batch',
                                 'seed', 'repeats', 'min_time', 'rounds', 'statistic',
                                 'cpu_affinity', 'paired')
                },
                'spread': {
                    s: {
                        'median': m,
                        'worst': w,
                        'archs': n
                    } for s, (m, w, n) in table.items()
                },
                'flops_fit_relative_rmse': fits,
                'within_process_cv_median': float(np.median(cvs)),
                'load_average': os.getloadavg(),
            },
            f,
            indent=1)
    print(f'wrote {out}')


if __name__ == '__main__':
    app.run(main)
