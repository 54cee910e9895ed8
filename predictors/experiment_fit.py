"""Library side of ``experiments/fit_predictor.py``: fit or evaluate one estimator.

``run(config, workdir)`` reads one device's latencies (an OFA CSV file, or a
latency store plus device/batch/dtype), splits rows in file order
(default 70/15/15, the 2101.00732 split), trains the chosen model (or loads a
lookup table for ``model=lut``, or fits XLA's cost analysis for
``model=xla_cost``: :mod:`predictors.xla_cost`, store rows only) and writes to
``workdir``:
``metrics.json`` (test-row metrics, training time and sizes),
``pred_vs_measured.png`` and ``checkpoint/`` (trained models only).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import ml_collections
import numpy as np

from ofa_jax import csvio
from ofa_jax import errors
from ofa_jax import space
from predictors import checkpoint
from predictors import drift as drift_lib
from predictors import features
from predictors import fit
from predictors import metrics
from predictors import train as train_lib
from predictors import xla_cost

FIT_MODELS = ('mlp', 'additive', 'additive_mlp', 'lut', 'xla_cost')
# Estimators judged without a trained predictor (no checkpoint, no drift offset).
UNTRAINED = ('lut', 'xla_cost')
# 'last_level': add the level of the latest validation rows (predictors.drift).
DRIFT_MODES = ('none', 'last_level')

ConfigError = errors.ConfigError


def load_rows(config: ml_collections.ConfigDict) -> tuple[space.Arch, np.ndarray]:
    """(archs, latency_ms) from ``config.data``: a ``.csv`` file or a latency store.

    From a store: the rows of ``config.device`` at the config's batch, dtype
    and width, and only those measured under ``config.protocol`` when it is
    set (otherwise the latest row of each arch, whatever its protocol).
    """
    path = str(config.data)
    if not path:
        raise ConfigError('data: empty; allowed: an OFA CSV file or a latency store path')
    if path.endswith('.csv'):
        table = csvio.read_ofa_csv(path, max_rows=config.get('max_rows') or None)
        return table.archs, table.latency_ms
    try:
        from ofa_jax.latency import store as store_lib  # pylint: disable=g-import-not-at-top
    except ImportError:
        raise ConfigError(f'data: {path!r} is not a .csv and ofa_jax.latency.store is not '
                          'available; allowed: an OFA CSV file') from None
    if not config.get('device'):
        raise ConfigError('device: required with a store path; allowed: a device name in the '
                          'store')
    try:
        archs, lat = store_lib.LatencyStore(path).load_arrays(**_store_filter(config))
    except KeyError as e:
        raise ConfigError(f'data: {e.args[0]}') from None
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
    from ofa_jax.latency import store as store_lib  # pylint: disable=g-import-not-at-top
    costs = store_lib.LatencyStore(str(config.data)).load_costs(**_store_filter(config),
                                                                fields=xla_cost.COST_FIELDS)
    return costs[:config.max_rows] if config.get('max_rows') else costs


def split_indices(n: int, fractions: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows in file order: first train, then validation, then test."""
    try:
        parts = [float(v) for v in str(fractions).split(',')]
        if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1) > 1e-6 or parts[2] == 0:
            raise ValueError
    except ValueError:
        raise ConfigError(f'split: {fractions!r}; allowed: three non-negative fractions '
                          'summing to 1, test > 0, e.g. "0.7,0.15,0.15"') from None
    a, b = int(round(parts[0] * n)), int(round((parts[0] + parts[1]) * n))
    return np.arange(a), np.arange(a, b), np.arange(b, n)


def train_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    cfg = train_lib.default_config()
    for k in cfg:
        if k in config:
            cfg[k] = config[k]
    return cfg


def plot_pred_vs_measured(path: str, pred: np.ndarray, true: np.ndarray, title: str) -> None:
    """Scatter of predicted vs measured latency with the identity line (Agg backend)."""
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    ax.scatter(true, pred, s=3, alpha=0.5)
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], 'k--', lw=0.8)
    ax.set_xlabel('measured latency (ms)')
    ax.set_ylabel('predicted latency (ms)')
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def check_loss(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for an unknown ``loss`` or a ``huber_delta`` <= 0."""
    try:
        train_lib.loss_function(*train_lib.loss_options(config))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _check(config: ml_collections.ConfigDict) -> None:
    check_loss(config)
    if config.model not in FIT_MODELS:
        raise ConfigError(f'model: {config.model!r}; allowed: {", ".join(FIT_MODELS)}')
    if float(config.width) not in space.WIDTHS:
        raise ConfigError(f'width: {config.width!r}; allowed: {space.WIDTHS}')
    if config.model == 'lut' and not config.lut:
        raise ConfigError('lut: required with model=lut; allowed: an OFA yaml file or a folder '
                          'of {r}_lookup_table.yaml')
    if int(config.members) < 1:
        raise ConfigError(f'members: {config.members}; allowed: an integer >= 1')
    drift = config.get('drift', 'none')
    if drift not in DRIFT_MODES:
        raise ConfigError(f'drift: {drift!r}; allowed: {", ".join(DRIFT_MODES)}')
    if drift != 'none' and config.model in UNTRAINED:
        raise ConfigError(f'drift: {drift!r} needs a trained predictor; allowed with '
                          f'model={config.model}: none')
    if config.get('protocol') and str(config.data).endswith('.csv'):
        raise ConfigError(f'protocol: {config.protocol!r} filters store rows, and data '
                          f'{config.data!r} is a CSV file; allowed with a CSV: \'\' (empty)')
    if config.model == 'xla_cost' and str(config.data).endswith('.csv'):
        raise ConfigError(f'data: {config.data!r} is a CSV file; model=xla_cost needs the XLA '
                          'cost analysis of every row, which only a latency store records; '
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
    _check(config)
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
    tr, va, te = split_indices(len(lat), config.split)
    out: dict[str, Any] = {
        'data': str(config.data),
        'model': config.model,
        'rows': {
            'train': len(tr),
            'val': len(va),
            'test': len(te)
        }
    }
    t0 = time.perf_counter()
    if config.model == 'lut':
        from predictors import lut as lut_lib  # pylint: disable=g-import-not-at-top
        table = lut_lib.load_lut(config.lut, width=float(config.lut_width))
        pred = np.asarray(table.predict(archs[te]), np.float64)
    elif config.model == 'xla_cost':
        costs = load_costs(config)
        try:
            cost_model = xla_cost.fit(costs[tr], lat[tr])
            pred = cost_model.predict(costs[te])
        except ValueError as e:
            raise ConfigError(f'data: {config.data!r}: {e}') from None
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
                                              config=train_config(config),
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
        checkpoint.save(predictor, os.path.join(workdir, 'checkpoint'))
    if not np.all(np.isfinite(pred)):
        raise ValueError(f'{config.model}: non-finite predictions on '
                         f'{int((~np.isfinite(pred)).sum())} test rows (resolution not covered?)')
    out.update(metrics.all_metrics(pred, lat[te]))
    with open(os.path.join(workdir, 'metrics.json'), 'w') as f:
        json.dump(out, f, indent=1)
    plot_pred_vs_measured(
        os.path.join(workdir, 'pred_vs_measured.png'), pred, lat[te],
        f'{config.model} on {os.path.basename(str(config.data))}: '
        f'RMSE {out["rmse_ms"]:.3f} ms, MAPE {out["mape"]:.2f}%')
    return dict(out, test_pred_ms=pred)
