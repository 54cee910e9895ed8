"""Depthwise convolution implementations, selectable by name.

Two implementations compute the same function (stride ``s``, explicit
symmetric zero padding ``p`` on both spatial axes, NHWC input, kernel
``[k, k, 1, C]`` in HWIO layout with one input channel per group):

- ``'conv'``: ``lax.conv_general_dilated`` with ``feature_group_count=C``. The
  natural lowering; fast on GPU and TPU.
- ``'shifted'``: ``k * k`` strided slices of the padded input, each multiplied
  by one tap of the kernel and summed. XLA:CPU lowers grouped convolutions
  poorly; measured on a 2-core host this is 10-50x faster there (see
  ``benchmarks/depthwise.py``).

Both agree to float32 rounding (tested to 1e-5). Every latency measurement
records which one ran, because it changes the measured program.
"""

from __future__ import annotations

from typing import Callable

import jax
from jax import lax
import jax.numpy as jnp

DepthwiseFn = Callable[[jax.Array, jax.Array, int, int], jax.Array]


def _check(x: jax.Array, kernel: jax.Array) -> None:
    if x.ndim != 4:
        raise ValueError(f'depthwise: x must be NHWC (4-d), got shape {x.shape}')
    k = kernel.shape[0]
    if kernel.shape != (k, k, 1, x.shape[-1]):
        raise ValueError(f'depthwise: kernel must have shape (k, k, 1, {x.shape[-1]}), '
                         f'got {kernel.shape}')


def depthwise_conv_lax(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """Depthwise conv through ``lax.conv_general_dilated`` with feature groups."""
    _check(x, kernel)
    return lax.conv_general_dilated(x,
                                    kernel.astype(x.dtype),
                                    window_strides=(stride, stride),
                                    padding=((padding, padding), (padding, padding)),
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                    feature_group_count=x.shape[-1])


def depthwise_conv_shifted(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """Depthwise conv as a sum of ``k * k`` strided slices times kernel taps."""
    _check(x, kernel)
    k = kernel.shape[0]
    b, h, w, c = x.shape
    out_h = (h + 2 * padding - k) // stride + 1
    out_w = (w + 2 * padding - k) // stride + 1
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    taps = kernel[:, :, 0, :].astype(x.dtype)
    out = None
    for dy in range(k):
        for dx in range(k):
            window = lax.slice(xp, (0, dy, dx, 0),
                               (b, dy + stride * (out_h - 1) + 1, dx + stride * (out_w - 1) + 1, c),
                               (1, stride, stride, 1))
            term = window * taps[dy, dx]
            out = term if out is None else out + term
    return out


DEPTHWISE_IMPLS: dict[str, DepthwiseFn] = {
    'conv': depthwise_conv_lax,
    'shifted': depthwise_conv_shifted,
}


def default_depthwise(platform: str) -> str:
    """The fastest correct implementation for a JAX platform name.

    ``'shifted'`` on ``'cpu'``, ``'conv'`` elsewhere (``'gpu'``, ``'cuda'``,
    ``'rocm'``, ``'tpu'``), where the grouped convolution is native.
    """
    return 'shifted' if platform.lower() == 'cpu' else 'conv'


def resolve(name: str, platform: str | None = None) -> str:
    """Resolves ``'auto'`` for ``platform``; validates other names.

    Args:
      name: ``'auto'``, ``'conv'`` or ``'shifted'``.
      platform: the JAX platform of the device that will run the program
        (``device.platform``). Give it whenever the device is known: the
        default, ``jax.default_backend()``, is another device's platform when
        a program is placed on a non-default device (the CPU of a GPU host).
    """
    if name == 'auto':
        return default_depthwise(platform or jax.default_backend())
    if name not in DEPTHWISE_IMPLS:
        raise ValueError(f'depthwise: value {name!r} is not allowed; allowed: '
                         f"'auto' or one of {sorted(DEPTHWISE_IMPLS)}")
    return name


def depthwise_conv(x: jax.Array,
                   kernel: jax.Array,
                   stride: int,
                   padding: int,
                   impl: str = 'auto') -> jax.Array:
    """Depthwise convolution with the implementation named ``impl``.

    Args:
      x: float[B, H, W, C] input.
      kernel: float[k, k, 1, C] kernel (HWIO, one input channel per group).
      stride: spatial stride (both axes).
      padding: symmetric zero padding on each side of both spatial axes.
      impl: ``'conv'``, ``'shifted'`` or ``'auto'``.

    Returns:
      float[B, H', W', C] with ``H' = (H + 2 * padding - k) // stride + 1``.
    """
    return DEPTHWISE_IMPLS[resolve(impl)](x, kernel, stride, padding)
