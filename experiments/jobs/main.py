"""The main job (``experiments/main.py``): measure, LUT, fit, compare, search, verify, report.

:func:`run` chains the stage jobs of ``experiments/jobs`` on one device, each
with its own section of the config (``experiments/configs/main.py``):

1. fingerprint the device and measure ``num_archs`` random sub-networks
   (:mod:`experiments.jobs.measure_latency`; resumable through the store);
2. build the lookup-table baseline for the same resolutions
   (:mod:`experiments.jobs.build_lut`; resumable through its layer cache);
3. fit the paper's MLP and our predictors on the campaign's rows, written
   once to ``WORKDIR/fit_rows.csv`` so that every estimator is fitted and
   judged on one split (:mod:`experiments.jobs.fit_predictor`);
4. score LUT and predictors on the same held-out measured sub-networks, and
   count the measurements and minutes each estimator cost;
5. search at three latency budgets with each estimator and measure what
   was found (:mod:`experiments.jobs.search`, its one verification path);
   with ``zoo`` set, onboarding from that predictor zoo
   (:mod:`experiments.jobs.onboard`) runs after step 2 on the same device,
   protocol and store, and its checkpoint is one more estimator (``onboard``)
   scored on the same held-out rows and searched like the fits;
6. write ``WORKDIR/report/`` (:mod:`experiments.report`), whose
   ``commands.txt`` is generated from the stage configs run here.

Stages that finished in an earlier run of the same workdir are reused: the
store and the LUT cache skip what is measured; fits and searches are redone
(seconds) because they depend on every row.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
import time
from typing import Any

import ml_collections
import numpy as np

from experiments import config_fields as cf
from experiments.configs import main as main_config
from experiments.jobs import build_lut as lut_job
from experiments.jobs import fit_predictor as fit_job
from experiments.jobs import measure_latency as measure_job
from experiments.jobs import onboard as onboard_job
from experiments.jobs import search as search_job
from ofa_jax import csvio
from ofa_jax import files
from ofa_jax import space
from ofa_jax import summary as summary_lib
from ofa_jax.latency import gauges
from ofa_jax.latency import store as store_lib
from predictors import checkpoint
from predictors import lut as lut_lib
from predictors import metrics
from predictors import xla_cost

PREDICTOR_MODELS = main_config.PREDICTOR_MODELS
ESTIMATOR_LABELS = {
    'lut': 'LUT (sum of isolated layers)',
    'mlp': 'paper MLP (2101.00732)',
    'additive': 'additive (ours)',
    'additive_mlp': 'additive + residual MLP (ours)',
    'xla_cost': "XLA's cost analysis, fitted",
    'onboard': 'onboarded from a zoo',
}

ConfigError = cf.ConfigError


def _log(msg: str) -> None:
    sys.stderr.write(f'[main] {msg}\n')
    sys.stderr.flush()


@dataclasses.dataclass
class Estimator:
    """One latency estimator of the comparison: how well it predicts and what it cost."""

    label: str
    metrics: dict[str, float]  # On the held-out rows (predictors.metrics.all_metrics).
    measurements: int  # Layers timed (LUT) or whole sub-networks measured.
    measurement_kind: str
    cost_minutes: float  # Device time of those measurements, plus training.
    latency_path: str | None  # What the search loads; None: not a search estimator.
    coefficients: dict[str, Any] | None = None  # xla_cost only.


@dataclasses.dataclass
class Stage:
    """A stage job as run by the main job: enough to run it again by itself."""

    name: str  # e.g. 'fit_additive'
    module: str  # e.g. 'fit_predictor' (experiments/NAME.py, experiments/configs/NAME.py)
    workdir: str
    config: dict[str, Any]


def _detached(section: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A plain copy of a config section (no references back into the main config)."""
    return ml_collections.ConfigDict(section.to_dict())


