"""Feasible genomes under a constraint, in bounded work: the first population and redraws.

OFA's EvolutionFinder redraws a genome until it meets the constraint, without
bound. Here both loops are ``lax.while_loop``-s of fixed-size batches with a
bounded number of rounds, and each returns which slots ended feasible:

* :func:`initial_population` redraws the infeasible slots of the first
  population, shrinking toward the smallest sub-network;
* :func:`resample_until_feasible` redraws infeasible children (redraw mode,
  ``EvoParams.candidate_ratio`` 0) and falls back to a feasible genome.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ofa_jax import space
from ofa_jax.search import operators
from ofa_jax.search import random_bits
from ofa_jax.search import scoring
from ofa_jax.search.state import Constraint, EvoParams, FeasibleDraw


def resample_until_feasible(key: jax.Array, propose: Callable[[jax.Array, jax.Array],
                                                              space.Arch], num_slots: int,
                            fallback: space.Arch, fallback_ok: jax.Array, constraint: Constraint,
                            max_tries: int, retry_size: int) -> FeasibleDraw:
    """Bounded resampling: redraw infeasible slots until feasible, then fall back.

    The first draw fills every slot. Each retry redraws up to ``retry_size``
    still-infeasible slots (fixed shape: the first ones in slot order), so a
    retry costs ``retry_size`` constraint rows. After ``max_tries`` draws, or
    once every slot is feasible, remaining slots take ``fallback``.

    Args:
      key: PRNG key.
      propose: ``propose(key, slots int[m]) -> Arch[m]`` draws candidates for
        the given slots.
      num_slots: number of slots.
      fallback: Arch[num_slots] used where no draw was feasible.
      fallback_ok: bool[num_slots], feasibility of ``fallback``.
      constraint: ``archs -> bool[n]``.
      max_tries: draws per slot, the first included.
      retry_size: slots redrawn per retry.

    Returns:
      :class:`FeasibleDraw`: each slot's genome (a feasible draw, else its
      fallback), its feasibility (a feasible draw, or ``fallback_ok``) and the
      constraint rows evaluated.
    """
    k0, key = random_bits.split(key)
    first = propose(k0, jnp.arange(num_slots))
    carry = (key, jnp.int32(1), first, scoring.check(constraint, first))

    def cond(c):
        _, t, _, ok = c
        return (t < max_tries) & ~jnp.all(ok)

    def body(c):
        key, t, cand, ok = c
        key, sub = random_bits.split(key)
        # Stable sort puts infeasible slots first; surplus picks are feasible
        # slots and are left unchanged.
        slots = jnp.argsort(ok, stable=True)[:retry_size]
        redo = ~ok[slots]
        new = propose(sub, slots)
        take = redo & scoring.check(constraint, new)
        old = cand[slots]
        cand = jax.tree_util.tree_map(lambda c_, n_, o_: c_.at[slots].set(n_), cand,
                                      operators.select(take, new, old), old)
        return key, t + 1, cand, ok.at[slots].set(ok[slots] | take)

    _, tries, cand, ok = jax.lax.while_loop(cond, body, carry)
    rows = num_slots + (tries - 1) * retry_size
    return FeasibleDraw(operators.select(ok, cand, fallback), ok | fallback_ok, rows)


def initial_population(key: jax.Array, params: EvoParams, constraint: Constraint) -> FeasibleDraw:
    """A first population of ``population_size`` genomes, feasible where possible.

    Round 0 samples uniformly (as OFA does). Each later round t redraws only
    the infeasible slots, with every gene set to its smallest value with
    probability ``t / (init_rounds - 1)``, so the last round is the smallest
    sub-network at the smallest searched resolution. The rounds stop early
    once every slot is feasible; each checks the whole population, so the
    constraint rows are ``rounds run * population_size``.

    Returns:
      :class:`FeasibleDraw` of ``population_size`` slots.
    """
    n, rounds = params.population_size, params.init_rounds
    small = operators.smallest_genomes(n, params.resolutions)

    def draw(key, t):
        kg, ks = random_bits.split(key)
        genomes = operators.random_genomes(kg, n, params.resolutions)
        q = t / max(rounds - 1, 1)
        leaves, treedef = jax.tree_util.tree_flatten(genomes)
        keys = random_bits.split(ks, len(leaves))
        shrunk = [
            jnp.where(jax.random.bernoulli(k, q, x.shape), s, x)
            for k, x, s in zip(keys, leaves, jax.tree_util.tree_leaves(small))
        ]
        return jax.tree_util.tree_unflatten(treedef, shrunk)

    k0, key = random_bits.split(key)
    first = operators.random_genomes(k0, n, params.resolutions)
    carry = (key, jnp.int32(1), first, scoring.check(constraint, first))

    def cond(c):
        _, t, _, ok = c
        return (t < rounds) & ~jnp.all(ok)

    def body(c):
        key, t, cand, ok = c
        key, sub = random_bits.split(key)
        new = draw(sub, t.astype(jnp.float32))
        new_ok = scoring.check(constraint, new)
        return key, t + 1, operators.select(ok, cand, new), ok | new_ok

    _, rounds_run, genomes, ok = jax.lax.while_loop(cond, body, carry)
    return FeasibleDraw(genomes, ok, rounds_run * n)
