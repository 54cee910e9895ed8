"""Data hygiene for (arch, latency) rows: count repeated archs, merge them, split by arch.

A latency file may time the same sub-network more than once (re-runs, merged
campaigns, two OFA dicts that differ only in blocks past a stage's depth).
Fitting on such rows and scoring on a random split leaks: the same arch lands
in train and test, and the test error measures memory, not prediction. This
module finds the repeats (by canonical arch, :func:`ofa_jax.space.canonicalize_np`)
and offers two remedies:

* :func:`dedupe` merges each distinct arch into one row (mean, median or
  first latency) and reports how many rows were repeats;
* :func:`split_by_arch` splits rows into train/val/test with every distinct
  arch in exactly one split, keeping all its rows.

Example::

    table = csvio.read_ofa_csv(path)
    groups = dataset.arch_groups(table.archs)
    print(f'{groups.num_duplicates} duplicate rows, {groups.num_groups} distinct archs')
    train, val, test = dataset.split_by_arch(table.archs, (0.8, 0.1, 0.1), seed=0)

How many usable rows are enough is the caller's check: ``len(table)``,
``groups.num_groups`` and ``DedupeResult.num_rows`` give the counts.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ofa_jax import csvio
from ofa_jax import space

HOW = ('mean', 'median', 'first')


@dataclasses.dataclass(frozen=True)
class Groups:
    """Which rows share a (canonical) arch.

    Attributes:
      ids: int64[n], the group of each row; groups are numbered 0, 1, ... in
        order of their first row.
      counts: int64[g], rows per group.
      first: int64[g], index of each group's first row.
    """

    ids: np.ndarray
    counts: np.ndarray
    first: np.ndarray

    @property
    def num_rows(self) -> int:
        """Rows in all (n)."""
        return int(self.ids.shape[0])

    @property
    def num_groups(self) -> int:
        """Distinct archs (g)."""
        return int(self.counts.shape[0])

    @property
    def num_duplicates(self) -> int:
        """Rows that repeat an earlier row's arch (n - g)."""
        return self.num_rows - self.num_groups

    @property
    def num_repeated(self) -> int:
        """Distinct archs that occur more than once."""
        return int(np.count_nonzero(self.counts > 1))


@dataclasses.dataclass(frozen=True)
class DedupeResult:
    """One row per distinct arch, plus what was merged.

    Attributes:
      archs: batched canonical ``Arch`` [g], in order of first appearance.
      latency_ms: float64[g], the merged latency of each arch.
      groups: the :class:`Groups` of the input rows (``groups.ids[i]`` is the
        output row of input row ``i``).
    """

    archs: space.Arch
    latency_ms: np.ndarray
    groups: Groups

    @property
    def num_rows(self) -> int:
        """Rows after merging (distinct archs)."""
        return self.groups.num_groups

    @property
    def num_duplicates(self) -> int:
        """Input rows merged away (input rows - distinct archs)."""
        return self.groups.num_duplicates

    @property
    def counts(self) -> np.ndarray:
        """int64[g]: input rows merged into each output row."""
        return self.groups.counts


def _batch(archs: space.Arch, what: str) -> space.Arch:
    """``archs`` validated, canonical, on the host, with exactly one batch axis."""
    shape = tuple(np.shape(archs.resolution))
    if len(shape) != 1:
        raise ValueError(f'{what}: archs.resolution has shape {shape}; expected a batch of '
                         'archs with one leading axis, e.g. (n,)')
    host = space.to_numpy(archs)
    space.validate(host)
    return space.canonicalize_np(host)


def arch_groups(archs: space.Arch) -> Groups:
    """Groups rows by canonical arch (two archs differing only past a depth are equal).

    Args:
      archs: batched ``Arch`` [n] (validated: ``ValueError`` naming the field
        for an invalid gene).

    Returns:
      The :class:`Groups`; ``groups.num_duplicates`` is how many rows repeat an
      arch seen earlier.
    """
    a = _batch(archs, 'arch_groups')
    n = int(a.resolution.shape[0])
    if n == 0:
        empty = np.zeros((0,), np.int64)
        return Groups(ids=empty, counts=empty, first=empty)
    rows = np.concatenate([a.kernel, a.expand, a.depth, a.resolution[:, None]], axis=1)
    _, first, inverse, counts = np.unique(rows,
                                          axis=0,
                                          return_index=True,
                                          return_inverse=True,
                                          return_counts=True)
    order = np.argsort(first, kind='stable')  # Renumber groups by first appearance.
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return Groups(ids=rank[inverse.reshape(-1)].astype(np.int64),
                  counts=counts[order].astype(np.int64),
                  first=first[order].astype(np.int64))


