"""Constraint combinators: latency budgets on several devices, MACs and params bounds.

A constraint is a pure function ``archs -> bool[n]``. Bounds are ordinary
(possibly traced) values, so constraints built inside a vmapped or jitted
function take per-search limits without recompiling:

    cons = all_of(latency_at_most(lut.predict, 25.0),          # phone LUT
                  latency_at_most(gpu_predictor, 4.0),          # GPU predictor
                  macs_at_most(400e6), params_at_most(8e6))

For one hardware-conditioned estimator ``predict(archs, context)`` covering
several devices, :func:`conditioned_latency_at_most` checks every device's
budget with one vmapped call. :func:`make_limit_search` runs a search per
row of a limits pytree (all searches in one jitted, vmapped call).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from ofa_jax import counts, space
from ofa_jax.search import baseline, evolution, state

Constraint = state.Constraint


def all_of(*constraints: Optional[Constraint]) -> Constraint:
    """Logical AND of constraints (``None`` entries are skipped)."""
    active = [c for c in constraints if c is not None]

    def constraint(archs: space.Arch) -> jax.Array:
        ok = jnp.ones(jnp.shape(archs.resolution), bool)
        for c in active:
            ok = ok & jnp.asarray(c(archs), bool)
        return ok

    return constraint


def latency_at_most(latency_fn: Callable[[space.Arch], jax.Array], budget_ms: Any) -> Constraint:
    """``latency_fn(archs) <= budget_ms``; NaN latencies (uncovered input) fail."""
    return lambda archs: jnp.asarray(latency_fn(archs)) <= budget_ms


def devices_at_most(latency_fns: Sequence[Callable[[space.Arch], jax.Array]],
                    budgets_ms: Any) -> Constraint:
    """Every device meets its budget: ``latency_fns[d](archs) <= budgets_ms[d]``.

    One estimator per device (LUT, MLP predictor, ...); ``budgets_ms`` is a
    float[D] array (traced values allowed).
    """
    budgets = jnp.asarray(budgets_ms, jnp.float32)
    if budgets.shape != (len(latency_fns),):
        raise ValueError(f'budgets_ms: shape {budgets.shape}, expected ({len(latency_fns)},) '
                         '(one budget per latency estimator)')
    return all_of(*[latency_at_most(fn, budgets[d]) for d, fn in enumerate(latency_fns)])


def conditioned_latency_at_most(predict: Callable[[space.Arch, jax.Array], jax.Array],
                                contexts: Any, budgets_ms: Any) -> Constraint:
    """One hardware-conditioned estimator, several devices.

    Args:
      predict: ``predict(archs, context[C]) -> float32[n]`` latency in ms.
      contexts: float[D, C], one (standardised) hardware context per device.
      budgets_ms: float[D], one budget per device.
    """
    contexts = jnp.asarray(contexts, jnp.float32)
    budgets = jnp.asarray(budgets_ms, jnp.float32)

    def constraint(archs: space.Arch) -> jax.Array:
        lat = jax.vmap(lambda c: jnp.asarray(predict(archs, c)))(contexts)  # [D, n]
        return jnp.all(lat <= budgets[:, None], axis=0)

    return constraint


def macs_at_most(max_macs: Any, *, width: float = 1.2) -> Constraint:
    """Analytic MACs (``ofa_jax.counts``, batch 1) at most ``max_macs``."""
    return lambda archs: jnp.asarray(counts.count_macs(archs, width), jnp.float32) <= max_macs


def params_at_most(max_params: Any, *, width: float = 1.2) -> Constraint:
    """Analytic parameter count (``ofa_jax.counts``) at most ``max_params``."""
    return lambda archs: jnp.asarray(counts.count_params(archs, width), jnp.float32) <= max_params


def make_limit_search(params: state.EvoParams | baseline.RandomParams,
                      objective: state.Objective,
                      constraint_for: Callable[[Any], Constraint],
                      *,
                      jit: bool = True) -> Callable[[jax.Array, Any], state.EvoResult]:
    """One jitted function running a search per (seed, limits) row.

    Args:
      params: :class:`EvoParams` or :class:`RandomParams`.
      objective: ``archs -> float32[n]``.
      constraint_for: builds the constraint from one row of limits, e.g.
        ``lambda lim: all_of(devices_at_most(fns, lim['ms']),
        macs_at_most(lim['macs']))``.
      jit: False returns the unjitted function.

    Returns:
      ``search(seeds int[B], limits pytree with leading axis B) -> EvoResult``
      batched over B; new seeds or limit values of the same shapes never
      recompile.
    """
    method = evolution.evolve if isinstance(params, state.EvoParams) else baseline.random_search

    def one(seed, limits):
        return method(state.search_key(seed, params), params, objective, constraint_for(limits))

    def search(seeds, limits):
        return jax.vmap(one)(jnp.asarray(seeds, jnp.int32), limits)

    return jax.jit(search) if jit else search
