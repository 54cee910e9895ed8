"""The pytrees of an evolutionary search: its parameters, state, result and draws.

:class:`EvoParams` (hyper-parameters, validated by :func:`make_params`),
:class:`EvoState` (the parents between generations) and :class:`EvoResult`
(the outcome, also returned by random search) are ``flax.struct.dataclass``
pytrees, as in evosax. The named tuples are the multi-part values passed
between the search's modules.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.struct
import jax

from ofa_jax import space

Objective = Callable[[space.Arch], jax.Array]
Constraint = Callable[[space.Arch], jax.Array]

# OFA's tutorial EvolutionFinder searches these resolutions (its arch manager),
# matching the public Note10 lookup tables; the full space is space.RESOLUTIONS.
OFA_FINDER_RESOLUTIONS = (160, 176, 192, 208, 224)
PRNG_IMPLS = ('threefry2x32', 'rbg', 'unsafe_rbg')


def search_key(seed: jax.Array, params: Any) -> jax.Array:
    """The PRNG key of one search: ``params.prng_impl`` (threefry if absent)."""
    return jax.random.key(seed, impl=getattr(params, 'prng_impl', 'threefry2x32'))


@flax.struct.dataclass
class EvoParams:
    """Hyper-parameters of :func:`~ofa_jax.search.evolution.evolve`.

    The genetic ones default to OFA's EvolutionFinder; the others choose how
    infeasible and already-scored candidates are handled.

    Attributes:
      mutate_prob: probability of resampling the resolution, each block's
        (kernel, expand) pair, and each stage's depth in a mutant (traced).
      population_size: children per generation (static).
      num_generations: generations run by ``evolve`` (static).
      parent_ratio: fraction of the population kept as parents (static).
      mutation_ratio: fraction of the children made by mutation; the rest
        by uniform crossover of two parents (static).
      resolutions: the input resolutions searched (static).
      max_tries: with ``candidate_ratio`` 0, draws of a child until it is
        feasible before it falls back to its parent (static).
      retry_size: with ``candidate_ratio`` 0, children redrawn per retry
        (static; 0 means ``population_size // 4``). Retries redraw only
        infeasible slots, a fixed-size batch at a time, so each costs
        ``retry_size`` constraint rows instead of a whole population's.
      init_rounds: redraw rounds, shrinking toward the smallest arch, that
        build the feasible first population (static).
      candidate_ratio: a ratio r >= 1 (default 1.25) draws
        ``num_candidates = max(population_size, round(r * population_size))``
        candidates per generation (mutants spread evenly among crossovers,
        in OFA's proportions), checks the new ones against the constraint
        and keeps the first ``population_size`` feasible ones in draw order
        (copies of their parents fill any shortfall): no redraw loop. 0
        instead redraws infeasible children as set by ``max_tries`` and
        ``retry_size`` (static).
      prng_impl: the PRNG of the search key (one of ``PRNG_IMPLS``; static).
        The default, threefry, is drawn by :mod:`~ofa_jax.search.random_bits`
        (JAX's stream, unrolled); on XLA:CPU it draws words faster than
        ``rbg`` under ``vmap``.
      score_chunk: objective and constraint are called only on new
        sub-networks (neither a parent nor an earlier candidate of the same
        generation), ``score_chunk`` rows at a time until all are covered
        (static; 0 scores every row in one call). Copies are never selected,
        so skipping them changes no result.
      memory_bits: a search remembers the sub-networks it has scored in a
        table of ``2**memory_bits`` entries (4 bytes each, 256 KiB by
        default) and never scores one again: one found infeasible stays
        infeasible, and one that was scored and not selected can never be
        selected later, since the parents' worst objective only rises
        (static; 0 disables it). With ``candidate_ratio`` it spares
        constraint and objective rows, in redraw mode objective rows only.
        Assumes a deterministic objective and constraint, as predictors and
        LUTs are. See :func:`~ofa_jax.search.memory.recall`.
      objective_first: with ``candidate_ratio``, ``evolve`` scores the
        objective on every new candidate first and checks the constraint
        only where a candidate beats the worst parent (and where slots are
        contested); same children, same results. It pays when the
        constraint costs as much as the objective (an MLP latency predictor
        with an MLP accuracy predictor), not with a cheap LUT constraint
        (static; ``ask`` by hand always checks the constraint first).
    """

    mutate_prob: Any = 0.1
    population_size: int = flax.struct.field(pytree_node=False, default=100)
    num_generations: int = flax.struct.field(pytree_node=False, default=500)
    parent_ratio: float = flax.struct.field(pytree_node=False, default=0.25)
    mutation_ratio: float = flax.struct.field(pytree_node=False, default=0.5)
    resolutions: tuple[int, ...] = flax.struct.field(pytree_node=False,
                                                     default=OFA_FINDER_RESOLUTIONS)
    max_tries: int = flax.struct.field(pytree_node=False, default=4)
    retry_size: int = flax.struct.field(pytree_node=False, default=0)
    init_rounds: int = flax.struct.field(pytree_node=False, default=20)
    candidate_ratio: float = flax.struct.field(pytree_node=False, default=1.25)
    prng_impl: str = flax.struct.field(pytree_node=False, default='threefry2x32')
    score_chunk: int = flax.struct.field(pytree_node=False, default=12)
    memory_bits: int = flax.struct.field(pytree_node=False, default=16)
    objective_first: bool = flax.struct.field(pytree_node=False, default=False)

    @property
    def num_parents(self) -> int:
        """Parents kept each generation (25 by default)."""
        return max(1, int(round(self.population_size * self.parent_ratio)))

    @property
    def num_mutants(self) -> int:
        """Children made by mutation each generation in redraw mode (50 by default)."""
        return int(round(self.population_size * self.mutation_ratio))

    @property
    def num_retry(self) -> int:
        """Children redrawn per retry (redraw mode)."""
        size = self.retry_size or max(1, self.population_size // 4)
        return min(size, self.population_size)

    @property
    def num_candidates(self) -> int:
        """Candidates drawn per generation (0: redraw mode, see ``candidate_ratio``)."""
        if not self.candidate_ratio:
            return 0
        return max(self.population_size, int(round(self.candidate_ratio * self.population_size)))

    @property
    def num_evaluations(self) -> int:
        """Most objective rows of one ``evolve`` run: one population per generation
        and the first one. Copies and remembered sub-networks are not scored, so
        ``EvoResult.evaluations`` is usually lower."""
        return self.population_size * (self.num_generations + 1)


def _objective_first_ok(params: EvoParams) -> bool:
    # A bool, and only with oversampling (redraw mode checks the constraint first).
    return params.objective_first in (False, True) and (not params.objective_first or
                                                        params.candidate_ratio != 0)


def make_params(*, resolutions: Sequence[int] = OFA_FINDER_RESOLUTIONS, **kwargs) -> EvoParams:
    """Validated :class:`EvoParams` (resolutions sorted); raises ``ValueError``
    naming the bad field."""
    resolutions = space.parse_resolutions(resolutions)
    params = EvoParams(resolutions=tuple(sorted(resolutions)), **kwargs)
    checks = {
        'population_size': params.population_size >= 2,
        'num_generations': params.num_generations >= 1,
        'parent_ratio': 0.0 < params.parent_ratio <= 1.0,
        'mutation_ratio': 0.0 <= params.mutation_ratio <= 1.0,
        'max_tries': params.max_tries >= 1,
        'retry_size': params.retry_size >= 0,
        'init_rounds': params.init_rounds >= 1,
        'candidate_ratio': params.candidate_ratio == 0 or params.candidate_ratio >= 1,
        'prng_impl': params.prng_impl in PRNG_IMPLS,
        'score_chunk': params.score_chunk >= 0,
        'memory_bits': 0 <= params.memory_bits <= 28,
        'objective_first': _objective_first_ok(params),
    }
    for name, ok in checks.items():
        if not ok:
            raise ValueError(f'{name}: value {getattr(params, name)!r} is out of range '
                             '(population_size >= 2, num_generations >= 1, 0 < parent_ratio '
                             '<= 1, 0 <= mutation_ratio <= 1, max_tries >= 1, retry_size >= 0, '
                             'init_rounds >= 1, candidate_ratio 0 or >= 1, prng_impl in '
                             f'{PRNG_IMPLS}, score_chunk >= 0, 0 <= memory_bits <= 28, '
                             'objective_first a bool, and only with candidate_ratio >= 1)')
    return params


@flax.struct.dataclass
class EvoState:
    """The search state: the current parents, best first.

    Attributes:
      parents: Arch with batch shape [num_parents] (genes past a stage's depth
        are kept, as in OFA, so a later depth mutation can reuse them).
      fitness: float32[num_parents], objective of each parent.
      feasible: bool[num_parents], whether each parent meets the constraint.
      generation: int32, generations told so far.
      memory: uint32[2**memory_bits], the sub-networks scored so far (see
        :func:`~ofa_jax.search.memory.recall`; shape [0] when ``memory_bits``
        is 0).
      evaluations: int32[2], rows scored so far by the constraint and by
        the objective (padding of the last chunk not counted).
    """

    parents: space.Arch
    fitness: jax.Array
    feasible: jax.Array
    generation: jax.Array
    memory: jax.Array
    evaluations: jax.Array


@flax.struct.dataclass
class EvoResult:
    """Outcome of one search (batched over leading axes when vmapped).

    Attributes:
      arch: the best arch found (canonical).
      objective: its objective value.
      feasible: whether it meets the constraint; False only when no arch of
        the space over the searched resolutions could be found that does
        (e.g. a latency budget below the smallest sub-network's latency).
      history: float32[steps], best objective after each generation (after
        each batch for random search).
      evaluations: int32[2], rows scored by the constraint and by the
        objective over the whole search.
      state: the final :class:`EvoState` (None for random search).
    """

    arch: space.Arch
    objective: jax.Array
    feasible: jax.Array
    history: jax.Array
    evaluations: jax.Array
    state: Any = None


class FeasibleDraw(NamedTuple):
    """Genomes drawn under a constraint (:mod:`~ofa_jax.search.feasibility`).

    Attributes:
      genomes: Arch[n], one per slot.
      feasible: bool[n], whether each slot's genome meets the constraint.
      constraint_rows: int32, rows the constraint was called on.
    """

    genomes: space.Arch
    feasible: jax.Array
    constraint_rows: jax.Array


class GenerationWords(NamedTuple):
    """All random words of one generation's ``num_candidates`` candidates.

    Attributes:
      parents: the words of both parent indices of every candidate (uint32
        [1, n]: two 16-bit draws a word, when there are at most 256 parents;
        uint32[2n] otherwise).
      mutation: uint32[n, MUTATION_WORDS], the genes and coins of each mutant.
      crossover: uint32[n, CROSSOVER_WORDS], a bit a gene of each crossover.
    """

    parents: jax.Array
    mutation: jax.Array
    crossover: jax.Array


class Candidates(NamedTuple):
    """One generation's candidates before the constraint is checked.

    Attributes:
      archs: Arch[num_candidates], the candidates as genomes.
      first_parents: Arch[num_candidates], each candidate's first parent
        (the copy a slot falls back to).
      new: bool[num_candidates], neither a parent nor an earlier candidate.
      known: int32[num_candidates], the memory's status of each candidate
        (all UNSEEN without memory).
      keys: the candidates' (slot, tag) memory keys, None without memory.
    """

    archs: space.Arch
    first_parents: space.Arch
    new: jax.Array
    known: jax.Array
    keys: Optional[tuple[jax.Array, jax.Array]]
