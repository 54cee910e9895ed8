"""Hashing of sub-networks: copy detection in a generation and a search's memory.

Genomes of the same sub-network (they may differ in genes past a stage's
depth) hash alike, since every hash is taken of the canonical genome.

* :func:`genome_hash`, :func:`first_occurrence` and :func:`new_children` find
  copies among parents and children, which selection must skip.
* :func:`memory_keys`, :func:`recall` and :func:`remember` keep what a search
  knows of every sub-network it has scored (``EvoParams.memory_bits``) in a
  direct-mapped table of uint32 entries, so that none is scored twice. An
  entry holds 30 bits of one hash of the sub-network (its slot comes from a
  second, independent hash) and 2 bits of status: :data:`UNSEEN`,
  :data:`INFEASIBLE`, :data:`REJECTED` or :data:`TOLD`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import space
from ofa_jax.search import operators
from ofa_jax.search import random_bits

UNSEEN, INFEASIBLE, REJECTED, TOLD = 0, 1, 2, 3
_STATUS_BITS = jnp.uint32(3)


@functools.cache
def _hash_coefficients(seed: int, rows: int) -> np.ndarray:
    """uint32[rows, NUM_GENES] fixed random coefficients (a constant in every program)."""
    with jax.ensure_compile_time_eval():
        return np.asarray(random_bits.bits(jax.random.key(seed), (rows, operators.NUM_GENES)))


def _gene_hashes(g: space.Arch, coef: jax.Array) -> jax.Array:
    """uint32[..., k]: ``sum_j gene_j * coef[i, j]`` (mod 2^32) of canonical genomes ``g``.

    ``coef`` is uint32[k, NUM_GENES] over the genes (kernels, expands, depths,
    resolution). Summed one gene field at a time: building the [..., 46] gene
    matrix, or a [..., k, 46] product, and reducing it was several times
    slower on XLA:CPU.
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

    A fixed random linear combination of the gene values (mod 2^32, odd
    coefficients), xor-ed with the first kernel shifted; a collision of two
    distinct sub-networks only costs a skipped child.
    """
    coef = _hash_coefficients(20200426, 1) | 1
    g = space.canonicalize(genomes)
    return _gene_hashes(g, coef)[..., 0] ^ (g.kernel[..., 0].astype(jnp.uint32) << 7)


def first_occurrence(hashes: jax.Array, last: int | None = None) -> jax.Array:
    """bool mask: True for the first entry of each distinct hash.

    With ``last``, the mask covers only the ``last`` entries (each compared
    with every entry before it); otherwise all entries.
    """
    m = hashes.shape[0]
    start = m - (m if last is None else last)
    earlier = jnp.arange(m)[None, :] < jnp.arange(start, m)[:, None]
    same = (hashes[start:, None] == hashes[None, :]) & earlier
    # A max over uint8 reduces faster than any() over bool on XLA:CPU.
    return jnp.max(same.astype(jnp.uint8), axis=1) == 0


def new_children(children: space.Arch, parents: space.Arch) -> jax.Array:
    """bool mask: children that are neither a parent nor an earlier child (canonically)."""
    # Parents come first, so a child equal to one is not a first occurrence.
    return first_occurrence(genome_hash(operators.concat(parents, children)),
                            last=children.resolution.shape[0])


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: every output bit depends on every input bit."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def memory_keys(genomes: space.Arch, memory_bits: int) -> tuple[jax.Array, jax.Array]:
    """(slot int32[n], tag uint32[n]) of each canonical genome in a memory table.

    Two random linear hashes of the genes, each finalised by
    :func:`_fmix32`: the slot is the top ``memory_bits`` bits of one, the tag
    the top 30 bits of the other (its low 2 bits, zero, hold the status), so
    two distinct sub-networks are confused only when both agree (about
    2^-30 per lookup against the one entry of its slot).
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
