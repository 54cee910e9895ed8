"""HELP GPUs, leave one GPU out: train on the other two, adapt with k shots.

For each batch size (1, 32, 64) and each held-out GPU (2080 Ti, Titan RTX,
Titan Xp) runs ``experiments.jobs.transfer`` (sources: the other two GPUs
at that batch size; shots from the target's first 80% of rows; evaluation on
its last 20%) and prints MAPE and acc10 per strategy and k, averaged over the
three held-out GPUs, next to the issue's targets. Beside the transfers it
prints what the files allow (:func:`data_floor`): the target fit on its own
evaluation rows, the sources recalibrated on all 4,000 adaptation rows, and
the evaluation rows measured in slow spells. Writes
``benchmarks/results/predictors_help.{json,md}``.

    python -m benchmarks.predictors_help [--seeds=3] [--max_steps=4000] [--batches=1,32,64]

Skips cleanly when ../shared/data/external is absent.
"""

import json
import os
import time

import numpy as np

from absl import app
from absl import flags

from experiments.configs import transfer as transfer_config
from ofa_jax import csvio
from ofa_jax import external_data
from predictors import drift
from experiments.jobs import fit_predictor as experiment_fit
from experiments.jobs import transfer as experiment_transfer
from predictors import metrics

DATA = external_data.path('help_ofa_w1.2')
GPUS = {'2080ti': '2080ti', 'titan_rtx': 'titan_rtx', 'titan_xp': 'titan_xp'}
TARGETS = {1: (4.0, None), 32: (4.0, None), 64: (2.0, 10.0)}  # (20-shot MAPE, 0-shot MAPE)

flags.DEFINE_integer('seeds', 3, 'k-shot draws per (target, k).')
flags.DEFINE_integer('max_steps', 4000, 'Base-model training steps (early stopped).')
flags.DEFINE_string('batches', '1,32,64', 'Batch sizes.')
flags.DEFINE_string('shots', '0,10,20,50', 'k values.')
flags.DEFINE_string(
    'strategies', 'paper_head,paper_affine,hw_zero_affine,hw_finetune,'
    'help_affine,help_finetune,stack_affine,stack_refs,blend_refs', 'Strategies.')
flags.DEFINE_bool(
    'own_rows', True, "Also fit on the target's own first 70% of rows (early stop on the "
    'next 10%) and score the same last 20%: what the data allows, not a transfer.')
flags.DEFINE_bool(
    'summarize_only', False, 'Only rebuild the table from the saved JSON (adding the '
    'measured-source and data-floor references where they are missing).')
flags.DEFINE_string('out', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results'),
                    'Output folder.')
FLAGS = flags.FLAGS


def own_rows_metrics(path: str, cfg) -> dict:
    """Additive model on the file's first 70% (early stop on 70-80%), scored on its last 20%."""
    table = csvio.read_ofa_csv(path)
    a, b = int(0.7 * len(table)), int(0.8 * len(table))
    pred = experiment_transfer.fit_file_model(table,
                                              slice(0, a),
                                              slice(a, b),
                                              config=experiment_fit.train_params(cfg),
                                              width=1.2)
    return metrics.all_metrics(np.asarray(pred(table.archs[b:])), table.latency_ms[b:])


def measured_source_metrics(files: dict, target: str) -> dict:
    """The best other GPU's *measured* latencies on the test archs, scaled to the target.

    Not a predictor (it reads the sources' measurements of the evaluation
    archs): the scale is the median target/source ratio over the first 80% of
    rows. It shows how far the target's test rows lie from any device-level
    rescaling of another GPU's real measurements. Returns the metrics of the
    source with the lower MAPE, plus its name.
    """
    y = csvio.read_ofa_csv(files[target]).latency_ms
    cut = int(0.8 * len(y))
    best = None
    for g in GPUS:
        if g == target:
            continue
        x = csvio.read_ofa_csv(files[g]).latency_ms
        scale = np.exp(np.median(np.log(y[:cut] / x[:cut])))
        m = dict(metrics.all_metrics(x[cut:] * scale, y[cut:]), source=g)
        if best is None or m['mape'] < best['mape']:
            best = m
    return best


_FILE_MODELS: dict = {}


def _file_model(path: str, cfg, rows: str):
    """Additive model of one file, cached per process.

    ``rows='source'``: first 90% to train, last 10% to early-stop (the
    transfer's source models); ``'all'``: every row, early-stopped on the last
    20%, i.e. the evaluation rows themselves (an in-sample fit, a floor).
    """
    key = (path, rows, int(cfg.max_steps))
    if key not in _FILE_MODELS:
        table = csvio.read_ofa_csv(path)
        n = len(table)
        if rows == 'source':
            train, val = slice(0, int(0.9 * n)), slice(int(0.9 * n), n)
        else:
            train, val = slice(0, n), slice(int(0.8 * n), n)
        _FILE_MODELS[key] = experiment_transfer.fit_file_model(
            table, train, val, config=experiment_fit.train_params(cfg), width=1.2)
    return _FILE_MODELS[key]


