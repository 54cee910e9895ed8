"""Timing of ahead-of-time compiled XLA executables: sub-networks and single layers.

``measure_latency`` builds the static sub-network of one architecture, lowers
and compiles it for one input shape on one device (``jax.jit(apply).lower(
ShapeDtypeStruct...).compile()``: parameters are arguments, so compiling needs
no data), then times the executable under a :class:`Protocol`: warm-up runs,
``block_until_ready`` after every call, repeated samples until both a count
and a minimum time are reached, and robust statistics. Lowering, compiling
and timing are timed apart. XLA's cost and memory analyses are kept when the
backend gives them (best effort).

The same machinery (:func:`compile_module`, :func:`time_executable`) times
single layers for the lookup-table builder.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import depthwise as dw
from ofa_jax import space
from ofa_jax.latency import fingerprint as fp_lib

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
STATISTICS = ('median', 'trimmed_mean', 'min', 'mean')


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How one executable is timed.

    Attributes:
      warmup: untimed calls after compiling (caches, page faults, thread pools).
      repeats: minimum number of timed samples.
      min_time: keep sampling until the samples add up to at least this many
        seconds (and ``repeats`` is reached).
      max_time: stop sampling after this many seconds even if ``repeats`` is
        not reached (at least 3 samples are always taken).
      number: calls per sample; 0 picks it so one sample lasts >= ``min_sample``.
      min_sample: target seconds per sample when ``number`` is 0.
      trim: fraction cut from each end for the trimmed mean.
      statistic: which statistic is *the* latency ('median', 'trimmed_mean',
        'min', 'mean').
      rounds: the samples are taken in this many rounds separated by a short
        pause; the latency is the median over rounds of each round's statistic
        (damps bursts of interference from other processes).
      paired: time a fixed reference network (a :class:`Gauge`) right after
        every sample and report ``sample / reference * gauge baseline``. On a
        shared machine whose speed wanders over seconds and minutes this
        cancels the wander: on the 2-core CI VM it cut the spread of one
        arch's latency between two processes from 9.4% to 2.3% (median of 40
        archs) and the error of a FLOPs-linear fit from 8-13% to 3.8%
        (``python -m benchmarks.noise_floor``). Costs one reference call per
        sample.
    """

    warmup: int = 5
    repeats: int = 30
    min_time: float = 0.5
    max_time: float = 30.0
    number: int = 0
    min_sample: float = 0.002
    trim: float = 0.2
    statistic: str = 'median'
    rounds: int = 1
    paired: bool = False

    def __post_init__(self):
        if self.statistic not in STATISTICS:
            raise ValueError(f'protocol.statistic: {self.statistic!r} is not one of {STATISTICS}')
        if self.repeats < 1 or self.warmup < 0 or self.rounds < 1:
            raise ValueError('protocol: repeats and rounds must be >= 1 and warmup >= 0; got '
                             f'repeats={self.repeats} warmup={self.warmup} rounds={self.rounds}')
        if not 0 <= self.trim < 0.5:
            raise ValueError(f'protocol.trim: {self.trim} must be in [0, 0.5)')
        for name, low in (('min_time', 0.0), ('min_sample', 0.0), ('number', 0)):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= low):
                raise ValueError(f'protocol.{name}: {value}; allowed: a finite number >= {low}')
        if not (np.isfinite(self.max_time) and self.max_time > 0):
            raise ValueError(f'protocol.max_time: {self.max_time}; allowed: a finite number > 0')

    @property
    def name(self) -> str:
        """Readable id that changes whenever any field changes (e.g. ``p-3f2a9c1d``)."""
        fields = dataclasses.asdict(self)
        if not self.paired:  # Unpaired protocols keep the ids they had before the field.
            del fields['paired']
        blob = json.dumps(fields, sort_keys=True)
        return 'p-' + hashlib.sha256(blob.encode()).hexdigest()[:8]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FAST_PROTOCOL = Protocol(warmup=1, repeats=3, min_time=0.0, max_time=5.0, number=1)


def robust_stats(samples_ms: Sequence[float], trim: float = 0.2) -> dict[str, float]:
    """Median, trimmed mean, IQR, CV, min, max, mean, std of timing samples (ms)."""
    x = np.sort(np.asarray(samples_ms, np.float64))
    n = x.size
    if n == 0:
        raise ValueError('robust_stats: no samples')
    cut = int(np.floor(n * trim))
    core = x[cut:n - cut] if n - 2 * cut > 0 else x
    q1, median, q3 = np.percentile(x, [25, 50, 75])
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else 0.0
    return {
        'n': int(n),
        'median': float(median),
        'trimmed_mean': float(core.mean()),
        'iqr': float(q3 - q1),
        'cv': std / mean if mean > 0 else 0.0,
        'min': float(x[0]),
        'max': float(x[-1]),
        'mean': mean,
        'std': std,
    }


