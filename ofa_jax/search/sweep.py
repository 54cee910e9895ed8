"""Searching many latency budgets and seeds in one compiled, vmapped call.

:func:`make_budget_search` turns an objective, a latency estimator and search
parameters into one jitted function ``(seeds[B], budgets[B]) -> BudgetResults``:
budgets and seeds are traced, so a new list of the same length reuses the
compiled program. :func:`pareto_front` picks the points of a sweep that no
other beats (objective vs latency across budgets); ``experiments.pareto_plot``
draws them (this library does not import matplotlib).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import space
from ofa_jax.search import baseline, evolution, scoring, state

LatencyFn = Callable[[space.Arch], jax.Array]


@flax.struct.dataclass
class BudgetResults:
    """Results of a budget x seed sweep (leading axis: one entry per search).

    Attributes:
      budget: float32[B], the latency budget of each search.
      seed: int32[B], its seed.
      arch: Arch [B], best arch found per search (canonical).
      objective: float32[B].
      latency: float32[B], the estimator's latency of each found arch.
      feasible: bool[B]; False means no searched arch met the constraint
        (budget below the smallest sub-network), and the arch must not be used.
      history: float32[B, steps], best objective per generation/batch.
      evaluations: int32[B, 2], sub-networks scored by the latency constraint
        and by the objective in each search.
    """

    budget: jax.Array
    seed: jax.Array
    arch: space.Arch
    objective: jax.Array
    latency: jax.Array
    feasible: jax.Array
    history: jax.Array
    evaluations: jax.Array


def make_budget_search(params: state.EvoParams | baseline.RandomParams,
                       objective: state.Objective,
                       latency_fn: LatencyFn,
                       *,
                       extra_constraint: Optional[state.Constraint] = None,
                       exact_objective: Optional[state.Objective] = None,
                       exact_latency_fn: Optional[LatencyFn] = None,
                       jit: bool = True) -> Callable[[jax.Array, jax.Array], BudgetResults]:
    """One jitted function searching all (seed, budget) pairs at once.

    Args:
      params: :class:`EvoParams` (evolution) or :class:`RandomParams` (random
        search baseline).
      objective: ``archs -> float32[n]``, higher is better.
      latency_fn: ``archs -> float32[n]`` latency in ms (LUT, predictor, ...).
      extra_constraint: optional ``archs -> bool[n]`` also required (e.g.
        MACs or parameter bounds; see :mod:`ofa_jax.search.constraints`).
      exact_objective, exact_latency_fn: when ``objective``/``latency_fn``
        are fast approximations (e.g. ``predictor.with_precision('bfloat16')``),
        the exact versions: the final parents of each evolutionary search are
        re-ranked with them (:func:`evolution.refine`), so the returned arch,
        objective and latency are exact and the arch meets the budget under
        the exact estimator.
      jit: False returns the function unjitted (to wrap it, e.g. in
        ``chex.assert_max_traces``, before jitting).

    Returns:
      ``search(seeds int[B], budgets float[B]) -> BudgetResults``; the same B
      never recompiles, whatever the values.
    """
    if isinstance(params, state.EvoParams):
        method = evolution.evolve
    elif isinstance(params, baseline.RandomParams):
        method = baseline.random_search
    else:
        raise TypeError(f'params: expected EvoParams or RandomParams, got {type(params).__name__}')

    # The predictors are shared by all (seed, budget) searches: under the vmap
    # below their rows are packed together (scoring.Shared); only the cheap
    # budget test sees each search's budget.
    objective = scoring.Shared(objective)

    def one(seed, budget):

        def under_budget(fn):

            def accept(latency_ms, archs):
                ok = jnp.asarray(latency_ms) <= budget
                if extra_constraint is not None:
                    ok = ok & jnp.asarray(extra_constraint(archs), bool)
                return ok

            return scoring.ScoredConstraint(score=fn, accept=accept)

        res = method(state.search_key(seed, params), params, objective, under_budget(latency_fn))
        report_latency = exact_latency_fn or latency_fn
        if method is evolution.evolve and (exact_objective is not None or
                                           exact_latency_fn is not None):
            res = evolution.refine(res, objective if exact_objective is None else exact_objective,
                                   under_budget(report_latency))
        latency = jnp.asarray(report_latency(jax.tree_util.tree_map(lambda x: x[None],
                                                                    res.arch)))[0]
        return BudgetResults(budget=jnp.asarray(budget, jnp.float32),
                             seed=jnp.asarray(seed, jnp.int32),
                             arch=res.arch,
                             objective=res.objective,
                             latency=latency.astype(jnp.float32),
                             feasible=res.feasible,
                             history=res.history,
                             evaluations=res.evaluations)

    def search(seeds: jax.Array, budgets: jax.Array) -> BudgetResults:
        return jax.vmap(one)(jnp.asarray(seeds, jnp.int32), jnp.asarray(budgets, jnp.float32))

    return jax.jit(search) if jit else search


def grid(budgets: Sequence[float], seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Flattens the budgets x seeds grid into two aligned arrays (seeds, budgets)."""
    b, s = np.meshgrid(np.asarray(budgets, np.float32), np.asarray(seeds, np.int32), indexing='ij')
    return s.reshape(-1), b.reshape(-1)


def pareto_front(latency: np.ndarray, objective: np.ndarray) -> np.ndarray:
    """bool mask of points no other point beats (lower latency, higher objective)."""
    latency, objective = np.asarray(latency, float), np.asarray(objective, float)
    mask = np.ones(latency.shape, bool)
    for i in range(latency.size):
        dominated = ((latency <= latency[i]) & (objective >= objective[i]) &
                     ((latency < latency[i]) | (objective > objective[i])))
        mask[i] = not dominated.any()
    return mask
