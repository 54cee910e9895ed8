"""Analytic parameter and MAC counts of OFA MobileNetV3 sub-networks, batched.

Definitions follow OFA's own counters (``count_parameters`` and the
``count_net_flops`` profiler), so numbers compare with the paper and OFA's
tables:

- parameters: every learned tensor, BatchNorm scale and shift included, the
  running mean and variance not; 1000 classes unless told otherwise;
- MACs: multiply-accumulates of convolutions and linear layers only, batch 1.
  A conv counts ``output elements * in_channels / groups * k * k``, a linear
  layer ``outputs * in_features``; biases (the SE convs', the classifier's),
  BatchNorm, activations, the SE scaling, residual additions and pooling
  count nothing. Equal to ``ofa.utils.pytorch_utils.count_net_flops`` of
  OFA's own extracted sub-network, to the MAC
  (``python -m benchmarks.ofa_torch_parity``).

The per-layer and per-block formulas (:func:`conv_macs`, :func:`block_macs`,
:func:`block_params`, :func:`fixed_macs`, :func:`fixed_params`) are the one
definition of these counts: they take a :class:`~ofa_jax.spec.BlockSpec` or
the arrays of a :class:`~ofa_jax.spec.BlockArrays`, so the whole-network
counters here and the predictors' per-block feature tables share them.
Whole networks are counted with array arithmetic over the 20 block
positions, so one call counts one arch or a batch of any shape with no Python
loop over architectures (numpy in, numpy out; jax arrays work too, under jit).

XLA's ``cost_analysis()['flops']`` of the compiled static sub-network counts
differently: a MAC is 2 flops, and it also counts BatchNorm (folded or not),
activations, SE gating, residual adds, pooling and bias adds, so its flops
are a few percent above ``2 * macs`` (tested in ``tests/predictors/test_counts.py``).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ofa_jax import space
from ofa_jax import spec

# ---------------------------------------------------------------------------
# Per layer and per block (ints or broadcastable np/jnp arrays).


def conv_macs(out_size: Any,
              in_channels: Any,
              out_channels: Any,
              kernel: Any = 1,
              *,
              depthwise: bool = False) -> Any:
    """MACs of a square conv: ``out_size^2 * out_channels * in_channels / groups * k^2``."""
    per_output = kernel * kernel if depthwise else in_channels * kernel * kernel
    return out_size * out_size * out_channels * per_output


def conv_params(in_channels: Any,
                out_channels: Any,
                kernel: Any = 1,
                *,
                depthwise: bool = False,
                bias: bool = False,
                bn: bool = False) -> Any:
    """Parameters of a conv: weights, plus a bias and BatchNorm scale and shift if asked."""
    weights = out_channels * kernel * kernel * (1 if depthwise else in_channels)
    return weights + (out_channels if bias else 0) + (2 * out_channels if bn else 0)


def block_macs(block: spec.BlockSpec | spec.BlockArrays) -> Any:
    """MACs of MBConv block(s): expand 1x1, depthwise kxk, SE on the pooled 1x1, projection.

    The expand conv runs at the input size and only if ``expand != 1`` (OFA
    drops it for the fixed first block); the depthwise conv applies the stride.

    Args:
      block: one :class:`~ofa_jax.spec.BlockSpec` (ints in, int out) or a
        :class:`~ofa_jax.spec.BlockArrays` (arrays in, array out; the fields
        used are the sizes, channels, ``kernel``, ``expand`` and
        ``se_channels``).
    """
    mid, sec = block.mid_channels, block.se_channels
    return ((block.expand != 1) * conv_macs(block.in_size, block.in_channels, mid) +
            conv_macs(block.out_size, mid, mid, block.kernel, depthwise=True) +
            conv_macs(1, mid, sec) + conv_macs(1, sec, mid) +
            conv_macs(block.out_size, mid, block.out_channels))


def block_params(block: spec.BlockSpec | spec.BlockArrays, *, weights_only: bool = False) -> Any:
    """Parameters of MBConv block(s), BatchNorm and SE biases included unless ``weights_only``.

    Args:
      block: as for :func:`block_macs` (feature sizes unused).
      weights_only: count conv weights only (no BatchNorm scale/shift, no SE
        conv biases), as the predictors' features do.
    """
    mid, sec, se = block.mid_channels, block.se_channels, block.se
    bn = not weights_only
    bias = 0 if weights_only else sec + se * mid  # the SE convs' biases
    return ((block.expand != 1) * conv_params(block.in_channels, mid, bn=bn) +
            conv_params(mid, mid, block.kernel, depthwise=True, bn=bn) + conv_params(mid, sec) +
            conv_params(sec, mid) + bias + conv_params(mid, block.out_channels, bn=bn))


def fixed_macs(net: spec.NetSpec, resolution: Any) -> Any:
    """MACs every sub-network at ``resolution`` has: stem, fixed block, final layers.

    ``resolution`` may be an int or an integer np/jnp array (any positive size).
    """
    first = spec.first_block(net, resolution)
    f = spec.final_size(resolution)
    last, final, feat = net.stage_channels[-1], net.final_channels, net.feature_channels
    return (conv_macs(first.in_size, 3, net.first_channels, 3)  # stem 3x3 stride 2
            + block_macs(first) + conv_macs(f, last, final)  # final 1x1 expand
            + conv_macs(1, final, feat)  # feature mix on the pooled 1x1
            + conv_macs(1, feat, net.num_classes))  # classifier (a linear layer)


def fixed_params(net: spec.NetSpec, *, weights_only: bool = False) -> int:
    """Parameters of the stem, fixed block and final layers (see :func:`block_params`)."""
    bn = not weights_only
    last, final, feat = net.stage_channels[-1], net.final_channels, net.feature_channels
    first = spec.first_block(net, space.RESOLUTIONS[-1])  # its sizes do not matter here
    return (conv_params(3, net.first_channels, 3, bn=bn)  # stem
            + block_params(first, weights_only=weights_only) + conv_params(last, final, bn=bn) +
            conv_params(final, feat)  # feature mix: no bias, no BN
            + conv_params(feat, net.num_classes, bias=not weights_only))  # classifier


# ---------------------------------------------------------------------------
# Whole sub-networks (batched).


@functools.lru_cache(maxsize=None)
def _tables(net: spec.NetSpec) -> dict[str, np.ndarray]:
    """``spec.position_tables`` as read-only int64 arrays."""
    out = {}
    for k, v in spec.position_tables(net).items():
        out[k] = np.asarray(v, np.int64)
        out[k].setflags(write=False)
    return out


def _select(xp, table: np.ndarray, index: Any) -> Any:
    """``table[position, index]`` for every block; shape of ``index``.

    A one-hot sum rather than a gather: it fuses with the arithmetic around it.
    """
    onehot = index[..., None] == xp.arange(table.shape[-1])
    return xp.sum(xp.where(onehot, xp.asarray(table), 0), axis=-1)


def _arch_blocks(net: spec.NetSpec, arch: space.Arch, xp, resolution: Any = None):
    """(BlockArrays of the 20 positions of ``arch`` [..., 20], active mask [..., 20])."""
    t = _tables(net)
    e_index = space.expand_index(xp.asarray(arch.expand))
    depth = xp.asarray(arch.depth)
    active = space.active_blocks(depth) if xp is not np else space.active_blocks_np(depth)
    in_size = out_size = None
    if resolution is not None:
        in_size, out_size = spec.position_sizes(resolution)
    blocks = spec.BlockArrays(position=np.arange(space.NUM_BLOCKS),
                              in_channels=t['in_channels'],
                              out_channels=t['out_channels'],
                              mid_channels=_select(xp, t['mid_channels'], e_index),
                              kernel=xp.asarray(arch.kernel),
                              expand=xp.asarray(arch.expand),
                              stride=t['stride'],
                              hswish=t['hswish'],
                              se=t['se'],
                              se_channels=_select(xp, t['se_channels'], e_index),
                              in_size=in_size,
                              out_size=out_size)
    return blocks, active


def _validate_host(arch: space.Arch, resolution: Any = None) -> None:
    """``space.validate`` on host inputs; nothing for traced ones (inside jit/vmap)."""
    if space.is_traced(arch, resolution):
        return
    space.validate(arch)
    if resolution is not None:
        r = np.asarray(resolution)
        if r.dtype == bool or r.dtype.kind not in 'iu':
            raise ValueError(f'resolution: override {resolution!r} is not an integer; allowed: '
                             'positive integers')
        if np.any(r <= 0):
            raise ValueError(f'resolution: override value {int(r[r <= 0].flat[0])} is not '
                             'allowed; allowed: positive integers')


def count_params(arch: space.Arch,
                 width: float = 1.2,
                 *,
                 num_classes: int = spec.NUM_CLASSES) -> Any:
    """Number of parameters of the static sub-network(s).

    Args:
      arch: one Arch or a batch (numpy or jax arrays); the resolution does not
        change the count (it is still validated).
      width: 1.0 or 1.2.
      num_classes: classifier outputs.

    Returns:
      An int for one numpy arch, else an int64 array of the batch shape
      (a jax int array if the arch holds jax arrays).

    Raises:
      ValueError: naming the field, for an invalid host arch (traced archs,
        inside jit or vmap, are not checked).
    """
    _validate_host(arch)
    net = spec.net_spec(width, num_classes)
    xp = space.array_module(arch.kernel, arch.expand, arch.depth)
    blocks, active = _arch_blocks(net, arch, xp)
    per_block = xp.sum(xp.where(active, block_params(blocks), 0), axis=-1)
    return _finish(xp, per_block + fixed_params(net))


def count_macs(arch: space.Arch,
               width: float = 1.2,
               *,
               num_classes: int = spec.NUM_CLASSES,
               resolution: Any = None) -> Any:
    """Multiply-accumulates of the static sub-network(s) at batch 1.

    Args:
      arch: one Arch or a batch (numpy or jax arrays).
      width: 1.0 or 1.2.
      num_classes: classifier outputs.
      resolution: input size overriding ``arch.resolution`` (any positive
        int or array broadcastable to the batch shape).

    Returns:
      An int for one numpy arch, else an int64 array of the batch shape.

    Raises:
      ValueError: naming the field, for an invalid host arch or a
        non-positive override (traced inputs, inside jit or vmap, are not
        checked).
    """
    _validate_host(arch, resolution)
    net = spec.net_spec(width, num_classes)
    r = arch.resolution if resolution is None else resolution
    xp = space.array_module(arch.kernel, arch.expand, arch.depth, r)
    r = xp.asarray(r).astype(xp.int64) if xp is np else xp.asarray(r)
    blocks, active = _arch_blocks(net, arch, xp, r)
    per_block = xp.sum(xp.where(active, block_macs(blocks), 0), axis=-1)
    return _finish(xp, per_block + fixed_macs(net, r))


def _finish(xp, value):
    if xp is np:
        value = np.asarray(value, np.int64)
        return int(value) if value.ndim == 0 else value
    return value
