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


def conv_out_size(size: int, stride: int) -> int:
    """Output size of a conv with odd kernel k, padding k//2 and this stride."""
    return (size - 1) // stride + 1


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
        return make_divisible(mid_channels // SE_REDUCTION)


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
    """Per-position constants as arrays, for jit-compiled per-block features.

    Returns:
      dict with int32 arrays of shape [20]: ``in_channels``, ``out_channels``,
      ``stride`` (of the block at that position), ``se``, ``hswish``; and
      ``mid_channels`` of shape [20, 3] indexed by expand choice.
    """
    n = space.NUM_BLOCKS
    return {
        'in_channels':
            np.array([spec.block_in_channels(p) for p in range(n)], np.int32),
        'out_channels':
            np.array([spec.block_out_channels(p) for p in range(n)], np.int32),
        'stride':
            np.array([STAGE_STRIDES[p // 4] if p % 4 == 0 else 1 for p in range(n)], np.int32),
        'se':
            np.array([STAGE_SE[p // 4] for p in range(n)], np.int32),
        'hswish':
            np.array([STAGE_ACTS[p // 4] == 'hswish' for p in range(n)], np.int32),
        'mid_channels':
            np.array([[spec.mid_channels(p, e) for e in space.EXPAND_CHOICES] for p in range(n)],
                     np.int32),
    }
