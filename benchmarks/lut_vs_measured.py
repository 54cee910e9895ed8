"""LUT baseline vs whole-network measurements on this host's device.

Builds a per-layer lookup table on this device (``predictors.lut_builder``,
OFA's method), measures the same device's whole sub-networks for random
archs (``experiments.jobs.measure_latency``), and prints how well the LUT sum predicts
them (RMSE, MAPE, Kendall tau), per resolution and overall. Both steps resume
from ``--workdir`` if interrupted.

Run (what the numbers in the report came from)::

    python -m benchmarks.lut_vs_measured --num_archs=50 --resolutions=128,160 \
        --workdir=/tmp/lut_vs_measured

Writes ``benchmarks/results/lut_vs_measured_<device>.{csv,json}`` and the
LUT yaml files under ``benchmarks/results/lut_<device>/``.
"""

import json
import os
import shutil

from absl import app
from absl import flags
import numpy as np

from experiments.configs import build_lut as build_lut_config
from experiments.configs import measure_latency as measure_config
from ofa_jax import csvio
from ofa_jax import space
from experiments import config_fields as cf
from experiments.jobs import build_lut as lut_job
from experiments.jobs import measure_latency as campaign
from ofa_jax.latency import store as store_lib
from predictors import lut
from predictors import metrics

_NUM = flags.DEFINE_integer('num_archs', 50, 'Random archs measured whole.')
_RES = flags.DEFINE_string('resolutions', '128,160', 'Resolutions (LUT and archs).')
_BATCH = flags.DEFINE_integer('batch', 1, 'Batch size.')
_SEED = flags.DEFINE_integer('seed', 0, 'Arch sampling seed.')
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/ofa_lut_vs_measured', 'Scratch/resume folder.')
_RESULTS = flags.DEFINE_string('results_dir', os.path.join(os.path.dirname(__file__), 'results'),
                               'Where the CSV/JSON/yaml results go.')
_REPEATS = flags.DEFINE_integer('repeats', 30, 'Timed samples per network and per layer.')
_MIN_TIME = flags.DEFINE_float('min_time', 0.5, 'Min seconds of samples per network.')
_AFFINITY = flags.DEFINE_string('cpu_affinity', '', "'' / 'N' / '0,1': cores to run on.")


def _kendall(a: np.ndarray, b: np.ndarray) -> float:
    return float(metrics.kendall_tau(a, b))


def _metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    err = pred - true
    return {
        'n': int(len(true)),
        'rmse_ms': float(np.sqrt(np.mean(err**2))),
        'mape_pct': float(100 * np.mean(np.abs(err) / true)),
        'bias_pct': float(100 * np.mean(err / true)),
        'kendall_tau': _kendall(pred, true) if len(true) > 1 else float('nan'),
        'measured_mean_ms': float(true.mean()),
        'lut_mean_ms': float(pred.mean()),
    }


def main(argv):
    del argv
    os.makedirs(_WORKDIR.value, exist_ok=True)
    cf.set_affinity(_AFFINITY.value)

    mc = measure_config.get_config()
    mc.num_archs = _NUM.value
    mc.resolutions = cf.resolutions(_RES.value)
    mc.batch_sizes = (_BATCH.value,)
    mc.seed = _SEED.value
    mc.store = os.path.join(_WORKDIR.value, 'latency.sqlite')
    mc.protocol.repeats = _REPEATS.value
    mc.protocol.min_time = _MIN_TIME.value
    summary = campaign.run(mc, os.path.join(_WORKDIR.value, 'campaign'))
    fid = summary['fingerprint_id']

    lc = build_lut_config.get_config()
    lc.resolutions = cf.resolutions(_RES.value)
    lc.batch = _BATCH.value
    lc.protocol.repeats = _REPEATS.value
    lut_summary = lut_job.run(lc, os.path.join(_WORKDIR.value, 'lut_build'))
    table = lut.load_lut(os.path.join(_WORKDIR.value, 'lut_build', 'lut'))

    with store_lib.LatencyStore(mc.store) as store:
        plan = campaign.plan(mc, _WORKDIR.value)
        wanted = {space.arch_key(a) for a in plan.archs}
        rows = [
            r for r in store.rows(fid, batch=_BATCH.value, dtype='float32')
            if r.key.arch_key in wanted and r.key.protocol == summary['protocol']
        ]
    archs = space.stack([space.from_key(r.key.arch_key) for r in rows])
    true = np.array([r.latency_ms for r in rows])
    pred = table.predict_np(archs)
    res = np.asarray(archs.resolution)

    device = lut_summary['fingerprint']['device_kind'].replace(' ', '_')
    print(f'device {device} fingerprint {fid}  batch {_BATCH.value}  archs {len(rows)}')
    print(f'whole networks: {summary["per_minute"]:.2f}/min this run, mean compile '
          f'{summary["compile_s_mean"]} s, mean lower {summary["lower_s_mean"]} s')
    print(f'LUT: {lut_summary["layers"]} layers, {lut_summary["elapsed_s"]:.0f} s this run')
    header = f'{"subset":<10}{"n":>5}{"RMSE ms":>10}{"MAPE %":>9}{"bias %":>9}{"tau":>8}'
    print(header)
    results = {}
    subsets = [(f'r{r}', res == r) for r in sorted(set(res.tolist()))]
    subsets.append(('all', np.ones_like(res, bool)))
    for name, mask in subsets:
        m = _metrics(pred[mask], true[mask])
        results[name] = m
        print(f'{name:<10}{m["n"]:>5}{m["rmse_ms"]:>10.3f}{m["mape_pct"]:>9.2f}'
              f'{m["bias_pct"]:>9.2f}{m["kendall_tau"]:>8.3f}')

    os.makedirs(_RESULTS.value, exist_ok=True)
    stem = os.path.join(_RESULTS.value, f'lut_vs_measured_{device}')
    csvio.write_ofa_csv(stem + '.csv', archs, true, {
        'lut_ms': [f'{v:.6f}' for v in pred],
        'cv': [r.stats.get('cv', '') for r in rows]
    })
    lut_dir = os.path.join(_RESULTS.value, f'lut_{device}')
    os.makedirs(lut_dir, exist_ok=True)
    for p in lut_summary['paths']:
        shutil.copy(p, lut_dir)
    with open(stem + '.json', 'w') as f:
        json.dump(
            {
                'command':
                    'python -m benchmarks.lut_vs_measured ' +
                    f'--num_archs={_NUM.value} --resolutions={_RES.value} '
                    f'--batch={_BATCH.value} --repeats={_REPEATS.value} '
                    f'--min_time={_MIN_TIME.value}',
                'metrics':
                    results,
                'campaign': {
                    k: v for k, v in summary.items() if k != 'drift_history'
                },
                'lut_build': {
                    k: v for k, v in lut_summary.items() if k != 'paths'
                },
            },
            f,
            indent=1,
            default=str)
    print(f'wrote {stem}.csv/.json and {lut_dir}/')


if __name__ == '__main__':
    app.run(main)
