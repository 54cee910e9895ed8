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

import functools
from typing import Any, NamedTuple, Sequence

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
        for layer in layer_plan(self):
            module = layer.cls(**dict(layer.kwargs), name=layer.name)
            x = module(x, train) if layer.takes_train else module(x)
        return x


class Layer(NamedTuple):
    """One top-level layer of a :class:`SubNet`: its name, class and fields."""
    name: str
    cls: type
    kwargs: tuple[tuple[str, Any], ...]  # sorted (field, value) pairs, hashable
    in_channels: int
    takes_train: bool = True


def layer_plan(model: SubNet) -> list[Layer]:
    """The layers :meth:`SubNet.__call__` builds, in order (the one description of them)."""
    net = model.net
    c0 = net.first_channels

    def layer(name, cls, cin, takes_train=True, **kwargs):
        return Layer(name, cls, tuple(sorted(kwargs.items())), int(cin), takes_train)

    out = [
        layer('first_conv', layers.ConvBNAct, 3, features=c0, kernel=3, stride=2, act='hswish'),
        layer('first_block',
              layers.MBConv,
              c0,
              in_channels=c0,
              out_channels=c0,
              mid_channels=c0,
              kernel=3,
              stride=1,
              act='relu',
              se=False,
              depthwise=model.depthwise)
    ]
    cin = c0
    for b in model.blocks:
        out.append(
            layer(f'blocks_{b.position}',
                  layers.MBConv,
                  b.in_channels,
                  in_channels=b.in_channels,
                  out_channels=b.out_channels,
                  mid_channels=b.mid_channels,
                  kernel=b.kernel,
                  stride=b.stride,
                  act=b.act,
                  se=b.se,
                  depthwise=model.depthwise))
        cin = b.out_channels
    out.append(
        layer('final_expand',
              layers.ConvBNAct,
              cin,
              features=net.final_channels,
              kernel=1,
              act='hswish'))
    out.append(
        layer('head',
              layers.Head,
              net.final_channels,
              False,
              feature_channels=net.feature_channels,
              num_classes=net.num_classes))
    return out


def variable_shapes(model: SubNet) -> dict[str, Any]:
    """``jax.eval_shape(model.init, key, x)`` without tracing the whole network.

    A layer's variable shapes depend on its fields and input channels only
    (never on the batch or image size), so each distinct layer is traced once
    per process and cached (about 200 layers per width): after a few dozen
    archs a new arch costs under a millisecond instead of the 0.3-0.9 s of
    tracing every initialiser, which was an eighth to a sixth of what a
    latency measurement spent before timing on a 2-core CPU. Same tree,
    shapes and dtypes as ``eval_shape`` (tested).
    """
    out: dict[str, Any] = {}
    for layer in layer_plan(model):
        for collection, tree in _layer_shapes(layer.cls, layer.kwargs, layer.in_channels).items():
            out.setdefault(collection, {})[layer.name] = jax.tree_util.tree_map(lambda s: s, tree)
    return out


def init_shapes(model: nn.Module, input_shape: Sequence[int], **call_kwargs) -> dict[str, Any]:
    """Shapes and dtypes of ``model.init(key, x, **call_kwargs)`` for a float32 ``x``.

    :func:`variable_shapes` for a :class:`SubNet` (cached per layer),
    ``jax.eval_shape`` of the whole ``init`` for any other module.
    """
    if isinstance(model, SubNet) and not call_kwargs:
        return variable_shapes(model)
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    return jax.eval_shape(functools.partial(model.init, **call_kwargs), jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))


@functools.lru_cache(maxsize=4096)
def _layer_shapes(cls: type, kwargs: tuple[tuple[str, Any], ...], in_channels: int) -> dict:
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    x = jax.ShapeDtypeStruct((1, 8, 8, in_channels), jnp.float32)
    return jax.eval_shape(cls(**dict(kwargs)).init, jax.random.PRNGKey(0), x)


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

    shapes = init_shapes(model, input_shape, **call_kwargs)
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
