"""How many RTX 2080 Ti rows a predictor needs, with and without another device's data.

The RTX 2080 Ti file of arXiv 2101.00732 (10,000 archs, PyTorch, batch 64),
paper split (file order: rows 0-6999 train, 7000-8499 validation, 8500-9999
test). For each size n, ``--seeds`` seeded draws of n rows from the training
rows, of which 20% (at least 3) early-stop the fit: the n rows are all the
RTX measurements a model sees. Scored on the 1,500 test rows, against the
authors' 7,000-row predictor (test RMSE 0.482 ms, their released checkpoint).

* ``scratch``: the additive predictor fit on the n rows alone.
* ``work``: :mod:`predictors.work_linear` fit on the n rows alone (seven
  coefficients on the work totals of each sub-network, closed form).
* ``<prior>+affine``: a prior (a zoo member: the additive predictor fit on
  another device's data, no row of this RTX file), rescaled on the n rows
  (``log y = a log p + b``, a least-squares fit: two parameters).
* ``<prior>+finetune``: the prior's parameters fine-tuned on the n rows (all
  layers, Adam, an L2 anchor to the prior), the prior's scale first set by the
  affine fit's median ratio.

Priors (``--priors``):

* ``note10``: the Note10 sums of OFA's LUT for the same 7,000 training archs
  (not a measurement: a phone's lookup table).
* ``titan_rtx64``: HELP's Titan RTX file at batch 64 (5,000 other archs of the
  width-1.2 supernet, measured by another group on another GPU).
* ``2080ti64_w12``: HELP's RTX 2080 Ti file at batch 64 (the same GPU model,
  but the width-1.2 supernet, other archs, another group's campaign).

    python -m benchmarks.sample_efficiency [--sizes=25,50,100,200,500,1000,7000] [--seeds=3]

Writes ``benchmarks/results/sample_efficiency.{json,md}``; skips cleanly when
../shared/data/external is absent.
"""

from __future__ import annotations

import json
import os
import time

from absl import app
from absl import flags
import numpy as np

from ofa_jax import csvio
from ofa_jax import external_data
from predictors import features
from predictors import fit
from predictors import metrics
from predictors import train as train_lib
from predictors import transfer
from predictors import work_linear

flags.DEFINE_string('sizes', '25,50,100,200,500,1000,7000', 'RTX rows per fit.')
flags.DEFINE_integer('seeds', 3, 'Draws of the rows per size (1 at 7000: all rows).')
flags.DEFINE_integer('max_steps', 4000, 'Training steps of every fit (early stopped).')
flags.DEFINE_integer('finetune_steps', 300, 'Adam steps of prior+finetune.')
flags.DEFINE_string('priors', 'note10,titan_rtx64,2080ti64_w12',
                    'Comma list of priors: note10, titan_rtx64, 2080ti64_w12.')
flags.DEFINE_string('out', 'benchmarks/results/sample_efficiency', 'Output path, no suffix.')
FLAGS = flags.FLAGS

AUTHORS_RMSE = 0.482  # ms, their released RTX 2080 Ti checkpoint on the same test rows
TARGET = (0.48, 200)  # RMSE (ms) from at most this many RTX rows
PRIORS = {
    'note10': ('ofanas_ofa_w1.0', 'note10_lookuptable_ofa.csv'),
    'titan_rtx64': ('help_ofa_w1.2', 'titan_rtx_batch64.csv'),
    '2080ti64_w12': ('help_ofa_w1.2', '2080ti_batch64.csv'),
}


def _params(n: int) -> train_lib.TrainParams:
    return train_lib.TrainParams(max_steps=FLAGS.max_steps,
                                 eval_every=50,
                                 patience=20,
                                 batch_size=min(256, max(8, n)))


def _fit(archs, ms, idx, fspec, seed):
    cut = max(3, int(round(0.2 * len(idx))))
    va, tr = idx[:cut], idx[cut:]
    predictor, _ = fit.fit_predictor('additive',
                                     archs[tr],
                                     ms[tr],
                                     archs[va],
                                     ms[va],
                                     fspec=fspec,
                                     config=_params(len(tr)),
                                     seed=seed)
    return predictor


def _prior_rows(name: str, rtx_archs, train_rows):
    """(archs, latency ms) a prior is fit on: no row of the RTX file."""
    folder, fname = PRIORS[name]
    data = csvio.read_ofa_csv(os.path.join(external_data.path(folder), fname))
    ms = np.asarray(data.latency_ms, np.float64)
    if name == 'note10':  # The same archs as the RTX file, the phone LUT's sums.
        return rtx_archs, ms, np.random.default_rng(99).permutation(train_rows)
    return data.archs, ms, np.random.default_rng(99).permutation(len(ms))