def measure_config(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """The campaign's config: the ``measure`` section with the store and batch filled in."""
    c = _detached(config.measure)
    c.store = cf.store_path(config.store, workdir)
    c.batch_sizes = (int(config.batch),)
    return c


def lut_config(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """The LUT build's config: the ``lut`` section with the store filled in."""
    c = _detached(config.lut)
    c.store = cf.store_path(config.store, workdir)
    return c


def fit_config(config: ml_collections.ConfigDict, model: str, data: str,
               lut_dir: str) -> ml_collections.ConfigDict:
    """One estimator's fit: the ``fit`` section with its model and rows."""
    c = _detached(config.fit)
    c.model = model
    c.data = data
    if model == 'lut':
        c.lut = lut_dir
    return c


def onboard_config(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """The onboarding's config: the ``onboard`` section with the campaign's store filled in.

    Unless the section names a table of its own, the onboarding uses the LUT
    this job builds (``WORKDIR/lut_build/lut``) as its structural prior: on
    this CPU, LUT + 10 shots blended with the zoo held out at 2.0% MAPE where
    the zoo alone reached 3.6% (benchmarks/results/onboarding_cpu.md).
    """
    c = _detached(config.onboard)
    c.store = cf.store_path(config.store, workdir)
    if not c.lut and not c.lut_dir:
        c.lut_dir = os.path.join(workdir, 'lut_build', 'lut')
    return c


def search_config(config: ml_collections.ConfigDict,
                  workdir: str,
                  latency_path: str,
                  budgets: list[float],
                  calibration: str = '') -> ml_collections.ConfigDict:
    """One estimator's search (and verification into the store).

    ``calibration``: the estimator's conformal.json when it is not inside
    ``latency_path`` (the LUT's, written by its fit stage).
    """
    c = _detached(config.search)
    c.latency = latency_path
    if calibration:
        c.calibration = calibration
    c.budgets_ms = tuple(float(f'{b:.4f}') for b in budgets)
    c.verify_store = cf.store_path(config.store, workdir)
    return c


def validate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Checks every field that can be checked without a device, before any work.

    Each stage's own checks run on its section, and the accuracy source is
    loaded, so a bad value fails now, not after minutes of measurements.
    """
    measure_job.plan(measure_config(config, workdir), workdir)
    lut_job.check(lut_config(config, workdir))
    if int(config.num_archs) < 20:
        raise ConfigError(f'config.num_archs: {config.num_archs}; need at least 20 measured '
                          'sub-networks to train and test predictors')
    predictors = cf.str_tuple('predictors', config.predictors, PREDICTOR_MODELS)
    for model in predictors:
        fit_job.check(fit_config(config, model, 'rows.csv', ''))
    budgets = list(cf.float_tuple('budgets_ms', config.budgets_ms, allow_empty=True))
    search_job.check(search_config(config, workdir, '', budgets or [1.0]))
    if config.accuracy:
        search_job.load_objective(config.accuracy, float(config.width))
    if config.zoo:
        # The zoo's files are read now (checkpoints lazily, no device work), so a missing
        # or corrupt zoo fails before the campaign; the rest of its plan is checked in run().
        ocfg = onboard_config(config, workdir)
        onboard_job.check(ocfg)
        onboard_job.load_zoo(ocfg)
    cf.cpu_affinity(config.cpu_affinity)
    return {
        'resolutions': cf.resolutions(config.resolutions),
        'batch': cf.one_int('batch', config.batch),
        'budgets': budgets,
        'predictors': list(predictors),
    }


def _accumulate(path: str, l_summary: dict[str, Any]) -> float:
    """Total LUT build time over resumed runs (each run only knows its own)."""
    total = 0.0
    if os.path.exists(path):
        try:
            with open(path) as f:
                total = float(json.load(f).get('elapsed_s', 0.0))
        except (ValueError, OSError, AttributeError):
            total = 0.0  # Unreadable: count from this run on.
    if l_summary.get('timed_now', 0):
        total += float(l_summary['elapsed_s'])
        files.write_json(path, {'elapsed_s': total})
    return total


def _row_cost_s(row: store_lib.Row) -> float:
    return float((row.lower_s or 0.0) + (row.compile_s or 0.0) + (row.time_s or 0.0))


def xla_cost_estimator(rows: dict[str, store_lib.Row], keys: list[str], lat: np.ndarray,
                       tr: np.ndarray, te: np.ndarray) -> tuple[Estimator, np.ndarray] | None:
    """XLA's cost analysis of each measured executable, fitted on the train rows
    (:mod:`predictors.xla_cost`) and scored on the test rows; None (logged) when
    a row has no cost."""
    costs = store_lib.cost_matrix([rows.get(k) for k in keys], xla_cost.COST_FIELDS)
    if not np.isfinite(costs).all() or len(tr) < 3:
        _log(f'xla_cost skipped: {int((~np.isfinite(costs).all(axis=1)).sum())} of {len(keys)} '
             f'rows have no XLA cost, {len(tr)} train rows')
        return None
    model = xla_cost.fit(costs[tr], lat[tr])
    pred = model.predict(costs[te])
    est = Estimator(label=ESTIMATOR_LABELS['xla_cost'],
                    metrics=metrics.all_metrics(pred, lat[te]),
                    measurements=len(tr),
                    measurement_kind='whole sub-networks (and a compile per arch scored)',
                    cost_minutes=sum(_row_cost_s(rows[keys[i]]) for i in tr) / 60.0,
                    latency_path=None,
                    coefficients=model.to_dict())
    return est, pred


def _measured_since(store_path: str, device_id: str, started: float) -> float:
    """Device-seconds of the rows the onboarding measured after ``started`` (this run)."""
    total = 0.0
    with store_lib.LatencyStore(store_path, readonly=True) as store:
        for row in store.rows(device_id):
            if row.finished_at and row.provenance.get('job') == 'onboard':
                if datetime.datetime.fromisoformat(row.finished_at).timestamp() >= started:
                    total += _row_cost_s(row)
    return total


def onboard_estimator(o_summary: dict[str, Any], test_archs: space.Arch, test_ms: np.ndarray,
                      keys: list[str], te: np.ndarray) -> tuple[Estimator, np.ndarray]:
    """The onboarded checkpoint scored on the held-out rows of the fits.

    Its cost: the device-seconds of the rows it adapted on (reference archs and
    shots, lower + compile + timing, as the fits' rows are counted) plus its
    adaptation (the cross-validated choice and the chosen strategy's final fit,
    as the fits' training time; the learning curve's other points are left
    out, they only feed the onboarding's report).
    """
    pred = np.asarray(checkpoint.load(o_summary['checkpoint'])(test_archs), np.float64)
    rows = int(o_summary['references']) + len(o_summary['shot_keys'])
    adapt_s = float(o_summary['adaptation_s']['total'])
    est = Estimator(label=f'{ESTIMATOR_LABELS["onboard"]} ({o_summary["chosen"]})',
                    metrics=metrics.all_metrics(pred, test_ms),
                    measurements=rows,
                    measurement_kind=f'whole sub-networks ({o_summary["references"]} zoo '
                    f'references + {len(o_summary["shot_keys"])} shots, '
                    f'{o_summary["device_s"]:.1f} device-s)',
                    cost_minutes=(float(o_summary['device_s']) + adapt_s) / 60.0,
                    latency_path=o_summary['checkpoint'])
    test_keys = {keys[i] for i in te}
    o_summary['test_overlap'] = len(test_keys & set(o_summary['shot_keys']))
    if o_summary['test_overlap']:
        _log(f'warning: {o_summary["test_overlap"]} onboarding shots are held-out test rows')
    o_summary['adapt_s'] = adapt_s
    return est, pred


def onboard_section(o_summary: dict[str, Any] | None, device_id: str) -> dict[str, Any] | None:
    """What the summary keeps of the onboarding (None: no zoo given)."""
    if o_summary is None:
        return None
    keep = ('zoo', 'members', 'device_id', 'selection', 'references', 'shots', 'measured_now',
            'already_done', 'device_s', 'measured_now_s', 'adapt_s', 'adaptation_s', 'elapsed_s',
            'chosen', 'chosen_cv', 'checkpoint', 'test_overlap', 'shot_keys')
    out = {k: o_summary.get(k) for k in keep}
    out['same_device'] = o_summary['device_id'] == device_id
    return out


def _budget_floor(config, parsed, store_path, device) -> float:
    """Measured latency of the smallest sub-network (the lowest budget that can be met)."""
    protocol = cf.protocol(config.protocol)
    net = dict(batch=parsed['batch'],
               dtype=str(config.dtype),
               width=float(config.width),
               num_classes=int(config.num_classes),
               depthwise=cf.depthwise(config.depthwise, device))
    smallest = space.smallest(min(parsed['resolutions']))
    with cf.open_store(store_path) as store:
        fid, gauge = gauges.device_gauge(store, device, **net)
        return gauges.measure_archs([smallest],
                                    device=device,
                                    protocol=protocol,
                                    store=store,
                                    device_id=fid,
                                    gauge=gauge if protocol.paired else None,
                                    provenance={'source': 'main-job budget check'},
                                    **net)[0]


def run(config: ml_collections.ConfigDict, workdir: str, *, sanity: bool = True) -> dict[str, Any]:
    """Runs the whole job; returns the summary that ``report.md`` is made from.

    Args:
      config: see ``experiments/configs/main.py``.
      workdir: output folder; rerunning with the same one resumes.
      sanity: first build a random sub-network, extract it from a random
        supernet and print the largest/smallest sizes (:mod:`ofa_jax.summary`).

    Raises:
      ConfigError: a bad config value (message says what to change), raised
        by this or any stage; the caller turns it into a one-line error.
    """
    # Imported here: matplotlib is only needed once everything is measured.
    from experiments import report  # pylint: disable=g-import-not-at-top

    t_job = time.monotonic()
    parsed = validate(config, workdir)
    cf.set_affinity(config.cpu_affinity)  # Before XLA starts its threads.
    device = cf.device(config.device)
    os.makedirs(workdir, exist_ok=True)
    store_path = cf.store_path(config.store, workdir)
    cf.open_store(store_path).close()
    protocol = cf.protocol(config.protocol)
    width = float(config.width)
    stages: dict[str, float] = {}
    run_stages: list[Stage] = []
    if config.zoo:
        # The whole onboarding plan (shots chosen from the zoo's disagreement, strategies,
        # enough rows) once XLA runs with the affinity set, before any measurement.
        onboard_job.make_plan(onboard_config(config, workdir))
    if sanity:
        t0 = time.monotonic()
        summary_lib.run(os.path.join(workdir, 'sanity'),
                        width=width,
                        seed=int(config.seed),
                        depthwise=cf.depthwise(config.depthwise, device))
        stages['sanity'] = time.monotonic() - t0

    # 0. Explicit budgets below the smallest sub-network cannot be met: say so before
    #    spending minutes on measurements.
    if parsed['budgets']:
        t0 = time.monotonic()
        floor = _budget_floor(config, parsed, store_path, device)
        stages['check_budgets'] = time.monotonic() - t0
        low = [b for b in parsed['budgets'] if b < floor]
        if low:
            raise ConfigError(f'config.budgets_ms: {low} below the smallest sub-network '
                              f'({floor:.2f} ms measured on this device at resolution '
                              f'{min(parsed["resolutions"])}); use budgets above {floor:.2f} ms')

    # 1. Measurements.
    _log(f'1/5 measuring {config.num_archs} sub-networks at resolutions '
         f'{parsed["resolutions"]}, batch {parsed["batch"]} into {store_path}')
    t0 = time.monotonic()
    mcfg = measure_config(config, workdir)
    mdir = os.path.join(workdir, 'measure')
    m_summary = measure_job.run(mcfg, mdir)
    run_stages.append(Stage('measure', 'measure_latency', mdir, mcfg.to_dict()))
    stages['measure'] = time.monotonic() - t0
    device_id = m_summary['fingerprint_id']

    # 2. Lookup table.
    _log('2/5 building the lookup table (every layer timed alone)')
    t0 = time.monotonic()
    lcfg = lut_config(config, workdir)
    ldir = os.path.join(workdir, 'lut_build')
    l_summary = lut_job.run(lcfg, ldir)
    run_stages.append(Stage('lut', 'build_lut', ldir, lcfg.to_dict()))
    stages['lut'] = time.monotonic() - t0
    l_summary['total_elapsed_s'] = _accumulate(os.path.join(ldir, 'cost.json'), l_summary)
    lut_dir = os.path.join(ldir, 'lut')

    # 2b. Onboarding from a zoo (optional), into the campaign's store: rows already there
    #     are reused; those measured now are counted by when they finished.
    o_summary = None
    if config.zoo:
        _log(f'2/5 onboarding from the zoo {config.zoo}: {config.onboard.references} reference '
             f'archs + {config.shots} shots')
        t0 = time.monotonic()
        started = time.time()
        ocfg = onboard_config(config, workdir)
        odir = os.path.join(workdir, 'onboard')
        o_summary = onboard_job.run(ocfg, odir)
        run_stages.append(Stage('onboard', 'onboard', odir, ocfg.to_dict()))
        stages['onboard'] = time.monotonic() - t0
        o_summary['measured_now_s'] = _measured_since(store_path, o_summary['device_id'], started)

    # 3-4. Fit predictors, score every estimator on the same held-out rows.
    _log('3/5 fitting predictors and scoring every estimator on held-out sub-networks')
    t0 = time.monotonic()
    with store_lib.LatencyStore(store_path, readonly=True) as store:
        archs, lat = store.load_arrays(device_id,
                                       parsed['batch'],
                                       config.dtype,
                                       protocol=protocol.name,
                                       width=width)
        rows = {
            r.key.arch_key: r for r in store.rows(
                device_id, batch=parsed['batch'], dtype=config.dtype, protocol=protocol.name)
        }
    # Only the campaign's seeded random archs: the store also holds what earlier
    # searches found (verification rows), which are not a random sample.
    planned = {space.arch_key(a) for a in measure_job.plan(mcfg, workdir).archs}
    keys = [space.arch_key(a) for a in space.unstack(archs)]
    keep = np.array([k in planned for k in keys])
    archs, lat = archs[np.flatnonzero(keep)], lat[keep]
    keys = [k for k, ok in zip(keys, keep) if ok]
    rows_csv = os.path.join(workdir, 'fit_rows.csv')
    csvio.write_ofa_csv(rows_csv, archs, lat)
    tr, va, te = fit_job.split_indices(len(lat), config.split)
    estimators: dict[str, Estimator] = {}
    predictions: dict[str, np.ndarray] = {}
    for model in ['lut'] + parsed['predictors']:
        fdir = os.path.join(workdir, f'fit_{model}')
        fcfg = fit_config(config, model, rows_csv, lut_dir)
        out = fit_job.run(fcfg, fdir)
        run_stages.append(Stage(f'fit_{model}', 'fit_predictor', fdir, fcfg.to_dict()))
        pred = out['test_pred_ms']  # on te: the same split as above
        if model == 'lut':
            cost_n = int(l_summary['layers'])
            cost_s = float(l_summary['total_elapsed_s'])
            latency_path = lut_dir
        else:
            used = [keys[i] for i in np.concatenate([tr, va])]
            cost_n = len(used)
            cost_s = sum(_row_cost_s(rows[k]) for k in used if k in rows)
            cost_s += float(out.get('train_seconds', 0.0))
            latency_path = os.path.join(fdir, 'checkpoint')
        predictions[model] = pred
        estimators[model] = Estimator(
            label=ESTIMATOR_LABELS[model],
            metrics=metrics.all_metrics(pred, lat[te]),
            measurements=cost_n,
            measurement_kind='layers timed alone' if model == 'lut' else 'whole sub-networks',
            cost_minutes=cost_s / 60.0,
            latency_path=latency_path)
    breakdown = latency_breakdown(
        {k: estimators[k].latency_path for k in ('lut', 'additive') if k in estimators},
        archs[te],
        lat[te],
        width,
        num_classes=int(config.num_classes))
    if o_summary is not None:
        estimators['onboard'], predictions['onboard'] = onboard_estimator(
            o_summary, archs[te], lat[te], keys, te)
    cost = xla_cost_estimator(rows, keys, lat, tr, te)
    if cost is not None:
        estimators['xla_cost'], predictions['xla_cost'] = cost
    stages['fit'] = time.monotonic() - t0

    # 5. Search with every estimator at the same budgets; each search measures what it
    #    found into the store (rows found twice are measured once).
    budgets = parsed['budgets'] or [float(np.percentile(lat, q)) for q in (25, 50, 75)]
    _log(f'4/5 searching at budgets {[round(b, 2) for b in budgets]} ms with '
         f'{", ".join(estimators)}' + ('; 5/5 measuring what each finds' if config.verify else ''))
    t0 = time.monotonic()
    searches: dict[str, dict[str, Any]] = {}
    for model, est in estimators.items():
        if est.latency_path is None:
            continue  # A yardstick that needs a compile per arch: not a search estimator.
        sdir = os.path.join(workdir, f'search_{model}')
        cal = os.path.join(workdir, f'fit_{model}', 'conformal.json') if model == 'lut' else ''
        scfg = search_config(config, workdir, est.latency_path, budgets,
                             cal if cal and os.path.exists(cal) else '')
        if not parsed['budgets']:
            # Automatic budgets come from measurements: search those this estimator
            # can meet, and list the others in its search.json.
            scfg.unreachable = 'drop'
        run_stages.append(Stage(f'search_{model}', 'search', sdir, scfg.to_dict()))
        try:
            searches[model] = search_job.run(scfg, sdir)
        except ConfigError as err:
            if parsed['budgets']:
                raise
            # Automatic budgets come from measurements; an estimator that believes one
            # cannot be met is a finding about that estimator, not a config error.
            _log(f'search with {model} skipped: {err}')
            searches[model] = {'results': [], 'error': str(err)}
    stages['search'] = time.monotonic() - t0

    stages['total'] = time.monotonic() - t_job
    with store_lib.LatencyStore(store_path, readonly=True) as store:
        fingerprint = store.devices().get(device_id)
    summary = {
        'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
        'workdir': workdir,
        'config': config.to_dict(),
        'fingerprint': fingerprint,
        'device_id': device_id,
        'store': store_path,
        'campaign': {
            k: v for k, v in m_summary.items() if k != 'drift_history'
        },
        'lut': {
            k: l_summary.get(k) for k in ('layers', 'timed_now', 'elapsed_s')
        },
        'rows': {
            'train': len(tr),
            'val': len(va),
            'test': len(te),
            'total': len(lat)
        },
        'estimators': {
            k: dataclasses.asdict(v) for k, v in estimators.items()
        },
        'breakdown': breakdown,
        'onboard': onboard_section(o_summary, device_id),
        'budgets_ms': budgets,
        'searches': searches,
        'stages': [dataclasses.asdict(s) for s in run_stages],
        'stages_s': stages,
        'reference_counts': summary_lib.size_table(),
    }
    report.write_report(os.path.join(workdir, 'report'),
                        summary,
                        workdir=workdir,
                        archs=archs,
                        latency_ms=lat,
                        test_index=te,
                        predictions=predictions)
    files.write_json(os.path.join(workdir, 'summary.json'), summary)
    return summary


BREAKDOWN_PARTS = ('fixed', 'stage 1', 'stage 2', 'stage 3', 'stage 4', 'stage 5', 'residual')


def latency_breakdown(paths: dict[str, str],
                      archs: space.Arch,
                      latency_ms: np.ndarray,
                      width: float,
                      num_classes: int = 1000) -> dict[str, Any]:
    """Mean latency per part of the network over ``archs``, by each estimator that has parts.

    Args:
      paths: estimator -> LUT folder (``'lut'``) or predictor checkpoint
        (one without per-block terms, see ``Predictor.breakdown``, is left out).
      archs, latency_ms: the held-out sub-networks and their measurements.
      width, num_classes: the network of the LUT.

    Returns:
      ``parts`` (:data:`BREAKDOWN_PARTS`: fixed layers, the 5 stages, the
      additive model's residual), ``mean_ms`` (estimator -> mean ms per part;
      each sums to that estimator's mean prediction) and ``measured_mean_ms``.
    """
    means = {}
    for name, path in paths.items():
        if name == 'lut':
            parts = lut_lib.load_lut(path, width=width, num_classes=num_classes).breakdown(archs)
        else:
            try:
                parts = checkpoint.load(path).breakdown(archs)
            except ValueError:  # Not additive, or a target that does not split in ms.
                continue
        stages = np.asarray(parts['blocks_ms']).reshape(-1, space.NUM_STAGES,
                                                        space.MAX_DEPTH).sum(-1)
        per = np.concatenate([
            np.asarray(parts['fixed_ms']).reshape(-1, 1), stages,
            np.asarray(parts['residual_ms']).reshape(-1, 1)
        ], 1)
        means[name] = [float(v) for v in per.mean(0)]
    return {
        'parts': list(BREAKDOWN_PARTS),
        'mean_ms': means,
        'measured_mean_ms': float(np.mean(latency_ms))
    }
