"""HELP GPUs, leave one GPU out: train on the other two, adapt with k shots.

For each batch size (1, 32, 64) and each held-out GPU (2080 Ti, Titan RTX,
Titan Xp) runs ``experiments.jobs.transfer`` (sources: the other two GPUs
at that batch size; shots from the target's first 80% of rows; evaluation on
its last 20%) and prints MAPE and acc10 per strategy and k, averaged over the
three held-out GPUs, next to the issue's targets.

Beside every strategy it scores the measured-proxy baseline
(:mod:`predictors.proxy_fit`): ``a*lat_A + b*lat_B + c`` fit on the two
source GPUs' *measured* latencies of the same target rows, on the same
evaluation rows and the same shot draws. The proxy reads the sources'
measurements of the evaluation archs, which no strategy does; a strategy
that does not beat it has not learnt anything a user with the two other
GPUs' measurements would need. The proxy sees the target rows the strategy
sees: the k shots (``*_refs`` strategies: HELP's reference archs among the
adaptation rows plus the shots; at k=0 every strategy is compared with the
proxy on those reference archs, the only rows a 0-shot transfer may read).
A strategy *beats* the proxy in a cell only where its MAPE, averaged over the
GPUs and draws, is lower than the proxy's on the same rows; the cell also
counts the (GPU, draw) pairs it wins.

Beside the transfers it prints what the files allow (:func:`data_floor`):
the target fit on its own evaluation rows, the sources recalibrated on all
4,000 adaptation rows, and the evaluation rows measured in slow spells.

:func:`help_protocol` is HELP's own setting: target Titan RTX at batch 64,
sources 2080 Ti and Titan Xp at batch 64, the 10 reference archs the only
target rows read; every strategy that runs on them, the proxy fit of the
sources' measurements of those 10 archs, and, as a non-transfer reference,
an additive model fit on all of the target's rows.

Writes ``benchmarks/results/predictors_help.{json,md}`` and
``benchmarks/results/help_protocol.md``.

    python -m benchmarks.predictors_help [--seeds=3] [--max_steps=4000] [--batches=1,32,64]
    python -m benchmarks.predictors_help --strategies=blend_refs,stack_refs --batches=64 \\
        --nohelp_protocol   # a quick check; a subset writes to /tmp unless --out is given
    python -m benchmarks.predictors_help --notransfer   # only the HELP-protocol table
    python -m benchmarks.predictors_help --summarize_only   # rebuild the tables from the JSON

``--reference_json=OLD.json`` takes the references that do not depend on the
strategies (own rows, measured source, data floor) from an earlier run.

Skips cleanly when ../shared/data/external is absent.
"""

import json
import os
import time
from typing import Any

import numpy as np

from absl import app
from absl import flags

from experiments.configs import transfer as transfer_config
from ofa_jax import csvio
from ofa_jax import dataset
from ofa_jax import external_data
from predictors import drift
from predictors import features
from experiments.jobs import fit_predictor as experiment_fit
from experiments.jobs import transfer as experiment_transfer
from predictors import metrics
from predictors import proxy_fit
from predictors import transfer
from predictors import work_linear

DATA = external_data.path('help_ofa_w1.2')
GPUS = {'2080ti': '2080ti', 'titan_rtx': 'titan_rtx', 'titan_xp': 'titan_xp'}
TARGETS = {1: (4.0, None), 32: (4.0, None), 64: (2.0, 10.0)}  # (20-shot MAPE, 0-shot MAPE)
# HELP's protocol and the target for it (MAPE %, Spearman) with the 10 references.
HELP_TARGET, HELP_BATCH = 'titan_rtx', 64
HELP_GOAL = (1.6, 0.9985)
DEFAULT_STRATEGIES = ('paper_head,paper_affine,hw_zero_affine,hw_finetune,help_affine,'
                      'help_finetune,stack_affine,stack_refs,blend_refs,work_refs')
DEFAULTS = {'batches': '1,32,64', 'shots': '0,10,20,50', 'targets': ','.join(GPUS)}
PROTOCOL_METRICS = (
    ('mape', 'MAPE %', '.2f'),
    ('acc10', '+-10%', '.3f'),
    ('spearman', 'Spearman', '.4f'),
    ('pearson', 'Pearson', '.4f'),
    ('kendall_tau', 'Kendall', '.4f'),
)

