"""Split-conformal upper bounds on latency, for any estimator.

An estimator (predictor, LUT, XLA cost fit) says ``p`` ms; the device measures
``y``. On held-out calibration rows (never trained on) the *relative* score
``s = log(y / p)`` is collected, so the bound scales with latency. For a
coverage ``c``, the split-conformal quantile (Vovk et al. 2005; Lei et al.,
"Distribution-free predictive inference for regression", JASA 2018) is the
``ceil((n + 1) c)``-th smallest of the ``n`` scores, ``q_c``, and

    upper_c(arch) = p(arch) * exp(q_c)

holds ``P(y <= upper_c) >= c`` for a new row exchangeable with the
calibration rows. Where residuals are not uniform over latency (a LUT misses
more on large networks), the rows are cut into latency ranges by the
predicted value (:func:`fit`, ``max_bins``) and each range has its own
quantile ("Mondrian" conformal, Vovk et al. 2005, ch. 4); a range needs
``min_per_bin`` rows.

:class:`Calibration` is JSON-able (``to_dict``/``from_dict``, ``save``/``load``)
and its bound is jittable (:meth:`Calibration.bound_fn`), so a search can
enforce ``upper_c(arch) <= budget`` inside its compiled loop.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import files

FILE = 'conformal.json'
FORMAT = 'ofa_jax.conformal/1'

MIN_SPREAD = 1e-4  # Median ensemble spread (log latency) below which members count as one.


def check_coverage(coverage: Any, field: str = 'coverage') -> float:
    """``coverage`` as a float in (0, 1); ValueError naming ``field`` otherwise."""
    try:
        c = float(coverage)
    except (TypeError, ValueError):
        raise ValueError(f'{field}: {coverage!r}; allowed: a number in (0, 1), e.g. 0.9') from None
    if not 0.0 < c < 1.0 or not math.isfinite(c):
        raise ValueError(f'{field}: {coverage!r}; allowed: a number in (0, 1), e.g. 0.9')
    return c


def min_rows(coverage: float) -> int:
    """Fewest calibration rows for which ``coverage`` has a finite bound: ceil(c / (1 - c))."""
    c = check_coverage(coverage)
    return int(math.ceil(c / (1.0 - c) - 1e-9))


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The ``ceil((n + 1) c)``-th smallest score (``inf`` when that exceeds ``n``)."""
    s = np.sort(np.asarray(scores, np.float64))
    k = int(math.ceil((s.size + 1) * check_coverage(coverage) - 1e-9))
    return float(s[k - 1]) if 1 <= k <= s.size else math.inf


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Held-out relative scores of one estimator, by predicted-latency range.

    Attributes:
      edges: float64[b - 1], predicted-latency edges between the b ranges
        (ascending; empty for one range). Range i holds predictions in
        ``[edges[i - 1], edges[i])``.
      scores: b sorted float64 arrays of ``log(measured / predicted)``.
      estimator: what was calibrated (label, for reports).
      rows: which rows were the calibration set (label, for reports).
      spread_floor: 0 for plain scores. Else the scores are
        ``log(measured / predicted) / max(spread, spread_floor)``, ``spread``
        an ensemble's per-row spread (:func:`log_spread`), and a bound needs
        the spread of the rows it bounds (normalised conformal, Papadopoulos
        et al. 2008): wider where the members disagree, tighter where they agree.
    """

    edges: np.ndarray
    scores: tuple[np.ndarray, ...]
    estimator: str = ''
    rows: str = ''
    spread_floor: float = 0.0  # > 0: scores are normalised by an ensemble's spread

    @property
    def num_rows(self) -> int:
        """Calibration rows in all."""
        return int(sum(s.size for s in self.scores))

    def quantiles(self, coverage: float) -> np.ndarray:
        """float64[b]: the score quantile ``q_c`` of each range (``inf`` with too few rows)."""
        c = check_coverage(coverage)
        return np.asarray([conformal_quantile(s, c) for s in self.scores], np.float64)

    def factors(self, coverage: float) -> np.ndarray:
        """float64[b]: ``exp(q_c)`` of each range: bound / prediction for plain scores."""
        with np.errstate(over='ignore'):
            return np.exp(self.quantiles(coverage))

    def check_usable(self, coverage: float, field: str = 'coverage') -> None:
        """ValueError naming ``field`` when some range has too few rows for ``coverage``."""
        c = check_coverage(coverage, field)
        short = [s.size for s in self.scores if s.size < min_rows(c)]
        if short:
            raise ValueError(f'{field}: {c} needs >= {min_rows(c)} calibration rows per latency '
                             f'range; {self.estimator or "the estimator"} has '
                             f'{[s.size for s in self.scores]} ({self.rows or "held-out rows"}); '
                             f'allowed: coverage <= {self.max_coverage():.3f}, or more rows')

    def max_coverage(self) -> float:
        """The largest coverage every range can bound: n / (n + 1) of the smallest range."""
        n = min(s.size for s in self.scores)
        return n / (n + 1.0)

    @property
    def normalized(self) -> bool:
        """Whether bounds need the ensemble spread of the rows they bound."""
        return self.spread_floor > 0

    def _check_spread(self, spread: Any, where: str) -> None:
        if self.normalized and spread is None:
            raise ValueError(f'{where}: this calibration is normalised by an ensemble\'s spread '
                             f'({self.estimator or "estimator"}); pass the spread of the rows')

    def upper(self, predicted_ms: Any, coverage: float, spread: Any = None) -> np.ndarray:
        """float64 upper bounds of predictions ``predicted_ms`` at ``coverage`` (host).

        ``spread``: the rows' ensemble spread (:func:`log_spread`), needed when
        :attr:`normalized`, ignored otherwise.
        """
        p = np.asarray(predicted_ms, np.float64)
        self.check_usable(coverage)
        self._check_spread(spread, 'upper')
        q = self.quantiles(coverage)[np.searchsorted(self.edges, p, side='right')]
        if self.normalized:
            q = q * np.maximum(np.asarray(spread, np.float64), self.spread_floor)
        return p * np.exp(q)

    def bound_fn(self,
                 latency_fn: Callable[[Any], Any],
                 coverage: float,
                 spread_fn: Callable[[Any], Any] | None = None) -> Callable[[Any], jnp.ndarray]:
        """A jittable ``archs -> float32[n]`` upper bound of ``latency_fn`` at ``coverage``.

        ``spread_fn``: ``archs -> float[n]`` ensemble spread, needed when
        :attr:`normalized` (e.g. ``Predictor.log_spread``).
        """
        self.check_usable(coverage)
        self._check_spread(spread_fn, 'bound_fn')
        logq = jnp.asarray(self.quantiles(coverage), jnp.float32)
        edges = jnp.asarray(self.edges, jnp.float32)
        floor = float(self.spread_floor)

        def bound(archs):
            p = jnp.asarray(latency_fn(archs), jnp.float32)
            q = logq[jnp.searchsorted(edges, p, side='right')]
            if floor > 0:
                q = q * jnp.maximum(jnp.asarray(spread_fn(archs), jnp.float32), floor)
            return p * jnp.exp(q)

        return bound

    def coverage_of(self,
                    predicted_ms: Any,
                    measured_ms: Any,
                    coverage: float,
                    spread: Any = None) -> float:
        """Share of rows whose measurement is within the bound (checked on rows not fitted)."""
        y = np.asarray(measured_ms, np.float64)
        return float(np.mean(y <= self.upper(predicted_ms, coverage, spread)))

    def to_dict(self) -> dict[str, Any]:
        return {
            'format': FORMAT,
            'estimator': self.estimator,
            'rows': self.rows,
            'edges_ms': [float(e) for e in self.edges],
            'log_ratio_scores': [[float(v) for v in s] for s in self.scores],
            'spread_floor': float(self.spread_floor),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = 'calibration') -> 'Calibration':
        """Inverse of :meth:`to_dict`; ValueError naming ``where`` for a malformed dict."""
        if not isinstance(d, dict) or d.get('format') != FORMAT:
            raise ValueError(f'{where}: not an {FORMAT} calibration (format '
                             f'{d.get("format") if isinstance(d, dict) else type(d).__name__!r})')
        try:
            edges = np.asarray(d['edges_ms'], np.float64).reshape(-1)
            scores = tuple(
                np.sort(np.asarray(s, np.float64).reshape(-1)) for s in d['log_ratio_scores'])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f'{where}: malformed calibration ({e})') from None
        if len(scores) != edges.size + 1 or any(s.size == 0 for s in scores):
            raise ValueError(f'{where}: {len(scores)} score lists for {edges.size} edges; '
                             'expected edges + 1 non-empty lists')
        if not (np.all(np.isfinite(edges)) and all(np.all(np.isfinite(s)) for s in scores)):
            raise ValueError(f'{where}: non-finite edge or score')
        if np.any(np.diff(edges) <= 0):
            raise ValueError(f'{where}: edges_ms not strictly ascending')
        try:
            floor = float(d.get('spread_floor', 0.0))
        except (TypeError, ValueError):
            floor = float('nan')
        if not (np.isfinite(floor) and floor >= 0):
            raise ValueError(f'{where}: spread_floor {d.get("spread_floor")!r}; allowed: a '
                             'finite number >= 0')
        return cls(edges=edges,
                   scores=scores,
                   estimator=str(d.get('estimator', '')),
                   rows=str(d.get('rows', '')),
                   spread_floor=floor)

    def save(self, path: str | os.PathLike) -> str:
        """Writes the JSON (atomically) to ``path``, or ``path/conformal.json`` for a folder."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, FILE)
        files.write_json(path, self.to_dict())
        return path


