"""Building blocks of OFA MobileNetV3 networks as Flax linen modules.

Each module can be instantiated and timed on its own (the lookup-table
baseline does that) and composes into :class:`ofa_jax.subnet.SubNet`. They
follow OFA's PyTorch layers (``ofa/utils/layers.py``) so official weights give
the same outputs:

- convolutions pad explicitly and symmetrically by ``k // 2`` like PyTorch,
  never ``'SAME'`` (which pads asymmetrically at stride 2);
- BatchNorm uses PyTorch's semantics (epsilon 1e-5, running statistics
  updated with momentum 0.1 and the unbiased batch variance);
- squeeze-excite reduces by 4 to ``make_divisible(mid // 4, 8)`` channels with
  biased 1x1 convs, ReLU, then h-sigmoid.

Every ``__call__`` takes ``train``: ``False`` normalises with the running
statistics; ``True`` uses batch statistics and updates the ``batch_stats``
collection (apply with ``mutable=['batch_stats']``; with
:data:`BATCH_MOMENTS` mutable too, each BatchNorm also reports its batch's
mean and biased variance there).
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ofa_jax import depthwise as dw
from ofa_jax import spec

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.1  # PyTorch convention: weight of the new batch statistic.
# Collection into which BatchNorm sows each train-mode batch's mean and (biased)
# variance when it is mutable (BN re-calibration reads them; otherwise a no-op).
BATCH_MOMENTS = 'batch_moments'


def hswish(x: jax.Array) -> jax.Array:
    """h-swish: ``x * relu6(x + 3) / 6``."""
    return x * jax.nn.relu6(x + 3.0) / 6.0


def hsigmoid(x: jax.Array) -> jax.Array:
    """h-sigmoid: ``relu6(x + 3) / 6``."""
    return jax.nn.relu6(x + 3.0) / 6.0


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'relu': jax.nn.relu,
    'hswish': hswish,
    'none': lambda x: x,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Returns the activation called ``name`` ('relu', 'hswish' or 'none')."""
    if name not in ACTIVATIONS:
        raise ValueError(f'act: value {name!r} is not allowed; allowed: {sorted(ACTIVATIONS)}')
    return ACTIVATIONS[name]


class BatchNorm(nn.Module):
    """BatchNorm over the last axis with PyTorch semantics and an optional mask.

    Parameters ``scale`` and ``bias``; statistics ``mean`` and ``var`` in the
    ``batch_stats`` collection. ``update_mask`` (bool, broadcastable to
    ``[features]``) limits the running-statistics update in train mode to the
    active channels, as OFA's dynamic BatchNorm does when it slices its first
    channels; the supernet also uses it to freeze the statistics of skipped
    blocks.
    """

    features: int
    epsilon: float = BN_EPSILON
    momentum: float = BN_MOMENTUM

    @nn.compact
    def __call__(self,
                 x: jax.Array,
                 train: bool = False,
                 update_mask: jax.Array | None = None) -> jax.Array:
        scale = self.param('scale', nn.initializers.ones, (self.features,))
        bias = self.param('bias', nn.initializers.zeros, (self.features,))
        ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (self.features,), jnp.float32)
        ra_var = self.variable('batch_stats', 'var', jnp.ones, (self.features,), jnp.float32)
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)
            if not self.is_initializing():
                # Masked-off channels report their running values, so a
                # re-calibration leaves them as they are (OFA's dynamic BN).
                keep = (lambda new, old: new) if update_mask is None else (
                    lambda new, old: jnp.where(update_mask, new, old))
                self.sow(BATCH_MOMENTS, 'mean', keep(mean, ra_mean.value))
                self.sow(BATCH_MOMENTS, 'var', keep(var, ra_var.value))
                n = x.size // x.shape[-1]
                unbiased = var * (n / max(n - 1, 1))
                new_mean = (1 - self.momentum) * ra_mean.value + self.momentum * mean
                new_var = (1 - self.momentum) * ra_var.value + self.momentum * unbiased
                if update_mask is not None:
                    new_mean = jnp.where(update_mask, new_mean, ra_mean.value)
                    new_var = jnp.where(update_mask, new_var, ra_var.value)
                ra_mean.value = new_mean
                ra_var.value = new_var
        else:
            mean, var = ra_mean.value, ra_var.value
        inv = scale * jax.lax.rsqrt(var + self.epsilon)
        return (x - mean) * inv + bias