flags.DEFINE_integer('seeds', 3, 'k-shot draws per (target, k).')
flags.DEFINE_integer('max_steps', 4000, 'Base-model training steps (early stopped).')
flags.DEFINE_string('batches', DEFAULTS['batches'], 'Batch sizes.')
flags.DEFINE_string('shots', DEFAULTS['shots'], 'k values.')
flags.DEFINE_string('targets', DEFAULTS['targets'], 'Held-out GPUs.')
flags.DEFINE_string('strategies', DEFAULT_STRATEGIES, 'Strategies.')
flags.DEFINE_bool(
    'own_rows', True, "Also fit on the target's own first 70% of rows (early stop on the "
    'next 10%) and score the same last 20%: what the data allows, not a transfer.')
flags.DEFINE_string(
    'reference_json', '', 'Take own_rows, measured_source and data_floor (references that do '
    'not depend on the strategies) from this JSON of an earlier run with the same --max_steps '
    "instead of refitting them; '' refits.")
flags.DEFINE_bool('transfer', True, 'Run the leave-one-GPU-out table.')
flags.DEFINE_bool('help_protocol', True, "Run HELP's protocol table (help_protocol.md).")
flags.DEFINE_integer('help_seeds', 3, 'Seeds of the HELP model in the *_ens estimators.')
flags.DEFINE_string(
    'help_protocol_targets', ','.join(GPUS), 'Targets of the HELP-protocol check (Titan RTX, '
    "HELP's own target, is always first and gives the main tables).")
flags.DEFINE_bool(
    'summarize_only', False, 'Only rebuild the table from the saved JSON (adding the '
    'measured-source and data-floor references where they are missing).')
flags.DEFINE_string(
    'out', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results'),
    'Output folder. A run of a subset (batches, shots, targets or strategies other than '
    'the defaults) writes to /tmp/predictors_help_subset unless --out is given.')
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


def _same_archs(tables: list[csvio.LatencyTable]) -> None:
    """Raises unless every table holds the same archs in the same order (the proxy needs it)."""
    first = tables[0].archs
    for t in tables[1:]:
        for field in ('kernel', 'expand', 'depth', 'resolution'):
            if not np.array_equal(getattr(first, field), getattr(t.archs, field)):
                raise ValueError(f'{t.path}: archs differ from {tables[0].path} ({field}); the '
                                 'proxy fit needs the same archs in the same order')


def _mean_std(per: list[dict[str, float]]) -> dict[str, Any]:
    """Mean and std over draws of each metric, plus the per-draw MAPEs."""
    out: dict[str, Any] = {}
    for name in metrics.METRIC_NAMES:
        vals = np.array([m[name] for m in per])
        out[name] = float(vals.mean())
        out[name + '_std'] = float(vals.std())
    out['draw_mape'] = [m['mape'] for m in per]
    return out


def proxy_metrics(res: dict[str, Any], view: np.ndarray, sources_ms: np.ndarray,
                  refs: np.ndarray) -> dict:
    """The measured-proxy baseline on the draws and evaluation rows of one transfer run.

    Args:
      res: what :func:`experiments.jobs.transfer.transfer_predictions` returned.
      view: float[n], the target's latencies with every row outside the
        adaptation rows NaN (:func:`experiments.jobs.transfer.target_view`).
      sources_ms: float[2, n], the source GPUs' measured latencies of the target's rows.
      refs: the reference rows among the adaptation rows (the ones the
        ``*_refs`` strategies read).

    Returns:
      k -> {'shots': metrics of the linear proxy fit on the k shots (k=0: on
      ``refs``), 'refs_shots': on ``refs`` plus the shots, 'shots_log' and
      'refs_shots_log': the log-space fit}; each with mean, std and the
      per-draw MAPEs (in the order of the draws).
    """
    ev, truth = res['eval_rows'], res['truth']
    out = {}
    for k, draws in res['shots'].items():
        per: dict[str, list] = {}
        for rows_name in ('shots', 'refs_shots'):
            for log_space in (False, True):
                name = rows_name + ('_log' if log_space else '')
                for d in draws:
                    rows = d if rows_name == 'shots' and k else np.union1d(refs, d)
                    fit = proxy_fit.proxy_fit(sources_ms[:, rows], view[rows], log_space=log_space)
                    pred = proxy_fit.proxy_apply(fit, sources_ms[:, ev])
                    per.setdefault(name, []).append(metrics.all_metrics(pred, truth))
        out[str(k)] = {name: _mean_std(v) for name, v in per.items()}
    return out


