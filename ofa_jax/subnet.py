"""Static OFA MobileNetV3 sub-networks: exactly the arch's layers, nothing masked.

This is the program a user deploys and the one whose latency is measured.
Build one with :func:`build_subnet`::

    model = build_subnet(space.largest(224), width=1.2)
    variables = model.init(key, jnp.zeros((1, 224, 224, 3)))
    logits = model.apply(variables, x)                       # running BN stats
    logits, updates = model.apply(variables, x, train=True,
                                  mutable=['batch_stats'])   # batch BN stats

Variable tree (shared with :class:`ofa_jax.supernet.SuperNet`, which holds
the same names at their maximal shapes): ``first_conv``, ``first_block``,
``blocks_<p>`` for each active elastic position ``p`` in 0..19 (so a stage of
depth 2 has ``blocks_<4s>`` and ``blocks_<4s+1>``), ``final_expand``, ``head``.

The modules take any input size; the arch's ``resolution`` field is what a
data pipeline resizes to.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from ofa_jax import depthwise as dw
from ofa_jax import layers
from ofa_jax import space
from ofa_jax import spec


class SubNet(nn.Module):
    """A static OFA MobileNetV3 sub-network.

    Attributes:
      net: channel layout of the supernet it comes from (width, classes).
      blocks: the active elastic blocks, in order (from :func:`spec.block_specs`).
      depthwise: the resolved depthwise implementation (``'conv'`` or
        ``'shifted'``); recorded with every latency measurement.
      arch_key: :func:`space.arch_key` of the architecture (for provenance).
    """

    net: spec.NetSpec
    blocks: tuple[spec.BlockSpec, ...]
    depthwise: str = 'conv'
    arch_key: str = ''

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits ``float[B, num_classes]`` for NHWC images ``x``."""
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f'SubNet: x must be NHWC with 3 channels, got shape {x.shape}')
        net = self.net
        x = layers.ConvBNAct(net.first_channels, 3, 2, act='hswish', name='first_conv')(x, train)
        x = layers.MBConv(net.first_channels,
                          net.first_channels,
                          net.first_channels,
                          3,
                          1,
                          'relu',
                          False,
                          depthwise=self.depthwise,
                          name='first_block')(x, train)
        for b in self.blocks:
            x = layers.MBConv(b.in_channels,
                              b.out_channels,
                              b.mid_channels,
                              b.kernel,
                              b.stride,
                              b.act,
                              b.se,
                              depthwise=self.depthwise,
                              name=f'blocks_{b.position}')(x, train)
        x = layers.ConvBNAct(net.final_channels, 1, act='hswish', name='final_expand')(x, train)
        return layers.Head(net.feature_channels, net.num_classes, name='head')(x)


def build_subnet(arch: space.Arch,
                 width: float = 1.2,
                 *,
                 num_classes: int = spec.NUM_CLASSES,
                 depthwise: str = 'auto') -> SubNet:
    """Builds the static sub-network of one host-side architecture.

    Args:
      arch: one architecture (validated; a batch is refused).
      width: supernet width multiplier, 1.0 or 1.2.
      num_classes: classifier outputs (OFA: 1000).
      depthwise: ``'conv'``, ``'shifted'`` or ``'auto'`` (the platform's
        default, see :func:`ofa_jax.depthwise.default_depthwise`); the resolved
        name is ``model.depthwise``.

    Returns:
      An unbound :class:`SubNet`.
    """
    host = space.to_numpy(arch)
    if host.batch_shape:
        raise ValueError(f'build_subnet takes one architecture, got batch shape '
                         f'{host.batch_shape}')
    space.validate(host)
    if int(num_classes) < 1:
        raise ValueError(f'num_classes: value {num_classes!r} must be a positive integer')
    net = spec.net_spec(width, int(num_classes))
    return SubNet(net=net,
                  blocks=tuple(spec.block_specs(net, host)),
                  depthwise=dw.resolve(depthwise),
                  arch_key=space.arch_key(host))


def init_variables(model: nn.Module,
                   input_shape: tuple[int, ...],
                   seed: int = 0,
                   **call_kwargs) -> dict:
    """Random variables for ``model`` without compiling ``model.init``.

    ``jax.jit(model.init)`` spends most of a minute compiling the random
    number generators of ~150 parameters on XLA:CPU. Latency measurement and
    tests need parameters of the right shapes, not any particular
    distribution, so this traces the shapes with ``jax.eval_shape`` and fills
    them on the host: kernels He-normal with std ``sqrt(2 / fan_in)`` (fan-in
    over all but the last axis), BatchNorm scale and running variance ones, biases
    and running means zeros, kernel transform matrices (``*_matrix``) identity.

    Args:
      model: any module of this package (SubNet, SuperNet, a layer).
      input_shape: shape of the input ``x`` passed to ``model.init``.
      seed: numpy seed.
      **call_kwargs: extra arguments of ``model.__call__`` (e.g. ``arch``).

    Returns:
      A variables dict (``params`` and, if any, ``batch_stats``) of jax arrays.
    """
    import numpy as np  # local: keeps the module's import surface small.
    import jax.numpy as jnp

    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(input_shape), **call_kwargs))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(getattr(path[-1], 'key', path[-1]))
        shape = leaf.shape
        if name.endswith('_matrix'):
            value = np.eye(shape[0])
        elif name in ('scale', 'var'):
            value = np.ones(shape)
        elif name in ('bias', 'mean'):
            value = np.zeros(shape)
        else:
            fan_in = int(np.prod(shape[:-1])) or 1
            value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)
