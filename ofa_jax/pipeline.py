"""The main job: measure, build the LUT, fit predictors, compare, search, verify, report.

:func:`run` chains the library's stages on one device:

1. fingerprint the device and measure ``num_archs`` random sub-networks
   (:mod:`ofa_jax.latency.campaign`; resumable through the SQLite store);
2. build the lookup-table baseline for the same resolutions
   (:mod:`ofa_jax.latency.lut_builder`; resumable through its layer cache);
3. fit the paper's MLP and our predictors on the first rows of the store
   (:mod:`predictors.experiment_fit`);
4. score LUT and predictors on the same held-out measured sub-networks, and
   count the measurements and minutes each estimator cost;
5. search at three latency budgets with each estimator
   (:mod:`ofa_jax.search.experiment`) and measure what was found;
6. write ``WORKDIR/report/`` (``report.md``, plots, CSV data, the config and
   the commands) via :mod:`ofa_jax.report`.

Stages that finished in an earlier run of the same workdir are reused: the
store and the LUT cache skip what is measured; fits and searches are redone
(seconds) because they depend on every row.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from typing import Any

import ml_collections
import numpy as np

from experiments.configs import build_lut as build_lut_config
from experiments.configs import fit_predictor as fit_config
from experiments.configs import measure_latency as measure_config
from experiments.configs import search as search_config
from ofa_jax import errors
from ofa_jax import space
from ofa_jax import spec as spec_lib
from ofa_jax import summary as summary_lib
from ofa_jax.latency import campaign
from ofa_jax.latency import fingerprint as fp_lib
from ofa_jax.latency import lut_builder
from ofa_jax.latency import measure
from ofa_jax.latency import store as store_lib
from ofa_jax.search import experiment as search_experiment
from predictors import checkpoint
from predictors import experiment_fit
from predictors import lut as lut_lib
from predictors import metrics
from predictors import xla_cost

PREDICTOR_MODELS = ('mlp', 'additive', 'additive_mlp')
ESTIMATOR_LABELS = {
    'lut': 'LUT (sum of isolated layers)',
    'mlp': 'paper MLP (2101.00732)',
    'additive': 'additive (ours)',
    'additive_mlp': 'additive + residual MLP (ours)',
    'xla_cost': "XLA's cost analysis, fitted",
}

ConfigError = errors.ConfigError


def _log(msg: str) -> None:
    sys.stderr.write(f'[main] {msg}\n')
    sys.stderr.flush()


def _parse_budgets(text: Any) -> list[float]:
    """Explicit budgets in ms, or ``[]`` (empty field) for automatic budgets."""
    if text in ('', None):
        return []
    return search_experiment.parse_floats('config.budgets_ms', text)


def _predictors(text: str) -> list[str]:
    names = [n.strip() for n in str(text).split(',') if n.strip()]
    bad = [n for n in names if n not in PREDICTOR_MODELS]
    if bad or not names:
        raise ConfigError(f'config.predictors: {bad or text!r} not allowed; allowed: a comma '
                          f'separated subset of {", ".join(PREDICTOR_MODELS)}')
    return names


def validate(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Checks every field that can be checked without a device; returns parsed values."""
    resolutions = campaign.parse_int_list('resolutions', config.resolutions, space.RESOLUTIONS)
    batch = campaign.parse_int_list('batch', config.batch)[0]
    if float(config.width) not in space.WIDTHS:
        raise ConfigError(f'config.width: {config.width} not one of {space.WIDTHS}')
    if config.dtype not in measure.DTYPES:
        raise ConfigError(f'config.dtype: {config.dtype!r} not one of {tuple(measure.DTYPES)}')
    if int(config.num_archs) < 20:
        raise ConfigError(f'config.num_archs: {config.num_archs}; need at least 20 measured '
                          'sub-networks to train and test predictors')
    experiment_fit.split_indices(100, config.split)  # Raises on a bad split.
    if config.accuracy and not os.path.exists(config.accuracy):
        raise ConfigError(f'config.accuracy: {config.accuracy!r} does not exist; give an OFA '
                          'acc_predictor.pth, our accuracy checkpoint, or empty for the MACs proxy')
    return {
        'resolutions': resolutions,
        'batch': batch,
        'budgets': _parse_budgets(config.budgets_ms),
        'predictors': _predictors(config.predictors),
    }


def _protocol(config: ml_collections.ConfigDict) -> measure.Protocol:
    return campaign.protocol_from_config(config.protocol)


