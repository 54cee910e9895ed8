"""XLA's own cost analysis as a latency estimator: a yardstick, like the LUT.

Every row of a latency store keeps what XLA's cost analysis said about the
executable that was timed (``ofa_jax.latency.measure.cost_of``): its flops and
the bytes it accesses after fusion. :func:`fit` turns the two into a latency
estimate, an additive roofline

    latency_ms = t0 + ms_per_gflop * GFLOP + ms_per_gb * GB,

with non-negative throughput terms (``1 / ms_per_gflop`` and ``1 / ms_per_gb``
are the device's *effective* FLOP/s and bytes/s on these networks, fitted,
not datasheet peaks).

It answers "how far does XLA's own cost model get?" on the same split as the
learned predictors (``experiments.fit_predictor --config.model=xla_cost``).
It is not a search estimator: the costs of an arch come from compiling it,
seconds per arch on a CPU, where the predictors score 10^5 archs a second.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np

COST_FIELDS = ('flops', 'bytes_accessed')


@dataclasses.dataclass(frozen=True)
class CostModel:
    """``latency_ms = intercept_ms + ms_per_gflop * GFLOP + ms_per_gb * GB``."""

    intercept_ms: float
    ms_per_gflop: float
    ms_per_gb: float

    def predict(self, costs: np.ndarray) -> np.ndarray:
        """float64[n] latency (ms) from float[n, 2] (flops, bytes accessed)."""
        c = _check_costs(costs)
        return (self.intercept_ms + self.ms_per_gflop * c[:, 0] / 1e9 +
                self.ms_per_gb * c[:, 1] / 1e9)

    def to_dict(self) -> dict[str, Any]:
        """The coefficients, and the effective throughputs they imply (None: unused)."""
        rate = lambda ms_per_g: 1e3 / ms_per_g if ms_per_g > 0 else None
        return {
            'intercept_ms': self.intercept_ms,
            'ms_per_gflop': self.ms_per_gflop,
            'ms_per_gb': self.ms_per_gb,
            'effective_gflop_per_s': rate(self.ms_per_gflop),
            'effective_gb_per_s': rate(self.ms_per_gb),
        }


def _check_costs(costs: np.ndarray) -> np.ndarray:
    c = np.asarray(costs, np.float64)
    if c.ndim != 2 or c.shape[1] != len(COST_FIELDS):
        raise ValueError(f'costs: shape {c.shape}; need [n, {len(COST_FIELDS)}] with columns '
                         f'{COST_FIELDS}')
    bad = ~np.all(np.isfinite(c), axis=1)
    if bad.any():
        raise ValueError(f'costs: {int(bad.sum())} of {len(c)} rows have no XLA cost '
                         f'(first: row {int(np.argmax(bad))}); rows measured by '
                         'ofa_jax.latency record it, imported CSV rows do not')
    return c


def fit(costs: np.ndarray, latency_ms: np.ndarray) -> CostModel:
    """Least-squares fit of :class:`CostModel` with ``ms_per_gflop, ms_per_gb >= 0``.

    Exact non-negative least squares: with two constrained terms the optimum
    is the best of the unconstrained fits on each subset of them whose
    coefficients come out non-negative.

    Args:
      costs: float[n, 2] XLA flops and bytes accessed per row.
      latency_ms: float[n] measured latencies.
    """
    c = _check_costs(costs) / 1e9
    y = np.asarray(latency_ms, np.float64).reshape(-1)
    if len(y) != len(c):
        raise ValueError(f'latency_ms: {len(y)} rows for {len(c)} rows of costs')
    if len(y) < 3:
        raise ValueError(f'fit: {len(y)} rows; need at least 3 for 3 coefficients')
    best = None
    for keep in itertools.chain.from_iterable(
            itertools.combinations(range(2), k) for k in (2, 1, 0)):
        a = np.concatenate([np.ones((len(y), 1)), c[:, list(keep)]], axis=1)
        sol = np.linalg.lstsq(a, y, rcond=None)[0]
        if np.any(sol[1:] < 0):
            continue
        sse = float(np.sum((a @ sol - y)**2))
        if best is None or sse < best[0]:
            coef = np.zeros(3)
            coef[0] = sol[0]
            coef[[1 + k for k in keep]] = sol[1:]
            best = (sse, coef)
    coef = best[1]  # The intercept-only fit is always feasible.
    return CostModel(float(coef[0]), float(coef[1]), float(coef[2]))
