"""Vectorized evolutionary search over OFA sub-networks: init, ask, tell, evolve.

OFA's EvolutionFinder (Cai et al., ICLR 2020) re-expressed, in the shape of
evosax, as pure functions on fixed-size integer populations, so that a whole
search is one ``lax.scan`` and many searches (budgets x seeds) are one
``jax.vmap``. :func:`init` builds and scores a feasible first population,
:func:`ask` proposes the children of one generation, :func:`tell` keeps the
best, :func:`evolve` runs all generations and :func:`refine` re-ranks the
final parents under exact estimators. The parts live beside it:
:mod:`~ofa_jax.search.state` (``EvoParams``, ``EvoState``, ``EvoResult``),
:mod:`~ofa_jax.search.operators` (mutation, crossover, uniform genomes),
:mod:`~ofa_jax.search.feasibility` (bounded redraws under the constraint),
:mod:`~ofa_jax.search.memory` (copy detection and the memory of scored
sub-networks) and :mod:`~ofa_jax.search.scoring` (chunked scoring).

Objective and constraint are pure functions of a batched :class:`Arch`:
``objective(archs) -> float32[n]`` (higher is better) and
``constraint(archs) -> bool[n]``. Budgets live inside the constraint's closure
as traced values, so ``jax.vmap`` over budgets and seeds never recompiles.

Infeasible candidates are handled inside the jitted step:

* the first population is drawn uniformly, and every slot that misses the
  constraint is redrawn with each gene replaced by its smallest value with a
  probability that rises to 1 over ``init_rounds`` rounds; the last round is the
  smallest sub-network at the smallest searched resolution, so a slot stays
  infeasible only if that network is infeasible too;
* by default (``candidate_ratio`` 1.25) each generation draws 1.25x as many
  candidates as it needs (mutants and crossovers in OFA's proportions),
  checks the new ones against the constraint and keeps the first feasible
  ones; with ``candidate_ratio=0`` each child is instead drawn up to
  ``max_tries`` times until it is feasible (retries redraw only the
  infeasible slots, ``retry_size`` at a time), as OFA does without bound.
  Either way a slot left without a feasible child gets a copy of its first
  parent, which is feasible;
* selection keeps distinct sub-networks only, so such copies (and any
  duplicate child) never crowd the parent pool;
* since a copy is never selected, it is never scored either: the constraint
  and the objective see only new sub-networks
  (:func:`~ofa_jax.search.scoring.score_where`, in chunks of ``score_chunk``
  rows), without changing any result;
* a search also remembers the sub-networks it has scored (a hash table in
  :class:`EvoState`, ``memory_bits``): one that failed the constraint fails
  it again, and one scored and not selected cannot be selected later (the
  parents' worst objective only rises), so neither is scored again. A
  remembered child keeps its slot, so the search makes exactly the choices
  it would make without the memory (test
  ``test_memory_changes_no_result_and_saves_rows``).
  ``EvoResult.evaluations`` counts the rows each function scored;
* with ``objective_first`` the objective runs on every new candidate and the
  constraint only on those that beat the worst parent (the others can never
  be selected), again with the same results and fewer constraint rows;
* the bookkeeping between scoring calls is written for XLA:CPU: a
  generation's random words are drawn a generation ahead with an unrolled
  threefry (:mod:`~ofa_jax.search.random_bits`, the same stream as
  ``jax.random``), hashes are summed a gene field at a time, and :func:`tell`
  trusts :func:`ask`'s flags instead of checking for copies again.

So every returned arch meets the constraint unless no sub-network of the space
(over the searched resolutions) can; that case is returned with
``feasible=False`` and callers must report it, never present it as a result.
Measured savings and speed-ups: benchmarks/results/search_notes.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ofa_jax import space
from ofa_jax.search import feasibility
from ofa_jax.search import memory as memory_lib
from ofa_jax.search import operators
from ofa_jax.search import random_bits
from ofa_jax.search import scoring
from ofa_jax.search.memory import INFEASIBLE, REJECTED, TOLD, UNSEEN
from ofa_jax.search.state import (Candidates, Constraint, EvoParams, EvoResult, EvoState,
                                  GenerationWords, Objective)


def init(key: jax.Array, params: EvoParams, objective: Objective,
         constraint: Constraint) -> EvoState:
    """Builds and scores the first population and keeps the best as parents.

    The first population comes from
    :func:`~ofa_jax.search.feasibility.initial_population`; all of it is
    scored by the objective, and its distinct sub-networks are remembered
    (with ``memory_bits``) as TOLD or INFEASIBLE.
    """
    genomes, ok, checked = feasibility.initial_population(key, params, constraint)
    fitness = jnp.asarray(objective(space.canonicalize(genomes)), jnp.float32)
    first = memory_lib.first_occurrence(memory_lib.genome_hash(genomes))
    eligible = ok & first
    _, idx = jax.lax.top_k(operators.rank_key(fitness, eligible), params.num_parents)
    memory = memory_lib.empty_memory(params.memory_bits)
    if params.memory_bits:
        slot, tag = memory_lib.memory_keys(genomes, params.memory_bits)
        memory = memory_lib.remember(memory, slot, tag, jnp.where(ok, TOLD, INFEASIBLE), first)
    return EvoState(parents=genomes[idx],
                    fitness=fitness[idx],
                    feasible=ok[idx],
                    generation=jnp.zeros((), jnp.int32),
                    memory=memory,
                    evaluations=jnp.stack([checked, jnp.int32(params.population_size)]))


def ask(key: jax.Array, state: EvoState, params: EvoParams,
        constraint: Constraint) -> tuple[space.Arch, jax.Array, EvoState]:
    """Proposes one generation of ``population_size`` children.

    Parents are drawn uniformly from ``state.parents``. With
    ``candidate_ratio`` (the default) ``num_candidates`` candidates, mutants
    spread evenly among crossovers, are drawn at once, only the new ones
    not remembered (``memory_bits``) are checked against the constraint, and
    the first feasible ones in draw order are kept. With ``candidate_ratio``
    0 the first ``num_mutants`` slots are mutants and the rest crossovers,
    and infeasible children are redrawn
    (:func:`~ofa_jax.search.feasibility.resample_until_feasible`). Either
    way a slot left without a feasible child falls back to a copy of its
    (first) parent.

    Returns:
      A 3-tuple: the children, Arch[population_size] as genomes; a
      bool[population_size] mask, True for a feasible child that is a new
      sub-network, i.e. neither a parent, nor an earlier child, nor one
      scored in an earlier generation (only these need an objective value,
      and :func:`tell` selects only these among the children); and the state
      with its memory and evaluation count updated, to pass to :func:`tell`.
    """
    if params.num_candidates:
        return _ask_oversampled(_generation_words(key, params), state, params, constraint)
    num_p, num_m = params.num_parents, params.num_mutants
    num_c = params.population_size - num_m
    km, k1, k2, kp = random_bits.split(key, 4)
    im = jax.random.randint(km, (num_m,), 0, num_p)
    i1 = jax.random.randint(k1, (num_c,), 0, num_p)
    i2 = jax.random.randint(k2, (num_c,), 0, num_p)
    # Per slot: mutants take base_a; crossovers combine base_a and base_b.
    base_a = state.parents[jnp.concatenate([im, i1])]
    base_b = state.parents[jnp.concatenate([im, i2])]

    def propose(k, slots):
        ka, kb = random_bits.split(k)
        a, b = base_a[slots], base_b[slots]
        mutant = operators.mutate(ka, a, params.mutate_prob, params.resolutions)
        child = operators.crossover(kb, a, b)
        return operators.select(slots < num_m, mutant, child)

    fallback_ok = state.feasible[jnp.concatenate([im, i1])]
    children, ok, checked = feasibility.resample_until_feasible(kp, propose, params.population_size,
                                                                base_a, fallback_ok, constraint,
                                                                params.max_tries, params.num_retry)
    ok = ok & memory_lib.new_children(children, state.parents)
    memory = state.memory
    if params.memory_bits:  # Here the memory only spares objective rows.
        slot, tag = memory_lib.memory_keys(children, params.memory_bits)
        told = memory_lib.recall(memory, slot, tag) == TOLD
        memory = memory_lib.remember(memory, slot, tag, TOLD, ok & ~told)
        ok = ok & ~told
    return children, ok, state.replace(memory=memory,
                                       evaluations=state.evaluations.at[0].add(checked))


def _parent_words(key: jax.Array, n: int, num_parents: int) -> jax.Array:
    """The random words of :func:`_parent_indices`."""
    if num_parents <= 1 << 8:  # 16-bit draws: relative modulo bias below 0.4%.
        return random_bits.bits(key, (1, n))
    return random_bits.bits(key, (2 * n,))


def _parent_indices(words: jax.Array, n: int, num_parents: int) -> tuple[jax.Array, jax.Array]:
    """Two int32[n] arrays of uniform parent indices from :func:`_parent_words`."""
    bits = operators.halves(words, 2 * n)[0] if num_parents <= 1 << 8 else words
    index = operators.uniform_index(bits, num_parents)
    return index[:n], index[n:]


def _generation_words(key: jax.Array, params: EvoParams) -> GenerationWords:
    """All random words of one generation's candidates (parents, mutation, crossover).

    :func:`evolve` draws them a generation ahead, at the end of the previous
    step, so they sit in the loop's carry: XLA then hashes each word once,
    where a draw beside its consumers was fused into each of them and
    recomputed there (and JAX's own CPU threefry is a rolled loop).
    """
    kp, kmut, kx = random_bits.split(key, 3)
    total = params.num_candidates
    parents = _parent_words(kp, total, params.num_parents)
    mutation = random_bits.bits(kmut, (total, operators.MUTATION_WORDS))
    return GenerationWords(parents, mutation,
                           random_bits.bits(kx, (total, operators.CROSSOVER_WORDS)))


def _keep_first(ok: jax.Array, n: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The first n feasible candidates, as a 3-tuple: order int32[n], the
    candidate of each slot (feasible ones first, in draw order); keep bool[n],
    whether that candidate is feasible; kept bool[num_candidates], the
    candidates kept."""
    order = scoring.true_first(ok)[:n]
    keep = ok[order]
    return order, keep, jnp.zeros(ok.shape, bool).at[order].set(keep)


def _candidates(words: GenerationWords, state: EvoState, params: EvoParams) -> Candidates:
    """One generation's candidates (mutants spread evenly among crossovers), from
    its :func:`_generation_words`."""
    num_p, total = params.num_parents, params.num_candidates
    # Mutants spread evenly among the candidates, so that keeping the first n
    # feasible ones keeps OFA's mutant/crossover mix.
    i = jnp.arange(total)
    is_mutant = (jnp.floor(
        (i + 1) * params.mutation_ratio) - jnp.floor(i * params.mutation_ratio)) > 0
    ia, ib = _parent_indices(words.parents, total, num_p)
    ib = jnp.where(is_mutant, ia, ib)
    base_a, base_b = state.parents[ia], state.parents[ib]
    mutant = operators.mutate_with_bits(
        operators.halves(words.mutation, operators.NUM_GENES + operators.NUM_COINS), base_a,
        params.mutate_prob, params.resolutions)
    cross = operators.crossover_with_words(words.crossover, base_a, base_b)
    cand = operators.select(is_mutant, mutant, cross)
    # Copies of a parent or of an earlier candidate would never be selected:
    # skip them before the (costly) scoring; so are sub-networks already
    # scored in an earlier generation (the memory).
    new = memory_lib.new_children(cand, state.parents)
    known = jnp.zeros((total,), jnp.int32)
    keys = None
    if params.memory_bits:
        keys = memory_lib.memory_keys(cand, params.memory_bits)
        known = memory_lib.recall(state.memory, *keys)
    return Candidates(cand, base_a, new, known, keys)


def _ask_oversampled(words: GenerationWords, state: EvoState, params: EvoParams,
                     constraint: Constraint) -> tuple[space.Arch, jax.Array, EvoState]:
    """:func:`ask` with ``candidate_ratio``: one batch of candidates, feasible ones kept."""
    n = params.population_size
    cand, base_a, new, known, keys = _candidates(words, state, params)
    check = new & (known == UNSEEN)
    ok = scoring.check_where(constraint, cand, check, params.score_chunk) | (new & (known == TOLD))
    order, keep, kept = _keep_first(ok, n)
    memory = state.memory
    if params.memory_bits:
        # Feasible candidates beyond the n kept are not remembered: the
        # memory only ever excludes a sub-network, so a hash collision can
        # cost a child but never admit an infeasible one.
        status = jnp.where(kept, TOLD, INFEASIBLE)
        memory = memory_lib.remember(memory, *keys, status,
                                     (kept | (check & ~ok)) & (status != known))
    # A kept child told in an earlier generation was not selected then and
    # cannot be now (the parents' worst objective only rises): it keeps its
    # slot, so the other children are those of a search without memory, but
    # is neither scored nor selected.
    fresh = keep & (known[order] != TOLD)
    state = state.replace(memory=memory,
                          evaluations=state.evaluations.at[0].add(jnp.sum(check, dtype=jnp.int32)))
    return operators.select(keep, cand[order], base_a[order]), fresh, state


def _ask_objective_first(
        words: GenerationWords, state: EvoState, params: EvoParams, objective: Objective,
        constraint: Constraint) -> tuple[space.Arch, jax.Array, jax.Array, EvoState]:
    """:func:`ask` + objective with ``objective_first``: same children, same selection.

    The objective runs on every new candidate; the constraint only on those
    that beat the worst parent (the rest can never be selected: the worst
    parent wins ties, and the parents' worst objective only rises), and on
    the others only in a generation where more than ``population_size``
    candidates may be feasible, since then the slots they take decide which
    children are kept. With ``memory_bits``, candidates left unchecked are
    remembered as REJECTED.

    Returns:
      A 4-tuple: children, fresh mask, the children's objective (NaN where
      not fresh), state.
    """
    n, chunk = params.population_size, params.score_chunk
    cand, base_a, new, known, keys = _candidates(words, state, params)
    need = new & (known == UNSEEN)
    f = scoring.score_where(objective, space.canonicalize(cand), need, chunk, jnp.nan)
    worst = operators.rank_key(state.fitness[-1], state.feasible[-1])
    promising = need & (operators.rank_key(f, need) > worst)
    unchecked = (need & ~promising) | (new & (known == REJECTED))
    crowded = jnp.sum(new & (known != INFEASIBLE)) > n
    rest = unchecked & crowded
    checked = promising | rest
    ok = scoring.check_where(constraint, cand, checked, chunk) | (new & (known == TOLD))
    order, keep, kept = _keep_first(ok, n)
    fresh = keep & promising[order]
    memory = state.memory
    if params.memory_bits:
        # Feasible and never selectable (kept, or unkept but below the worst
        # parent): TOLD; failed: INFEASIBLE; below the worst parent but
        # unchecked: REJECTED. Feasible, promising, unkept: not remembered.
        status = jnp.where(ok & (kept | ~promising), TOLD, jnp.where(checked, INFEASIBLE, REJECTED))
        write = new & (status != known) & ((checked & (~ok | kept | ~promising)) |
                                           (unchecked & ~crowded & (known == UNSEEN)))
        memory = memory_lib.remember(memory, *keys, status, write)
    rows = jnp.sum(checked, dtype=jnp.int32)
    state = state.replace(memory=memory,
                          evaluations=state.evaluations +
                          jnp.stack([rows, jnp.sum(need, dtype=jnp.int32)]))
    children = operators.select(keep, cand[order], base_a[order])
    return children, fresh, jnp.where(fresh, f[order], jnp.nan), state


def tell(children: space.Arch,
         fitness: jax.Array,
         feasible: jax.Array,
         state: EvoState,
         params: EvoParams,
         *,
         distinct: bool = False) -> EvoState:
    """Keeps the best ``num_parents`` distinct archs of parents and children.

    Elitist like OFA's finder. Unlike it, a child equal to a parent or to an
    earlier child (same canonical sub-network) is not selected again, so
    copies cannot crowd the parent pool; children that fell back to their
    parent in :func:`ask` are such copies.

    ``distinct=True`` skips that check: the caller vouches that the children
    flagged ``feasible`` are neither parents nor copies of each other, as
    :func:`ask`'s flags are (:func:`evolve` passes it, saving the check's
    share of a generation's bookkeeping).
    """
    genomes = operators.concat(state.parents, children)
    fitness = jnp.concatenate([state.fitness, jnp.asarray(fitness, jnp.float32)])
    feasible = jnp.concatenate([state.feasible, jnp.asarray(feasible, bool)])
    eligible = feasible
    if not distinct:
        eligible = feasible & memory_lib.first_occurrence(memory_lib.genome_hash(genomes))
        # Parents always stay eligible (their flag is their feasibility), so the
        # best feasible arch is never lost.
        eligible = eligible.at[:params.num_parents].set(feasible[:params.num_parents])
    _, idx = jax.lax.top_k(operators.rank_key(fitness, eligible), params.num_parents)
    return state.replace(parents=genomes[idx],
                         fitness=fitness[idx],
                         feasible=feasible[idx],
                         generation=state.generation + 1)


def evolve(key: jax.Array, params: EvoParams, objective: Objective,
           constraint: Constraint) -> EvoResult:
    """Runs a whole evolutionary search in one ``lax.scan`` (jit/vmap friendly).

    Args:
      key: PRNG key (vmap over keys for several seeds).
      params: :class:`EvoParams`.
      objective: ``archs -> float32[n]``, higher is better (e.g. predicted
        accuracy); called on canonical archs.
      constraint: ``archs -> bool[n]`` (e.g. ``latency(archs) <= budget`` with
        a traced budget); called on canonical archs. A
        :class:`~ofa_jax.search.scoring.ScoredConstraint` has its score
        packed across vmapped searches.

    Returns:
      :class:`EvoResult` with the best arch, its objective, whether it is
      feasible, the best objective after each generation, the rows scored by
      constraint and objective, and the final state.
    """
    k_init, k_run = random_bits.split(key)
    state = init(k_init, params, objective, constraint)
    keys = random_bits.split(k_run, params.num_generations)

    def generation(state, draw):
        """One generation; ``draw`` is its key, or its words with ``candidate_ratio``."""
        if params.objective_first and params.num_candidates:
            children, ok, fitness, state = _ask_objective_first(draw, state, params, objective,
                                                                constraint)
        else:
            if params.num_candidates:
                children, ok, state = _ask_oversampled(draw, state, params, constraint)
            else:
                children, ok, state = ask(draw, state, params, constraint)
            fitness = scoring.score_where(objective, space.canonicalize(children), ok,
                                          params.score_chunk, jnp.nan)
            state = state.replace(
                evaluations=state.evaluations.at[1].add(jnp.sum(ok, dtype=jnp.int32)))
        # ask's flags mark only new sub-networks: no copy check needed.
        return tell(children, fitness, ok, state, params, distinct=True)

    if params.num_candidates:
        # Each step draws the next generation's words into the loop carry
        # (see _generation_words); the last step's draw is unused.
        def step(carry, next_key):
            state = generation(*carry)
            return (state, _generation_words(next_key, params)), state.fitness[0]

        first = keys[0] if params.num_generations else k_run  # (an EvoParams built by hand)
        carry = (state, _generation_words(first, params))
        (state, _), history = jax.lax.scan(step, carry, jnp.concatenate([keys[1:], keys[:1]]))
    else:

        def step(state, key):
            state = generation(state, key)
            return state, state.fitness[0]

        state, history = jax.lax.scan(step, state, keys)
    return EvoResult(arch=space.canonicalize(state.parents[0]),
                     objective=state.fitness[0],
                     feasible=state.feasible[0],
                     history=history,
                     evaluations=state.evaluations,
                     state=state)


def refine(result: EvoResult, objective: Objective, constraint: Constraint) -> EvoResult:
    """Re-ranks the final parents of a search under another objective and constraint.

    For a search run with fast approximations (e.g. bfloat16 predictors): the
    final parents are re-scored with the exact ``objective`` and checked with
    the exact ``constraint``, and the best one that passes is returned, so the
    result meets the exact constraint (``feasible`` is False when no parent
    does). ``history`` and ``evaluations`` keep the search's values.
    """
    if result.state is None:
        raise ValueError('refine: the result has no final population (random search?)')
    parents = space.canonicalize(result.state.parents)
    fitness = jnp.asarray(objective(parents), jnp.float32)
    ok = scoring.check(constraint, parents) & result.state.feasible
    best = jnp.argmax(operators.rank_key(fitness, ok))
    return result.replace(arch=parents[best], objective=fitness[best], feasible=ok[best])
