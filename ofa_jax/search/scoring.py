"""Scoring a population with estimator callables, on the rows that need it only.

Objectives (``archs -> float32[n]``) and constraints (``archs -> bool[n]``)
are user callables, often costly (MLP predictors). :func:`score_where` calls
one on the masked rows of a batch only, packed and a chunk at a time, so the
cost follows the number of new sub-networks rather than the population size.
Two wrappers tell it more about the callable: :class:`Shared` (closes over no
vmapped value, so the rows of all vmapped searches can share one batch) and
:class:`ScoredConstraint` (a costly shared score and a cheap per-search test).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
from jax import custom_batching
import jax.numpy as jnp

from ofa_jax import space
from ofa_jax.search.state import Constraint


def true_first(mask: jax.Array) -> jax.Array:
    """int32 indices that put the True entries of ``mask`` first, each group in its order.

    A stable partition by one prefix sum and one scatter: O(n), where a sort
    (XLA:CPU's comparator-based sort) cost far more per generation.
    """
    n = mask.shape[0]
    # One prefix sum: entry i has inc[i] True and i + 1 - inc[i] False entries up to it.
    inc = jnp.cumsum(mask, dtype=jnp.int32)
    idx = jnp.arange(n, dtype=jnp.int32)
    pos = jnp.where(mask, inc - 1, inc[-1] + idx - inc)
    return jnp.zeros((n,), jnp.int32).at[pos].set(idx)


def check(constraint: Constraint, genomes: space.Arch) -> jax.Array:
    """bool[n]: ``constraint`` on the canonical form of every genome."""
    ok = jnp.asarray(constraint(space.canonicalize(genomes)))
    return ok.astype(bool).reshape(genomes.resolution.shape)


@dataclasses.dataclass(frozen=True)
class Shared:
    """Marks a scoring function that closes over no ``vmap``-ped value.

    Under ``jax.vmap`` (many searches in one call) :func:`score_where` then
    packs the rows of all searches together and scores them in one loop, so
    the cost follows the total number of new rows, not the busiest search's.
    Wrap only functions shared by all searches (a predictor); one that closes
    over a per-search value (a vmapped budget) must stay unwrapped.
    """

    fn: Callable[[space.Arch], jax.Array]

    def __call__(self, archs: space.Arch) -> jax.Array:
        return self.fn(archs)


@dataclasses.dataclass(frozen=True)
class ScoredConstraint:
    """The constraint ``accept(score(archs), archs)``, split so its costly part is shared.

    Attributes:
      score: ``archs -> float[n]`` (e.g. a latency predictor); must close over
        no vmapped value (see :class:`Shared`).
      accept: ``(scores, archs) -> bool[n]``, cheap, may use per-search values
        (``lambda ms, _: ms <= budget``).
    """

    score: Callable[[space.Arch], jax.Array]
    accept: Callable[[jax.Array, space.Arch], jax.Array]

    def __call__(self, archs: space.Arch) -> jax.Array:
        return self.accept(self.score(archs), archs)


def check_where(constraint: Constraint, genomes: space.Arch, mask: jax.Array,
                chunk: int) -> jax.Array:
    """bool[n]: the constraint on the masked rows only (False elsewhere).

    A :class:`ScoredConstraint` has its score computed as :class:`Shared`
    on the masked rows, and its ``accept`` test on the whole batch.
    """
    if isinstance(constraint, ScoredConstraint):
        archs = space.canonicalize(genomes)
        scores = score_where(Shared(constraint.score), archs, mask, chunk, jnp.nan)
        return jnp.asarray(constraint.accept(scores, archs), bool) & mask
    return score_where(lambda a: check(constraint, a), genomes, mask, chunk, False)


def score_where(fn: Callable[[space.Arch], jax.Array], archs: space.Arch, mask: jax.Array,
                chunk: int, fill: Any) -> jax.Array:
    """``fn(archs)`` where ``mask``, ``fill`` elsewhere, calling ``fn`` on masked rows only.

    The masked rows are packed to the front and scored ``chunk`` at a time in
    a ``lax.while_loop`` that stops once all are covered, so the cost follows
    the number of masked rows, not the batch size. Under ``vmap`` the loop
    runs until every search's rows are covered, unless ``fn`` is
    :class:`Shared`: then all searches' rows are packed into one batch.
    ``chunk`` 0 (or >= the batch) scores all rows at once.
    """
    if isinstance(fn, Shared):
        return _shared_score_where(fn.fn, chunk, fill)(archs, mask)
    n = mask.shape[0]
    if not chunk or chunk >= n:
        values = jnp.asarray(fn(archs))
        return jnp.where(mask.reshape(mask.shape + (1,) * (values.ndim - 1)), values, fill)
    out_type = jax.eval_shape(fn, jax.tree_util.tree_map(lambda x: x[:chunk], archs))
    num_chunks = -(-n // chunk)
    # Index n marks padding: gathers clip it, scatters drop it.
    order = jnp.concatenate([true_first(mask), jnp.full((num_chunks * chunk - n,), n, jnp.int32)])
    count = jnp.sum(mask)

    def body(carry):
        i, out = carry
        idx = jax.lax.dynamic_slice(order, (i * chunk,), (chunk,))
        rows = jax.tree_util.tree_map(lambda x: jnp.take(x, idx, axis=0, mode='clip'), archs)
        values = jnp.asarray(fn(rows)).astype(out_type.dtype)
        return i + 1, out.at[idx].set(values, mode='drop')

    out = jnp.full((n,) + out_type.shape[1:], fill, out_type.dtype)
    _, out = jax.lax.while_loop(lambda c: c[0] * chunk < count, body, (jnp.int32(0), out))
    return jnp.where(mask.reshape(mask.shape + (1,) * (out.ndim - 1)), out, fill)


def _shared_score_where(fn: Callable[[space.Arch], jax.Array], chunk: int, fill: Any):
    """:func:`score_where` for a shared ``fn``: a vmap of it flattens into one batch."""

    @custom_batching.custom_vmap
    def scored(archs, mask):
        return score_where(fn, archs, mask, chunk, fill)

    @scored.def_vmap
    def _batched(axis_size, in_batched, archs, mask):
        archs_batched, mask_batched = in_batched

        def flat(x, batched):
            x = x if batched else jnp.broadcast_to(x, (axis_size,) + x.shape)
            return x.reshape((-1,) + x.shape[2:])

        out = score_where(Shared(fn), jax.tree_util.tree_map(flat, archs, archs_batched),
                          flat(mask, mask_batched), chunk * axis_size, fill)
        return out.reshape((axis_size, -1) + out.shape[1:]), True

    return scored
