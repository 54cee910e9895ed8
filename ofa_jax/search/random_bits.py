"""Random words for the search's genetic operators, fast on XLA:CPU.

On CPU, JAX lowers its threefry hash as a rolled ``while`` loop (five
iterations of four rounds) to keep compile times short. Inside the search's
``lax.scan`` that loop, with a copy of its state and several small fusions
per iteration, ran for every draw of every generation, a large share of the
search's bookkeeping (figures: benchmarks/results/search_notes.md). Here the
same hash is written out round by round, so XLA fuses all twenty rounds into
one elementwise loop.

For threefry keys (``jax.random.key(..., impl='threefry2x32')``, the search
default) :func:`bits` and :func:`split` return exactly the values of
``jax.random.bits`` and ``jax.random.split`` under JAX's default
``jax_threefry_partitionable=True``: counter ``i`` of a draw is the 64-bit
pair ``(0, i)`` and a 32-bit word is the xor of the hash's two outputs.
Other key types fall back to ``jax.random``.

The hash is Threefry-2x32 with 20 rounds (Salmon et al., "Parallel random
numbers: as easy as 1, 2, 3", SC 2011).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# Threefry-2x32 rotation constants (rounds 0-3, then 4-7, alternating) and the
# key-schedule parity word, from the Random123 specification.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def threefry2x32(key0: jax.Array, key1: jax.Array, x0: jax.Array,
                 x1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32-20 of the counter words ``(x0, x1)`` under key ``(key0, key1)``.

    All arguments are uint32 and broadcast together; returns two uint32
    arrays of the broadcast shape.
    """
    u32 = lambda v: jnp.asarray(v, jnp.uint32)
    key0, key1, x0, x1 = u32(key0), u32(key1), u32(x0), u32(x1)
    schedule = (key0, key1, key0 ^ key1 ^ _PARITY)
    x0, x1 = x0 + schedule[0], x1 + schedule[1]
    for group in range(5):
        for r in _ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))) ^ x0
        x0 = x0 + schedule[(group + 1) % 3]
        x1 = x1 + schedule[(group + 2) % 3] + np.uint32(group + 1)
    return x0, x1


def _is_threefry(key: jax.Array) -> bool:
    return jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and str(
        jax.random.key_impl(key)) == 'threefry2x32'


def _hash_counters(key: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    size = math.prod(shape)
    if size >= 1 << 32:
        raise ValueError(f'shape: {shape} has {size} elements; at most 2**32 - 1 are supported')
    data = jax.random.key_data(key)
    counter = jax.lax.iota(jnp.uint32, size).reshape(shape)
    return threefry2x32(data[0], data[1], jnp.zeros((), jnp.uint32), counter)


def bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """uint32[shape] uniform random words: ``jax.random.bits(key, shape)``."""
    shape = tuple(shape)
    if not _is_threefry(key):
        return jax.random.bits(key, shape, jnp.uint32)
    y0, y1 = _hash_counters(key, shape)
    # Fused into several consumers, XLA:CPU recomputes the twenty rounds in
    # each (an optimization_barrier did not stop it): draw into a buffer, as
    # the search does through its loop carry (evolution._generation_words).
    return y0 ^ y1


def split(key: jax.Array, num: int = 2) -> jax.Array:
    """``num`` new keys: ``jax.random.split(key, num)``."""
    if not _is_threefry(key):
        return jax.random.split(key, num)
    y0, y1 = _hash_counters(key, (num,))
    return jax.random.wrap_key_data(jnp.stack([y0, y1], axis=-1), impl='threefry2x32')