def proxy_for(strategy: str) -> str:
    """Which proxy fit sees the same target rows as ``strategy``."""
    return 'refs_shots' if strategy.endswith('_refs') else 'shots'


def run_target(batch: int,
               target: str,
               data: str,
               strategies: str,
               reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """Transfer run, proxy baseline and references for one held-out GPU at one batch size.

    ``reference``: an earlier run's entry for the same GPU and batch whose
    ``own_rows``, ``measured_source`` and ``data_floor`` are taken instead of
    refitting them.
    """
    sources = [g for g in GPUS if g != target]
    files = {g: os.path.join(data, f'{g}_batch{batch}.csv') for g in GPUS}
    cfg = transfer_config.get_config()
    cfg.sources = tuple(files[g] for g in sources)
    cfg.target = files[target]
    cfg.devices = tuple(f'{g}_batch{batch}.csv:{GPUS[g]}' for g in GPUS)
    cfg.reference_index = os.path.join(data, 'reference_arch_index.json')
    cfg.shots = (FLAGS.shots,)
    cfg.seeds = FLAGS.seeds
    cfg.max_steps = FLAGS.max_steps
    cfg.strategies = (strategies,)
    t0 = time.perf_counter()
    work = os.path.join('/tmp', f'help_bench_b{batch}_{target}')
    res = experiment_transfer.transfer_predictions(cfg, work)
    out = experiment_transfer.summarize(res, cfg, work)
    tables = [csvio.read_ofa_csv(files[g]) for g in [target] + sources]
    _same_archs(tables)
    view = experiment_transfer.target_view(tables[0].latency_ms, res['allowed_rows'])
    with open(cfg.reference_index) as f:
        refs = np.asarray(json.load(f), np.int64)
    refs = refs[refs < len(res['allowed_rows'])]  # as the transfer does
    out['proxy_fit'] = proxy_metrics(res, view, np.stack([t.latency_ms for t in tables[1:]]), refs)
    for strat, by_k in res['pred'].items():
        for k, p in by_k.items():
            out['metrics'][strat][str(k)]['draw_mape'] = [
                metrics.mape(row, res['truth']) for row in p
            ]
    reference = reference or {}
    if FLAGS.own_rows:
        out['own_rows'] = reference.get('own_rows') or own_rows_metrics(files[target], cfg)
    out['measured_source'] = (reference.get('measured_source') or
                              measured_source_metrics(files, target))
    out['data_floor'] = reference.get('data_floor') or data_floor(files, target, cfg)
    if reference:
        out['references_from'] = FLAGS.reference_json
    out['seconds'] = time.perf_counter() - t0
    return out


def _runs(results: dict, batch: int) -> list[dict]:
    return [v for k, v in results.items() if k.startswith(f'batch{batch}/')]


def main_table(results: dict, batches: list[int], shots: list[str]) -> list[str]:
    """The strategies' MAPE / acc10 per batch and k, then the proxy fit's (mean over GPUs)."""
    lines = [
        '| batch | strategy | ' + ' | '.join(f'k={k} MAPE % / acc10' for k in shots) +
        ' | target |', '|' + '---|' * (3 + len(shots))
    ]
    for batch in batches:
        runs = _runs(results, batch)
        if not runs:
            continue
        t20, t0 = TARGETS.get(batch, (None, None))
        target = f'20 shots <= {t20}%' + (f', 0 shots <= {t0}%' if t0 else '')
        for strat in runs[0]['metrics']:
            cells = []
            for k in shots:
                m = [r['metrics'][strat][k] for r in runs]
                cells.append(f'{np.mean([x["mape"] for x in m]):.2f} / '
                             f'{np.mean([x["acc10"] for x in m]):.3f}')
            lines.append(f'| {batch} ({len(runs)} of 3 GPUs) | {strat} | ' + ' | '.join(cells) +
                         f' | {target} |')
        if all('proxy_fit' in r for r in runs):
            for name, label in (('shots', 'proxy fit (k shots; k=0: refs)'),
                                ('refs_shots', 'proxy fit (refs + k shots)')):
                cells = []
                for k in shots:
                    m = [r['proxy_fit'][k][name] for r in runs]
                    cells.append(f'{np.mean([x["mape"] for x in m]):.2f} / '
                                 f'{np.mean([x["acc10"] for x in m]):.3f}')
                lines.append(f'| {batch} ({len(runs)} of 3 GPUs) | *{label}* | ' +
                             ' | '.join(cells) + ' | - |')
    return lines


def _versus(runs: list[dict], strat: str, k: str) -> tuple[float, float, int, int]:
    """(strategy MAPE, proxy MAPE, draws won, draws) on the same rows, over the GPUs."""
    name = proxy_for(strat)
    s = [r['metrics'][strat][k] for r in runs]
    p = [r['proxy_fit'][k][name] for r in runs]
    wins = sum(a < b for x, y in zip(s, p) for a, b in zip(x['draw_mape'], y['draw_mape']))
    draws = sum(len(x['draw_mape']) for x in s)
    return (float(np.mean([x['mape'] for x in s])), float(np.mean([x['mape'] for x in p])), wins,
            draws)


def proxy_table(results: dict, batches: list[int], shots: list[str]) -> list[str]:
    """Every strategy against the proxy fit on the same rows and draws."""
    lines = [
        '| batch | strategy | ' +
        ' | '.join(f'k={k}: MAPE % | proxy | beats proxy (draws won)' for k in shots) + ' |',
        '|' + '---|' * (2 + 3 * len(shots))
    ]
    for batch in batches:
        runs = [r for r in _runs(results, batch) if 'proxy_fit' in r]
        if not runs:
            continue
        for strat in runs[0]['metrics']:
            cells = []
            for k in shots:
                s, p, wins, draws = _versus(runs, strat, k)
                cells.append(f'{s:.2f} | {p:.2f} | {"**yes**" if s < p else "no"} '
                             f'({wins}/{draws})')
            lines.append(f'| {batch} | {strat} | ' + ' | '.join(cells) + ' |')
    return lines


def key_table(results: dict, batches: list[int], shots: list[str]) -> list[str]:
    """Per batch and k: the best strategy against the proxy fit."""
    lines = [
        '| batch | k | best strategy | its MAPE % | proxy on the same rows | beats it | '
        'proxy (k shots; k=0: refs) | proxy (refs + k shots) |', '|---|---|---|---|---|---|---|---|'
    ]
    for batch in batches:
        runs = [r for r in _runs(results, batch) if 'proxy_fit' in r]
        if not runs:
            continue
        for k in shots:
            best = min(runs[0]['metrics'], key=lambda s: _versus(runs, s, k)[0])
            s, p, wins, draws = _versus(runs, best, k)
            plain = np.mean([r['proxy_fit'][k]['shots']['mape'] for r in runs])
            refs = np.mean([r['proxy_fit'][k]['refs_shots']['mape'] for r in runs])
            lines.append(f'| {batch} | {k} | {best} | {s:.2f} | {p:.2f} | '
                         f'{"**yes**" if s < p else "no"} ({wins}/{draws}) | {plain:.2f} | '
                         f'{refs:.2f} |')
    return lines


def reference_tables(results: dict, batches: list[int]) -> list[str]:
    """The tables of references that are not transfers (own rows, measured source, floor)."""
    lines: list[str] = []
    own = [(batch, [v['own_rows']['mape']
                    for v in _runs(results, batch)
                    if 'own_rows' in v])
           for batch in batches]
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
              for batch in batches]
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
             for batch in batches]
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
    return lines


