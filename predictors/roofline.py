"""Zero-shot GPU latency from datasheet figures: a per-layer roofline with a launch queue.

A sub-network runs as a sequence of GPU kernels (convolutions, BatchNorm,
activations, squeeze-excite, residual adds, pooling, the classifier). For each
kernel the architecture alone gives the work, at float32 and this batch size:
FLOPs (``2 * MACs``, MACs from :func:`ofa_jax.counts.conv_macs`, so the sum
over a network is :func:`ofa_jax.counts.count_macs` times the batch) and bytes
moved (input and output activations times the batch, plus the weights once).
On a device with datasheet peak FP32 ``P``, memory bandwidth ``BW`` and ``S``
streaming multiprocessors a kernel takes

    g = kernel_us + softmax_p( F / (eff_kind * P),  B / (eff_memory * BW),  B / (sm_gbs * S) )

(``softmax_p``: the power mean ``(a^p + b^p + c^p)^(1/p)``, a smooth
roofline maximum): a compute roof whose efficiency depends on the kind of
layer (dense/pointwise vs depthwise convs; elementwise kernels do no FLOPs), a
DRAM roof, and a per-SM roof: memory traffic also passes the SMs' load/store
and L1 paths, whose throughput scales with the SM count, not with the DRAM
(NVIDIA's Turing whitepaper: the unified L1 doubles hit bandwidth per TPC over
Pascal, and a Turing TPC holds two SMs where a Pascal TPC holds one, so per SM
they are on a par). That roof is what makes a 30-SM Titan Xp slower than a 68-SM RTX 2080 Ti
of similar peak and bandwidth.

The host issues kernels one after another, ``host_us`` each; the GPU starts a
kernel once it is issued and the previous one is done. With issue times
``h_i = host_us * (kernels before i)`` the network finishes at
``max_i (h_i + sum_{j >= i} g_j)`` (an unbounded launch queue), which is
launch-bound at batch 1 and work-bound at batch 64.

What is shared and what is per device: ``eff_dense``, ``eff_depthwise``,
``eff_memory``, ``sm_gbs`` and ``kernel_us`` are shared by every GPU and
learned on the source devices; ``P``, ``BW`` and ``S`` come from the target's
datasheet (:mod:`ofa_jax.hardware`). ``host_us`` is a property of the host CPU
and framework, not of the GPU, so no datasheet gives it: it is fitted per
source device, and an unseen device gets their geometric mean.

The kernel list follows OFA's MobileNetV3 modules as PyTorch runs them eagerly
(conv, BatchNorm and activation as separate kernels; OFA's ``Hswish`` is
``x * relu6(x + 3) / 6``, four elementwise kernels; ``Hsigmoid`` three): an
assumption about how HELP's latencies were measured, which its files do not
record.

Limits. Bytes are counted as moved by each kernel, L2 hits included, so the
fitted ``eff_memory`` may exceed 1 (it does on HELP's Turing cards: small
activations stay in the 5.5-6 MB L2). A source device whose rows are all
work-bound leaves its ``host_us`` at the initial value (nothing in the loss
depends on it). Batch-1 latency is set by the host, which no GPU datasheet
describes: zero-shot it is as good as the guess that the target's host is
like the sources'. Results: ``benchmarks/results/zero_shot_roofline.md``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ofa_jax import counts
from ofa_jax import hardware
from ofa_jax import space
from ofa_jax import spec as spec_lib

DENSE, DEPTHWISE, ELEMENTWISE = 0, 1, 2
KIND_NAMES = ('dense', 'depthwise', 'elementwise')
BYTES_PER_VALUE = 4  # float32
HSWISH_KERNELS = 4  # x * relu6(x + 3) / 6
HSIGMOID_KERNELS = 3  # relu6(x + 3) / 6
SOFTMAX_POWER = 4  # the power mean's exponent (fixed)
SM_ROOFS = ('sm', 'sm_clock', 'none')


class LayerWork(NamedTuple):
    """Work of every kernel slot of a batch of sub-networks, in execution order.

    Attributes:
      flops: float64[n, L] floating-point operations (2 per MAC), batch included.
      bytes: float64[n, L] bytes read and written at float32, batch included.
      kernels: float64[n, L] number of kernel launches in the slot (0 where the
        slot is inactive: a block past its stage's depth, a residual add a
        block does not have).
      kind: int32[L] :data:`DENSE`, :data:`DEPTHWISE` or :data:`ELEMENTWISE`.
    """

    flops: np.ndarray
    bytes: np.ndarray
    kernels: np.ndarray
    kind: np.ndarray


@dataclasses.dataclass(frozen=True)
class RooflineParams:
    """Fitted shared efficiencies (see the module docstring for the formula).

    Attributes:
      eff_dense: fraction of the FP32 peak reached by dense/pointwise convs.
      eff_depthwise: fraction of the FP32 peak reached by depthwise convs.
      eff_memory: fraction of the datasheet DRAM bandwidth reached.
      sm_gbs: bytes per second per SM (GB/s) of the per-SM roof (per SM and
        GHz of boost clock when ``sm_roof == 'sm_clock'``).
      kernel_us: fixed GPU time per kernel launch (us).
      host_us: host issue time per kernel (us) used for a device not in
        ``source_host_us``: the geometric mean of the sources'.
      source_host_us: ``((device name, host_us), ...)`` fitted per source.
      sm_roof: ``'sm'`` (roof scales with the SM count), ``'sm_clock'`` (SM
        count times boost clock) or ``'none'`` (no per-SM roof).
    """

    eff_dense: float
    eff_depthwise: float
    eff_memory: float
    sm_gbs: float
    kernel_us: float
    host_us: float
    source_host_us: tuple[tuple[str, float], ...] = ()
    sm_roof: str = 'sm'

    def host_us_for(self, device: hardware.HardwareSpec) -> float:
        """The fitted host time of a source device, else the shared default."""
        return dict(self.source_host_us).get(device.name, self.host_us)


class SourceTable(NamedTuple):
    """Measured latencies of one source device at one batch size.

    Attributes:
      archs: batched ``space.Arch`` (numpy).
      latency_ms: float[n] measured latency per batch (ms).
      batch: the batch size the rows were measured at.
      device: the device's datasheet entry.
    """

    archs: space.Arch
    latency_ms: np.ndarray
    batch: int
    device: hardware.HardwareSpec


# ---------------------------------------------------------------------------
# Work per kernel, from the architecture.


def _check_batch(batch) -> int:
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f'batch: value {batch!r} is not allowed; allowed: a positive integer')
    return int(batch)


def _device_terms(device: hardware.HardwareSpec, sm_roof: str) -> tuple[float, float, float]:
    """(peak FLOP/s, DRAM bytes/s, per-SM roof scale) of a GPU datasheet entry."""
    if not isinstance(device, hardware.HardwareSpec):
        raise ValueError(f'device: value {device!r} is not a hardware.HardwareSpec')
    if device.kind != 'gpu' or device.sm_count is None or device.fp32_tflops is None:
        raise ValueError(f'device: {device.name!r} is a {device.kind} without an SM count or '
                         'FP32 peak; allowed: a GPU entry of ofa_jax.hardware')
    if sm_roof not in SM_ROOFS:
        raise ValueError(f'sm_roof: value {sm_roof!r} is not allowed; allowed: {SM_ROOFS}')
    clock_ghz = device.fp32_tflops * 1e3 / (2.0 * device.cores)
    sm_scale = device.sm_count * (clock_ghz if sm_roof == 'sm_clock' else 1.0)
    return device.fp32_tflops * 1e12, device.bandwidth_gbs * 1e9, float(sm_scale)


def _pick(grid: np.ndarray, ki: np.ndarray, ei: np.ndarray) -> np.ndarray:
    """``grid[n, p, ki[n, p], ei[n, p]]`` for every arch and position."""
    n, p = ki.shape
    return grid[np.arange(n)[:, None], np.arange(p)[None, :], ki, ei]


def layer_work(archs: space.Arch, batch: int, width: float = 1.2) -> LayerWork:
    """FLOPs, bytes and launches of every kernel of each sub-network (numpy).

    Args:
      archs: one ``space.Arch`` or a batch (host arrays; validated).
      batch: inference batch size.
      width: supernet width multiplier (1.0 or 1.2).

    Returns:
      A :class:`LayerWork` with ``n`` rows (1 for a single arch) and a fixed
      number of slots: the stem and fixed block, 20 elastic positions of 12
      slots each (expand conv, BN, activation, depthwise conv, BN,
      activation, SE pool, SE convs, SE scale, projection conv, BN, residual
      add), then the final layers.

    Raises:
      ValueError: naming the field, for an invalid arch, batch or width.
    """
    b = _check_batch(batch)
    net = spec_lib.net_spec(width)
    a = space.to_numpy(archs)
    space.validate(a)
    a = space.canonicalize_np(a)
    if not a.batch_shape:
        a = space.stack([a])
    if len(a.batch_shape) != 1:
        raise ValueError(f'archs: batch shape {a.batch_shape} is not allowed; allowed: (n,)')
    r = np.asarray(a.resolution, np.int64)
    n = r.shape[0]
    grid = spec_lib.position_grid(net, r)  # fields [n, 20, 3, 3]
    ki = np.asarray(space.kernel_index(np.asarray(a.kernel)), np.int64)
    ei = np.asarray(space.expand_index(np.asarray(a.expand)), np.int64)
    blk = spec_lib.BlockArrays(
        **{
            f.name: _pick(np.asarray(getattr(grid, f.name), np.float64), ki, ei)
            for f in dataclasses.fields(spec_lib.BlockArrays)
        })
    active = space.active_blocks_np(a.depth).astype(np.float64)
    slots: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    bv = float(BYTES_PER_VALUE)

    def add(kind, macs, values, weights, launches, on=1.0):
        on = np.broadcast_to(np.asarray(on, np.float64), (n,) + np.shape(on)[1:])
        flops = 2.0 * b * np.asarray(macs, np.float64) * on
        moved = bv * (b * np.asarray(values, np.float64) + np.asarray(weights, np.float64)) * on
        slots.append((kind, flops, moved, launches * on))

    def elementwise(elements, passes, reads=1, on=1.0):
        # Each pass reads `reads` tensors of `elements` values and writes one.
        add(ELEMENTWISE, 0.0, passes * (reads + 1) * elements, 0.0, passes, on)

    def act(elements, hswish, on=1.0):
        passes = np.where(hswish, HSWISH_KERNELS, 1.0)
        # An h-swish's final multiply reads two tensors; approximated by its passes.
        add(ELEMENTWISE, 0.0, 2 * passes * elements, 0.0, passes, on)

    def conv(kind, out_size, cin, cout, k, in_size, on=1.0):
        dw = kind == DEPTHWISE
        macs = counts.conv_macs(out_size, cin, cout, k, depthwise=dw)
        values = in_size * in_size * cin + out_size * out_size * cout
        weights = counts.conv_params(cin, cout, k, depthwise=dw)
        add(kind, macs, values, weights, 1.0, on)

    # Stem: 3x3 stride-2 conv, BN, h-swish; then the fixed block (dw 3x3, BN,
    # ReLU, project, BN, residual add).
    first = spec_lib.first_block(net, r)
    s0, c0 = first.in_size.astype(np.float64), float(net.first_channels)
    conv(DENSE, s0, 3.0, c0, 3, r.astype(np.float64))
    elementwise(s0 * s0 * c0, 1)
    act(s0 * s0 * c0, np.ones(n, bool))
    conv(DEPTHWISE, s0, c0, c0, 3, s0)
    elementwise(s0 * s0 * c0, 1)
    act(s0 * s0 * c0, np.zeros(n, bool))
    conv(DENSE, s0, c0, c0, 1, s0)
    elementwise(s0 * s0 * c0, 1)
    elementwise(s0 * s0 * c0, 1, reads=2)

    for p in range(space.NUM_BLOCKS):
        on = active[:, p]
        cin, cout = blk.in_channels[:, p], blk.out_channels[:, p]
        mid, sec = blk.mid_channels[:, p], blk.se_channels[:, p]
        si, so = blk.in_size[:, p], blk.out_size[:, p]
        hsw, se = blk.hswish[:, p] > 0, blk.se[:, p] * on
        res = (blk.stride[:, p] == 1) & (cin == cout)
        conv(DENSE, si, cin, mid, 1, si, on)  # expand 1x1
        elementwise(si * si * mid, 1, on=on)  # BN
        act(si * si * mid, hsw, on)
        conv(DEPTHWISE, so, mid, mid, blk.kernel[:, p], si, on)
        elementwise(so * so * mid, 1, on=on)
        act(so * so * mid, hsw, on)
        # Squeeze-excite: pool, reduce conv (+bias), ReLU, expand conv (+bias),
        # h-sigmoid on the pooled vector, then the channel-wise scale.
        add(ELEMENTWISE, 0.0, so * so * mid + mid, 0.0, 1.0, se)
        add(DENSE,
            counts.conv_macs(1, mid, sec) + counts.conv_macs(1, sec, mid),
            4 * (mid + sec) + HSIGMOID_KERNELS * 2 * mid,
            counts.conv_params(mid, sec, bias=True) + counts.conv_params(sec, mid, bias=True),
            3.0 + HSIGMOID_KERNELS, se)
        add(ELEMENTWISE, 0.0, 2 * so * so * mid + mid, 0.0, 1.0, se)
        conv(DENSE, so, mid, cout, 1, so, on)  # project 1x1
        elementwise(so * so * cout, 1, on=on)
        elementwise(so * so * cout, 1, reads=2, on=on * res)

    # Final 1x1 expand (BN, h-swish), global pool, feature mix 1x1 (h-swish),
    # classifier.
    f = np.asarray(spec_lib.final_size(r), np.float64)
    last, fin, feat = map(float, (net.stage_channels[-1], net.final_channels, net.feature_channels))
    conv(DENSE, f, last, fin, 1, f)
    elementwise(f * f * fin, 1)
    act(f * f * fin, np.ones(n, bool))
    add(ELEMENTWISE, 0.0, f * f * fin + fin, 0.0, 1.0)
    conv(DENSE, np.ones(n), fin, feat, 1, np.ones(n))
    act(np.full(n, feat), np.ones(n, bool))
    add(DENSE, counts.conv_macs(1, feat, net.num_classes), feat + net.num_classes,
        counts.conv_params(feat, net.num_classes, bias=True), 1.0)

    stack = lambda i: np.stack([np.broadcast_to(s[i], (n,)) for s in slots], axis=1)
    return LayerWork(flops=stack(1),
                     bytes=stack(2),
                     kernels=stack(3),
                     kind=np.array([s[0] for s in slots], np.int32))


# ---------------------------------------------------------------------------
# The model (pure jnp; parameters in log space).

_PARAM_NAMES = ('eff_dense', 'eff_depthwise', 'eff_memory', 'sm_gbs', 'kernel_us')
_INIT = {
    'eff_dense': 0.3,
    'eff_depthwise': 0.05,
    'eff_memory': 0.5,
    'sm_gbs': 5.0,
    'kernel_us': 3.0,
    'host_us': 20.0
}


def _ideal_us(work: LayerWork, device: hardware.HardwareSpec, sm_roof: str) -> dict:
    """Each roof's time at efficiency 1 (us, float32 jnp arrays [n, L]) on one device.

    ``sm`` is the time at 1 GB/s per unit of the per-SM scale; ``issued`` the
    kernels launched before each slot.
    """
    peak, bw, sm_scale = _device_terms(device, sm_roof)
    f32 = lambda x: jnp.asarray(np.asarray(x, np.float64), jnp.float32)
    compute_us = work.flops / peak * 1e6
    return {
        'dense': f32(np.where(work.kind == DENSE, compute_us, 0.0)),
        'depthwise': f32(np.where(work.kind == DEPTHWISE, compute_us, 0.0)),
        'dram': f32(work.bytes / bw * 1e6),
        'sm': f32(work.bytes / (1e9 * sm_scale) * 1e6 if sm_roof != 'none' else 0 * work.bytes),
        'kernels': f32(work.kernels),
        'issued': f32(np.cumsum(work.kernels, axis=-1) - work.kernels),
    }


def _latency_ms(log_p: dict, log_host_us, ideal: dict):
    """Latency (ms) of the rows of :func:`_ideal_us` arrays under log parameters."""
    inv = lambda name: jnp.exp(-log_p[name])
    compute = ideal['dense'] * inv('eff_dense') + ideal['depthwise'] * inv('eff_depthwise')
    dram = ideal['dram'] * inv('eff_memory')
    sm = ideal['sm'] * inv('sm_gbs')
    fourth = lambda t: jnp.square(jnp.square(t))
    # Power mean with SOFTMAX_POWER = 4; the floor keeps the gradient of the
    # root finite on empty slots (all roofs 0).
    busy = jnp.sqrt(jnp.sqrt(fourth(compute) + fourth(dram) + fourth(sm) + 1e-12))
    gpu_us = busy + jnp.exp(log_p['kernel_us']) * ideal['kernels']
    # remaining[i] = sum_{j >= i} gpu_us[j], as a product with a triangular matrix:
    # XLA:CPU compiles it in a second, where jnp.cumsum runs a quadratic
    # reduce-window and lax.associative_scan takes ~20 s to compile.
    slots = gpu_us.shape[-1]
    remaining = gpu_us @ jnp.tril(jnp.ones((slots, slots), gpu_us.dtype))
    finish = jnp.max(jnp.exp(log_host_us) * ideal['issued'] + remaining, axis=-1)
    return finish * 1e-3


def _check_source(i: int, table: SourceTable) -> None:
    y = np.asarray(table.latency_ms, np.float64)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f'latency_ms: source {i} has shape {y.shape}; allowed: a non-empty '
                         'vector, one value per arch')
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError(f'latency_ms: source {i} holds a non-positive or non-finite value; '
                         'allowed: positive finite milliseconds')
    shape = space.to_numpy(table.archs).batch_shape
    if shape != y.shape:
        raise ValueError(f'archs: source {i} has batch shape {shape} but latency_ms has '
                         f'{y.shape}; allowed: one latency per arch')


def fit(sources: Sequence[SourceTable],
        *,
        width: float = 1.2,
        sm_roof: str = 'sm',
        steps: int = 1500,
        learning_rate: float = 0.05) -> RooflineParams:
    """Fits the shared efficiencies (and each source's host time) on source devices.

    Minimises the mean squared log error (each source weighted equally) with
    Adam on log parameters, so every efficiency stays positive.

    Args:
      sources: measured tables of the source devices (any batch sizes; a
        device may appear at several batch sizes and shares its host time).
      width: supernet width multiplier.
      sm_roof: see :class:`RooflineParams`.
      steps: Adam steps.
      learning_rate: Adam step size.

    Returns:
      The fitted :class:`RooflineParams`.

    Raises:
      ValueError: naming the field, for empty sources, mismatched lengths,
        non-positive latencies, a non-GPU device or a bad option.
    """
    if not sources:
        raise ValueError('sources: empty; allowed: at least one SourceTable')
    if steps < 1:
        raise ValueError(f'steps: value {steps!r} is not allowed; allowed: >= 1')
    names = []
    data = []
    for i, table in enumerate(sources):
        _check_source(i, table)
        ideal = _ideal_us(layer_work(table.archs, table.batch, width), table.device, sm_roof)
        if table.device.name not in names:
            names.append(table.device.name)
        data.append((ideal, names.index(table.device.name),
                     jnp.log(jnp.asarray(table.latency_ms, jnp.float32))))

    params = {k: jnp.log(jnp.float32(_INIT[k])) for k in _PARAM_NAMES}
    params['host_us'] = jnp.full((len(names),), math.log(_INIT['host_us']), jnp.float32)

    def loss(p, tables):
        total = 0.0
        for (ideal, log_y), d in zip(tables, devices):
            pred = _latency_ms(p, p['host_us'][d], ideal)
            total = total + jnp.mean((jnp.log(pred) - log_y)**2)
        return total / len(tables)

    opt = optax.adam(learning_rate)

    # The tables are arguments, not closed-over constants: XLA would try to
    # constant-fold the cumulative sums over them.
    @jax.jit
    def step(p, state, tables):
        value, grad = jax.value_and_grad(loss)(p, tables)
        updates, state = opt.update(grad, state)
        return optax.apply_updates(p, updates), state, value

    tables = [(ideal, log_y) for ideal, _, log_y in data]
    devices = [d for _, d, _ in data]
    state = opt.init(params)
    for _ in range(int(steps)):
        params, state, _ = step(params, state, tables)
    host = np.exp(np.asarray(params['host_us'], np.float64))
    return RooflineParams(**{k: float(np.exp(params[k])) for k in _PARAM_NAMES},
                          host_us=float(np.exp(np.mean(np.log(host)))),
                          source_host_us=tuple(zip(names, host.tolist())),
                          sm_roof=sm_roof)


def predict(params: RooflineParams,
            archs: space.Arch,
            batch: int,
            device: hardware.HardwareSpec,
            *,
            width: float = 1.2,
            host_us: float | None = None) -> np.ndarray:
    """Latency (ms per batch) of sub-networks on a device known by its datasheet.

    Args:
      params: from :func:`fit`.
      archs: one ``space.Arch`` or a batch.
      batch: inference batch size.
      device: the target's :class:`~ofa_jax.hardware.HardwareSpec` (a GPU).
      width: supernet width multiplier.
      host_us: host issue time per kernel (us); default the fitted value of a
        source device, else ``params.host_us``.

    Returns:
      float64[n] latency in ms (n = 1 for a single arch).

    Raises:
      ValueError: naming the field, for an invalid arch, batch, device or
        host time.
    """
    _device_terms(device, params.sm_roof)  # validates the device first
    host = params.host_us_for(device) if host_us is None else host_us
    if not (isinstance(host, (int, float)) and math.isfinite(host) and host >= 0):
        raise ValueError(f'host_us: value {host!r} is not allowed; allowed: a finite number >= 0')
    ideal = _ideal_us(layer_work(archs, batch, width), device, params.sm_roof)
    log_p = {k: jnp.log(jnp.float32(getattr(params, k))) for k in _PARAM_NAMES}
    log_host = jnp.log(jnp.float32(max(host, 1e-9)))
    return np.asarray(_latency_ms(log_p, log_host, ideal), np.float64)
