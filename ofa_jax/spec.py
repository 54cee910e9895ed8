"""Geometry of the OFA MobileNetV3 supernet for each width multiplier.

Everything that depends on the width (channels) or on the resolution
(feature-map sizes) but not on learned weights lives here, so the Flax
modules, the analytic counters, the lookup tables and the predictors' per-block
features agree on one definition.

Layout (Cai et al., "Once-for-All", ICLR 2020; ``ofa_mbv3_d234_e346_k357``):
first conv 3x3 stride 2 (h-swish) -> fixed MBConv (expand 1, 3x3, ReLU, keeps
the width) -> 5 elastic stages of up to 4 MBConv blocks with strides
[2, 2, 2, 1, 2], activations [relu, relu, hswish, hswish, hswish] and
squeeze-excite in stages 2, 4, 5 -> 1x1 conv (h-swish) -> global average pool
-> 1x1 conv without BN (h-swish) -> linear classifier.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import numpy as np

from ofa_jax import space

BASE_FIRST = 16
BASE_STAGE_WIDTHS = (24, 40, 80, 112, 160)
BASE_FINAL = 960
BASE_FEATURE = 1280
STAGE_STRIDES = (2, 2, 2, 1, 2)
STAGE_ACTS = ('relu', 'relu', 'hswish', 'hswish', 'hswish')
STAGE_SE = (False, True, False, True, True)
SE_REDUCTION = 4
CHANNEL_DIVISOR = 8
NUM_CLASSES = 1000


def make_divisible(value: float,
                   divisor: int = CHANNEL_DIVISOR,
                   min_value: int | None = None) -> int:
    """Rounds ``value`` to a multiple of ``divisor`` as OFA/MobileNet do.

    Rounds to the nearest multiple, never below ``min_value`` (default
    ``divisor``), and adds one ``divisor`` if that lost more than 10%.
    """
    min_value = divisor if min_value is None else min_value
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return int(new_value)


def check_width(width: float) -> float:
    """Validates a width multiplier; returns it as float."""
    try:
        w = float(width)
    except (TypeError, ValueError):
        raise ValueError(
            f'width: value {width!r} is not a number; allowed: {space.WIDTHS}') from None
    if w not in space.WIDTHS:
        raise ValueError(f'width: value {width!r} is not allowed; allowed: {space.WIDTHS}')
    return w


def conv_out_size(size: Any, stride: int) -> Any:
    """Output size of a conv with odd kernel k, padding k//2 and this stride.

    Pure integer arithmetic: ``size`` may be an int or an np/jnp array.
    """
    return (size - 1) // stride + 1


def squeeze_channels(mid_channels: Any) -> Any:
    """Squeeze channels of an SE module on ``mid_channels`` (an int)."""
    return make_divisible(mid_channels // SE_REDUCTION)


def position_stride(position: int) -> int:
    """Stride of the elastic block at ``position`` (0..19): only a stage's first block strides."""
    stage, index = divmod(position, space.MAX_DEPTH)
    return STAGE_STRIDES[stage] if index == 0 else 1