def help_protocol(data: str,
                  max_steps: int,
                  target: str = HELP_TARGET,
                  help_seeds: int = 3) -> dict[str, Any]:
    """HELP's setting: the target's 10 reference archs are the only target rows read.

    Target ``target`` (HELP: Titan RTX), sources the other two GPUs, all at
    batch 64. The base models are those of the transfer (one additive model
    per source file; the HELP-conditioned context MLP over both sources with
    the 10 references' latencies as device context, seeds 0 ..
    ``help_seeds - 1``); the target's 10 reference latencies are its context
    and the calibration rows of every ``*_refs`` estimator:

    * ``help``: the context MLP of seed 0, 0-shot (``help_affine`` at k=0);
    * ``help_refs``: the same, recalibrated ``log y = a log p + b`` on the refs;
    * ``help_ens``: the geometric mean of the ``help_seeds`` context MLPs
      (seeds differ only in initialisation and batch order), and
      ``help_ens_refs`` that ensemble recalibrated on the refs;
    * ``stack_refs`` / ``blend_refs`` as in the transfer (seed-0 help model),
      ``blend_ens_refs`` with the ensemble as the help base;
    * ``work_refs``: no source, :mod:`predictors.work_linear` fit on the refs.

    Scored on two row sets, never on a reference arch nor a repeat of one:
    ``last20`` (the leak-free evaluation rows of the leave-one-out table, its
    last 20%) and ``all_but_refs`` (every other row of the file, HELP's
    split). The additive model fit on all of the target's rows is an
    in-sample reference, not a transfer.
    """
    files = {g: os.path.join(data, f'{g}_batch{HELP_BATCH}.csv') for g in GPUS}
    sources = [g for g in GPUS if g != target]
    cfg = transfer_config.get_config()
    cfg.sources = tuple(files[g] for g in sources)
    cfg.target = files[target]
    cfg.reference_index = os.path.join(data, 'reference_arch_index.json')
    cfg.strategies = ('help_affine', 'stack_refs', 'blend_refs')
    cfg.max_steps = max_steps
    parsed = experiment_transfer.parse_config(cfg)  # keeps all 10 references
    refs = parsed['refs']
    tables = {f: csvio.read_ofa_csv(f) for f in parsed['sources'] + [cfg.target]}
    table = tables[cfg.target]
    _same_archs([table] + [tables[f] for f in parsed['sources']])
    n = len(table)
    ids = dataset.arch_groups(table.archs).ids
    not_ref = ~np.isin(ids, ids[refs])
    last20, _ = experiment_transfer.leak_free_eval_rows(table.archs,
                                                        int(float(cfg.adapt_fraction) * n))
    _, first = np.unique(ids, return_index=True)
    once = np.zeros(n, bool)
    once[first] = True
    rows = {'last20': last20[not_ref[last20]], 'all_but_refs': np.flatnonzero(not_ref & once)}
    t0 = time.perf_counter()
    ref_ms = table.latency_ms[refs]  # the only target latencies read below
    stack = np.stack([
        np.asarray(_file_model(f, cfg, 'source')(table.archs), np.float64)
        for f in parsed['sources']
    ])
    helps = []
    for seed in range(help_seeds):
        cfg.seed = seed
        # The transfer's own 'help' base (private there: one definition, not a copy).
        base = experiment_transfer._train_context_model('help', tables, parsed, cfg,
                                                        experiment_fit.train_params(cfg), 1.2)
        ctx = features.context_vector(base.fspec, batch_size=HELP_BATCH, refs=ref_ms)
        helps.append(np.asarray(transfer.with_context(base, ctx)(table.archs), np.float64))
    ens = np.exp(np.mean(np.log(helps), axis=0))

    def on_refs(bases: np.ndarray) -> np.ndarray:
        """Calibrated on the references as the transfer's *_refs strategies are."""
        delta = float(cfg.calibration_delta)
        if len(bases) == 1:  # as help_affine: ridge toward a = 1
            a, off = transfer.affine_fit(bases[0, refs], ref_ms, huber_delta=delta)
            return np.asarray(transfer.affine_apply(bases[0], a, off), np.float64)
        w, off = transfer.stack_fit(bases[:, refs],
                                    ref_ms,
                                    ridge=float(cfg.stack_ridge),
                                    huber_delta=delta)
        return transfer.stack_apply(bases, w, off)

    preds = {
        'help': helps[0],
        'help_refs': on_refs(helps[0][None]),
        'help_ens': ens,
        'help_ens_refs': on_refs(ens[None]),
        'stack_refs': on_refs(stack),
        'blend_refs': on_refs(np.concatenate([stack, helps[0][None]])),
        'blend_ens_refs': on_refs(np.concatenate([stack, ens[None]])),
    }
    work_x = work_linear.work_features(table.archs, HELP_BATCH, 1.2)
    work = work_linear.fit(table.archs[refs], ref_ms, batch=HELP_BATCH, x=work_x[refs])
    preds['work_refs'] = work.from_features(work_x)
    measured = np.stack([tables[f].latency_ms for f in parsed['sources']])
    for name, log_space in (('proxy_fit', False), ('proxy_fit_log', True)):
        fit = proxy_fit.proxy_fit(measured[:, refs], ref_ms, log_space=log_space)
        preds[name] = proxy_fit.proxy_apply(fit, measured)
    seconds = time.perf_counter() - t0
    preds['additive_all_rows'] = np.asarray(
        _file_model(cfg.target, cfg, 'all')(table.archs), np.float64)
    return {
        'target': target,
        'sources': sources,
        'batch': HELP_BATCH,
        'refs': refs.tolist(),
        'rows': {
            k: int(len(v)) for k, v in rows.items()
        },
        'max_steps': max_steps,
        'help_seeds': help_seeds,
        'seconds': seconds,
        'metrics': {
            name: {
                split: metrics.all_metrics(p[r], table.latency_ms[r]) for split, r in rows.items()
            } for name, p in preds.items()
        },
    }


