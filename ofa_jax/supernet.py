"""The OFA MobileNetV3 supernet with the architecture as a traced input.

``SuperNet(width)`` holds every parameter at its largest shape and takes the
architecture as a jax :class:`~ofa_jax.space.Arch` argument, so ONE compiled
function serves every sub-network at a given input shape::

    model = SuperNet(net=spec.net_spec(1.2))
    variables = subnet.init_variables(model, (8, 32, 32, 3), arch=space.largest())
    step = jax.jit(model.apply)
    logits = step(variables, x, arch)          # no retrace when arch changes

Elasticity is computed with masks, never with per-arch shapes or branches
(OFA's dynamic modules, ``ofa/imagenet_classification/elastic_nn``):

- elastic kernel: the active k x k kernel is OFA's transform of the 7x7
  kernel (centre crop, flatten, multiply by the learned ``7to5_matrix``
  (25x25), then crop and ``5to3_matrix`` (9x9), as ``F.linear``: ``x @ M.T``),
  zero-padded back to 7x7; a 7x7 conv with padding 3 then equals the k x k
  conv with padding ``k // 2``;
- elastic expand: all ``max`` hidden channels are computed and those past the
  active ``make_divisible(round(in * e), 8)`` are zeroed; the SE module uses
  the first ``make_divisible(active // 4, 8)`` squeeze channels, as OFA's
  dynamic SE does;
- elastic depth: a skipped block passes its input through
  (``jnp.where``), and none of its statistics change;
- BatchNorm in train mode normalises each channel with its own batch
  statistics (so active channels see only active data) and updates the running
  statistics of active channels of active blocks only, like OFA's dynamic
  BatchNorm on its sliced first channels.

The variable tree uses the names of :class:`ofa_jax.subnet.SubNet` at their
maximal shapes, plus ``7to5_matrix`` and ``5to3_matrix`` in each
``blocks_<p>/depth_conv``; :func:`ofa_jax.extract.extract_subnet` slices it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import depthwise as dw
from ofa_jax import layers
from ofa_jax import space
from ofa_jax import spec

MAX_KERNEL = max(space.KERNEL_CHOICES)


def transform_kernel(kernel: jax.Array, matrix: jax.Array, target: int) -> jax.Array:
    """OFA's kernel transform: centre-crop to ``target`` and mix the taps.

    Works on numpy arrays (on the host) or jax arrays (traceable).

    Args:
      kernel: float[k, k, 1, C] (HWIO) with ``k > target``.
      matrix: float[target**2, target**2], applied like ``F.linear`` to each
        channel's row-major flattened ``target x target`` crop.
      target: the smaller kernel size.

    Returns:
      float[target, target, 1, C].
    """
    k = kernel.shape[0]
    start = k // 2 - target // 2
    crop = kernel[start:start + target, start:start + target]
    c = crop.shape[-1]
    flat = crop.reshape(target * target, c)  # row-major (h, w), like PyTorch's view.
    # F.linear(x, M) = x @ M.T with x of shape [C, t*t]; here x is transposed.
    if isinstance(kernel, np.ndarray) and isinstance(matrix, np.ndarray):
        # Host path (extraction): no per-shape XLA compiles.
        mixed = np.matmul(matrix.astype(np.float32), flat.astype(np.float32))
    else:
        mixed = jnp.matmul(matrix, flat, precision=jax.lax.Precision.HIGHEST)
    return mixed.reshape(target, target, 1, c)


def active_kernels(kernel7: jax.Array, m75: jax.Array, m53: jax.Array) -> dict[int, jax.Array]:
    """The 7x7, 5x5 and 3x3 kernels OFA derives from one 7x7 kernel."""
    k5 = transform_kernel(kernel7, m75, 5)
    k3 = transform_kernel(k5, m53, 3)
    return {7: kernel7, 5: k5, 3: k3}


def _per_expand(expand: jax.Array, table: tuple[int, ...]) -> jax.Array:
    """``table[i]`` for the traced expand ratio ``expand == EXPAND_CHOICES[i]`` (int32)."""
    return jnp.asarray(table, jnp.int32)[space.expand_index(expand)]


class ElasticDepthwiseConv(nn.Module):
    """Depthwise conv whose kernel size (3/5/7) is a traced input.

    Parameters: ``kernel`` [7, 7, 1, C], ``7to5_matrix`` (identity 25x25 at
    init), ``5to3_matrix`` (identity 9x9).
    """

    features: int
    stride: int = 1
    impl: str = 'auto'

    @nn.compact
    def __call__(self, x: jax.Array, kernel_size: jax.Array) -> jax.Array:
        w7 = self.param('kernel', layers.conv_kernel_init(),
                        (MAX_KERNEL, MAX_KERNEL, 1, self.features))
        m75 = self.param('7to5_matrix', lambda _, n: jnp.eye(n), 25)
        m53 = self.param('5to3_matrix', lambda _, n: jnp.eye(n), 9)
        ks = active_kernels(w7, m75, m53)
        pad = lambda w: jnp.pad(w, [((MAX_KERNEL - w.shape[0]) // 2,) * 2] * 2 + [(0, 0)] * 2)
        w = jnp.where(kernel_size == 7, ks[7], jnp.where(kernel_size == 5, pad(ks[5]), pad(ks[3])))
        return dw.depthwise_conv(x, w, self.stride, MAX_KERNEL // 2, self.impl)


class DynamicSqueezeExcite(nn.Module):
    """SE at maximal width; uses the first ``active`` squeeze channels.

    The input's inactive channels are zero, so using all input rows of the
    reduce kernel equals OFA's slice of its first ``mid`` rows.
    """

    channels: int
    squeeze: int

    @nn.compact
    def __call__(self, x: jax.Array, squeeze_mask: jax.Array) -> jax.Array:
        y = jnp.mean(x, axis=(1, 2))
        y = jax.nn.relu(nn.Dense(self.squeeze, name='reduce')(y)) * squeeze_mask
        y = layers.hsigmoid(nn.Dense(self.channels, name='expand')(y))
        return x * y[:, None, None, :]


class DynamicMBConv(nn.Module):
    """Elastic block at ``position`` (0..19): kernel, expand and on/off are traced."""

    net: spec.NetSpec
    position: int
    depthwise: str = 'auto'

    @nn.compact
    def __call__(self,
                 x: jax.Array,
                 kernel: jax.Array,
                 expand: jax.Array,
                 active: jax.Array,
                 train: bool = False) -> jax.Array:
        net, pos = self.net, self.position
        stage, index = divmod(pos, space.MAX_DEPTH)
        cin, cout = net.block_in_channels(pos), net.block_out_channels(pos)
        act = spec.STAGE_ACTS[stage]
        stride = spec.position_stride(pos)
        max_mid = net.max_mid_channels(pos)
        mids = tuple(net.mid_channels(pos, e) for e in space.EXPAND_CHOICES)
        mid = _per_expand(expand, mids)
        mid_mask = jnp.arange(max_mid) < mid
        update = mid_mask & active

        y = layers.ConvBNAct(max_mid, 1, act=act, name='inverted_bottleneck')(x, train, update)
        y = ElasticDepthwiseConv(max_mid, stride, self.depthwise, name='depth_conv')(y, kernel)
        y = layers.activation(act)(layers.BatchNorm(max_mid, name='depth_bn')(y, train, update))
        # Zero the inactive hidden channels: everything downstream then sees
        # exactly the active sub-network's channels.
        y = jnp.where(mid_mask, y, 0.0)
        if spec.STAGE_SE[stage]:
            squeeze = _per_expand(expand, tuple(net.se_channels(m) for m in mids))
            max_squeeze = net.se_channels(max_mid)
            y = DynamicSqueezeExcite(max_mid, max_squeeze, name='se')(y, jnp.arange(max_squeeze)
                                                                      < squeeze)
        y = layers.ConvBNAct(cout, 1, act='none', name='point_linear')(y, train, active)
        if stride == 1 and cin == cout:
            y = x + y
        if index >= min(space.DEPTH_CHOICES):
            y = jnp.where(active, y, x)  # past the stage's depth: identity.
        return y


class SuperNet(nn.Module):
    """OFA MobileNetV3 supernet of one width; the arch is a call argument.

    Attributes:
      net: the channel layout (``spec.net_spec(width)``).
      depthwise: depthwise implementation name (``'auto'``, ``'conv'``,
        ``'shifted'``).
    """

    net: spec.NetSpec
    depthwise: str = 'auto'

    @nn.compact
    def __call__(self, x: jax.Array, arch: space.Arch, train: bool = False) -> jax.Array:
        """Logits of sub-network ``arch`` (one arch, jax or numpy ints) for NHWC ``x``."""
        if np.shape(arch.kernel) != (space.NUM_BLOCKS,):
            raise ValueError(f'SuperNet takes one architecture (kernel shape (20,)), got kernel '
                             f'shape {np.shape(arch.kernel)}; vmap over a batch of archs')
        net = self.net
        impl = dw.resolve(self.depthwise)
        kernel = jnp.asarray(arch.kernel)
        expand = jnp.asarray(arch.expand)
        active = space.active_blocks(jnp.asarray(arch.depth))
        x = layers.ConvBNAct(net.first_channels, 3, 2, act='hswish', name='first_conv')(x, train)
        x = layers.MBConv(net.first_channels,
                          net.first_channels,
                          net.first_channels,
                          3,
                          1,
                          'relu',
                          False,
                          depthwise=impl,
                          name='first_block')(x, train)
        for pos in range(space.NUM_BLOCKS):
            x = DynamicMBConv(net, pos, impl, name=f'blocks_{pos}')(x, kernel[pos], expand[pos],
                                                                    active[pos], train)
        x = layers.ConvBNAct(net.final_channels, 1, act='hswish', name='final_expand')(x, train)
        return layers.Head(net.feature_channels, net.num_classes, name='head')(x)


def build_supernet(width: float = 1.2,
                   *,
                   num_classes: int = spec.NUM_CLASSES,
                   depthwise: str = 'auto') -> SuperNet:
    """The supernet of width 1.0 or 1.2 (``depthwise``: 'auto', 'conv', 'shifted')."""
    return SuperNet(net=spec.net_spec(width, int(num_classes)), depthwise=dw.resolve(depthwise))
