"""The fit job (``experiments/fit_predictor.py``): fit or evaluate one estimator.

``run(config, workdir)`` reads one device's latencies (an OFA CSV file, or a
latency store plus device/batch/dtype), merges rows that repeat an arch into
one (``config.duplicates``, so no arch lands in two splits; the count goes to
``metrics.json``), splits rows in file order
(default 70/15/15, the 2101.00732 split), trains the chosen model (or loads a
lookup table for ``model=lut``, or fits XLA's cost analysis for
``model=xla_cost``: :mod:`predictors.xla_cost`, store rows only) and writes to
``workdir``:
``metrics.json`` (test-row metrics, training time and sizes, and the test-row
coverage of the conformal bounds), ``conformal.json`` (split-conformal
calibration, :mod:`predictors.conformal`: on the validation rows for a fitted
model, on the training and validation rows for a LUT, which fits nothing;
also copied into the checkpoint), ``pred_vs_measured.png`` and
``checkpoint/`` (trained models only).
"""

from __future__ import annotations

import os
import time
from typing import Any

import ml_collections
import numpy as np

from experiments import config_fields as cf
from experiments import plots
from ofa_jax import csvio
from ofa_jax import dataset
from ofa_jax import files
from ofa_jax import space
from ofa_jax.latency import store as store_lib
from predictors import checkpoint
from predictors import conformal
from predictors import drift as drift_lib
from predictors import features
from predictors import fit
from predictors import lut as lut_lib
from predictors import metrics
from predictors import train as train_lib
from predictors import xla_cost

# Coverages whose test-row share is reported in metrics.json.
COVERAGES = (0.8, 0.9, 0.95)
FIT_MODELS = ('mlp', 'additive', 'additive_mlp', 'lut', 'xla_cost')
# Estimators judged without a trained predictor (no checkpoint, no drift offset).
UNTRAINED = ('lut', 'xla_cost')
# 'last_level': add the level of the latest validation rows (predictors.drift).
DRIFT_MODES = ('none', 'last_level')
# How rows that repeat an arch are merged (ofa_jax.dataset.dedupe), before the split.
DUPLICATE_MODES = dataset.HOW
# Fewest distinct archs a trained model is fitted on (one per split, and a few to train on).
MIN_ROWS = 5

ConfigError = cf.ConfigError


def load_rows(config: ml_collections.ConfigDict) -> tuple[space.Arch, np.ndarray]:
    """(archs, latency_ms) from ``config.data``: a ``.csv`` file or a latency store.

    From a store: the rows of ``config.device`` at the config's batch, dtype
    and width, and only those measured under ``config.protocol`` when it is
    set (otherwise the latest row of each arch, whatever its protocol).
    """
    path = str(config.data)
    if not path:
        raise ConfigError('config.data: empty; allowed: an OFA CSV file or a latency store path')
    if path.endswith('.csv'):
        table = csvio.read_ofa_csv(path, max_rows=config.get('max_rows') or None)
        return table.archs, table.latency_ms
    if not config.get('device'):
        raise ConfigError('config.device: required with a store path; allowed: a device name '
                          'in the store')
    try:
        with store_lib.LatencyStore(path, readonly=True) as store:
            archs, lat = store.load_arrays(**_store_filter(config))
    except store_lib.StoreError as e:
        raise ConfigError(f'config.data: {e}') from None
    except KeyError as e:
        raise ConfigError(f'config.data: {e.args[0]}') from None
    archs = space.to_numpy(archs)
    if config.get('max_rows'):
        archs, lat = archs[:config.max_rows], lat[:config.max_rows]
    return archs, np.asarray(lat, np.float64)