@dataclasses.dataclass
class Compiled:
    """An AOT-compiled executable with its arguments placed on the device."""

    executable: Any
    args: tuple
    lower_s: float
    compile_s: float
    cost: dict[str, float | None]


@dataclasses.dataclass
class LatencyResult:
    """One measurement of one sub-network (or layer) on one device.

    ``latency_ms`` is ``stats[protocol.statistic]``; everything else is
    provenance.
    """

    arch_key: str
    batch: int
    dtype: str
    protocol: str
    latency_ms: float
    stats: dict[str, float]
    samples_ms: list[float]
    number: int
    lower_s: float
    compile_s: float
    time_s: float
    cost: dict[str, float | None]
    depthwise: str = ''
    device: str = ''
    started_at: str = ''
    finished_at: str = ''
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='milliseconds')


def _first(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return x[0] if x else None
    return x


def cost_of(compiled: Any) -> dict[str, float | None]:
    """Flops, bytes accessed and memory sizes of a compiled executable (None if unknown)."""
    out: dict[str, float | None] = {
        'flops': None,
        'bytes_accessed': None,
        'peak_bytes': None,
        'temp_bytes': None,
        'argument_bytes': None,
        'output_bytes': None,
    }
    try:
        ca = _first(compiled.cost_analysis())
        if isinstance(ca, dict):
            out['flops'] = float(ca['flops']) if 'flops' in ca else None
            out['bytes_accessed'] = (float(ca['bytes accessed'])
                                     if 'bytes accessed' in ca else None)
    except Exception:  # pylint: disable=broad-except
        pass  # Best effort by design: some backends raise, others return None.
    try:
        ma = _first(compiled.memory_analysis())
        for field, attr in (('temp_bytes', 'temp_size_in_bytes'), ('argument_bytes',
                                                                   'argument_size_in_bytes'),
                            ('output_bytes', 'output_size_in_bytes'), ('peak_bytes',
                                                                       'peak_memory_in_bytes')):
            value = getattr(ma, attr, None)
            out[field] = float(value) if value is not None else None
        if not out['peak_bytes'] and out['temp_bytes'] is not None:
            # CPU reports 0 peak: arguments + outputs + temporaries bound it.
            out['peak_bytes'] = sum(
                out[f] or 0.0 for f in ('temp_bytes', 'argument_bytes', 'output_bytes'))
    except Exception:  # pylint: disable=broad-except
        pass
    return out


def synthetic_params(shapes: Any, seed: int = 0, dtype: Any = jnp.float32) -> Any:
    """Host parameters with the given shapes and sensible magnitudes.

    Timing does not depend on the values, but NaN/inf/denormals can slow some
    kernels down, so weights are N(0, 1/fan_in), BN scales and variances 1,
    biases and means 0. Faster than running ``module.init`` op by op.
    """
    rng = np.random.default_rng(seed)

    def make(path, leaf):
        name = jax.tree_util.keystr(path).lower()
        shape = tuple(leaf.shape)
        if 'scale' in name or 'var' in name:
            value = np.ones(shape, np.float32)
        elif 'bias' in name or 'mean' in name or len(shape) <= 1:
            value = np.zeros(shape, np.float32)
        else:
            fan_in = int(np.prod(shape[:-1])) or 1
            value = rng.standard_normal(shape).astype(np.float32) / np.sqrt(fan_in)
        return value.astype(dtype) if np.issubdtype(np.dtype(leaf.dtype),
                                                    np.floating) else (np.zeros(shape, leaf.dtype))

    return jax.tree_util.tree_map_with_path(make, shapes)


def compile_module(module: Any,
                   input_shape: Sequence[int],
                   dtype: str = 'float32',
                   device: Any = None,
                   *,
                   seed: int = 0) -> Compiled:
    """Lowers and compiles ``module.apply`` for one input shape on one device.

    Args:
      module: a Flax module taking one NHWC (or any) array.
      input_shape: the full input shape, batch included.
      dtype: 'float32', 'bfloat16' or 'float16' (inputs and parameters).
      device: anything :func:`fingerprint.resolve_device` accepts.
      seed: for the synthetic parameters.

    Returns:
      :class:`Compiled` with the executable, its device-resident arguments,
      the lowering and compile wall times and the cost analysis.
    """
    if dtype not in DTYPES:
        raise ValueError(f'dtype: {dtype!r} is not one of {tuple(DTYPES)}')
    jdtype = DTYPES[dtype]
    dev = fp_lib.resolve_device(device)
    sharding = jax.sharding.SingleDeviceSharding(dev)
    x_struct = jax.ShapeDtypeStruct(tuple(input_shape), jdtype, sharding=sharding)
    from ofa_jax import subnet  # pylint: disable=g-import-not-at-top
    shapes = subnet.init_shapes(module, input_shape)  # a SubNet: cached per layer
    float_dtype = lambda s: jdtype if jnp.issubdtype(s.dtype, jnp.floating) else s.dtype
    var_structs = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, float_dtype(s), sharding=sharding), shapes)

    def apply(variables, x):
        return module.apply(variables, x)

    t0 = time.perf_counter()
    lowered = jax.jit(apply).lower(var_structs, x_struct)
    t1 = time.perf_counter()
    executable = lowered.compile()
    t2 = time.perf_counter()
    variables = jax.device_put(synthetic_params(var_structs, seed, jdtype), dev)
    x = jax.device_put(
        np.random.default_rng(seed + 1).standard_normal(tuple(input_shape)).astype(jdtype), dev)
    return Compiled(executable=executable,
                    args=(variables, x),
                    lower_s=t1 - t0,
                    compile_s=t2 - t1,
                    cost=cost_of(executable))