def _lad(x: np.ndarray, y: np.ndarray, iterations: int = 30) -> np.ndarray:
    """Least absolute deviations by reweighted least squares (minimum-norm steps)."""
    beta = np.linalg.lstsq(x, y, rcond=None)[0]
    for _ in range(iterations):
        w = np.sqrt(1.0 / np.maximum(np.abs(y - x @ beta), 1e-3))
        beta = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)[0]
    return beta


def data_floor(files: dict, target: str, cfg) -> dict:
    """What the files allow, however good the transfer; none of these is a transfer.

    ``in_sample``: an additive model fit on all of the target's rows,
    evaluation rows included, scored on the evaluation rows. ``all_rows``:
    the two source models recalibrated on *all* the target's adaptation rows
    (first 80%, not k shots): log y = sum_g w_g log p_g + one offset per
    resolution, least absolute deviations. ``slow_spells``: see
    :func:`predictors.drift.slow_spells`.
    """
    table = csvio.read_ofa_csv(files[target])
    y, n = table.latency_ms, len(table)
    cut = int(0.8 * n)
    ev = table.archs[cut:]
    in_sample = metrics.all_metrics(np.asarray(_file_model(files[target], cfg, 'all')(ev)), y[cut:])
    others = [g for g in GPUS if g != target]
    logp = np.stack(
        [np.log(np.asarray(_file_model(files[g], cfg, 'source')(table.archs))) for g in others], 1)
    res = np.asarray(table.archs.resolution).reshape(-1)
    x = np.concatenate([logp, (res[:, None] == np.unique(res)[None]).astype(np.float64)], 1)
    beta = _lad(x[:cut], np.log(y[:cut]))
    all_rows = metrics.all_metrics(np.exp(x[cut:] @ beta), y[cut:])
    spells = drift.slow_spells(y, [csvio.read_ofa_csv(files[g]).latency_ms for g in others], cut)
    return {'in_sample': in_sample, 'all_rows': all_rows, 'slow_spells': spells}


