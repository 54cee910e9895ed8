"""Measured-proxy baseline: the target's latency as a fit of other devices' measurements.

Given P proxy devices that measured the same archs as the target, fit

    y = w . x + c                (linear, the headline baseline), or
    log y = w . log x + c        (``log_space=True``)

on the k target rows that were measured, then apply it to any rows the
proxies measured. It is not a predictor of unseen archs (it reads the
proxies' measurements of the evaluation archs); it is the bar a transfer
strategy must clear before its model of the architecture is worth anything.

Fallback when the rows are too few. A full fit has P + 1 parameters; with
fewer rows (k <= P) the least-squares problem is under-determined and any
exact solution is arbitrary. Rather than a ridge, whose answer depends on an
arbitrary prior on the weights, the fallback is a one-parameter fit on the
proxies' mean ``m = mean_p x_p``: ``y = s m`` (least squares through the
origin) or, in log space, a scale on the geometric mean,
``log y = mean_p log x_p + c``. Devices differ mostly by an overall speed
factor, which one row already fixes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

METHODS = ('least_squares', 'mean_scale')


class ProxyFit(NamedTuple):
    """What :func:`proxy_fit` returns: ``y = weights . x + offset`` (or in logs)."""

    weights: np.ndarray  # float64[P], one per proxy device
    offset: float
    log_space: bool
    method: str  # one of METHODS: the full fit or the one-parameter fallback


def _proxies(name: str, proxies_ms, num_proxies: int | None = None) -> np.ndarray:
    x = np.asarray(proxies_ms, np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f'{name}: shape {np.shape(proxies_ms)}; allowed: [P, k] '
                         '(one row per proxy device) or [k] for one proxy')
    if num_proxies is not None and x.shape[0] != num_proxies:
        raise ValueError(f'{name}: {x.shape[0]} proxy rows (shape {x.shape}); the fit has '
                         f'{num_proxies} weights; allowed: shape [{num_proxies}, n]')
    if not np.all(np.isfinite(x)):
        raise ValueError(f'{name}: non-finite values; allowed: finite latencies in ms')
    return x


def proxy_fit(proxies_ms, target_ms, *, log_space: bool = False, ridge: float = 0.0) -> ProxyFit:
    """Fits the target's latencies on the proxies' measurements of the same rows.

    Args:
      proxies_ms: float[P, k], each proxy device's measured latency of the k
        rows (float[k] for one proxy).
      target_ms: float[k], the target's measured latency of the same rows.
      log_space: fit ``log y = w . log x + c`` instead of ``y = w . x + c``.
      ridge: L2 penalty on the weights of the full fit (the offset is free);
        0 (the default) is ordinary least squares. Scale-dependent in linear
        space (latencies in ms).

    Returns:
      A :class:`ProxyFit`. With k >= P + 1 rows every weight and the offset
      are fit (``method='least_squares'``); with 1 <= k <= P the one-parameter
      fallback on the proxies' mean (``method='mean_scale'``, see the module
      docstring), its weights all equal.

    Raises:
      ValueError: naming the argument, for shapes that disagree, no rows,
        non-finite values, non-positive values in log space or ridge < 0.
    """
    x = _proxies('proxies_ms', proxies_ms)
    y = np.asarray(target_ms, np.float64)
    if y.ndim != 1 or y.shape[0] != x.shape[1]:
        raise ValueError(f'target_ms: shape {y.shape}; allowed: [{x.shape[1]}], one value per '
                         f'column of proxies_ms (shape {x.shape})')
    if y.shape[0] == 0:
        raise ValueError('target_ms: no rows; allowed: at least one measured target row')
    if not np.all(np.isfinite(y)):
        raise ValueError('target_ms: non-finite values; allowed: finite latencies in ms')
    if ridge < 0:
        raise ValueError(f'ridge: {ridge}; allowed: >= 0')
    if log_space:
        for name, v in (('proxies_ms', x), ('target_ms', y)):
            if np.any(v <= 0):
                raise ValueError(f'{name}: values <= 0; allowed with log_space: positive')
        x, y = np.log(x), np.log(y)
    num_proxies, k = x.shape
    if k <= num_proxies:
        if log_space:  # log y = mean_p log x_p + c: a scale on the geometric mean
            return ProxyFit(np.full(num_proxies, 1.0 / num_proxies),
                            float(np.mean(y - x.mean(axis=0))), True, 'mean_scale')
        mean = np.mean(x, axis=0)
        scale = float(mean @ y / (mean @ mean))
        return ProxyFit(np.full(num_proxies, scale / num_proxies), 0.0, False, 'mean_scale')
    # Centring frees the offset from the ridge; ridge 0 is plain least squares.
    x_mean, y_mean = x.mean(axis=1), y.mean()
    xc, yc = x - x_mean[:, None], y - y_mean
    gram = xc @ xc.T + ridge * np.eye(num_proxies)
    weights = np.linalg.lstsq(gram, xc @ yc, rcond=None)[0]
    return ProxyFit(weights, float(y_mean - weights @ x_mean), bool(log_space), 'least_squares')


def proxy_apply(fit: ProxyFit, proxies_ms) -> np.ndarray:
    """float64[n]: the fit of :func:`proxy_fit` applied to float[P, n] proxy latencies."""
    x = _proxies('proxies_ms', proxies_ms, len(fit.weights))
    if fit.log_space:
        if np.any(x <= 0):
            raise ValueError('proxies_ms: values <= 0; allowed with log_space: positive')
        return np.exp(np.asarray(fit.weights) @ np.log(x) + fit.offset)
    return np.asarray(fit.weights) @ x + fit.offset