@dataclasses.dataclass(frozen=True)
class NetSpec:
    """Channel widths of one OFA MobileNetV3 supernet.

    Attributes:
      width: the width multiplier (1.0 or 1.2).
      first_channels: output channels of the first conv and the fixed block.
      stage_channels: output channels of each of the 5 elastic stages.
      final_channels: output channels of the final 1x1 expand conv.
      feature_channels: output channels of the feature-mix 1x1 conv.
      num_classes: classifier outputs.
    """

    width: float
    first_channels: int
    stage_channels: tuple[int, ...]
    final_channels: int
    feature_channels: int
    num_classes: int = NUM_CLASSES

    def block_in_channels(self, position: int) -> int:
        """Input channels of elastic block ``position`` (0..19)."""
        stage, index = divmod(position, space.MAX_DEPTH)
        if index > 0:
            return self.stage_channels[stage]
        return self.first_channels if stage == 0 else self.stage_channels[stage - 1]

    def block_out_channels(self, position: int) -> int:
        return self.stage_channels[position // space.MAX_DEPTH]

    def mid_channels(self, position: int, expand: int) -> int:
        """Hidden channels of block ``position`` at this expand ratio."""
        return make_divisible(round(self.block_in_channels(position) * expand))

    def max_mid_channels(self, position: int) -> int:
        return self.mid_channels(position, max(space.EXPAND_CHOICES))

    def se_channels(self, mid_channels: int) -> int:
        """Squeeze channels of the SE module on ``mid_channels``."""
        return squeeze_channels(mid_channels)


@functools.lru_cache(maxsize=None)
def net_spec(width: float = 1.2, num_classes: int = NUM_CLASSES) -> NetSpec:
    """Returns the channel layout for width multiplier ``width`` (1.0 or 1.2)."""
    w = check_width(width)
    return NetSpec(width=w,
                   first_channels=make_divisible(BASE_FIRST * w),
                   stage_channels=tuple(make_divisible(c * w) for c in BASE_STAGE_WIDTHS),
                   final_channels=make_divisible(BASE_FINAL * w),
                   feature_channels=make_divisible(BASE_FEATURE * w),
                   num_classes=num_classes)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One active MBConv block of a concrete sub-network.

    ``position`` is 0..19 for elastic blocks and -1 for the fixed first block.
    """

    position: int
    in_channels: int
    out_channels: int
    mid_channels: int
    kernel: int
    expand: int
    stride: int
    act: str
    se: bool
    in_size: int
    out_size: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels

    @property
    def se_channels(self) -> int:
        """Squeeze channels of the block's SE module; 0 without SE."""
        return squeeze_channels(self.mid_channels) if self.se else 0


@flax.struct.dataclass
class BlockArrays:
    """Many MBConv blocks as broadcastable int arrays (np or jnp), one field per quantity.

    The array twin of :class:`BlockSpec`: the same attribute names (so the
    counters of :mod:`ofa_jax.counts` take either), except that the activation
    is the flag ``hswish`` and ``se_channels`` is a field (0 where ``se`` is 0).
    A field may be ``None`` where a consumer does not need it (e.g. the feature
    sizes for parameter counts). A pytree, like :class:`ofa_jax.space.Arch`.
    """

    position: Any
    in_channels: Any
    out_channels: Any
    mid_channels: Any
    kernel: Any
    expand: Any
    stride: Any
    hswish: Any
    se: Any
    se_channels: Any
    in_size: Any
    out_size: Any

    @property
    def residual(self) -> Any:
        return (self.stride == 1) & (self.in_channels == self.out_channels)

    def block_at(self, index: Any) -> BlockSpec:
        """The :class:`BlockSpec` at ``index`` of every field (all fields set)."""
        v = lambda a: int(np.asarray(a)[index])
        return BlockSpec(position=v(self.position),
                         in_channels=v(self.in_channels),
                         out_channels=v(self.out_channels),
                         mid_channels=v(self.mid_channels),
                         kernel=v(self.kernel),
                         expand=v(self.expand),
                         stride=v(self.stride),
                         act='hswish' if v(self.hswish) else 'relu',
                         se=bool(v(self.se)),
                         in_size=v(self.in_size),
                         out_size=v(self.out_size))


def first_block(spec: NetSpec, resolution: int) -> BlockSpec:
    """The fixed expand-1 3x3 ReLU block after the first conv."""
    size = conv_out_size(resolution, 2)
    c = spec.first_channels
    return BlockSpec(position=-1,
                     in_channels=c,
                     out_channels=c,
                     mid_channels=c,
                     kernel=3,
                     expand=1,
                     stride=1,
                     act='relu',
                     se=False,
                     in_size=size,
                     out_size=size)


def block_specs(spec: NetSpec, arch: space.Arch) -> list[BlockSpec]:
    """The active elastic blocks of one (host-side) architecture, in order."""
    a = space.canonicalize_np(space.to_numpy(arch))
    if a.batch_shape:
        raise ValueError(f'block_specs takes one architecture, got batch shape {a.batch_shape}')
    size = conv_out_size(int(a.resolution), 2)
    blocks = []
    for stage in range(space.NUM_STAGES):
        for index in range(int(a.depth[stage])):
            pos = stage * space.MAX_DEPTH + index
            stride = STAGE_STRIDES[stage] if index == 0 else 1
            out_size = conv_out_size(size, stride)
            e, k = int(a.expand[pos]), int(a.kernel[pos])
            blocks.append(
                BlockSpec(position=pos,
                          in_channels=spec.block_in_channels(pos),
                          out_channels=spec.block_out_channels(pos),
                          mid_channels=spec.mid_channels(pos, e),
                          kernel=k,
                          expand=e,
                          stride=stride,
                          act=STAGE_ACTS[stage],
                          se=STAGE_SE[stage],
                          in_size=size,
                          out_size=out_size))
            size = out_size
    return blocks


def stage_input_sizes(resolution: int) -> tuple[int, ...]:
    """Feature-map size entering each of the 5 stages (first block's input)."""
    size = conv_out_size(resolution, 2)
    sizes = []
    for stride in STAGE_STRIDES:
        sizes.append(size)
        size = conv_out_size(size, stride)
    return tuple(sizes)


def final_size(resolution: int) -> int:
    """Feature-map size after the last stage (before global pooling)."""
    size = conv_out_size(resolution, 2)
    for stride in STAGE_STRIDES:
        size = conv_out_size(size, stride)
    return size


def position_tables(spec: NetSpec) -> dict[str, np.ndarray]:
    """Per-position constants of the 20 elastic positions, as numpy tables.

    Everything about a position that depends on the width but not on the
    resolution; gather ``[position, expand_index]`` (``space.expand_index``)
    with np or jnp for the blocks of an arch. Feature sizes come from
    :func:`position_sizes`.

    Returns:
      dict with int32 arrays of shape [20]: ``in_channels``, ``out_channels``,
      ``stride`` (of the block at that position), ``se``, ``hswish``; and of
      shape [20, 3] indexed by expand choice: ``mid_channels`` and
      ``se_channels`` (squeeze channels of the SE module, 0 where ``se`` is 0).
    """
    positions = range(space.NUM_BLOCKS)
    se = [STAGE_SE[p // space.MAX_DEPTH] for p in positions]
    mid = [[spec.mid_channels(p, e) for e in space.EXPAND_CHOICES] for p in positions]
    squeeze = [[squeeze_channels(m) if se[p] else 0 for m in mid[p]] for p in positions]
    table = lambda values: np.array(values, np.int32)
    return {
        'in_channels': table([spec.block_in_channels(p) for p in positions]),
        'out_channels': table([spec.block_out_channels(p) for p in positions]),
        'stride': table([position_stride(p) for p in positions]),
        'se': table(se),
        'hswish': table([STAGE_ACTS[p // space.MAX_DEPTH] == 'hswish' for p in positions]),
        'mid_channels': table(mid),
        'se_channels': table(squeeze),
    }


def position_sizes(resolution: Any) -> tuple[Any, Any]:
    """Feature-map sizes entering and leaving each of the 20 elastic positions.

    They do not depend on the other genes: only the first block of a stage
    strides, and every stage starts at a fixed size.

    Args:
      resolution: an int or an integer np/jnp array of input resolutions
        (any positive sizes; a jax array may be traced).

    Returns:
      ``(in_size, out_size)``, int arrays of shape ``resolution.shape + (20,)``
      (jnp for a jax input, numpy otherwise).
    """
    xp = space.array_module(resolution)
    r = xp.asarray(resolution)
    in_sizes, out_sizes = [], []
    for stage, size in enumerate(stage_input_sizes(r)):
        out = conv_out_size(size, STAGE_STRIDES[stage])
        in_sizes += [size] + [out] * (space.MAX_DEPTH - 1)
        out_sizes += [out] * space.MAX_DEPTH
    return xp.stack(in_sizes, axis=-1), xp.stack(out_sizes, axis=-1)


def position_grid(spec: NetSpec, resolution: Any) -> BlockArrays:
    """Every elastic position's block for each (kernel, expand) choice, as arrays.

    Entry ``[..., p, ki, ei]`` of each field describes the block at position
    ``p`` with kernel ``space.KERNEL_CHOICES[ki]`` and expand
    ``space.EXPAND_CHOICES[ei]`` (the :class:`BlockSpec` of
    :func:`position_block`), so a table of per-block values computed from the
    grid is gathered with ``[..., position, kernel_index, expand_index]``.

    Args:
      spec: the channel layout.
      resolution: an int or an integer array of resolutions (numpy or jnp).

    Returns:
      A :class:`BlockArrays` whose fields all have shape
      ``resolution.shape + (20, 3, 3)``: int64 numpy arrays, or int32 jnp
      arrays for a jax ``resolution``.
    """
    xp = space.array_module(resolution)
    dtype = np.int64 if xp is np else xp.int32
    r = xp.asarray(resolution).astype(dtype)
    t = position_tables(spec)
    in_size, out_size = position_sizes(r)
    shape = r.shape + (space.NUM_BLOCKS, len(space.KERNEL_CHOICES), len(space.EXPAND_CHOICES))
    grid = lambda a, index: xp.broadcast_to(xp.asarray(a, dtype)[index], shape)
    per_pos = lambda a: grid(a, (..., slice(None), None, None))
    per_exp = lambda a: grid(a, (..., slice(None), None, slice(None)))
    return BlockArrays(position=per_pos(np.arange(space.NUM_BLOCKS)),
                       in_channels=per_pos(t['in_channels']),
                       out_channels=per_pos(t['out_channels']),
                       mid_channels=per_exp(t['mid_channels']),
                       kernel=grid(space.KERNEL_CHOICES, (slice(None), None)),
                       expand=grid(space.EXPAND_CHOICES, (...,)),
                       stride=per_pos(t['stride']),
                       hswish=per_pos(t['hswish']),
                       se=per_pos(t['se']),
                       se_channels=per_exp(t['se_channels']),
                       in_size=per_pos(in_size),
                       out_size=per_pos(out_size))


@functools.lru_cache(maxsize=None)
def position_blocks(spec: NetSpec,
                    resolution: int) -> tuple[tuple[tuple[BlockSpec, ...], ...], ...]:
    """:func:`position_grid` at one resolution as :class:`BlockSpec` objects.

    Returns:
      ``blocks[p][ki][ei]``: the block at position ``p`` (0..19) with kernel
      ``space.KERNEL_CHOICES[ki]`` and expand ``space.EXPAND_CHOICES[ei]``.
    """
    g = position_grid(spec, int(resolution))
    n_k, n_e = len(space.KERNEL_CHOICES), len(space.EXPAND_CHOICES)
    per_expand = lambda p, ki: tuple(g.block_at((p, ki, ei)) for ei in range(n_e))
    return tuple(tuple(per_expand(p, ki) for ki in range(n_k)) for p in range(space.NUM_BLOCKS))


def position_block(spec: NetSpec, resolution: int, position: int, kernel: int,
                   expand: int) -> BlockSpec:
    """The block at elastic ``position`` (0..19) with this kernel and expand.

    An entry of :func:`position_blocks`; its input size does not depend on the
    other genes (see :func:`position_sizes`).

    Raises:
      ValueError: ``position``, ``kernel`` or ``expand`` is not allowed.
    """
    if not 0 <= int(position) < space.NUM_BLOCKS:
        raise ValueError(f'position: value {position!r} is not allowed; allowed: 0..'
                         f'{space.NUM_BLOCKS - 1}')
    if kernel not in space.KERNEL_CHOICES:
        raise ValueError(f'kernel: value {kernel!r} is not allowed; allowed: one of '
                         f'{space.KERNEL_CHOICES}')
    if expand not in space.EXPAND_CHOICES:
        raise ValueError(f'expand: value {expand!r} is not allowed; allowed: one of '
                         f'{space.EXPAND_CHOICES}')
    blocks = position_blocks(spec, int(resolution))
    return blocks[int(position)][int(space.kernel_index(kernel))][int(space.expand_index(expand))]
