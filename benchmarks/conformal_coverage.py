"""Coverage of the split-conformal latency bounds on held-out rows.

    python -m benchmarks.conformal_coverage [--store=runs/main/latency.sqlite]

For each data set, fits the additive predictor with the fit job
(``experiments.jobs.fit_predictor.run``: file order 70/15/15, the bound
calibrated on the 15% validation rows) and prints, for coverage 0.8, 0.9 and
0.95, the share of the *test* rows whose measured latency is within the bound,
and the bound's mean width over the prediction. Data sets:

* the public RTX 2080 Ti file (arXiv 2101.00732's, 10,000 rows; skipped when
  ../shared/data/external is absent);
* with ``--store``, this machine's store (the main job's ``fit_rows.csv``
  beside it when present, else the store's rows of its first device).

A second line per data set repeats the check on 5 random 70/15/15 splits
(exchangeable rows, the setting conformal guarantees hold in), to separate
the method's coverage from the drift in the file's row order.
Writes ``benchmarks/results/conformal_coverage.json``.
"""

from __future__ import annotations

import os
import tempfile

from absl import app
from absl import flags
import numpy as np

from experiments.configs import fit_predictor as fit_config
from experiments.jobs import fit_predictor as fit_job
from ofa_jax import csvio
from ofa_jax import external_data
from ofa_jax import files
from predictors import conformal

_STORE = flags.DEFINE_string('store', '', 'A latency store of this machine (optional).')
_SPLITS = flags.DEFINE_integer('splits', 5, 'Random splits of the exchangeable check.')
_OUT = flags.DEFINE_string('out', 'benchmarks/results/conformal_coverage.json', 'Result file.')
_SPLIT = flags.DEFINE_string(
    'split', '', 'Train,val,test fractions of the fit (e.g. 0.6,0.25,0.15 gives a small '
    'store enough calibration rows for 0.95); empty: the fit job\'s 70/15/15.')
_RTX = flags.DEFINE_bool('rtx', True, 'Include the public RTX 2080 Ti file.')

COVERAGES = (0.8, 0.9, 0.95)


def _fit(data: str, width: float, work: str, max_steps: int) -> dict:
    cfg = fit_config.get_config()
    cfg.update(data=data, width=width, model='additive', max_steps=max_steps)
    if _SPLIT.value:
        cfg.split = tuple(float(v) for v in _SPLIT.value.split(','))
    return fit_job.run(cfg, work)


def random_splits(data: str, width: float, work: str, splits: int, max_steps: int) -> dict:
    """Mean test coverage over random 70/15/15 splits (rows shuffled, then the fit job)."""
    table = csvio.read_ofa_csv(data)
    shares = {str(c): [] for c in COVERAGES}
    rng = np.random.default_rng(0)
    for i in range(splits):
        order = rng.permutation(len(table))
        path = os.path.join(work, f'shuffled{i}.csv')
        csvio.write_ofa_csv(path, table.archs[order], table.latency_ms[order])
        out = _fit(path, width, os.path.join(work, f's{i}'), max_steps)
        for c, v in out['conformal']['test_coverage'].items():
            shares[c].append(v)
    out = {c: float(np.mean(v)) for c, v in shares.items() if v}
    # Spread of the mean over splits (the splits share rows, so a rough guide).
    out['sem'] = {c: float(np.std(v) / np.sqrt(len(v))) for c, v in shares.items() if v}
    return out


def _line(name: str, how: str, coverage: dict, width: dict | None = None) -> str:
    cells = []
    for c in COVERAGES:
        got = coverage.get(str(c))
        cell = '-' if got is None else f'{100 * got:5.1f}% ({100 * (got - c):+.1f})'
        if width and str(c) in width:
            cell += f' x{width[str(c)]:.3f}'
        cells.append(cell)
    return f'| {name} | {how} | ' + ' | '.join(cells) + ' |'


def main(argv):
    del argv
    data_sets = []
    rtx = os.path.join(external_data.root(), 'ofanas_ofa_w1.0', 'RTX_2080_Ti_GPU_ofa.csv')
    if not _RTX.value:
        pass
    elif os.path.exists(rtx):
        data_sets.append(('RTX 2080 Ti (public file)', rtx, 1.0, 3000))
    else:
        print(f'skipping the RTX file: {rtx} absent')
    if _STORE.value:
        rows = os.path.join(os.path.dirname(os.path.abspath(_STORE.value)), 'fit_rows.csv')
        if not os.path.exists(rows):
            raise SystemExit(f'--store: no fit_rows.csv beside {_STORE.value}; run the main job '
                             'there first')
        data_sets.append((f'this CPU ({rows})', rows, 1.2, 6000))
    results = []
    lines = [
        '| data | split | 0.8: test share (diff), bound/pred | 0.9 | 0.95 |',
        '|---|---|---|---|---|'
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, path, width, steps in data_sets:
            out = _fit(path, width, os.path.join(tmp, 'file'), steps)
            cov = out['conformal']
            lines.append(
                _line(
                    name, f'file order, {cov["calibration_rows"]} calibration rows, '
                    f'{cov["ranges"]} range(s), {out["rows"]["test"]} test rows',
                    cov['test_coverage'], cov['mean_bound_over_prediction']))
            shuffled = random_splits(path, width, tmp, _SPLITS.value, steps)
            sem = ', '.join(f'{c}: {100 * v:.1f}' for c, v in shuffled['sem'].items())
            lines.append(
                _line(name, f'{_SPLITS.value} random splits, mean (s.e. points {sem})', shuffled))
            print('\n'.join(lines[-2:]), flush=True)
            results.append({
                'data': name,
                'path': path,
                'file_order': cov,
                'random_splits': shuffled,
                'splits': _SPLITS.value,
                'test_rows': out['rows']['test'],
                'min_rows': {
                    str(c): conformal.min_rows(c) for c in COVERAGES
                },
            })
    print('\n'.join(lines))
    files.write_json(
        _OUT.value, {
            'command':
                'python -m benchmarks.conformal_coverage' +
                (f' --store={_STORE.value}' if _STORE.value else '') +
                (f' --split={_SPLIT.value}' if _SPLIT.value else '') +
                ('' if _RTX.value else ' --nortx') + f' --splits={_SPLITS.value}',
            'results':
                results,
            'table':
                lines,
        })


if __name__ == '__main__':
    app.run(main)