def _measure_config(config, parsed, store_path) -> ml_collections.ConfigDict:
    c = measure_config.get_config()
    c.num_archs = int(config.num_archs)
    c.time_budget_s = float(config.measure_time_budget_s)
    c.seed = int(config.seed)
    c.resolutions = ','.join(map(str, parsed['resolutions']))
    c.batch_sizes = str(parsed['batch'])
    c.width = float(config.width)
    c.num_classes = int(config.num_classes)
    c.dtype = config.dtype
    c.device = config.device
    c.store = store_path
    c.depthwise = config.depthwise
    c.cpu_affinity = ''  # Applied once, by run().
    c.progress = bool(config.progress)
    c.protocol = copy.deepcopy(config.protocol)
    c.drift.tolerance = float(config.drift_tolerance)
    return c


def _lut_config(config, parsed, store_path) -> ml_collections.ConfigDict:
    c = build_lut_config.get_config()
    c.resolutions = ','.join(map(str, parsed['resolutions']))
    c.batch = parsed['batch']
    c.width = float(config.width)
    c.num_classes = int(config.num_classes)
    c.dtype = config.dtype
    c.device = config.device
    c.depthwise = config.depthwise
    c.cpu_affinity = ''
    c.progress = bool(config.progress)
    c.protocol = copy.deepcopy(config.protocol)
    c.protocol.min_time = float(config.lut_min_time)
    if c.protocol.get('paired', False):
        # Samples of >= 10 ms, so the gauge call after each does not dominate.
        c.protocol.min_sample = max(float(c.protocol.min_sample), 0.01)
        c.protocol.repeats = min(int(c.protocol.repeats), 9)
    c.store = store_path  # The gauge baseline: shared with the campaign's networks.
    return c


def _fit_config(config, parsed, store_path, device_id, protocol, model,
                lut_dir) -> ml_collections.ConfigDict:
    c = fit_config.get_config()
    c.data = store_path
    c.device = device_id
    c.protocol = protocol
    c.batch = parsed['batch']
    c.dtype = config.dtype
    c.width = float(config.width)
    c.model = model
    c.split = config.split
    c.seed = int(config.seed)
    c.max_steps = int(config.max_steps)
    if model == 'lut':
        c.lut = lut_dir
        c.lut_width = float(config.width)
    return c


def _search_config(config, parsed, latency_path, budgets) -> ml_collections.ConfigDict:
    c = search_config.get_config()
    c.latency = latency_path
    c.resolutions = ','.join(map(str, parsed['resolutions']))
    c.budgets_ms = ','.join(f'{b:.4f}' for b in budgets)
    c.seeds = int(config.seeds)
    c.accuracy = config.accuracy
    c.width = float(config.width)
    c.population_size = int(config.population_size)
    c.num_generations = int(config.num_generations)
    c.verify = False  # Verified below with the campaign's protocol, into the store.
    return c


def _accumulate(path: str, l_summary: dict[str, Any]) -> float:
    """Total LUT build time over resumed runs (each run only knows its own)."""
    total = 0.0
    if os.path.exists(path):
        with open(path) as f:
            total = float(json.load(f).get('elapsed_s', 0.0))
    if l_summary.get('timed_now', 0):
        total += float(l_summary['elapsed_s'])
        with open(path, 'w') as f:
            json.dump({'elapsed_s': total}, f)
    return total


def _row_cost_s(row: store_lib.Row) -> float:
    return float((row.lower_s or 0.0) + (row.compile_s or 0.0) + (row.time_s or 0.0))


def _xla_cost_estimator(rows: dict[str, store_lib.Row], keys: list[str], lat: np.ndarray,
                        tr: np.ndarray, te: np.ndarray) -> dict[str, Any] | None:
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
    return {
        'label': ESTIMATOR_LABELS['xla_cost'],
        'metrics': metrics.all_metrics(pred, lat[te]),
        'measurements': len(tr),
        'measurement_kind': 'whole sub-networks (and a compile per arch scored)',
        'cost_minutes': sum(_row_cost_s(rows[keys[i]]) for i in tr) / 60.0,
        'latency_path': None,
        'coefficients': model.to_dict(),
        'pred': pred,
    }