# Estimators of help_protocol(): label, and whether it is a transfer (reads no measurement of
# an evaluation arch and no target row but the references).
PROTOCOL_ROWS = {
    'help': ('help (0-shot, refs as context)', True),
    'help_refs': ('help_refs (help, affine on the refs)', True),
    'help_ens': ('help_ens (seeds averaged, 0-shot)', True),
    'help_ens_refs': ('help_ens_refs (seeds averaged, affine on the refs)', True),
    'stack_refs': ('stack_refs', True),
    'blend_refs': ('blend_refs', True),
    'blend_ens_refs': ('blend_ens_refs (blend_refs with help_ens as the help base)', True),
    'work_refs': ('work_refs (no source: the work model fit on the refs)', True),
    'proxy_fit': ("*proxy fit, linear a lat_A + b lat_B + c (the sources' measurements, "
                  '10 refs)*', False),
    'proxy_fit_log': ("*proxy fit, log space (the sources' measurements, 10 refs)*", False),
    'additive_all_rows': ('*additive on all target rows (in-sample)*', False),
}

SPLITS = (('last20', 'the last 20% of rows (as the leave-one-out table)'),
          ('all_but_refs', "every row but the references (HELP's split)"))


def help_protocol_md(runs: dict[str, dict[str, Any]], command: str) -> str:
    """help_protocol.md from :func:`help_protocol`'s results (target -> result)."""
    out = runs[HELP_TARGET]
    head = ' | '.join(f'{label}' for _, label, _ in PROTOCOL_METRICS)
    lines = [
        f"HELP's protocol: target {out['target']} at batch {out['batch']}, sources "
        f"{' and '.join(out['sources'])} at batch {out['batch']}; the target's 10 reference "
        f"archs (rows {', '.join(map(str, out['refs']))}) are the only target latencies read. "
        "Base models trained on the sources' rows only (no target row), "
        f"max_steps={out['max_steps']}; the *_ens estimators average {out['help_seeds']} "
        'seeds of the HELP-conditioned model (geometric mean).', '', f'Command: {command}', '',
        f"Issue's target with the 10 references: MAPE <= {HELP_GOAL[0]}% and Spearman >= "
        f'{HELP_GOAL[1]}.', '',
        'Selection caveat: help_ens, help_ens_refs and blend_ens_refs were added after trying '
        'variants on Titan RTX itself (seed ensembles; per-resolution offset slopes and other '
        'ridges, which helped Titan RTX a little and hurt the other two GPUs, so were dropped). '
        'No parameter was tuned (3 seeds, the transfer\'s own calibration settings), but the '
        'best row of the Titan RTX tables is still a maximum over tries; the last table, each '
        'GPU as the target, is the check.', ''
    ]
    for split, title in SPLITS:
        lines += [
            f"Scored on {title}: {out['rows'][split]} rows.", '',
            f'| estimator | {head} | meets the target |',
            '|---|' + '---|' * len(PROTOCOL_METRICS) + '---|'
        ]
        for name, by_split in out['metrics'].items():
            m = by_split[split]
            label, is_transfer = PROTOCOL_ROWS[name]
            cells = ' | '.join(f'{m[key]:{fmt}}' for key, _, fmt in PROTOCOL_METRICS)
            met = m['mape'] <= HELP_GOAL[0] and m['spearman'] >= HELP_GOAL[1]
            verdict = 'not a transfer' if not is_transfer else '**yes**' if met else 'no'
            lines.append(f'| {label} | {cells} | {verdict} |')
        lines.append('')
    others = [t for t in runs if t != HELP_TARGET]
    if others:
        order = [HELP_TARGET] + others
        lines += [
            'The same protocol with each GPU as the target (sources: the other two at batch '
            '64, the 10 references the only target rows): does a choice made on Titan RTX hold '
            'on the GPUs it was not chosen on? MAPE % / Spearman on the last 20%; on every row '
            'but the references.', '', '| estimator | ' + ' | '.join(order) + ' |',
            '|---|' + '---|' * len(order)
        ]
        for name in out['metrics']:
            cells = []
            for t in order:
                m = runs[t]['metrics'][name]
                cells.append('; '.join(
                    f'{m[split]["mape"]:.2f} / {m[split]["spearman"]:.4f}' for split, _ in SPLITS))
            lines.append(f'| {PROTOCOL_ROWS[name][0]} | ' + ' | '.join(cells) + ' |')
        lines += ['', 'Best transfer per target, last 20% (MAPE %; the linear proxy fit):', '']
        for t in order:
            by = runs[t]['metrics']
            best = min((n for n in by if PROTOCOL_ROWS[n][1]),
                       key=lambda n: by[n]['last20']['mape'])
            lines.append(f'- {t}: {best} {by[best]["last20"]["mape"]:.2f} '
                         f'(proxy fit {by["proxy_fit"]["last20"]["mape"]:.2f})')
        lines.append('')
    return '\n'.join(lines)