def _store_filter(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The store rows ``config`` selects (``LatencyStore.load_arrays`` arguments)."""
    return {
        'device': str(config.device),
        'batch': int(config.batch),
        'dtype': str(config.dtype),
        'protocol': str(config.get('protocol', '')) or None,
        'width': float(config.width),
    }


def load_costs(config: ml_collections.ConfigDict) -> np.ndarray:
    """float64[n, 2] XLA flops and bytes accessed of :func:`load_rows`' rows (a store)."""
    with store_lib.LatencyStore(str(config.data), readonly=True) as store:
        costs = store.load_costs(**_store_filter(config), fields=xla_cost.COST_FIELDS)
    return costs[:config.max_rows] if config.get('max_rows') else costs


def merge_duplicates(archs: space.Arch, lat: np.ndarray,
                     how: str) -> tuple[space.Arch, np.ndarray, dict[str, Any]]:
    """One row per distinct arch, in order of first appearance, and the counts.

    Repeated archs would otherwise cross the train/test split and score memory
    as prediction. Returns (archs, latency_ms, counts) with counts ``read``
    (rows in), ``distinct`` (rows out), ``duplicates_merged`` and ``merge``
    (the ``how``).
    """
    merged = dataset.dedupe(archs, lat, how)
    counts = {
        'read': merged.groups.num_rows,
        'distinct': merged.num_rows,
        'duplicates_merged': merged.num_duplicates,
        'merge': how,
    }
    if not merged.num_duplicates:  # Keep the caller's arrays (and their exact order).
        return archs, lat, counts
    return merged.archs, merged.latency_ms, counts


def calibrate(cal_pred: np.ndarray,
              cal_lat: np.ndarray,
              test_pred: np.ndarray,
              test_lat: np.ndarray,
              workdir: str,
              ckpt_dir: str | None,
              *,
              estimator: str,
              rows: str,
              cal_spread: np.ndarray | None = None,
              test_spread: np.ndarray | None = None) -> dict[str, Any]:
    """Fits the conformal bound on held-out rows, saves it, reports test-row coverage.

    Writes ``workdir/conformal.json`` (and into ``ckpt_dir`` when given, so a
    checkpoint carries its bound). Returns what ``metrics.json`` records:
    rows, ranges and, per coverage of :data:`COVERAGES` that the rows can
    bound, the share of test rows within the bound and the mean bound/prediction.
    With an ensemble's spread (``cal_spread``, ``test_spread``) the bound is
    normalised by it; ``plain`` then holds the same figures without it.
    """
    finite = np.isfinite(cal_pred) & (cal_pred > 0)
    if finite.sum() < 2:
        return {'calibration_rows': int(finite.sum()), 'note': 'too few rows to calibrate'}

    def fitted(spread):
        return conformal.fit(cal_pred[finite],
                             cal_lat[finite],
                             estimator=estimator,
                             rows=rows,
                             spread=None if spread is None else spread[finite])

    cal = fitted(cal_spread)
    cal.save(os.path.join(workdir, conformal.FILE))
    if ckpt_dir:
        cal.save(os.path.join(ckpt_dir, conformal.FILE))
    out = _coverage_report(cal, test_pred, test_lat, test_spread)
    if cal.normalized:
        out['normalized_by'] = 'ensemble spread of log latency'
        out['plain'] = _coverage_report(fitted(None), test_pred, test_lat, None)
    return out


def _coverage_report(cal: conformal.Calibration, test_pred: np.ndarray, test_lat: np.ndarray,
                     test_spread: np.ndarray | None) -> dict[str, Any]:
    """Rows, ranges, and per coverage the test rows can check: share within and width."""
    out: dict[str, Any] = {
        'calibration_rows': cal.num_rows,
        'ranges': len(cal.scores),
        'edges_ms': [float(e) for e in cal.edges],
        'test_coverage': {},
        'mean_bound_over_prediction': {},
    }
    for c in COVERAGES:
        if c <= cal.max_coverage():
            out['test_coverage'][str(c)] = cal.coverage_of(test_pred, test_lat, c, test_spread)
            out['mean_bound_over_prediction'][str(c)] = float(
                np.mean(cal.upper(test_pred, c, test_spread) / test_pred))
    return out


def split_indices(n: int, fractions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows in file order: first train, then validation, then test."""
    parts = cf.split(fractions)
    a, b = int(round(parts[0] * n)), int(round((parts[0] + parts[1]) * n))
    return np.arange(a), np.arange(a, b), np.arange(b, n)


def train_params(config: ml_collections.ConfigDict) -> train_lib.TrainParams:
    """The :class:`predictors.train.TrainParams` of a job config (ConfigError on a bad field)."""
    try:
        return train_lib.TrainParams.from_mapping(config)
    except ValueError as e:
        raise ConfigError(f'config.{e}') from None


def check(config: ml_collections.ConfigDict) -> None:
    """Every check of a fit config that needs no data (ConfigError naming the field)."""
    train_params(config)
    cf.choice('model', config.model, FIT_MODELS)
    cf.width(config.width)
    cf.split(config.split)
    if config.model == 'lut' and not config.lut:
        raise ConfigError('config.lut: required with model=lut; allowed: an OFA yaml file or a '
                          'folder of {r}_lookup_table.yaml')
    cf.one_int('members', config.members)
    cf.one_int('max_rows', config.max_rows, minimum=0)
    cf.choice('duplicates', config.get('duplicates', 'mean'), DUPLICATE_MODES)
    drift = cf.choice('drift', config.get('drift', 'none'), DRIFT_MODES)
    if drift != 'none' and config.model in UNTRAINED:
        raise ConfigError(f'config.drift: {drift!r} needs a trained predictor; allowed with '
                          f'model={config.model}: none')
    if config.get('protocol') and str(config.data).endswith('.csv'):
        raise ConfigError(f'config.protocol: {config.protocol!r} filters store rows, and data '
                          f'{config.data!r} is a CSV file; allowed with a CSV: \'\' (empty)')
    if config.model == 'xla_cost' and str(config.data).endswith('.csv'):
        raise ConfigError(f'config.data: {config.data!r} is a CSV file; model=xla_cost needs the '
                          'XLA cost analysis of every row, which only a latency store records; '
                          'allowed: a store path (with device)')


def run(config: ml_collections.ConfigDict,
        workdir: str,
        *,
        data: tuple[space.Arch, np.ndarray] | None = None) -> dict[str, Any]:
    """Fits (or evaluates) one estimator; writes ``metrics.json`` and returns it.

    The returned dict also holds ``test_pred_ms`` (float64 predictions on the
    test rows, in split order; not written to the file).

    Args:
      config: see ``experiments/configs/fit_predictor.py``.
      workdir: output folder.
      data: (archs, latency_ms) to split and fit instead of reading
        ``config.data`` (which then only labels the output), for a caller
        that has chosen its rows, e.g. the main job, whose comparison must
        use the same split; ``max_rows`` does not apply. Not with
        ``model=xla_cost``, which reads each row's cost from the store.
    """
    check(config)
    if data is not None and config.model == 'xla_cost':
        raise ValueError('run: data= has no XLA costs; model=xla_cost reads its rows from the '
                         'store (data=None)')
    os.makedirs(workdir, exist_ok=True)
    if data is None:
        archs, lat = load_rows(config)
    else:
        archs, lat = space.to_numpy(data[0]), np.asarray(data[1], np.float64)
        if lat.shape != (len(archs),):
            raise ValueError(f'run: data= has {len(archs)} archs and latencies of shape '
                             f'{lat.shape}')
    archs, lat, hygiene = merge_duplicates(archs, lat, str(config.get('duplicates', 'mean')))
    tr, va, te = split_indices(len(lat), config.split)
    trained = config.model not in UNTRAINED
    if not len(te) or (trained and (min(len(tr), len(va)) < 1 or len(lat) < MIN_ROWS)):
        raise ConfigError(f'config.data: {config.data!r}: {hygiene["distinct"]} distinct archs '
                          f'split {len(tr)}/{len(va)}/{len(te)} (train/val/test) by '
                          f'split={tuple(config.split)}; allowed: >= {MIN_ROWS} archs and at '
                          'least one in each split (a test row for lut and xla_cost)')
    out: dict[str, Any] = {
        'data': str(config.data),
        'model': config.model,
        'rows': dict(hygiene, train=len(tr), val=len(va), test=len(te)),
    }
    t0 = time.perf_counter()
    ckpt_dir = None
    cal_spread = test_spread = None
    if config.model == 'lut':
        table = lut_lib.load_lut(config.lut,
                                 width=float(config.lut_width),
                                 num_classes=int(config.num_classes))
        pred = np.asarray(table.predict(archs[te]), np.float64)
        # A LUT fits nothing on these rows: all rows before the test rows calibrate it.
        cal_rows = np.concatenate([tr, va])
        cal_pred = np.asarray(table.predict(archs[cal_rows]), np.float64)
    elif config.model == 'xla_cost':
        costs = load_costs(config)
        try:
            cost_model = xla_cost.fit(costs[tr], lat[tr])
            pred = cost_model.predict(costs[te])
            cal_rows, cal_pred = va, cost_model.predict(costs[va])
        except ValueError as e:
            raise ConfigError(f'config.data: {config.data!r}: {e}') from None
        out['xla_cost'] = cost_model.to_dict()
    else:
        name = 'additive' if config.model.startswith('additive') else 'mlp'
        kwargs = {}
        if config.model == 'additive_mlp':
            kwargs = {'residual_onehot': True, 'residual_hidden': 64}
        fspec = features.fit_feature_spec(archs[tr], width=float(config.width))
        predictor, result = fit.fit_predictor(name,
                                              archs[tr],
                                              lat[tr],
                                              archs[va],
                                              lat[va],
                                              fspec=fspec,
                                              config=train_params(config),
                                              model_kwargs=kwargs,
                                              seed=int(config.seed),
                                              num_members=int(config.members),
                                              meta={
                                                  'data': str(config.data),
                                                  'device': str(config.get('device', '')),
                                                  'config': config.to_dict()
                                              })
        out['train_seconds'] = time.perf_counter() - t0
        out['train_steps'] = np.asarray(result.steps).tolist()
        out['best_step'] = np.asarray(result.best_step).tolist()
        if config.get('drift', 'none') == 'last_level':
            # The device's level in the latest validation rows (measured just
            # before the test rows), added to every prediction.
            level = drift_lib.last_level(lat[va] - np.asarray(predictor(archs[va]), np.float64))
            predictor = predictor.replace(offset_ms=level['offset_ms'])
            out['drift'] = dict(level, start_row=int(va[0]) + level['start'] if len(va) else 0)
        pred = np.asarray(predictor(archs[te]), np.float64)
        if int(config.members) > 1:
            per = np.asarray(predictor.members_ms(archs[te]), np.float64)
            member = [metrics.rmse(p, lat[te]) for p in per]
            out['member_rmse_ms'] = {'mean': float(np.mean(member)), 'std': float(np.std(member))}
        ckpt_dir = os.path.join(workdir, 'checkpoint')
        checkpoint.save(predictor, ckpt_dir)
        cal_rows, cal_pred = va, np.asarray(predictor(archs[va]), np.float64)
        if int(config.members) > 1 and len(va):
            cal_spread = np.asarray(predictor.log_spread(archs[va]), np.float64)
            test_spread = np.asarray(predictor.log_spread(archs[te]), np.float64)
    if not np.all(np.isfinite(pred)):
        raise ValueError(f'{config.model}: non-finite predictions on '
                         f'{int((~np.isfinite(pred)).sum())} test rows (resolution not covered?)')
    out.update(metrics.all_metrics(pred, lat[te]))
    out['conformal'] = calibrate(
        cal_pred,
        lat[cal_rows],
        pred,
        lat[te],
        workdir,
        ckpt_dir,
        estimator=str(config.model),
        rows=('training and validation rows' if config.model == 'lut' else 'validation rows'),
        cal_spread=cal_spread,
        test_spread=test_spread)
    files.write_json(os.path.join(workdir, 'metrics.json'), out)
    plots.pred_vs_measured(
        os.path.join(workdir, 'pred_vs_measured.png'), pred, lat[te],
        f'{config.model} on {os.path.basename(str(config.data))}: '
        f'RMSE {out["rmse_ms"]:.3f} ms, MAPE {out["mape"]:.2f}%')
    return dict(out, test_pred_ms=pred)