def run(config: ml_collections.ConfigDict, workdir: str, *, sanity: bool = True) -> dict[str, Any]:
    """Runs the whole job; returns the summary that ``report.md`` is made from.

    Args:
      config: see ``experiments/configs/main.py``.
      workdir: output folder; rerunning with the same one resumes.
      sanity: first build a random sub-network, extract it from a random
        supernet and print the largest/smallest sizes (:mod:`ofa_jax.summary`).

    Raises:
      errors.ConfigError: a bad config value (message says what to change),
        raised by this or any stage; the caller turns it into a one-line error.
    """
    # Imported here: matplotlib is only needed once everything is measured.
    from ofa_jax import report  # pylint: disable=g-import-not-at-top

    t_job = time.monotonic()
    parsed = validate(config)
    campaign.set_affinity(config.cpu_affinity)  # Before XLA starts its threads.
    os.makedirs(workdir, exist_ok=True)
    try:
        device = fp_lib.resolve_device(config.device)
    except ValueError as err:
        raise ConfigError(f'config.device: {err}') from None
    store_path = config.store or os.path.join(workdir, 'latency.sqlite')
    try:
        store_lib.LatencyStore(store_path).close()
    except (store_lib.StoreError, OSError) as err:
        raise ConfigError(f'config.store: cannot open {store_path!r} ({err}); give a writable '
                          'path for the SQLite store') from None
    protocol = _protocol(config)
    width = float(config.width)
    stages: dict[str, float] = {}
    if sanity:
        t0 = time.monotonic()
        summary_lib.run(os.path.join(workdir, 'sanity'),
                        width=width,
                        seed=int(config.seed),
                        depthwise=config.depthwise)
        stages['sanity'] = time.monotonic() - t0

    # 0. Explicit budgets below the smallest sub-network cannot be met: say so before
    #    spending minutes on measurements.
    smallest = space.smallest(min(parsed['resolutions']))
    gauge = None
    if parsed['budgets']:
        t0 = time.monotonic()
        gauge = _gauge(config, parsed, store_path, device)
        floor = measure.measure_latency(smallest,
                                        parsed['batch'],
                                        config.dtype,
                                        device,
                                        protocol,
                                        width=width,
                                        num_classes=int(config.num_classes),
                                        depthwise=config.depthwise,
                                        gauge=gauge).latency_ms
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
    mcfg = _measure_config(config, parsed, store_path)
    m_summary = campaign.run(mcfg, os.path.join(workdir, 'measure'))
    stages['measure'] = time.monotonic() - t0
    device_id = m_summary['fingerprint_id']

    # 2. Lookup table.
    _log('2/5 building the lookup table (every layer timed alone)')
    t0 = time.monotonic()
    l_summary = lut_builder.run(_lut_config(config, parsed, store_path),
                                os.path.join(workdir, 'lut_build'))
    stages['lut'] = time.monotonic() - t0
    l_summary['total_elapsed_s'] = _accumulate(os.path.join(workdir, 'lut_build', 'cost.json'),
                                               l_summary)
    lut_dir = os.path.join(workdir, 'lut_build', 'lut')

    # 3-4. Fit predictors, score every estimator on the same held-out rows.
    _log('3/5 fitting predictors and scoring every estimator on held-out sub-networks')
    t0 = time.monotonic()
    store = store_lib.LatencyStore(store_path)
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
    planned = {space.arch_key(a) for a in campaign.plan(mcfg, workdir).archs}
    keys = [space.arch_key(a) for a in space.unstack(archs)]
    keep = np.array([k in planned for k in keys])
    archs, lat = archs[np.flatnonzero(keep)], lat[keep]
    keys = [k for k, ok in zip(keys, keep) if ok]
    tr, va, te = experiment_fit.split_indices(len(lat), config.split)
    estimators: dict[str, dict[str, Any]] = {}
    predictions: dict[str, np.ndarray] = {}
    for model in ['lut'] + parsed['predictors']:
        fdir = os.path.join(workdir, f'fit_{model}')
        # The rows chosen above, so every estimator is fitted and judged on one split.
        out = experiment_fit.run(_fit_config(config, parsed, store_path, device_id, protocol.name,
                                             model, lut_dir),
                                 fdir,
                                 data=(archs, lat))
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
        estimators[model] = {
            'label': ESTIMATOR_LABELS[model],
            'metrics': metrics.all_metrics(pred, lat[te]),
            'measurements': cost_n,
            'measurement_kind': 'layers timed alone' if model == 'lut' else 'whole sub-networks',
            'cost_minutes': cost_s / 60.0,
            'latency_path': latency_path,
        }
    breakdown = latency_breakdown(
        {k: estimators[k]['latency_path'] for k in ('lut', 'additive') if k in estimators},
        archs[te], lat[te], width)
    cost_est = _xla_cost_estimator(rows, keys, lat, tr, te)
    if cost_est is not None:
        predictions['xla_cost'] = cost_est.pop('pred')
        estimators['xla_cost'] = cost_est
    stages['fit'] = time.monotonic() - t0

    # 5. Search with every estimator at the same budgets, then measure what was found.
    budgets = parsed['budgets'] or [float(np.percentile(lat, q)) for q in (25, 50, 75)]
    _log(f'4/5 searching at budgets {[round(b, 2) for b in budgets]} ms with '
         f'{", ".join(estimators)}')
    t0 = time.monotonic()
    searches: dict[str, dict[str, Any]] = {}
    for model, est in estimators.items():
        if est['latency_path'] is None:
            continue  # A yardstick that needs a compile per arch: not a search estimator.
        sdir = os.path.join(workdir, f'search_{model}')
        try:
            searches[model] = search_experiment.run(
                _search_config(config, parsed, est['latency_path'], budgets), sdir)
        except search_experiment.ConfigError as err:
            if parsed['budgets']:
                raise
            # Automatic budgets come from measurements; an estimator that believes one
            # cannot be met is a finding about that estimator, not a config error.
            _log(f'search with {model} skipped: {err}')
            searches[model] = {'results': [], 'error': str(err)}
    stages['search'] = time.monotonic() - t0

    t0 = time.monotonic()
    if config.verify:
        _log('5/5 measuring the found sub-networks on this device')
        if protocol.paired and gauge is None:
            gauge = _gauge(config, parsed, store_path, device)
        _verify(searches, store, device_id, parsed, config, protocol, device, gauge)
    stages['verify'] = time.monotonic() - t0
    store.close()

    stages['total'] = time.monotonic() - t_job
    summary = {
        'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
        'config': config.to_dict(),
        'fingerprint': store_lib.LatencyStore(store_path, readonly=True).devices().get(device_id),
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
        'estimators': estimators,
        'breakdown': breakdown,
        'budgets_ms': budgets,
        'searches': searches,
        'stages_s': stages,
        'reference_counts': summary_lib.size_table(),
    }
    report.write_report(os.path.join(workdir, 'report'),
                        summary,
                        archs=archs,
                        latency_ms=lat,
                        test_index=te,
                        predictions=predictions)
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1, default=_json_default)
    return summary


