"""Vectorized evolutionary search over OFA sub-networks, in the shape of evosax.

OFA's EvolutionFinder (Cai et al., ICLR 2020) re-expressed as pure functions on
fixed-size integer populations so that a whole search is one ``lax.scan`` and
many searches (budgets x seeds) are one ``jax.vmap``:

* :class:`EvoParams` holds the hyper-parameters (OFA's defaults: population
  100, 500 generations, parent ratio 0.25, mutation ratio 0.5, mutate
  probability 0.1) and :class:`EvoState` the current parents; both are
  ``flax.struct.dataclass`` pytrees.
* :func:`init` builds a feasible first population, :func:`ask` proposes the
  children of one generation, :func:`tell` keeps the best, and :func:`evolve`
  runs all generations.

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
* by default each generation draws 1.25x as many candidates as it needs
  (mutants and crossovers in OFA's proportions), checks them in one batch and
  keeps the feasible ones; with ``candidate_ratio=0`` each child is instead
  drawn up to ``max_tries`` times until it is feasible (retries redraw only
  the infeasible slots, ``retry_size`` at a time), as OFA does without bound.
  Either way a slot left without a feasible child gets a copy of its first
  parent, which is feasible;
* selection keeps distinct sub-networks only, so such copies (and any
  duplicate child) never crowd the parent pool;
* since a copy is never selected, it is never scored either: the constraint
  and the objective see only new sub-networks (:func:`score_where`, in
  chunks of ``score_chunk`` rows). With OFA's defaults, its accuracy
  predictor and the Note10 LUT, a quarter of the 125 candidates are copies
  and only 35-60 of the 100 children are new feasible sub-networks (parent
  copies fill the other slots), so this saves about 45% of the predictor
  rows without changing any result;
* a search also remembers the sub-networks it has scored (a hash table in
  :class:`EvoState`, ``memory_bits``): one that failed the constraint fails
  it again, and one scored and not selected cannot be selected later (the
  parents' worst objective only rises), so neither is scored again. A
  remembered child keeps its slot, so the search makes exactly the choices
  it would make without the memory (test
  ``test_memory_changes_no_result_and_saves_rows``). With the same inputs
  ~40% of the new candidates were scored in an earlier generation; the
  memory cut the latency rows of a search by 36% and the objective rows by
  43%. ``EvoResult.evaluations`` counts the rows each function scored;
* with ``objective_first`` the objective runs on every new candidate and the
  constraint only on those that beat the worst parent (the others can never
  be selected), again with the same results: with two MLP predictors a
  search scores 36k rows instead of 41k;
* the bookkeeping between scoring calls is written for XLA:CPU, where it
  was up to a third of a search's time: a generation's random words are
  drawn a generation ahead with an unrolled threefry (:mod:`random_bits`,
  the same stream as ``jax.random``), hashes are summed a gene field at a
  time, and :func:`tell` trusts :func:`ask`'s flags instead of checking for
  copies again. With near-free predictors 15 searches took 0.93 -> 0.50 s
  (2-core AMD EPYC, same process), with identical results.

So every returned arch meets the constraint unless no sub-network of the space
(over the searched resolutions) can; that case is returned with
``feasible=False`` and callers must report it, never present it as a result.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax.struct
import jax
from jax import custom_batching
import jax.numpy as jnp
import numpy as np

from ofa_jax import space
from ofa_jax.search import random_bits

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
    """Hyper-parameters of :func:`evolve` (OFA's EvolutionFinder defaults).

    Attributes:
      mutate_prob: probability of resampling the resolution, each block's
        (kernel, expand) pair, and each stage's depth in a mutant (traced).
      population_size: children per generation (static).
      num_generations: generations run by :func:`evolve` (static).
      parent_ratio: fraction of the population kept as parents (static).
      mutation_ratio: fraction of the children made by mutation; the rest
        by uniform crossover of two parents (static).
      resolutions: the input resolutions searched (static).
      max_tries: draws of a child until it is feasible before it falls back
        to its parent (static).
      retry_size: children redrawn per retry (static; 0 means
        ``population_size // 4``). Retries redraw only infeasible slots, a
        fixed-size batch at a time, so each costs ``retry_size`` constraint
        evaluations instead of a whole population's.
      init_rounds: redraw rounds, shrinking toward the smallest arch, that
        build the feasible first population (static).
      num_candidates: 0 (default) redraws infeasible children as described
        by ``max_tries``/``retry_size``. A value C >= population_size instead
        draws C candidates at once (the same mutant/crossover mix), checks
        them in one batch and keeps ``population_size`` feasible ones in random
        order (parents' copies fill any shortfall): one constraint batch of C
        rows per generation, no loop, so it is the faster choice when the
        constraint is as costly as the objective (an MLP latency predictor).
      prng_impl: the PRNG of the search key (one of ``PRNG_IMPLS``). The
        default, threefry, is drawn by :mod:`random_bits` (JAX's stream,
        unrolled); with ``jax.random``'s own lowering it already drew words
        3x faster than ``rbg`` under ``vmap`` on XLA:CPU (3.9 vs 11.6 ns a
        word, 2-core AMD EPYC).
      score_chunk: objective and constraint are called only on new
        sub-networks (neither a parent nor an earlier candidate of the same
        generation), ``score_chunk`` rows at a time until all are covered
        (static; 0 scores every row in one call). Copies are never selected,
        so skipping them changes no result (and saves ~45% of the rows
        with OFA's defaults, see the module docstring).
      memory_bits: with ``candidate_ratio``, a search remembers the
        sub-networks it has scored in a table of ``2**memory_bits`` entries
        (4 bytes each, 256 KiB by default) and never scores one again: one
        found infeasible stays infeasible, and one that was scored and not
        selected can never be selected later, since the parents' worst
        objective only rises (static; 0 disables it). Assumes a
        deterministic objective and constraint, as predictors and LUTs are.
        See :func:`recall`.
      objective_first: with ``candidate_ratio``, :func:`evolve` scores the
        objective on every new candidate first and checks the constraint
        only where a candidate beats the worst parent (and where slots are
        contested); same children, same results. It pays when the
        constraint costs as much as the objective (an MLP latency predictor
        with an MLP accuracy predictor: ~20% fewer rows), not with a cheap
        LUT constraint (static; :func:`ask` by hand always checks first).
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
        """Children made by mutation each generation (50 by default)."""
        return int(round(self.population_size * self.mutation_ratio))

    @property
    def num_retry(self) -> int:
        """Children redrawn per retry."""
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
        """Objective evaluations of one :func:`evolve` run."""
        return self.population_size * (self.num_generations + 1)


def _objective_first_ok(params: EvoParams) -> bool:
    # A bool, and only with oversampling (redraw mode checks the constraint first).
    return params.objective_first in (False, True) and (not params.objective_first or
                                                        params.candidate_ratio != 0)


def make_params(*, resolutions: Sequence[int] = OFA_FINDER_RESOLUTIONS, **kwargs) -> EvoParams:
    """Validated :class:`EvoParams`; raises ``ValueError`` naming the bad field."""
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
        :func:`recall`; shape [0] when ``memory_bits`` is 0).
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
      history: float32[num_generations], best objective after each generation.
      evaluations: int32[2], sub-networks scored by the constraint and by the
        objective over the whole search.
      state: the final :class:`EvoState` (None for random search).
    """

    arch: space.Arch
    objective: jax.Array
    feasible: jax.Array
    history: jax.Array
    evaluations: jax.Array
    state: Any = None


# ---------------------------------------------------------------------------
# Genetic operators (batched, jit friendly).

# Genes of one genome: kernel and expand per block, depth per stage, resolution.
_NUM_GENES = 2 * space.NUM_BLOCKS + space.NUM_STAGES + 1
# Mutation coins: one per block's (kernel, expand) pair, per stage, and the resolution.
_NUM_COINS = space.NUM_BLOCKS + space.NUM_STAGES + 1
# Random words of one crossover (a bit per gene) and of one mutation (16 bits
# per gene and per coin, two draws a word).
_CROSS_WORDS = -(-_NUM_GENES // 32)
_MUTATE_WORDS = -(-(_NUM_GENES + _NUM_COINS) // 2)


def _uniform_index(bits: jax.Array, n: int) -> jax.Array:
    """One uniform int32 in [0, n) per draw (modulo bias below n / 2^16 for 16-bit draws)."""
    return (bits % jnp.uint32(n)).astype(jnp.int32)


def _bits16(key: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """uint32[shape] uniform in [0, 2^16): both halves of each random word.

    A gene needs far fewer than 32 bits, so every random word serves two
    draws (words were once the costliest part of a generation's genetic
    operators on XLA:CPU, ~4-12 ns each under vmap).
    """
    n, m = shape
    return _halves(random_bits.bits(key, (n, -(-m // 2))), m)


def _halves(words: jax.Array, m: int) -> jax.Array:
    """uint32[n, m] in [0, 2^16): both halves of uint32[n, ceil(m / 2)] words."""
    return jnp.concatenate([words & 0xFFFF, words >> 16], axis=1)[:, :m]


def _pick(bits: jax.Array, choices: Sequence[int]) -> jax.Array:
    """One uniform choice per uint32 draw."""
    return jnp.asarray(choices, jnp.int32)[_uniform_index(bits, len(choices))]


def _genomes_from_bits(bits: jax.Array, resolutions: Sequence[int]) -> space.Arch:
    """Genomes from uint32[n, _NUM_GENES] random bits."""
    kernel, expand, depth, resolution = _split_genes(bits)
    return space.Arch(kernel=_pick(kernel, space.KERNEL_CHOICES),
                      expand=_pick(expand, space.EXPAND_CHOICES),
                      depth=_pick(depth, space.DEPTH_CHOICES),
                      resolution=_pick(resolution, resolutions))


def random_genomes(key: jax.Array, n: int, resolutions: Sequence[int]) -> space.Arch:
    """n uniformly random genomes (not canonicalised: inactive genes kept).

    All genes come from one :func:`random_bits.bits` draw (16 bits a gene): on
    XLA:CPU a ``randint`` per gene group cost ~3x the whole rest of a
    generation.
    """
    return _genomes_from_bits(_bits16(key, (n, _NUM_GENES)), resolutions)


def smallest_genomes(n: int, resolutions: Sequence[int]) -> space.Arch:
    """n copies of the smallest sub-network at the smallest searched resolution."""
    full = lambda shape, v: jnp.full(shape, v, jnp.int32)
    return space.Arch(kernel=full((n, space.NUM_BLOCKS), min(space.KERNEL_CHOICES)),
                      expand=full((n, space.NUM_BLOCKS), min(space.EXPAND_CHOICES)),
                      depth=full((n, space.NUM_STAGES), min(space.DEPTH_CHOICES)),
                      resolution=full((n,), min(resolutions)))


def mutate(key: jax.Array, genomes: space.Arch, mutate_prob: jax.Array,
           resolutions: Sequence[int]) -> space.Arch:
    """OFA's mutation: resample each gene group with probability ``mutate_prob``.

    Gene groups: the resolution, each block's (kernel, expand) pair (one coin,
    two independent draws) and each stage's depth. A resample may redraw the
    same value, as in OFA.
    """
    n = genomes.resolution.shape[0]
    return _mutate(_bits16(key, (n, _NUM_GENES + _NUM_COINS)), genomes, mutate_prob, resolutions)


def _mutate(bits: jax.Array, genomes: space.Arch, mutate_prob: jax.Array,
            resolutions: Sequence[int]) -> space.Arch:
    """:func:`mutate` with its uint32[n, _NUM_GENES + _NUM_COINS] 16-bit draws given."""
    fresh = _genomes_from_bits(bits[:, :_NUM_GENES], resolutions)
    # 16-bit uniforms in [0, 1): flip a group when below mutate_prob.
    coins = bits[:, _NUM_GENES:].astype(jnp.float32) * (1.0 / (1 << 16))
    flip = coins < jnp.asarray(mutate_prob, jnp.float32)
    nb, ns = space.NUM_BLOCKS, space.NUM_STAGES
    flip_b, flip_d, flip_r = flip[:, :nb], flip[:, nb:nb + ns], flip[:, nb + ns]
    return space.Arch(kernel=jnp.where(flip_b, fresh.kernel, genomes.kernel),
                      expand=jnp.where(flip_b, fresh.expand, genomes.expand),
                      depth=jnp.where(flip_d, fresh.depth, genomes.depth),
                      resolution=jnp.where(flip_r, fresh.resolution, genomes.resolution))


def _split_genes(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """[n, _NUM_GENES] columns -> (kernel, expand, depth, resolution) columns."""
    nb, ns = space.NUM_BLOCKS, space.NUM_STAGES
    return x[:, :nb], x[:, nb:2 * nb], x[:, 2 * nb:2 * nb + ns], x[:, 2 * nb + ns]


def crossover(key: jax.Array, first: space.Arch, second: space.Arch) -> space.Arch:
    """OFA's uniform crossover: every gene from either parent with probability 1/2."""
    n = first.resolution.shape[0]
    return _crossover(random_bits.bits(key, (n, _CROSS_WORDS)), first, second)


def _crossover(words: jax.Array, first: space.Arch, second: space.Arch) -> space.Arch:
    """:func:`crossover` with its uint32[n, _CROSS_WORDS] words given (one bit a gene)."""
    gene = np.arange(_NUM_GENES)
    take_first = _split_genes((words[:, gene // 32] >> (gene % 32).astype(np.uint32)) & 1 == 0)
    fields = lambda g: (g.kernel, g.expand, g.depth, g.resolution)
    return space.Arch(
        *(jnp.where(t, a, b) for t, a, b in zip(take_first, fields(first), fields(second))))


def _where(mask: jax.Array, a: space.Arch, b: space.Arch) -> space.Arch:
    """Per-arch select between two batches."""
    return jax.tree_util.tree_map(
        lambda x, y: jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), x, y), a, b)


def _concat(a: space.Arch, b: space.Arch) -> space.Arch:
    return jax.tree_util.tree_map(lambda x, y: jnp.concatenate([x, y]), a, b)


def _check(constraint: Constraint, genomes: space.Arch) -> jax.Array:
    ok = jnp.asarray(constraint(space.canonicalize(genomes)))
    return ok.astype(bool).reshape(genomes.resolution.shape)


def _rank_key(fitness: jax.Array, feasible: jax.Array) -> jax.Array:
    # Infeasible or NaN scores sort last so a feasible arch always wins.
    fitness = jnp.asarray(fitness, jnp.float32)
    return jnp.where(feasible & ~jnp.isnan(fitness), fitness, -jnp.inf)


def resample_until_feasible(key: jax.Array, propose: Callable[[jax.Array, jax.Array],
                                                              space.Arch], num_slots: int,
                            fallback: space.Arch, fallback_ok: jax.Array, constraint: Constraint,
                            max_tries: int, retry_size: int) -> tuple[space.Arch, jax.Array]:
    """Bounded resampling: redraw infeasible slots until feasible, then fall back.

    The first draw fills every slot. Each retry redraws up to ``retry_size``
    still-infeasible slots (fixed shape: the first ones in slot order), so a
    retry costs ``retry_size`` constraint evaluations. After ``max_tries``
    draws, or once every slot is feasible, remaining slots take ``fallback``.

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
      (archs, feasible) for every slot, and the int32 number of constraint
      rows evaluated.
    """
    k0, key = random_bits.split(key)
    first = propose(k0, jnp.arange(num_slots))
    carry = (key, jnp.int32(1), first, _check(constraint, first))

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
        take = redo & _check(constraint, new)
        old = cand[slots]
        cand = jax.tree_util.tree_map(lambda c_, n_, o_: c_.at[slots].set(n_), cand,
                                      _where(take, new, old), old)
        return key, t + 1, cand, ok.at[slots].set(ok[slots] | take)

    _, tries, cand, ok = jax.lax.while_loop(cond, body, carry)
    rows = num_slots + (tries - 1) * retry_size
    return _where(ok, cand, fallback), ok | fallback_ok, rows


def initial_population(key: jax.Array, params: EvoParams,
                       constraint: Constraint) -> tuple[space.Arch, jax.Array]:
    """A first population of ``population_size`` archs, feasible where possible.

    Round 0 samples uniformly (as OFA does). Each later round redraws only the
    infeasible slots, with every gene set to its smallest value with
    probability ``t / (init_rounds - 1)``, so the last round is the smallest
    sub-network at the smallest searched resolution. This bounds the work
    where OFA needs ~80,000 uniform draws at tight budgets.

    Returns:
      (genomes [population_size], feasible bool[population_size], int32
      constraint rows evaluated).
    """
    n, rounds = params.population_size, params.init_rounds
    small = smallest_genomes(n, params.resolutions)

    def draw(key, t):
        kg, ks = random_bits.split(key)
        genomes = random_genomes(kg, n, params.resolutions)
        q = t / max(rounds - 1, 1)
        leaves, treedef = jax.tree_util.tree_flatten(genomes)
        keys = random_bits.split(ks, len(leaves))
        shrunk = [
            jnp.where(jax.random.bernoulli(k, q, x.shape), s, x)
            for k, x, s in zip(keys, leaves, jax.tree_util.tree_leaves(small))
        ]
        return jax.tree_util.tree_unflatten(treedef, shrunk)

    k0, key = random_bits.split(key)
    first = random_genomes(k0, n, params.resolutions)
    carry = (key, jnp.int32(1), first, _check(constraint, first))

    def cond(c):
        _, t, _, ok = c
        return (t < rounds) & ~jnp.all(ok)

    def body(c):
        key, t, cand, ok = c
        key, sub = random_bits.split(key)
        new = draw(sub, t.astype(jnp.float32))
        new_ok = _check(constraint, new)
        return key, t + 1, _where(ok, cand, new), ok | new_ok

    _, rounds_run, genomes, ok = jax.lax.while_loop(cond, body, carry)
    return genomes, ok, rounds_run * n


# ---------------------------------------------------------------------------
# init / ask / tell / evolve.


@functools.cache
def _hash_coefficients(seed: int, rows: int) -> np.ndarray:
    """uint32[rows, _NUM_GENES] fixed random coefficients (a constant in every program)."""
    with jax.ensure_compile_time_eval():
        return np.asarray(random_bits.bits(jax.random.key(seed), (rows, _NUM_GENES)))


def _gene_hashes(g: space.Arch, coef: jax.Array) -> jax.Array:
    """uint32[..., k]: ``sum_j gene_j * coef[i, j]`` (mod 2^32) of canonical genomes ``g``.

    ``coef`` is uint32[k, _NUM_GENES] over the genes (kernels, expands,
    depths, resolution). Summed one gene field at a time: building the
    [..., 46] gene matrix, or a [..., k, 46] product, and reducing it cost
    3-5x more on XLA:CPU (e.g. 150 -> 50 us a generation for 15 searches).
    """
    fields = (g.kernel, g.expand, g.depth, g.resolution[..., None])
    rows = []
    for c in coef:
        h, start = jnp.zeros(g.resolution.shape, jnp.uint32), 0
        for x in fields:
            stop = start + x.shape[-1]
            h = h + jnp.sum(x.astype(jnp.uint32) * c[start:stop], axis=-1, dtype=jnp.uint32)
            start = stop
        rows.append(h)
    return jnp.stack(rows, axis=-1)


def genome_hash(genomes: space.Arch) -> jax.Array:
    """uint32 hash of each canonical genome (equal sub-networks, equal hash).

    A random-coefficient polynomial over the gene indices; collisions between
    distinct sub-networks are ~2^-32 per pair and only cost a skipped child.
    """
    coef = _hash_coefficients(20200426, 1) | 1
    g = space.canonicalize(genomes)
    return _gene_hashes(g, coef)[..., 0] ^ (g.kernel[..., 0].astype(jnp.uint32) << 7)


def _first_occurrence(hashes: jax.Array, last: int | None = None) -> jax.Array:
    """bool mask: True for the first entry of each distinct hash (of the ``last`` entries)."""
    m = hashes.shape[0]
    start = m - (m if last is None else last)
    earlier = jnp.arange(m)[None, :] < jnp.arange(start, m)[:, None]
    same = (hashes[start:, None] == hashes[None, :]) & earlier
    # A max over uint8 reduced 2x faster than any() over bool on XLA:CPU.
    return jnp.max(same.astype(jnp.uint8), axis=1) == 0


def new_children(children: space.Arch, parents: space.Arch) -> jax.Array:
    """bool mask: children that are neither a parent nor an earlier child (canonically)."""
    # Parents come first, so a child equal to one is not a first occurrence.
    return _first_occurrence(genome_hash(_concat(parents, children)),
                             last=children.resolution.shape[0])


# A memory entry: 30 bits of one hash of the canonical sub-network (its slot
# comes from a second, independent hash) and 2 bits of what is known of it.
UNSEEN, INFEASIBLE, REJECTED, TOLD = 0, 1, 2, 3
_STATUS_BITS = jnp.uint32(3)


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: every output bit depends on every input bit."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def memory_keys(genomes: space.Arch, memory_bits: int) -> tuple[jax.Array, jax.Array]:
    """(slot int32[n], tag uint32[n]) of each canonical genome in a memory table.

    Two random-coefficient polynomials over the genes, each finalised by
    :func:`_fmix32`: the slot is the top ``memory_bits`` bits of one, the tag
    the top 30 bits of the other, so two distinct sub-networks are confused
    only when both agree (about 2^-30 per lookup against the one entry of
    its slot).
    """
    coef = _hash_coefficients(20201201, 2)
    h = _fmix32(_gene_hashes(space.canonicalize(genomes), coef))
    slot = (h[..., 0] >> (32 - memory_bits)).astype(jnp.int32)
    return slot, h[..., 1] & ~_STATUS_BITS


def empty_memory(memory_bits: int) -> jax.Array:
    """A memory table with no entry (uint32[2**memory_bits]; [0] when disabled)."""
    return jnp.zeros((1 << memory_bits) if memory_bits else 0, jnp.uint32)


def recall(memory: jax.Array, slot: jax.Array, tag: jax.Array) -> jax.Array:
    """int32 status of each key: UNSEEN, INFEASIBLE (failed the constraint),
    REJECTED (objective below the worst parent, constraint not checked;
    ``objective_first`` only) or TOLD (feasible, scored by the objective and
    never selectable from now on).

    The memory is a direct-mapped table: a newer sub-network with the same
    slot overwrites an older one, which is then only scored again.
    """
    entry = memory[slot]
    known = (entry != 0) & ((entry & ~_STATUS_BITS) == tag)
    return jnp.where(known, entry & _STATUS_BITS, UNSEEN).astype(jnp.int32)


def remember(memory: jax.Array, slot: jax.Array, tag: jax.Array, status: jax.Array,
             write: jax.Array) -> jax.Array:
    """The memory with ``status`` stored for the keys where ``write``.

    Keys sharing a slot in one call resolve to the largest entry, so the
    result does not depend on the order of the scatter (deterministic on
    every backend).
    """
    idx = jnp.where(write, slot, memory.shape[0])
    memory = memory.at[idx].set(0, mode='drop')
    return memory.at[idx].max(tag | jnp.asarray(status, jnp.uint32), mode='drop')


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


def _check_where(constraint: Constraint, genomes: space.Arch, mask: jax.Array,
                 chunk: int) -> jax.Array:
    """The constraint on the masked rows only (False elsewhere)."""
    if isinstance(constraint, ScoredConstraint):
        archs = space.canonicalize(genomes)
        scores = score_where(Shared(constraint.score), archs, mask, chunk, jnp.nan)
        return jnp.asarray(constraint.accept(scores, archs), bool) & mask
    return score_where(lambda a: _check(constraint, a), genomes, mask, chunk, False)


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
    order = jnp.concatenate(
        [_feasible_first(mask),
         jnp.full((num_chunks * chunk - n,), n, jnp.int32)])
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


def init(key: jax.Array, params: EvoParams, objective: Objective,
         constraint: Constraint) -> EvoState:
    """Builds and scores the first population and keeps the best as parents."""
    genomes, ok, checked = initial_population(key, params, constraint)
    fitness = jnp.asarray(objective(space.canonicalize(genomes)), jnp.float32)
    first = _first_occurrence(genome_hash(genomes))
    eligible = ok & first
    _, idx = jax.lax.top_k(_rank_key(fitness, eligible), params.num_parents)
    memory = empty_memory(params.memory_bits)
    if params.memory_bits:
        slot, tag = memory_keys(genomes, params.memory_bits)
        memory = remember(memory, slot, tag, jnp.where(ok, TOLD, INFEASIBLE), first)
    return EvoState(parents=genomes[idx],
                    fitness=fitness[idx],
                    feasible=ok[idx],
                    generation=jnp.zeros((), jnp.int32),
                    memory=memory,
                    evaluations=jnp.stack([checked, jnp.int32(params.population_size)]))


def ask(key: jax.Array, state: EvoState, params: EvoParams,
        constraint: Constraint) -> tuple[space.Arch, jax.Array, EvoState]:
    """Proposes one generation of children: mutants, then crossovers.

    Parents are drawn uniformly from ``state.parents``. Infeasible children
    are redrawn (or, with ``candidate_ratio``, over-drawn) and a slot left
    without a feasible child falls back to a copy of its (first) parent.
    Sub-networks the search has already scored are not checked again (the
    memory, ``EvoParams.memory_bits``).

    Returns:
      (children Arch[population_size] as genomes, bool[population_size]: True
      for a feasible child that is a new sub-network, i.e. neither a parent,
      nor an earlier child, nor one scored in an earlier generation; only
      these need an objective value, and :func:`tell` selects only these
      among the children; the state with its memory and evaluation count
      updated, to pass to :func:`tell`).
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
        mutant = mutate(ka, a, params.mutate_prob, params.resolutions)
        child = crossover(kb, a, b)
        return _where(slots < num_m, mutant, child)

    fallback_ok = state.feasible[jnp.concatenate([im, i1])]
    children, ok, checked = resample_until_feasible(kp, propose, params.population_size, base_a,
                                                    fallback_ok, constraint, params.max_tries,
                                                    params.num_retry)
    ok = ok & new_children(children, state.parents)
    memory = state.memory
    if params.memory_bits:  # Here the memory only spares objective rows.
        slot, tag = memory_keys(children, params.memory_bits)
        told = recall(memory, slot, tag) == TOLD
        memory = remember(memory, slot, tag, TOLD, ok & ~told)
        ok = ok & ~told
    return children, ok, state.replace(memory=memory,
                                       evaluations=state.evaluations.at[0].add(checked))


def _feasible_first(ok: jax.Array) -> jax.Array:
    """Indices that put the True entries of ``ok`` first, each group in its order.

    A stable partition by prefix sums and one scatter: O(n), where a sort
    (XLA:CPU's comparator-based sort) cost ~10x more per generation.
    """
    n = ok.shape[0]
    # One prefix sum: entry i has inc[i] True and i + 1 - inc[i] False entries up to it.
    inc = jnp.cumsum(ok, dtype=jnp.int32)
    idx = jnp.arange(n, dtype=jnp.int32)
    pos = jnp.where(ok, inc - 1, inc[-1] + idx - inc)
    return jnp.zeros((n,), jnp.int32).at[pos].set(idx)


def _parent_words(key: jax.Array, n: int, num_parents: int) -> jax.Array:
    """The random words of :func:`_parent_indices`."""
    if num_parents <= 1 << 8:  # 16-bit draws: relative modulo bias below 0.4%.
        return random_bits.bits(key, (1, n))
    return random_bits.bits(key, (2 * n,))


def _parent_indices(words: jax.Array, n: int, num_parents: int) -> tuple[jax.Array, jax.Array]:
    """Two int32[n] arrays of uniform parent indices from :func:`_parent_words`."""
    bits = _halves(words, 2 * n)[0] if num_parents <= 1 << 8 else words
    index = _uniform_index(bits, num_parents)
    return index[:n], index[n:]


def _generation_words(key: jax.Array, params: EvoParams) -> tuple[jax.Array, ...]:
    """All random words of one generation's candidates (parents, mutation, crossover).

    :func:`evolve` draws them a generation ahead, at the end of the previous
    step, so they sit in the loop's carry: XLA then hashes each word once,
    where a draw beside its consumers was fused into each of them and
    recomputed there (and JAX's own CPU threefry is a rolled loop).
    """
    kp, kmut, kx = random_bits.split(key, 3)
    total = params.num_candidates
    parents = _parent_words(kp, total, params.num_parents)
    mutation = random_bits.bits(kmut, (total, _MUTATE_WORDS))
    return parents, mutation, random_bits.bits(kx, (total, _CROSS_WORDS))


def _keep_first(ok: jax.Array, n: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The first n feasible candidates: (order int32[n] of the slots, keep
    bool[n]: slot holds a feasible candidate, kept bool[candidates])."""
    order = _feasible_first(ok)[:n]
    keep = ok[order]
    return order, keep, jnp.zeros(ok.shape, bool).at[order].set(keep)


def _candidates(words: tuple[jax.Array, ...], state: EvoState, params: EvoParams):
    """One generation's candidates (mutants spread evenly among crossovers), from
    its :func:`_generation_words`.

    Returns (candidates, their first parents, new mask, memory status, memory
    keys or None).
    """
    num_p, total = params.num_parents, params.num_candidates
    # Mutants spread evenly among the candidates, so that keeping the first n
    # feasible ones keeps OFA's mutant/crossover mix.
    i = jnp.arange(total)
    is_mutant = (jnp.floor(
        (i + 1) * params.mutation_ratio) - jnp.floor(i * params.mutation_ratio)) > 0
    parent_words, mutate_words, cross_words = words
    ia, ib = _parent_indices(parent_words, total, num_p)
    ib = jnp.where(is_mutant, ia, ib)
    base_a, base_b = state.parents[ia], state.parents[ib]
    mutant = _mutate(_halves(mutate_words, _NUM_GENES + _NUM_COINS), base_a, params.mutate_prob,
                     params.resolutions)
    cross = _crossover(cross_words, base_a, base_b)
    cand = _where(is_mutant, mutant, cross)
    # Copies of a parent or of an earlier candidate would never be selected:
    # skip them before the (costly) scoring; so are sub-networks already
    # scored in an earlier generation (the memory).
    new = new_children(cand, state.parents)
    known = jnp.zeros((total,), jnp.int32)
    keys = None
    if params.memory_bits:
        keys = memory_keys(cand, params.memory_bits)
        known = recall(state.memory, *keys)
    return cand, base_a, new, known, keys


def _ask_oversampled(words: tuple[jax.Array, ...], state: EvoState, params: EvoParams,
                     constraint: Constraint) -> tuple[space.Arch, jax.Array, EvoState]:
    """``ask`` with ``candidate_ratio``: one batch of candidates, feasible ones kept."""
    n = params.population_size
    cand, base_a, new, known, keys = _candidates(words, state, params)
    check = new & (known == UNSEEN)
    ok = _check_where(constraint, cand, check, params.score_chunk) | (new & (known == TOLD))
    order, keep, kept = _keep_first(ok, n)
    memory = state.memory
    if params.memory_bits:
        # Feasible candidates beyond the n kept are not remembered: the
        # memory only ever excludes a sub-network, so a hash collision can
        # cost a child but never admit an infeasible one.
        status = jnp.where(kept, TOLD, INFEASIBLE)
        memory = remember(memory, *keys, status, (kept | (check & ~ok)) & (status != known))
    # A kept child told in an earlier generation was not selected then and
    # cannot be now (the parents' worst objective only rises): it keeps its
    # slot, so the other children are those of a search without memory, but
    # is neither scored nor selected.
    fresh = keep & (known[order] != TOLD)
    state = state.replace(memory=memory,
                          evaluations=state.evaluations.at[0].add(jnp.sum(check, dtype=jnp.int32)))
    return _where(keep, cand[order], base_a[order]), fresh, state


def _ask_objective_first(
        words: tuple[jax.Array, ...], state: EvoState, params: EvoParams, objective: Objective,
        constraint: Constraint) -> tuple[space.Arch, jax.Array, jax.Array, EvoState]:
    """``ask`` + objective with ``objective_first``: same children, same selection.

    The objective runs on every new candidate; the constraint only on those
    that beat the worst parent (the rest can never be selected: the worst
    parent wins ties, and the parents' worst objective only rises), and on
    the others only in a generation where more than ``population_size``
    candidates may be feasible, since then the slots they take decide which
    children are kept. Such unchecked candidates are remembered as REJECTED.

    Returns (children, fresh mask, children's objective (NaN where not
    fresh), state).
    """
    n, chunk = params.population_size, params.score_chunk
    cand, base_a, new, known, keys = _candidates(words, state, params)
    need = new & (known == UNSEEN)
    f = score_where(objective, space.canonicalize(cand), need, chunk, jnp.nan)
    worst = _rank_key(state.fitness[-1], state.feasible[-1])
    promising = need & (_rank_key(f, need) > worst)
    unchecked = (need & ~promising) | (new & (known == REJECTED))
    crowded = jnp.sum(new & (known != INFEASIBLE)) > n
    rest = unchecked & crowded
    checked = promising | rest
    ok = _check_where(constraint, cand, checked, chunk) | (new & (known == TOLD))
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
        memory = remember(memory, *keys, status, write)
    rows = jnp.sum(checked, dtype=jnp.int32)
    state = state.replace(memory=memory,
                          evaluations=state.evaluations +
                          jnp.stack([rows, jnp.sum(need, dtype=jnp.int32)]))
    children = _where(keep, cand[order], base_a[order])
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
    :func:`ask`'s flags are (:func:`evolve` passes it; the check cost ~10%
    of a generation's bookkeeping).
    """
    genomes = _concat(state.parents, children)
    fitness = jnp.concatenate([state.fitness, jnp.asarray(fitness, jnp.float32)])
    feasible = jnp.concatenate([state.feasible, jnp.asarray(feasible, bool)])
    eligible = feasible
    if not distinct:
        eligible = feasible & _first_occurrence(genome_hash(genomes))
        # Parents always stay eligible (their flag is their feasibility), so the
        # best feasible arch is never lost.
        eligible = eligible.at[:params.num_parents].set(feasible[:params.num_parents])
    _, idx = jax.lax.top_k(_rank_key(fitness, eligible), params.num_parents)
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
        a traced budget); called on canonical archs.

    Returns:
      :class:`EvoResult` with the best arch, its objective, whether it is
      feasible and the best objective after each generation.
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
            fitness = score_where(objective, space.canonicalize(children), ok, params.score_chunk,
                                  jnp.nan)
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
    does). ``history`` keeps the approximate values.
    """
    if result.state is None:
        raise ValueError('refine: the result has no final population (random search?)')
    parents = space.canonicalize(result.state.parents)
    fitness = jnp.asarray(objective(parents), jnp.float32)
    ok = _check(constraint, parents) & result.state.feasible
    best = jnp.argmax(_rank_key(fitness, ok))
    return result.replace(arch=parents[best], objective=fitness[best], feasible=ok[best])
