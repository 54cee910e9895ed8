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

Everything is computed with array arithmetic over the 20 block positions, so
one call counts one arch or a batch of any shape with no Python loop over
architectures (numpy in, numpy out; jax arrays work too, under jit).

XLA's ``cost_analysis()['flops']`` of the compiled static sub-network counts
differently: a MAC is 2 flops, and it also counts BatchNorm (folded or not),
activations, SE gating, residual adds, pooling and bias adds, so its flops
are a few percent above ``2 * macs`` (tested in ``tests/test_counts.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ofa_jax import space
from ofa_jax import spec


def _xp(*arrays: Any):
    """numpy unless any input is a jax array (then jax.numpy, jit friendly)."""
    for a in arrays:
        if type(a).__module__.startswith('jax'):
            import jax.numpy as jnp
            return jnp
    return np


def _tables(net: spec.NetSpec) -> dict[str, np.ndarray]:
    t = spec.position_tables(net)
    t['se_channels'] = np.vectorize(net.se_channels)(t['mid_channels']).astype(np.int64)
    return {k: np.asarray(v, np.int64) for k, v in t.items()}


def _expand_index(xp, expand):
    e = xp.asarray(expand)
    return xp.where(e == 3, 0, xp.where(e == 4, 1, 2))


def _gather_mid(xp, table, expand):
    """table[position, expand_index] for every block; shape of ``expand``."""
    idx = _expand_index(xp, expand)
    onehot = idx[..., None] == xp.arange(3)
    return xp.sum(xp.where(onehot, xp.asarray(table), 0), axis=-1)


def count_params(arch: space.Arch,
                 width: float = 1.2,
                 *,
                 num_classes: int = spec.NUM_CLASSES) -> Any:
    """Number of parameters of the static sub-network(s).

    Args:
      arch: one Arch or a batch (numpy or jax arrays); resolution is ignored.
      width: 1.0 or 1.2.
      num_classes: classifier outputs.

    Returns:
      An int for one numpy arch, else an int64 array of the batch shape
      (a jax int array if the arch holds jax arrays).
    """
    net = spec.net_spec(width, num_classes)
    xp = _xp(arch.kernel, arch.expand, arch.depth)
    t = _tables(net)
    kernel = xp.asarray(arch.kernel)
    active = space.active_blocks(xp.asarray(arch.depth)) if xp is not np else _active_np(arch.depth)
    mid = _gather_mid(xp, t['mid_channels'], arch.expand)
    se = _gather_mid(xp, t['se_channels'], arch.expand)
    cin, cout, has_se = t['in_channels'], t['out_channels'], t['se']
    block = (
        cin * mid + 2 * mid  # inverted bottleneck conv + BN
        + kernel * kernel * mid + 2 * mid  # depthwise + BN
        + has_se * (mid * se + se + se * mid + mid)  # SE convs with bias
        + mid * cout + 2 * cout)  # projection + BN
    blocks = xp.sum(xp.where(active, block, 0), axis=-1)
    c0 = net.first_channels
    fixed = (
        3 * 3 * 3 * c0 + 2 * c0  # first conv + BN
        + 3 * 3 * c0 + 2 * c0 + c0 * c0 + 2 * c0  # first block (expand 1)
        + net.stage_channels[-1] * net.final_channels + 2 * net.final_channels +
        net.final_channels * net.feature_channels  # feature mix, no bias
        + net.feature_channels * num_classes + num_classes)
    return _finish(xp, blocks + fixed)


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
    """
    net = spec.net_spec(width, num_classes)
    r = arch.resolution if resolution is None else resolution
    xp = _xp(arch.kernel, arch.expand, arch.depth, r)
    t = _tables(net)
    r = xp.asarray(r).astype(xp.int64) if xp is np else xp.asarray(r)
    kernel = xp.asarray(arch.kernel)
    depth = xp.asarray(arch.depth)
    active = space.active_blocks(depth) if xp is not np else _active_np(depth)
    mid = _gather_mid(xp, t['mid_channels'], arch.expand)
    se = _gather_mid(xp, t['se_channels'], arch.expand)
    cin, cout, has_se = t['in_channels'], t['out_channels'], t['se']

    def down(size, s):
        return (size - 1) // s + 1

    # Feature-map size entering each position: stage input sizes, then the
    # first block of a stage applies the stride (inactive blocks never run).
    size0 = down(r, 2)
    stage_in = []
    s = size0
    for st in spec.STAGE_STRIDES:
        stage_in.append(s)
        s = down(s, st)
    final_size = s
    stage_in = xp.stack(stage_in, axis=-1)  # [..., 5]
    stage_out = xp.stack([down(stage_in[..., i], st) for i, st in enumerate(spec.STAGE_STRIDES)],
                         axis=-1)
    first_of_stage = (np.arange(space.NUM_BLOCKS) % space.MAX_DEPTH) == 0
    in_size = xp.where(first_of_stage, xp.repeat(stage_in, space.MAX_DEPTH, axis=-1),
                       xp.repeat(stage_out, space.MAX_DEPTH, axis=-1))
    out_size = xp.repeat(stage_out, space.MAX_DEPTH, axis=-1)
    in_hw = in_size * in_size
    out_hw = out_size * out_size
    block = (
        in_hw * mid * cin  # inverted bottleneck at the input size
        + out_hw * mid * kernel * kernel  # depthwise (applies the stride)
        + has_se * 2 * se * mid  # SE reduce and expand convs on the pooled 1x1
        + out_hw * cout * mid)  # projection
    blocks = xp.sum(xp.where(active, block, 0), axis=-1)
    c0 = net.first_channels
    hw0 = size0 * size0
    fixed = (
        hw0 * c0 * 27  # first conv 3x3x3
        + hw0 * c0 * 9 + hw0 * c0 * c0  # first block: depthwise 3x3 + projection
        + final_size * final_size * net.final_channels * net.stage_channels[-1] +
        net.feature_channels * net.final_channels  # feature mix on the pooled 1x1
        + num_classes * net.feature_channels)
    return _finish(xp, blocks + fixed)


def _active_np(depth: Any) -> np.ndarray:
    depth = np.asarray(depth)
    mask = np.arange(space.MAX_DEPTH) < depth[..., :, None]
    return mask.reshape(depth.shape[:-1] + (space.NUM_BLOCKS,))


def _finish(xp, value):
    if xp is np:
        value = np.asarray(value, np.int64)
        return int(value) if value.ndim == 0 else value
    return value