BREAKDOWN_PARTS = ('fixed', 'stage 1', 'stage 2', 'stage 3', 'stage 4', 'stage 5', 'residual')


def latency_breakdown(paths: dict[str, str], archs: space.Arch, latency_ms: np.ndarray,
                      width: float) -> dict[str, Any]:
    """Mean latency per part of the network over ``archs``, by each estimator that has parts.

    Args:
      paths: estimator -> LUT folder (``'lut'``) or predictor checkpoint
        (one without per-block terms, see ``Predictor.breakdown``, is left out).
      archs, latency_ms: the held-out sub-networks and their measurements.
      width: the supernet width of the LUT.

    Returns:
      ``parts`` (:data:`BREAKDOWN_PARTS`: fixed layers, the 5 stages, the
      additive model's residual), ``mean_ms`` (estimator -> mean ms per part;
      each sums to that estimator's mean prediction) and ``measured_mean_ms``.
    """
    means = {}
    for name, path in paths.items():
        if name == 'lut':
            parts = lut_lib.load_lut(path, width=width).breakdown(archs)
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


def _gauge(config, parsed, store_path, device) -> measure.Gauge | None:
    """The device's gauge with the store's baseline (None for an unpaired protocol)."""
    if not config.protocol.get('paired', False):
        return None
    from ofa_jax import depthwise as dw  # pylint: disable=g-import-not-at-top
    depthwise = (dw.default_depthwise(device.platform)
                 if config.depthwise == 'auto' else dw.resolve(config.depthwise))
    fp = fp_lib.fingerprint(device, microbenchmarks=False)
    with store_lib.LatencyStore(store_path) as store:
        store.add_device(fp)
        return campaign.open_gauge(store,
                                   fp['fingerprint_id'],
                                   batch=parsed['batch'],
                                   dtype=config.dtype,
                                   device=device,
                                   width=float(config.width),
                                   num_classes=int(config.num_classes),
                                   depthwise=depthwise)


def _verify(searches, store, device_id, parsed, config, protocol, device, gauge) -> None:
    """Measures each found arch once (reusing stored rows) and adds ``measured_ms``."""
    width = float(config.width)
    from ofa_jax import depthwise as dw  # pylint: disable=g-import-not-at-top
    depthwise = dw.resolve(config.depthwise)
    cache: dict[str, float] = {}
    for search in searches.values():
        for row in search['results']:
            arch = space.from_ofa_dict(row['arch'])
            key = store_lib.RowKey(device_id, space.arch_key(arch), parsed['batch'], config.dtype,
                                   protocol.name, width, int(config.num_classes), depthwise)
            if key.arch_key not in cache:
                if store.has(key):
                    found = [
                        r for r in store.rows(
                            device_id, batch=key.batch, dtype=key.dtype, protocol=key.protocol)
                        if r.key == key
                    ]
                    cache[key.arch_key] = found[0].latency_ms
                else:
                    result = measure.measure_latency(arch,
                                                     key.batch,
                                                     key.dtype,
                                                     device,
                                                     protocol,
                                                     width=width,
                                                     num_classes=key.num_classes,
                                                     depthwise=depthwise,
                                                     gauge=gauge)
                    store.add_result(key, result, provenance={'source': 'main-job verify'})
                    cache[key.arch_key] = result.latency_ms
            row['measured_ms'] = cache[key.arch_key]
            row['measured_over_budget'] = row['measured_ms'] / row['budget_ms']


def _json_default(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, spec_lib.NetSpec):
        return str(x)
    return str(x)