class Timing(NamedTuple):
    """What :func:`time_executable` measured."""

    stats: dict[str, float]  # In ms, with the protocol's ``latency`` added.
    samples_ms: list[float]  # Corrected by the gauge when paired.
    number: int  # Calls per sample.
    time_s: float  # Wall seconds spent timing, warm-up included.


def time_executable(fn: Callable[..., Any],
                    args: tuple,
                    protocol: Protocol,
                    gauge: Gauge | None = None) -> Timing:
    """Times ``fn(*args)`` under ``protocol``.

    With a ``gauge`` (required when ``protocol.paired``), every sample is
    followed by one timed call of the gauge's reference network, and each
    sample is reported as ``sample / reference_sample * gauge.baseline_ms``:
    a slowdown of the whole machine between or during samples scales both and
    cancels. The stats then also hold ``raw_median`` (ms, uncorrected),
    ``reference_median`` (ms) and ``speed`` (baseline / reference median: > 1
    when the machine ran faster than when the baseline was taken).

    Every loop obeys ``protocol.max_time``: warm-up stops at the deadline,
    and the calls per sample are capped so that one sample fits in it, so a
    large ``min_sample`` cannot stretch a measurement past the limit (at
    least 3 samples are still taken).

    Returns:
      a :class:`Timing`.
    """
    if protocol.paired and gauge is None:
        raise ValueError('protocol.paired: a Gauge (reference network) is needed to time '
                         'paired samples; build one with measure.Gauge.build or set '
                         'protocol.paired=False')
    start = time.perf_counter()
    deadline = start + protocol.max_time
    for _ in range(protocol.warmup):
        jax.block_until_ready(fn(*args))
        if gauge is not None:
            gauge.call()
        if time.perf_counter() > deadline:
            break
    number = protocol.number
    if number <= 0:
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        one = max(time.perf_counter() - t0, 1e-7)
        number = max(1, int(np.ceil(protocol.min_sample / one)))
        # Three samples of `number` calls must fit in what is left of max_time.
        left = max(deadline - time.perf_counter(), 0.0)
        number = max(1, min(number, int(left / (3 * one))))
    per_round = max(1, int(np.ceil(protocol.repeats / protocol.rounds)))
    round_time = protocol.min_time / protocol.rounds
    samples: list[float] = []
    raw: list[float] = []
    refs: list[float] = []
    round_values: list[float] = []
    for r in range(protocol.rounds):
        if r:
            time.sleep(0.05)  # Lets a burst from another process pass between rounds.
        these: list[float] = []
        round_start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            for _ in range(number):
                out = fn(*args)
            jax.block_until_ready(out)
            ms = (time.perf_counter() - t0) * 1e3 / number
            raw.append(ms)
            if gauge is not None:
                ref = gauge.call()
                refs.append(ref)
                ms = ms / ref * gauge.baseline_ms
            these.append(ms)
            now = time.perf_counter()
            enough = len(these) >= per_round and now - round_start >= round_time
            if enough or (now > deadline and len(samples) + len(these) >= 3):
                break
        samples.extend(these)
        round_values.append(robust_stats(these, protocol.trim)[protocol.statistic])
        if time.perf_counter() > deadline:
            break
    stats = robust_stats(samples, protocol.trim)
    stats['latency'] = float(
        np.median(round_values)) if protocol.rounds > 1 else stats[protocol.statistic]
    if gauge is not None:
        stats['raw_median'] = float(np.median(raw))
        stats['reference_median'] = float(np.median(refs))
        stats['speed'] = gauge.baseline_ms / stats['reference_median']
    return Timing(stats, samples, number, time.perf_counter() - start)