def load(path: str | os.PathLike) -> Calibration:
    """Reads a calibration file (or ``folder/conformal.json``); ValueError naming it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, FILE)
    try:
        with open(path) as f:
            d = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f'{path}: no calibration file') from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f'{path}: unreadable calibration ({e})') from None
    return Calibration.from_dict(d, where=path)


def fit(predicted_ms: Sequence[float] | np.ndarray,
        measured_ms: Sequence[float] | np.ndarray,
        *,
        max_bins: int = 3,
        min_per_bin: int = 40,
        estimator: str = '',
        rows: str = '',
        spread: Sequence[float] | np.ndarray | None = None) -> Calibration:
    """Calibrates on held-out rows (predictions of an estimator never fitted on them).

    Args:
      predicted_ms, measured_ms: float[n] > 0 on the same rows.
      spread: float[n] >= 0, an ensemble's spread on those rows
        (:func:`log_spread`): the scores are normalised by it (floored at a
        quarter of its median, so that members that happen to agree do not
        make a bound of zero width). ``None``, or members that agree (median
        spread <= :data:`MIN_SPREAD`): plain relative scores.
      max_bins: at most this many latency ranges, cut at quantiles of the
        predictions; fewer when there are under ``min_per_bin`` rows per range.
      min_per_bin: rows a range needs (40 bounds coverage 0.95 with 2 rows
        above the quantile).
      estimator, rows: labels kept for reports.

    Raises:
      ValueError: lengths differ, fewer than 2 rows, or a value not finite
        and positive (naming its row).
    """
    p = np.asarray(predicted_ms, np.float64).reshape(-1)
    y = np.asarray(measured_ms, np.float64).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f'conformal.fit: {p.size} predictions but {y.size} measurements')
    if p.size < 2:
        raise ValueError(f'conformal.fit: {p.size} calibration rows; allowed: >= 2 (held-out '
                         'rows the estimator was not fitted on)')
    for name, v in (('predicted_ms', p), ('measured_ms', y)):
        bad = np.flatnonzero(~(np.isfinite(v) & (v > 0)))
        if bad.size:
            raise ValueError(f'conformal.fit: {name}[{bad[0]}] = {v[bad[0]]}; allowed: finite '
                             'numbers > 0')
    if int(max_bins) < 1 or int(min_per_bin) < 1:
        raise ValueError(f'conformal.fit: max_bins={max_bins}, min_per_bin={min_per_bin}; '
                         'allowed: integers >= 1')
    bins = max(1, min(int(max_bins), p.size // int(min_per_bin)))
    edges = np.unique(np.quantile(p, np.arange(1, bins) / bins)) if bins > 1 else np.zeros(0)
    which = np.searchsorted(edges, p, side='right')
    s = np.log(y / p)
    floor = 0.0
    if spread is not None:
        sd = np.asarray(spread, np.float64).reshape(-1)
        if sd.shape != p.shape or not np.all(np.isfinite(sd) & (sd >= 0)):
            raise ValueError(f'conformal.fit: spread must be {p.size} finite numbers >= 0')
        if float(np.median(sd)) > MIN_SPREAD:  # Else the members agree: plain scores.
            floor = 0.25 * float(np.median(sd))
            s = s / np.maximum(sd, floor)
    scores = tuple(np.sort(s[which == i]) for i in range(edges.size + 1))
    if any(x.size == 0 for x in scores):  # Ties in p: fall back to one range.
        edges, scores = np.zeros(0), (np.sort(s),)
    return Calibration(edges=edges,
                       scores=scores,
                       estimator=estimator,
                       rows=rows,
                       spread_floor=floor)


def log_spread(members_ms: Any) -> Any:
    """float[n]: standard deviation over an ensemble's members of ``log(latency)``.

    ``members_ms``: float[K, n] member predictions (numpy or jax; jittable).
    """
    xp = jnp if isinstance(members_ms, jax.Array) else np
    return xp.std(xp.log(xp.maximum(members_ms, 1e-6)), axis=0)
