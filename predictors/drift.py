"""The current level of a device that drifts: level shifts in residuals, in measurement order.

Latency files are written in measurement order, and a device's speed moves
over a campaign (clocks, temperature, driver state, neighbours on a shared
host). A predictor fit on all rows learns the average level; one that will
score the device as it is now should carry the level of the latest rows.
:func:`last_level` finds the latest level shift in a model's validation
residuals (the rows measured just before the ones it will be scored on) and
returns the mean residual after it, which a fit adds to its predictions
(``Predictor.offset_ms``).

Example: the 2101.00732 RTX 2080 Ti file runs about 0.25 ms faster in its
last 2,000 rows than before; the paper split puts its validation rows at
70-85% and its test rows at 85-100%, so the last 500 validation rows already
show the new level.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def best_split(x: np.ndarray, min_segment: int) -> tuple[int, float]:
    """(t, z): the split of ``x`` into ``x[:t]``, ``x[t:]`` whose means differ most.

    ``z`` is the Welch statistic of the difference of the two means; both
    sides hold at least ``min_segment`` values. (0, 0.0) when ``x`` is too
    short to split.
    """
    x = np.asarray(x, np.float64)
    n = len(x)
    if n < 2 * min_segment:
        return 0, 0.0
    s1, s2 = np.cumsum(x), np.cumsum(x * x)
    t = np.arange(min_segment, n - min_segment + 1)
    left_n, right_n = t, n - t
    left_sum, right_sum = s1[t - 1], s1[-1] - s1[t - 1]
    left_sq, right_sq = s2[t - 1], s2[-1] - s2[t - 1]
    left_mean, right_mean = left_sum / left_n, right_sum / right_n
    left_var = np.maximum(left_sq / left_n - left_mean**2, 1e-12)
    right_var = np.maximum(right_sq / right_n - right_mean**2, 1e-12)
    z = (right_mean - left_mean) / np.sqrt(left_var / left_n + right_var / right_n)
    i = int(np.argmax(np.abs(z)))
    return int(t[i]), float(z[i])


def last_level(residuals_ms: Any,
               *,
               min_segment: int | None = None,
               z_threshold: float = 5.0) -> dict:
    """The level of the latest segment of residuals (measured minus predicted, in order).

    Splits the sequence at its most significant level shift and keeps the
    later part, again and again, while a shift with ``|z| > z_threshold``
    and at least ``min_segment`` rows on each side remains.

    Args:
      residuals_ms: float[m], in measurement order.
      min_segment: fewest rows a segment may have (default: 5% of the rows,
        at least 20).
      z_threshold: Welch statistic a shift needs to count.

    Returns:
      dict with ``offset_ms`` (mean residual of the latest segment: what to
      add to predictions), ``start`` (index where that segment begins),
      ``shifts`` (list of (index, z) of the shifts found) and ``rows``.
    """
    r = np.asarray(residuals_ms, np.float64).reshape(-1)
    if r.size == 0:
        return {'offset_ms': 0.0, 'start': 0, 'shifts': [], 'rows': 0}
    if not np.all(np.isfinite(r)):
        raise ValueError('residuals_ms: non-finite values; drop rows without a prediction first')
    if min_segment is None:
        min_segment = max(20, r.size // 20)
    start, shifts = 0, []
    while True:
        t, z = best_split(r[start:], min_segment)
        if t == 0 or abs(z) <= z_threshold:
            break
        start += t
        shifts.append((start, z))
    return {
        'offset_ms': float(r[start:].mean()),
        'start': int(start),
        'shifts': [(int(i), float(z)) for i, z in shifts],
        'rows': int(r.size - start),
    }


def slow_spells(latency_ms: Any,
                references_ms: list[Any],
                cut: int,
                *,
                half_window: int = 10,
                threshold: float = 0.10) -> dict:
    """Rows measured while a device ran off its usual speed, judged against other devices.

    Needs the same archs, in the same order, measured on other devices (the
    HELP files). Per reference device: the running median, over rows ``i -
    half_window .. i + half_window`` in file (measurement) order, of
    ``log(latency / reference)``, minus its median over the first ``cut``
    rows. A row lies in a spell when every reference sees a shift of the same
    sign beyond ``threshold``, so a spell of one reference device does not
    count. Archs in such files are drawn at random: no arch feature can tell
    a spell's rows apart, so no predictor of the arch can follow them.

    Args:
      latency_ms: float[n], the device's measurements in order.
      references_ms: other devices' measurements of the same n archs.
      cut: rows before it are the "usual" level (a benchmark's adaptation rows).
      half_window: half the running-median window (rows).
      threshold: relative shift that counts (0.10: 10%).

    Returns:
      dict with ``eval_share`` / ``adapt_share`` (share of rows in spells
      from ``cut`` on / before it) and ``mape_added``: what the spells add,
      in percent, to the MAPE on the rows from ``cut`` on of a predictor that
      would be exact but for the spells.
    """
    y = np.asarray(latency_ms, np.float64).reshape(-1)
    refs = [np.asarray(r, np.float64).reshape(-1) for r in references_ms]
    if not refs or any(r.shape != y.shape for r in refs):
        raise ValueError(f'references_ms: need one or more arrays of {y.size} latencies, got '
                         f'shapes {[r.shape for r in refs]}')
    if np.any(~(y > 0)) or any(np.any(~(r > 0)) for r in refs):
        raise ValueError('latency_ms / references_ms: every latency must be positive')
    if not 0 < cut < y.size:
        raise ValueError(f'cut: {cut}; allowed: 1 .. {y.size - 1}')
    if half_window < 0 or not threshold > 0:
        raise ValueError(f'half_window / threshold: {half_window} / {threshold}; allowed: '
                         '>= 0 rows / > 0')
    shifts = []
    for ref in refs:
        ratio = np.log(y / ref)
        med = np.array(
            [np.median(ratio[max(0, i - half_window):i + half_window + 1]) for i in range(y.size)])
        shifts.append(med - np.median(med[:cut]))
    shifts = np.stack(shifts)
    same = np.all(np.sign(shifts) == np.sign(shifts[0]), axis=0)
    shift = np.where(same, np.sign(shifts[0]) * np.abs(shifts).min(axis=0), 0.0)
    spell = np.abs(shift) > np.log1p(threshold)
    added = np.sum(np.abs(1.0 - np.exp(-shift[cut:]))[spell[cut:]]) / (y.size - cut)
    return {
        'eval_share': float(spell[cut:].mean()),
        'adapt_share': float(spell[:cut].mean()),
        'mape_added': float(100.0 * added),
    }