def conv_kernel_init() -> nn.initializers.Initializer:
    """He-normal (fan-out) initialisation, as OFA initialises its convs."""
    return nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class ConvBNAct(nn.Module):
    """Dense k x k conv (no bias, symmetric ``k // 2`` padding), BatchNorm, activation.

    Used for the first conv (3x3 stride 2, h-swish), the final 1x1 expand conv
    (h-swish) and inside :class:`MBConv` for the 1x1 convs.
    """

    features: int
    kernel: int = 1
    stride: int = 1
    act: str = 'relu'

    @nn.compact
    def __call__(self,
                 x: jax.Array,
                 train: bool = False,
                 update_mask: jax.Array | None = None) -> jax.Array:
        p = self.kernel // 2
        x = nn.Conv(self.features, (self.kernel, self.kernel),
                    strides=(self.stride, self.stride),
                    padding=((p, p), (p, p)),
                    use_bias=False,
                    kernel_init=conv_kernel_init(),
                    name='conv')(x)
        x = BatchNorm(self.features, name='bn')(x, train, update_mask)
        return activation(self.act)(x)


class DepthwiseConv(nn.Module):
    """Depthwise k x k conv without bias, symmetric ``k // 2`` padding.

    Kernel parameter ``kernel`` of shape ``[k, k, 1, features]`` (HWIO with one
    input channel per group, like ``nn.Conv(feature_group_count=features)``).
    ``impl`` names an implementation of :mod:`ofa_jax.depthwise`.
    """

    features: int
    kernel: int
    stride: int = 1
    impl: str = 'auto'

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.param('kernel', conv_kernel_init(), (self.kernel, self.kernel, 1, self.features))
        return dw.depthwise_conv(x, w, self.stride, self.kernel // 2, self.impl)


class SqueezeExcite(nn.Module):
    """OFA's SE module: pool, 1x1 reduce (bias) + ReLU, 1x1 expand (bias) + h-sigmoid, scale.

    The 1x1 convs act on a pooled ``[B, C]`` vector, so they are ``nn.Dense``
    layers (``reduce``, ``expand``), kernel ``[in, out]``.
    """

    channels: int
    squeeze: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.mean(x, axis=(1, 2))
        y = jax.nn.relu(nn.Dense(self.squeeze, name='reduce')(y))
        y = hsigmoid(nn.Dense(self.channels, name='expand')(y))
        return x * y[:, None, None, :]


class MBConv(nn.Module):
    """Inverted-bottleneck block: [1x1 expand] -> depthwise k x k -> [SE] -> 1x1 project.

    Submodules: ``inverted_bottleneck`` (ConvBNAct 1x1, omitted when
    ``mid_channels == in_channels``, i.e. the expand-1 first block; no elastic
    block has that since its expand ratio is at least 3), ``depth_conv``
    (:class:`DepthwiseConv`), ``depth_bn``, ``se`` (when ``se``),
    ``point_linear`` (ConvBNAct 1x1, no activation). A residual connection is
    added when ``stride == 1`` and ``in_channels == out_channels``.
    """

    in_channels: int
    out_channels: int
    mid_channels: int
    kernel: int
    stride: int
    act: str
    se: bool
    depthwise: str = 'auto'

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.shape[-1] != self.in_channels:
            raise ValueError(f'MBConv: input has {x.shape[-1]} channels, '
                             f'expected in_channels={self.in_channels}')
        y = x
        if self.mid_channels != self.in_channels:
            y = ConvBNAct(self.mid_channels, 1, act=self.act, name='inverted_bottleneck')(y, train)
        y = DepthwiseConv(self.mid_channels,
                          self.kernel,
                          self.stride,
                          impl=self.depthwise,
                          name='depth_conv')(y)
        y = activation(self.act)(BatchNorm(self.mid_channels, name='depth_bn')(y, train))
        if self.se:
            y = SqueezeExcite(self.mid_channels,
                              spec.make_divisible(self.mid_channels // spec.SE_REDUCTION),
                              name='se')(y)
        y = ConvBNAct(self.out_channels, 1, act='none', name='point_linear')(y, train)
        return x + y if self.residual else y


class Head(nn.Module):
    """Global average pool, 1x1 feature-mix conv (no BN, no bias) + h-swish, classifier.

    Submodules ``feature_mix`` (``nn.Dense`` without bias: a 1x1 conv on the
    pooled vector) and ``classifier`` (``nn.Dense`` with bias). OFA's dropout
    before the classifier is omitted: it does not change inference outputs.
    """

    feature_channels: int
    num_classes: int = spec.NUM_CLASSES

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.mean(x, axis=(1, 2))
        y = hswish(nn.Dense(self.feature_channels, use_bias=False, name='feature_mix')(y))
        return nn.Dense(self.num_classes, name='classifier')(y)