def main(argv):
    del argv
    folder = external_data.path('ofanas_ofa_w1.0')
    rtx_path = os.path.join(folder, 'RTX_2080_Ti_GPU_ofa.csv')
    priors = [p for p in FLAGS.priors.split(',') if p]
    unknown = [p for p in priors if p not in PRIORS]
    if unknown:
        raise app.UsageError(f'--priors: unknown {unknown}; allowed: {sorted(PRIORS)}')
    needed = [rtx_path
             ] + [os.path.join(external_data.path(PRIORS[p][0]), PRIORS[p][1]) for p in priors]
    missing = [f for f in needed if not os.path.exists(f)]
    if missing:
        print(f'skipping: {missing} absent')
        return
    rtx = csvio.read_ofa_csv(rtx_path)
    archs, y = rtx.archs, np.asarray(rtx.latency_ms, np.float64)
    train_rows, test_rows = np.arange(7000), np.arange(8500, 10000)
    fspec = features.fit_feature_spec(archs[train_rows], width=1.0)
    fitted = {}
    for name in priors:
        t0 = time.perf_counter()
        p_archs, p_ms, p_idx = _prior_rows(name, archs, train_rows)
        prior = _fit(p_archs, p_ms, p_idx, fspec, seed=0)
        fitted[name] = {
            'predictor': prior,
            'seconds': time.perf_counter() - t0,
            'rows': len(p_idx),
            'test': np.asarray(prior(archs[test_rows]), np.float64),
            'train': np.asarray(prior(archs[train_rows]), np.float64),
        }
        print(f'prior {name}: {len(p_idx)} rows, {fitted[name]["seconds"]:.0f} s', flush=True)
    work_x = work_linear.work_features(archs, 64, 1.0)  # the file's batch and width
    models = ['scratch', 'work'] + [f'{p}+{m}' for p in priors for m in ('affine', 'finetune')]
    rows = []
    sizes = [int(v) for v in FLAGS.sizes.split(',')]
    for n in sizes:
        draws = 1 if n >= len(train_rows) else FLAGS.seeds
        for seed in range(draws):
            idx = np.random.default_rng(seed).permutation(train_rows)[:n]
            preds = {'scratch': np.asarray(_fit(archs, y, idx, fspec, seed=seed)(archs[test_rows]))}
            work = work_linear.fit(archs[idx], y[idx], batch=64, width=1.0, x=work_x[idx])
            preds['work'] = work.from_features(work_x[test_rows])
            for name in priors:
                f = fitted[name]
                cal = transfer.affine_fit(f['train'][idx], y[idx])
                preds[f'{name}+affine'] = np.asarray(
                    transfer.affine_apply(f['test'], cal.scale, cal.offset))
                ratio = float(np.median(y[idx] / f['train'][idx]))
                tuned = transfer.finetune(f['predictor'].replace(offset_ms=0.0),
                                          archs[idx][None], (y[idx] / ratio)[None],
                                          mode='full',
                                          steps=FLAGS.finetune_steps,
                                          anchor_weight=1e-3)[0]
                preds[f'{name}+finetune'] = ratio * np.asarray(tuned(archs[test_rows]), np.float64)
            for name in models:
                m = metrics.all_metrics(preds[name], y[test_rows])
                rows.append({'n': n, 'seed': seed, 'model': name, **m})
            print(f'n={n} seed={seed}: ' +
                  ', '.join(f'{r["model"]} {r["rmse_ms"]:.3f}' for r in rows[-len(models):]),
                  flush=True)
    prior_text = '; '.join(
        f'`{p}` {fitted[p]["rows"]} rows ({fitted[p]["seconds"]:.0f} s)' for p in priors)
    lines = [
        'RTX 2080 Ti test RMSE (ms, 1,500 test rows of the paper split) against the RTX rows '
        f'a model sees (median over {FLAGS.seeds} draws; MAPE % in brackets). Authors\' '
        f'7,000-row predictor: {AUTHORS_RMSE} ms (true RMSE of their released checkpoint). '
        f'Priors, each the additive model fit on another file with no row of this one: '
        f'{prior_text}. See the module docstring for what each prior is.', '',
        '| RTX rows | ' + ' | '.join(models) + ' |', '|---' * (len(models) + 1) + '|'
    ]
    summary = {}
    for n in sizes:
        cells = []
        for name in models:
            sel = [r for r in rows if r['n'] == n and r['model'] == name]
            rmse = float(np.median([r['rmse_ms'] for r in sel]))
            mape = float(np.median([r['mape'] for r in sel]))
            summary[f'{n}/{name}'] = {'rmse_ms': rmse, 'mape': mape}
            cells.append(f'{rmse:.3f} ({mape:.2f})')
        lines.append(f'| {n} | ' + ' | '.join(cells) + ' |')
    best = [(n, m) for n in sizes if n <= TARGET[1] for m in models
            if summary[f'{n}/{m}']['rmse_ms'] <= TARGET[0]]
    lines += [
        '', f'Target: RMSE <= {TARGET[0]} ms from <= {TARGET[1]} RTX rows: ' +
        (f'met ({", ".join(f"{m} at {n}" for n, m in best)})' if best else 'not met'), '',
        f'Command: `python -m benchmarks.sample_efficiency --sizes={FLAGS.sizes} '
        f'--seeds={FLAGS.seeds} --max_steps={FLAGS.max_steps} --priors={FLAGS.priors}`'
    ]
    print('\n'.join(lines))
    os.makedirs(os.path.dirname(FLAGS.out) or '.', exist_ok=True)
    with open(FLAGS.out + '.md', 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(FLAGS.out + '.json', 'w') as f:
        json.dump(
            {
                'rows': rows,
                'summary': summary,
                'priors': {
                    p: {
                        k: fitted[p][k] for k in ('rows', 'seconds')
                    } for p in priors
                }
            },
            f,
            indent=1)


if __name__ == '__main__':
    app.run(main)
