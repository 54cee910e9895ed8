"""Fixed-length encodings of architectures (batched, jit friendly).

``onehot128`` is the encoding of OFA's accuracy predictor and of the
2101.00732 latency MLP: for each of the 20 blocks a one-hot kernel (3 values),
then for each block a one-hot expand ratio (3 values), both all-zero for blocks
past their stage's depth, then a one-hot resolution bucket ``(r - 112) // 16``
over 8 slots (slot 0 is never used by resolutions 128..224).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ofa_jax import space

ONEHOT_DIM = 2 * space.NUM_BLOCKS * 3 + 8
NUM_RESOLUTION_BUCKETS = 8


def resolution_bucket(resolution: jax.Array) -> jax.Array:
    """OFA's resolution bucket index ``(r - 112) // 16`` (1..7 for 128..224)."""
    return (jnp.asarray(resolution) - 112) // 16


def onehot128(arch: space.Arch) -> jax.Array:
    """float32[..., 128] OFA one-hot encoding of one arch or a batch."""
    active = space.active_blocks(arch.depth)
    kernel = (space.kernel_index(jnp.asarray(arch.kernel))[..., None] == jnp.arange(
        len(space.KERNEL_CHOICES)))
    expand = (space.expand_index(jnp.asarray(arch.expand))[..., None] == jnp.arange(
        len(space.EXPAND_CHOICES)))
    kernel = (kernel & active[..., None]).reshape(kernel.shape[:-2] + (-1,))
    expand = (expand & active[..., None]).reshape(expand.shape[:-2] + (-1,))
    res = jax.nn.one_hot(resolution_bucket(arch.resolution),
                         NUM_RESOLUTION_BUCKETS,
                         dtype=jnp.bool_)
    return jnp.concatenate([kernel, expand, res], axis=-1).astype(jnp.float32)
