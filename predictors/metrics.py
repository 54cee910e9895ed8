"""Accuracy metrics of latency predictors (host-side numpy).

``rmse_ms`` is the true root of the mean squared error. The 2101.00732 code
reported the mean of per-sample roots, which is the mean absolute error; we
report both, under their right names.
"""

from __future__ import annotations

import numpy as np

METRIC_NAMES = ('rmse_ms', 'mae_ms', 'mape', 'acc5', 'acc10', 'kendall_tau', 'spearman', 'pearson')


def _pair(pred, true) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, np.float64).reshape(-1)
    true = np.asarray(true, np.float64).reshape(-1)
    if pred.shape != true.shape or pred.size == 0:
        raise ValueError(f'metrics: prediction shape {pred.shape} and target shape '
                         f'{true.shape} must be equal and non-empty')
    return pred, true


def rmse(pred, true) -> float:
    """Root mean squared error (same unit as the inputs)."""
    pred, true = _pair(pred, true)
    return float(np.sqrt(np.mean((pred - true)**2)))


def mae(pred, true) -> float:
    """Mean absolute error."""
    pred, true = _pair(pred, true)
    return float(np.mean(np.abs(pred - true)))


def mape(pred, true) -> float:
    """Mean absolute percentage error, in percent."""
    pred, true = _pair(pred, true)
    return float(100.0 * np.mean(np.abs(pred - true) / np.abs(true)))


def within(pred, true, tolerance: float) -> float:
    """Share (0..1) of predictions within +-``tolerance`` (relative) of the target."""
    pred, true = _pair(pred, true)
    return float(np.mean(np.abs(pred - true) <= tolerance * np.abs(true)))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x, kind='mergesort')
    xs = x[order]
    ranks = np.empty(len(x), np.float64)
    # Ties: every member of a run of equal values gets the run's mean rank.
    starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float('nan')


def pearson(pred, true) -> float:
    """Pearson (linear) correlation coefficient; NaN when either input is constant."""
    pred, true = _pair(pred, true)
    return _correlation(pred, true)


def spearman(pred, true) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks)."""
    pred, true = _pair(pred, true)
    return _correlation(_average_ranks(pred), _average_ranks(true))


def kendall_tau(pred, true, *, block: int = 2048) -> float:
    """Kendall's tau-b, O(n^2) vectorised in row blocks (fine for n <= ~20k)."""
    pred, true = _pair(pred, true)
    n = len(pred)
    concordant = 0.0
    ties_a = ties_b = 0.0
    for start in range(0, n, block):
        da = np.sign(pred[start:start + block, None] - pred[None, :])
        db = np.sign(true[start:start + block, None] - true[None, :])
        concordant += float((da * db).sum())
        ties_a += float((da == 0).sum())
        ties_b += float((db == 0).sum())
    # Ordered pairs counted twice and the diagonal counted as ties: undo both.
    pairs = n * (n - 1)
    n1 = (ties_a - n)
    n2 = (ties_b - n)
    denom = np.sqrt((pairs - n1) * (pairs - n2))
    return float(concordant / denom) if denom > 0 else float('nan')


def all_metrics(pred, true) -> dict[str, float]:
    """Every metric of ``METRIC_NAMES`` (mape in percent, acc5/acc10 as shares)."""
    return {
        'rmse_ms': rmse(pred, true),
        'mae_ms': mae(pred, true),
        'mape': mape(pred, true),
        'acc5': within(pred, true, 0.05),
        'acc10': within(pred, true, 0.10),
        'kendall_tau': kendall_tau(pred, true),
        'spearman': spearman(pred, true),
        'pearson': pearson(pred, true),
    }
