"""Random search: the baseline for :func:`ofa_jax.search.evolution.evolve`.

Same interface (pure objective and constraint on batched archs, traced budgets,
``jax.vmap`` over budgets and seeds), same result type. It draws
``num_evaluations`` archs uniformly (per gene, as OFA's sampler) in batches
inside one ``lax.scan`` and keeps the best feasible one.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp

from ofa_jax import space
from ofa_jax.search import operators
from ofa_jax.search import random_bits
from ofa_jax.search import state


@flax.struct.dataclass
class RandomParams:
    """Hyper-parameters of :func:`random_search` (all static).

    Attributes:
      num_evaluations: archs drawn and scored (rounded up to whole batches).
      batch_size: archs scored per scan step.
      resolutions: the input resolutions searched.
    """

    num_evaluations: int = flax.struct.field(pytree_node=False, default=500_000)
    batch_size: int = flax.struct.field(pytree_node=False, default=1000)
    resolutions: tuple[int, ...] = flax.struct.field(pytree_node=False,
                                                     default=state.OFA_FINDER_RESOLUTIONS)

    @property
    def num_batches(self) -> int:
        """Scan steps: ``ceil(num_evaluations / batch_size)``."""
        return -(-self.num_evaluations // self.batch_size)


def make_params(*,
                num_evaluations: int,
                batch_size: int = 1000,
                resolutions: Sequence[int] = state.OFA_FINDER_RESOLUTIONS) -> RandomParams:
    """Validated :class:`RandomParams`."""
    if num_evaluations < 1:
        raise ValueError(f'num_evaluations: {num_evaluations} must be >= 1')
    if batch_size < 1:
        raise ValueError(f'batch_size: {batch_size} must be >= 1')
    return RandomParams(num_evaluations=int(num_evaluations),
                        batch_size=int(min(batch_size, num_evaluations)),
                        resolutions=tuple(sorted(space.parse_resolutions(resolutions))))


def random_search(key: jax.Array, params: RandomParams, objective: state.Objective,
                  constraint: state.Constraint) -> state.EvoResult:
    """Best feasible arch among ``num_evaluations`` uniform draws.

    Returns:
      :class:`~ofa_jax.search.state.EvoResult`; ``feasible`` is False if
      no draw met the constraint (then ``arch`` is an arbitrary draw),
      ``history`` is the best objective after each batch, ``evaluations``
      the rows drawn (``num_batches * batch_size``, for both functions) and
      ``state`` None.
    """
    n = params.batch_size

    def step(carry: Any, key: jax.Array):
        best, best_fit, best_ok = carry
        archs = space.canonicalize(operators.random_genomes(key, n, params.resolutions))
        fit = jnp.asarray(objective(archs), jnp.float32)
        ok = jnp.asarray(constraint(archs)).astype(bool).reshape((n,))
        score = operators.rank_key(fit, ok)
        i = jnp.argmax(score)
        better = (ok[i] & ~best_ok) | (ok[i] & (score[i] > best_fit))
        best = jax.tree_util.tree_map(lambda b, a: jnp.where(better, a[i], b), best, archs)
        best_fit = jnp.where(better, fit[i], best_fit)
        return (best, best_fit, best_ok | ok[i]), jnp.where(best_ok | ok[i], best_fit, -jnp.inf)

    k0, key = random_bits.split(key)
    first = space.canonicalize(operators.random_genomes(k0, 1, params.resolutions))[0]
    carry = (first, jnp.float32(-jnp.inf), jnp.zeros((), bool))
    (best, best_fit, best_ok), history = jax.lax.scan(step, carry,
                                                      random_bits.split(key, params.num_batches))
    rows = jnp.int32(params.num_batches * n)
    return state.EvoResult(arch=best,
                           objective=best_fit,
                           feasible=best_ok,
                           history=history,
                           evaluations=jnp.stack([rows, rows]))