def main(argv):
    del argv
    data = os.path.abspath(DATA)
    if not os.path.isdir(data):
        print(f'skip: {data} not found')
        return
    results = {}
    os.makedirs(FLAGS.out, exist_ok=True)
    json_path = os.path.join(FLAGS.out, 'predictors_help.json')
    if FLAGS.summarize_only:
        with open(json_path) as f:
            results = json.load(f)
    for batch in [int(b) for b in FLAGS.batches.split(',')]:
        for target in GPUS:
            sources = [g for g in GPUS if g != target]
            files = {g: os.path.join(data, f'{g}_batch{batch}.csv') for g in GPUS}
            key = f'batch{batch}/{target}'
            if FLAGS.summarize_only:
                if key in results and 'measured_source' not in results[key]:
                    # Cheap (reads the files only): filled in for older JSONs.
                    results[key]['measured_source'] = measured_source_metrics(files, target)
                if key in results and 'data_floor' not in results[key]:
                    cfg = transfer_config.get_config()
                    cfg.max_steps = FLAGS.max_steps
                    results[key]['data_floor'] = data_floor(files, target, cfg)
                continue
            cfg = transfer_config.get_config()
            cfg.sources = tuple(files[g] for g in sources)
            cfg.target = files[target]
            cfg.devices = tuple(f'{g}_batch{batch}.csv:{GPUS[g]}' for g in GPUS)
            cfg.reference_index = os.path.join(data, 'reference_arch_index.json')
            cfg.shots = (FLAGS.shots,)
            cfg.seeds = FLAGS.seeds
            cfg.max_steps = FLAGS.max_steps
            cfg.strategies = (FLAGS.strategies,)
            t0 = time.perf_counter()
            work = os.path.join('/tmp', f'help_bench_b{batch}_{target}')
            out = experiment_transfer.run(cfg, work)
            if FLAGS.own_rows:
                out['own_rows'] = own_rows_metrics(files[target], cfg)
            out['measured_source'] = measured_source_metrics(files, target)
            out['data_floor'] = data_floor(files, target, cfg)
            out['seconds'] = time.perf_counter() - t0
            results[key] = out
            print(f'batch {batch} target {target}: {out["seconds"]:.0f} s', flush=True)
            with open(json_path, 'w') as f:
                json.dump(results, f, indent=1)
    lines = [
        '| batch | strategy | ' +
        ' | '.join(f'k={k} MAPE % / acc10' for k in FLAGS.shots.split(',')) + ' | target |',
        '|' + '---|' * (3 + len(FLAGS.shots.split(',')))
    ]
    for batch in [int(b) for b in FLAGS.batches.split(',')]:
        runs = [v for k, v in results.items() if k.startswith(f'batch{batch}/')]
        if not runs:
            continue
        for strat in runs[0]['metrics']:
            cells = []
            for k in FLAGS.shots.split(','):
                m = [r['metrics'][strat][k] for r in runs]
                mape = sum(x['mape'] for x in m) / len(m)
                acc = sum(x['acc10'] for x in m) / len(m)
                cells.append(f'{mape:.2f} / {acc:.3f}')
            t20, t0 = TARGETS.get(batch, (None, None))
            target = f'20 shots <= {t20}%' + (f', 0 shots <= {t0}%' if t0 else '')
            lines.append(f'| {batch} ({len(runs)} of 3 GPUs) | {strat} | ' + ' | '.join(cells) +
                         f' | {target} |')
    own = [(batch, [
        v['own_rows']['mape']
        for k, v in results.items()
        if k.startswith(f'batch{batch}/') and 'own_rows' in v
    ])
           for batch in [int(b) for b in FLAGS.batches.split(',')]]
    if any(m for _, m in own):
        lines += [
            '', "Reference, not a transfer: an additive model fit on the target's own first 70% "
            'of rows (the base models\' loss), scored on the same last 20% (MAPE %, mean over '
            f'the GPUs, then each GPU in the order {", ".join(GPUS)}):', '',
            '| batch | own rows MAPE % | per GPU |', '|---|---|---|'
        ]
        lines += [
            f'| {batch} | {np.mean(m):.2f} | {", ".join(f"{x:.2f}" for x in m)} |'
            for batch, m in own
            if m
        ]
    oracle = [(batch, [(k.split('/')[1], v['measured_source'])
                       for k, v in results.items()
                       if k.startswith(f'batch{batch}/') and 'measured_source' in v])
              for batch in [int(b) for b in FLAGS.batches.split(',')]]
    if any(m for _, m in oracle):
        lines += [
            '', "Also not a transfer: the best other GPU's measured latencies of the test archs, "
            'scaled by the median target/source ratio of the first 80% of rows (MAPE %, mean '
            'over the GPUs, then target <- source):', '', '| batch | measured source MAPE % '
            '| per GPU |', '|---|---|---|'
        ]
        lines += [
            f'| {batch} | {np.mean([x["mape"] for _, x in m]):.2f} | ' +
            ', '.join(f'{t} <- {x["source"]} {x["mape"]:.2f}'
                      for t, x in m) + ' |'
            for batch, m in oracle
            if m
        ]
    floor = [(batch, [(k.split('/')[1], v['data_floor'])
                      for k, v in results.items()
                      if k.startswith(f'batch{batch}/') and 'data_floor' in v])
             for batch in [int(b) for b in FLAGS.batches.split(',')]]
    if any(m for _, m in floor):
        lines += [
            '', 'What the files allow (none is a transfer; MAPE %, mean over the GPUs, then '
            f'each GPU in the order {", ".join(GPUS)}). *Own test rows*: an additive model fit '
            "on all of the target's rows, the evaluation rows included. *All 4,000 rows*: the "
            "two source models recalibrated on all the target's adaptation rows instead of k "
            'shots, with one offset per resolution. *Slow spells*: share of the evaluation rows '
            'measured while the target ran more than 10% off its usual ratio to both other '
            'GPUs (running median of 21 rows in file order; no arch feature can see it), and '
            'the MAPE those rows add to a predictor that would be exact but for the spells.', '',
            '| batch | own test rows | all 4,000 rows | slow spells: share / MAPE added |',
            '|---|---|---|---|'
        ]
        for batch, m in floor:
            if not m:
                continue
            cells = []
            for name in ('in_sample', 'all_rows'):
                per = [x[name]['mape'] for _, x in m]
                cells.append(f'{np.mean(per):.2f} ({", ".join(f"{v:.2f}" for v in per)})')
            spells = ', '.join(f'{t} {x["slow_spells"]["eval_share"]:.2f} / '
                               f'{x["slow_spells"]["mape_added"]:.2f}' for t, x in m)
            lines.append(f'| {batch} | {cells[0]} | {cells[1]} | {spells} |')
    table = '\n'.join(lines)
    print(table)
    if FLAGS.summarize_only:  # a full run saved the JSON after each target
        with open(json_path, 'w') as f:
            json.dump(results, f, indent=1)
    with open(os.path.join(FLAGS.out, 'predictors_help.md'), 'w') as f:
        f.write('HELP leave-one-GPU-out (mean over the 3 held-out GPUs; MAPE % / acc10)\n\n')
        f.write(f'Command: python -m benchmarks.predictors_help --seeds={FLAGS.seeds} '
                f'--max_steps={FLAGS.max_steps}\n\n{table}\n')


if __name__ == '__main__':
    app.run(main)