# The gauge's reference network: one fixed sub-network (a seeded random arch at
# resolution 128), the same for every campaign and lookup table of a device, so
# their corrected latencies share one scale.
GAUGE_SEED = 12345
GAUGE_RESOLUTION = 128
# Protocol of a gauge's baseline: long enough that its median is stable.
BASELINE_PROTOCOL = Protocol(warmup=5, repeats=60, min_time=2.0, max_time=20.0, number=1)


def gauge_arch() -> space.Arch:
    """The gauge's reference sub-network (fixed; see ``GAUGE_SEED``)."""
    return space.sample_np(np.random.default_rng(GAUGE_SEED), resolutions=(GAUGE_RESOLUTION,))


@dataclasses.dataclass
class Gauge:
    """A reference network timed next to every sample of a paired protocol.

    ``baseline_ms`` fixes the scale: a paired latency is what the measured
    program would take when the reference takes ``baseline_ms``. Keep one
    baseline per device and configuration (``campaign.open_gauge`` stores it
    in the latency store) so that resumed campaigns, lookup tables and
    verification runs in other processes agree.

    Attributes:
      compiled: the reference network, compiled for the device.
      baseline_ms: the reference's latency that defines the scale.
      arch_key: the reference's arch key.
      number: reference calls per reference sample.
    """

    compiled: Compiled
    baseline_ms: float
    arch_key: str
    number: int = 1

    @classmethod
    def build(cls,
              batch: int,
              dtype: str,
              device: Any,
              *,
              width: float = 1.2,
              num_classes: int = 1000,
              depthwise: str = 'auto',
              baseline_ms: float | None = None,
              arch: space.Arch | None = None) -> 'Gauge':
        """Compiles the reference (``gauge_arch()`` by default); times a baseline if none given."""
        arch = gauge_arch() if arch is None else arch
        compiled = compile_arch(arch,
                                batch,
                                dtype,
                                device,
                                width=width,
                                num_classes=num_classes,
                                depthwise=depthwise)
        gauge = cls(compiled, 1.0, space.arch_key(arch))
        t0 = time.perf_counter()
        jax.block_until_ready(compiled.executable(*compiled.args))
        one = max(time.perf_counter() - t0, 1e-7)
        gauge.number = max(1, int(np.ceil(BASELINE_PROTOCOL.min_sample / one)))
        if baseline_ms is None:
            baseline_ms = gauge.measure_baseline()
        gauge.baseline_ms = float(baseline_ms)
        return gauge

    def call(self) -> float:
        """Runs the reference ``number`` times; returns ms per call."""
        ex, args = self.compiled.executable, self.compiled.args
        t0 = time.perf_counter()
        for _ in range(self.number):
            out = ex(*args)
        jax.block_until_ready(out)
        return (time.perf_counter() - t0) * 1e3 / self.number

    def measure_baseline(self, protocol: Protocol = BASELINE_PROTOCOL) -> float:
        """Times the reference alone (unpaired) and returns its latency in ms."""
        timing = time_executable(self.compiled.executable, self.compiled.args,
                                 dataclasses.replace(protocol, paired=False))
        return float(timing.stats['latency'])


def measure_module(module: Any,
                   input_shape: Sequence[int],
                   dtype: str = 'float32',
                   device: Any = None,
                   protocol: Protocol = Protocol(),
                   *,
                   key: str = '',
                   gauge: Gauge | None = None) -> LatencyResult:
    """Compiles and times any Flax module (used for single layers by the LUT builder).

    ``gauge`` is required when ``protocol.paired`` (see :func:`time_executable`).
    """
    started = _now()
    dev = fp_lib.resolve_device(device)
    compiled = compile_module(module, input_shape, dtype, dev)
    timing = time_executable(compiled.executable, compiled.args, protocol, gauge)
    return LatencyResult(arch_key=key,
                         batch=int(input_shape[0]),
                         dtype=dtype,
                         protocol=protocol.name,
                         latency_ms=timing.stats['latency'],
                         stats=timing.stats,
                         samples_ms=timing.samples_ms,
                         number=timing.number,
                         lower_s=compiled.lower_s,
                         compile_s=compiled.compile_s,
                         time_s=timing.time_s,
                         cost=compiled.cost,
                         depthwise=str(getattr(module, 'depthwise', '')),
                         device=str(dev),
                         started_at=started,
                         finished_at=_now())


