"""Genetic operators on batches of integer OFA genomes (pure, jit and vmap friendly).

A genome is a :class:`~ofa_jax.space.Arch` batch: a kernel and an expand ratio
per block, a depth per stage and a resolution (``NUM_GENES`` genes). This
module draws genomes (uniform, or the smallest), mutates and crosses them over
as OFA's EvolutionFinder does, and holds the batch helpers and the ranking key
that selection uses. Every random gene is a 16-bit draw, two to a random word
of :mod:`~ofa_jax.search.random_bits`; ``*_with_bits``/``*_with_words``
variants take those words drawn beforehand.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import space
from ofa_jax.search import random_bits

# Genes of one genome: kernel and expand per block, depth per stage, resolution.
NUM_GENES = 2 * space.NUM_BLOCKS + space.NUM_STAGES + 1
# Mutation coins: one per block's (kernel, expand) pair, per stage, and the resolution.
NUM_COINS = space.NUM_BLOCKS + space.NUM_STAGES + 1
# Random words of one crossover (a bit per gene) and of one mutation (16 bits
# per gene and per coin, two draws a word).
CROSSOVER_WORDS = -(-NUM_GENES // 32)
MUTATION_WORDS = -(-(NUM_GENES + NUM_COINS) // 2)


def uniform_index(bits: jax.Array, n: int) -> jax.Array:
    """One uniform int32 in [0, n) per draw (modulo bias below n / 2^16 for 16-bit draws)."""
    return (bits % jnp.uint32(n)).astype(jnp.int32)


def halves(words: jax.Array, m: int) -> jax.Array:
    """uint32[n, m] in [0, 2^16): both halves of uint32[n, ceil(m / 2)] words."""
    return jnp.concatenate([words & 0xFFFF, words >> 16], axis=1)[:, :m]


def _bits16(key: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """uint32[shape] uniform in [0, 2^16): both halves of each random word.

    A gene needs far fewer than 32 bits, so every random word serves two
    draws: words are a large part of the operators' cost on XLA:CPU.
    """
    n, m = shape
    return halves(random_bits.bits(key, (n, -(-m // 2))), m)


def _pick(bits: jax.Array, choices: Sequence[int]) -> jax.Array:
    """One uniform choice per uint32 draw."""
    return jnp.asarray(choices, jnp.int32)[uniform_index(bits, len(choices))]


def _split_genes(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """[n, NUM_GENES] columns -> (kernel, expand, depth, resolution) columns."""
    nb, ns = space.NUM_BLOCKS, space.NUM_STAGES
    return x[:, :nb], x[:, nb:2 * nb], x[:, 2 * nb:2 * nb + ns], x[:, 2 * nb + ns]


def _genomes_from_bits(bits: jax.Array, resolutions: Sequence[int]) -> space.Arch:
    """Genomes from uint32[n, NUM_GENES] 16-bit draws."""
    kernel, expand, depth, resolution = _split_genes(bits)
    return space.Arch(kernel=_pick(kernel, space.KERNEL_CHOICES),
                      expand=_pick(expand, space.EXPAND_CHOICES),
                      depth=_pick(depth, space.DEPTH_CHOICES),
                      resolution=_pick(resolution, resolutions))


def random_genomes(key: jax.Array, n: int, resolutions: Sequence[int]) -> space.Arch:
    """n uniformly random genomes (not canonicalised: inactive genes kept).

    All genes come from one :func:`random_bits.bits` draw (16 bits a gene):
    on XLA:CPU one ``randint`` per gene group cost more than the rest of a
    generation.
    """
    return _genomes_from_bits(_bits16(key, (n, NUM_GENES)), resolutions)


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
    return mutate_with_bits(_bits16(key, (n, NUM_GENES + NUM_COINS)), genomes, mutate_prob,
                            resolutions)


def mutate_with_bits(bits: jax.Array, genomes: space.Arch, mutate_prob: jax.Array,
                     resolutions: Sequence[int]) -> space.Arch:
    """:func:`mutate` with its uint32[n, NUM_GENES + NUM_COINS] 16-bit draws given."""
    fresh = _genomes_from_bits(bits[:, :NUM_GENES], resolutions)
    # 16-bit uniforms in [0, 1): flip a group when below mutate_prob.
    coins = bits[:, NUM_GENES:].astype(jnp.float32) * (1.0 / (1 << 16))
    flip = coins < jnp.asarray(mutate_prob, jnp.float32)
    nb, ns = space.NUM_BLOCKS, space.NUM_STAGES
    flip_b, flip_d, flip_r = flip[:, :nb], flip[:, nb:nb + ns], flip[:, nb + ns]
    return space.Arch(kernel=jnp.where(flip_b, fresh.kernel, genomes.kernel),
                      expand=jnp.where(flip_b, fresh.expand, genomes.expand),
                      depth=jnp.where(flip_d, fresh.depth, genomes.depth),
                      resolution=jnp.where(flip_r, fresh.resolution, genomes.resolution))


def crossover(key: jax.Array, first: space.Arch, second: space.Arch) -> space.Arch:
    """OFA's uniform crossover: every gene from either parent with probability 1/2."""
    n = first.resolution.shape[0]
    return crossover_with_words(random_bits.bits(key, (n, CROSSOVER_WORDS)), first, second)


def crossover_with_words(words: jax.Array, first: space.Arch, second: space.Arch) -> space.Arch:
    """:func:`crossover` with its uint32[n, CROSSOVER_WORDS] words given (one bit a gene)."""
    gene = np.arange(NUM_GENES)
    take_first = _split_genes((words[:, gene // 32] >> (gene % 32).astype(np.uint32)) & 1 == 0)
    fields = lambda g: (g.kernel, g.expand, g.depth, g.resolution)
    return space.Arch(
        *(jnp.where(t, a, b) for t, a, b in zip(take_first, fields(first), fields(second))))


def select(mask: jax.Array, a: space.Arch, b: space.Arch) -> space.Arch:
    """Per-arch select between two batches: ``a`` where ``mask``, else ``b``."""
    return jax.tree_util.tree_map(
        lambda x, y: jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), x, y), a, b)


def concat(a: space.Arch, b: space.Arch) -> space.Arch:
    """The batch ``a`` followed by the batch ``b``."""
    return jax.tree_util.tree_map(lambda x, y: jnp.concatenate([x, y]), a, b)


def rank_key(fitness: jax.Array, feasible: jax.Array) -> jax.Array:
    """float32 selection key: the fitness where feasible, -inf elsewhere.

    Infeasible or NaN scores sort last, so a feasible arch always wins.
    """
    fitness = jnp.asarray(fitness, jnp.float32)
    return jnp.where(feasible & ~jnp.isnan(fitness), fitness, -jnp.inf)