def _csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(',') if v.strip()]


def main(argv):
    del argv
    data = os.path.abspath(DATA)
    if not os.path.isdir(data):
        print(f'skip: {data} not found')
        return
    batches = [int(b) for b in _csv_list(FLAGS.batches)]
    shots = _csv_list(FLAGS.shots)
    targets = _csv_list(FLAGS.targets)
    unknown = sorted(set(targets) - set(GPUS))
    if unknown:
        raise app.UsageError(f'--targets: {unknown}; allowed: {", ".join(GPUS)}')
    subset = FLAGS.transfer and (FLAGS.strategies != DEFAULT_STRATEGIES or
                                 any(FLAGS[name].value != v for name, v in DEFAULTS.items()))
    subset |= FLAGS.help_protocol and any(FLAGS[name].value != FLAGS[name].default
                                          for name in ('help_seeds', 'help_protocol_targets'))
    out_dir = FLAGS.out
    if subset and not FLAGS['out'].present:
        out_dir = '/tmp/predictors_help_subset'
        print(f'a subset: writing to {out_dir} (pass --out to choose)')
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, 'predictors_help.json')
    results: dict[str, Any] = {}
    if os.path.exists(json_path) and (FLAGS.summarize_only or not FLAGS.transfer):
        with open(json_path) as f:
            results = json.load(f)
    flag_line = (f'--seeds={FLAGS.seeds} --max_steps={FLAGS.max_steps}' +
                 ''.join(f' --{name}={FLAGS[name].value}'
                         for name in ('batches', 'shots', 'targets', 'strategies', 'reference_json')
                         if FLAGS[name].value != FLAGS[name].default))
    command = f'python -m benchmarks.predictors_help {flag_line}'
    reference: dict[str, Any] = {}
    if FLAGS.reference_json:
        with open(FLAGS.reference_json) as f:
            reference = json.load(f)
    if FLAGS.transfer:
        for batch in batches:
            for target in targets:
                key = f'batch{batch}/{target}'
                if FLAGS.summarize_only:
                    files = {g: os.path.join(data, f'{g}_batch{batch}.csv') for g in GPUS}
                    if key in results and 'measured_source' not in results[key]:
                        # Cheap (reads the files only): filled in for older JSONs.
                        results[key]['measured_source'] = measured_source_metrics(files, target)
                    if key in results and 'data_floor' not in results[key]:
                        cfg = transfer_config.get_config()
                        cfg.max_steps = FLAGS.max_steps
                        results[key]['data_floor'] = data_floor(files, target, cfg)
                    continue
                results[key] = run_target(batch, target, data, FLAGS.strategies, reference.get(key))
                results[key]['command'] = command
                print(f'batch {batch} target {target}: {results[key]["seconds"]:.0f} s', flush=True)
                with open(json_path, 'w') as f:
                    json.dump(results, f, indent=1)
        if FLAGS.summarize_only:  # the command that measured the figures, where saved
            command = next((v['command']
                            for k, v in results.items()
                            if k.startswith('batch') and 'command' in v), command)
        parts = [
            'HELP leave-one-GPU-out (mean over the held-out GPUs; MAPE % / acc10)', '',
            f'Command: {command}', '', *main_table(results, batches, shots)
        ]
        if any('proxy_fit' in v for k, v in results.items() if k.startswith('batch')):
            parts += [
                '', 'Against the measured-proxy baseline (predictors/proxy_fit.py: '
                "a*lat_A + b*lat_B + c of the two source GPUs' measured latencies, least squares "
                'on the target rows the strategy reads, scored on the same evaluation rows and '
                'shot draws; *_refs strategies: the references among the adaptation rows + the k '
                'shots; the others: the k shots; k=0: the references). *Beats proxy*: the '
                "strategy's MAPE (mean over the GPUs and draws) is lower; in brackets the (GPU, "
                'draw) pairs where it is lower.', '', '*Best strategy per batch and k:*', '',
                *key_table(results, batches, shots), '', '*Every strategy:*', '',
                *proxy_table(results, batches, shots)
            ]
        taken = sorted({
            v['references_from']
            for k, v in results.items()
            if k.startswith('batch') and 'references_from' in v
        })
        if taken:
            parts += [
                '', f'The references below (own rows, measured source, data floor) were taken '
                f'from {", ".join(taken)} (--reference_json), fit by an earlier run of this '
                'benchmark (its --max_steps should match this one).'
            ]
        parts += reference_tables(results, batches)
        table = '\n'.join(parts)
        print(table)
        with open(json_path, 'w') as f:
            json.dump(results, f, indent=1)
        with open(os.path.join(out_dir, 'predictors_help.md'), 'w') as f:
            f.write(table + '\n')
    if FLAGS.help_protocol and FLAGS.summarize_only and 'help_protocol' in results:
        runs = results['help_protocol']
        with open(os.path.join(out_dir, 'help_protocol.md'), 'w') as f:
            f.write(help_protocol_md(runs, runs[HELP_TARGET]['command']))
    elif FLAGS.help_protocol and not FLAGS.summarize_only:
        order = [HELP_TARGET
                ] + [t for t in _csv_list(FLAGS.help_protocol_targets) if t != HELP_TARGET]
        command = (f'python -m benchmarks.predictors_help --notransfer --max_steps='
                   f'{FLAGS.max_steps} --help_seeds={FLAGS.help_seeds} '
                   f'--help_protocol_targets={",".join(order)}')
        runs = {}
        for t in order:
            runs[t] = help_protocol(data, FLAGS.max_steps, t, FLAGS.help_seeds)
            runs[t]['command'] = command
            print(f'help protocol, target {t}: {runs[t]["seconds"]:.0f} s', flush=True)
        results['help_protocol'] = runs
        md = help_protocol_md(runs, command)
        print(md)
        with open(os.path.join(out_dir, 'help_protocol.md'), 'w') as f:
            f.write(md)
        with open(json_path, 'w') as f:
            json.dump(results, f, indent=1)


if __name__ == '__main__':
    app.run(main)