def build_network(arch: space.Arch,
                  width: float = 1.2,
                  *,
                  num_classes: int = 1000,
                  depthwise: str = 'auto',
                  device: Any = None) -> Any:
    """The static Flax sub-network of ``arch`` (``ofa_jax.subnet.build_subnet``).

    ``depthwise='auto'`` resolves for ``device``'s platform (the device that
    will run the program), not for JAX's default backend.
    """
    from ofa_jax import subnet  # pylint: disable=g-import-not-at-top
    platform = fp_lib.resolve_device(device).platform
    return subnet.build_subnet(arch,
                               width,
                               num_classes=num_classes,
                               depthwise=dw.resolve(depthwise, platform))


def compile_arch(arch: space.Arch,
                 batch: int,
                 dtype: str,
                 device: Any,
                 *,
                 width: float = 1.2,
                 num_classes: int = 1000,
                 depthwise: str = 'auto') -> Compiled:
    """The AOT-compiled static sub-network of ``arch`` on ``device`` at ``batch``."""
    r = int(np.asarray(arch.resolution))
    model = build_network(space.to_numpy(arch),
                          width,
                          num_classes=num_classes,
                          depthwise=depthwise,
                          device=device)
    return compile_module(model, (int(batch), r, r, 3), dtype, device)


def measure_latency(arch: space.Arch,
                    batch: int = 1,
                    dtype: str = 'float32',
                    device: Any = None,
                    protocol: Protocol = Protocol(),
                    *,
                    width: float = 1.2,
                    num_classes: int = 1000,
                    depthwise: str = 'auto',
                    gauge: Gauge | None = None) -> LatencyResult:
    """Builds, AOT-compiles and times the static sub-network of one architecture.

    Args:
      arch: one architecture (host or device arrays).
      batch: input batch size.
      dtype: 'float32', 'bfloat16' or 'float16'.
      device: a ``jax.Device``, a name like 'cpu', 'gpu:0', or None (default).
      protocol: the timing :class:`Protocol`.
      width: supernet width multiplier (1.0 or 1.2).
      num_classes: classifier size (1000 for ImageNet; small in tests).
      depthwise: depthwise-conv implementation passed to ``build_subnet``.
      gauge: the reference :class:`Gauge`; required when ``protocol.paired``.

    Returns:
      a :class:`LatencyResult`; ``latency_ms`` is the protocol's statistic.
    """
    if int(batch) < 1:
        raise ValueError(f'batch: {batch} must be >= 1')
    key = space.arch_key(arch)
    r = int(np.asarray(arch.resolution))
    model = build_network(space.to_numpy(arch),
                          width,
                          num_classes=num_classes,
                          depthwise=depthwise,
                          device=device)
    result = measure_module(model, (int(batch), r, r, 3),
                            dtype,
                            device,
                            protocol,
                            key=key,
                            gauge=gauge)
    result.extra.update({'width': float(width), 'num_classes': int(num_classes)})
    return result


class DriftMonitor:
    """Re-measures a reference sub-network to detect drift (thermal, neighbours).

    The first reference measurement is the baseline. :meth:`check` re-times
    the (already compiled) reference; when its latency differs from the
    baseline by more than ``tolerance`` (relative), rows measured since the
    previous check are suspect.
    """

    def __init__(self,
                 arch: space.Arch,
                 batch: int,
                 dtype: str,
                 device: Any,
                 protocol: Protocol,
                 *,
                 width: float = 1.2,
                 num_classes: int = 1000,
                 depthwise: str = 'auto',
                 tolerance: float = 0.1):
        self.compiled = compile_arch(arch,
                                     batch,
                                     dtype,
                                     device,
                                     width=width,
                                     num_classes=num_classes,
                                     depthwise=depthwise)
        self.protocol = protocol
        self.tolerance = float(tolerance)
        self.baseline = self._time()
        self.history: list[tuple[str, float]] = [(_now(), self.baseline)]

    def _time(self) -> float:
        stats = time_executable(self.compiled.executable, self.compiled.args, self.protocol).stats
        return stats['latency']

    def check(self) -> tuple[bool, float]:
        """Re-times the reference; returns (drifted, relative change vs baseline)."""
        now = self._time()
        self.history.append((_now(), now))
        change = now / self.baseline - 1.0
        return abs(change) > self.tolerance, change