def dedupe(archs: space.Arch,
           latency_ms: Sequence[float] | np.ndarray,
           how: str = 'mean') -> DedupeResult:
    """Merges rows with the same canonical arch into one.

    Args:
      archs: batched ``Arch`` [n].
      latency_ms: float[n] latencies (finite).
      how: 'mean', 'median' (of each arch's rows) or 'first' (the first row's).

    Returns:
      A :class:`DedupeResult`: ``num_duplicates`` rows were merged away,
      ``num_rows`` distinct archs remain.

    Raises:
      ValueError: an unknown ``how``, a length mismatch, a non-finite
        latency (naming its row) or an invalid arch (naming the field).
    """
    if how not in HOW:
        raise ValueError(f'dedupe: how={how!r}; allowed: {", ".join(HOW)}')
    y = np.asarray(latency_ms, np.float64).reshape(-1)
    groups = arch_groups(archs)
    if y.shape[0] != groups.num_rows:
        raise ValueError(f'dedupe: {groups.num_rows} archs but {y.shape[0]} latencies')
    bad = np.flatnonzero(~np.isfinite(y))
    if bad.size:
        raise ValueError(f'dedupe: latency_ms[{bad[0]}] is {y[bad[0]]}; allowed: finite numbers')
    if how == 'first':
        merged = y[groups.first]
    elif how == 'mean':
        merged = np.bincount(groups.ids, weights=y, minlength=groups.num_groups) / groups.counts
    else:
        order = np.lexsort((y, groups.ids))  # By group, then latency.
        starts = np.concatenate([[0], np.cumsum(groups.counts)[:-1]])
        lo = y[order][starts + (groups.counts - 1) // 2]
        hi = y[order][starts + groups.counts // 2]
        merged = (lo + hi) / 2
    host = space.canonicalize_np(space.to_numpy(archs))
    return DedupeResult(archs=host[groups.first], latency_ms=merged, groups=groups)


def dedupe_table(table: csvio.LatencyTable, how: str = 'mean') -> tuple[csvio.LatencyTable, int]:
    """:func:`dedupe` on a CSV table; returns (merged table, duplicate rows merged away).

    Extra columns keep the first row's values of each arch.
    """
    result = dedupe(table.archs, table.latency_ms, how)
    first = result.groups.first
    merged = csvio.LatencyTable(archs=result.archs,
                                latency_ms=result.latency_ms,
                                extra={
                                    k: [v[i] for i in first] for k, v in table.extra.items()
                                },
                                path=table.path)
    return merged, result.num_duplicates


def split_by_arch(archs: space.Arch,
                  fractions: Sequence[float] = (0.8, 0.1, 0.1),
                  *,
                  seed: int = 0) -> tuple[np.ndarray, ...]:
    """Row indices of each split, with every distinct arch in exactly one split.

    Distinct archs are shuffled with ``numpy.random.default_rng(seed)`` and
    cut by ``fractions`` of the number of distinct archs (so a split's share of
    *rows* can differ slightly when archs repeat); all rows of an arch go to
    its split.

    Args:
      archs: batched ``Arch`` [n].
      fractions: non-negative shares of the distinct archs, summing to 1.
      seed: shuffle seed.

    Returns:
      One sorted int64 index array per fraction (disjoint, covering all rows).
    """
    fr = np.asarray(fractions, np.float64).reshape(-1)
    if fr.size == 0 or not np.all(np.isfinite(fr)) or np.any(fr < 0) or abs(fr.sum() - 1) > 1e-6:
        raise ValueError(f'split_by_arch: fractions={tuple(fractions)!r}; allowed: non-negative '
                         'numbers summing to 1')
    groups = arch_groups(archs)
    perm = np.random.default_rng(seed).permutation(groups.num_groups)
    cuts = np.round(np.cumsum(fr) * groups.num_groups).astype(np.int64)
    cuts[-1] = groups.num_groups
    split_of_group = np.empty(groups.num_groups, np.int64)
    for i, (lo, hi) in enumerate(zip(np.concatenate([[0], cuts[:-1]]), cuts)):
        split_of_group[perm[lo:hi]] = i
    split = split_of_group[groups.ids]
    return tuple(np.flatnonzero(split == i).astype(np.int64) for i in range(fr.size))
