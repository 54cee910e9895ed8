"""Device fingerprint and hardware features for latency measurements.

The fingerprint has two parts:

* identity fields (platform, device kind, CPU model, cores in this process's
  affinity, memory size, jax/jaxlib versions, XLA flags): hashed into a stable
  ``fingerprint_id`` that keys rows in the latency store; two runs on the same
  machine with the same software and flags share it;
* features for predictors: spec values from :mod:`ofa_jax.hardware` when it
  knows the device (cores, memory, bandwidth, FLOP/s, with their source), and
  two measured XLA microbenchmarks (streaming copy bandwidth, matmul GFLOP/s)
  so an unknown device still gets numbers. Measured numbers never enter the
  id: they are noisy.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform as platform_lib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import hardware

# Fields hashed into the id. Changing this list changes every id: don't.
IDENTITY_FIELDS = ('platform', 'device_kind', 'cpu_model', 'affinity_cores', 'memory_gb',
                   'jax_version', 'jaxlib_version', 'xla_flags', 'num_devices')


def resolve_device(device: Any = None) -> jax.Device:
    """Returns a ``jax.Device`` from a device, ``None`` (default), 'cpu', 'gpu:1', ...

    Raises:
      ValueError: naming the platforms and device counts that exist here.
    """
    if isinstance(device, jax.Device):
        return device
    if device is None or device == '' or device == 'default':
        return jax.devices()[0]
    text = str(device).strip().lower()
    name, _, index = text.partition(':')
    try:
        devices = jax.devices(name)
    except RuntimeError:
        devices = []
    available = _available_platforms()
    if not devices:
        raise ValueError(f'device {device!r}: no such platform here; available: {available}')
    try:
        i = int(index) if index else 0
    except ValueError:
        raise ValueError(f'device {device!r}: index {index!r} is not an integer; use e.g. '
                         f'"{name}:0"') from None
    if not 0 <= i < len(devices):
        raise ValueError(f'device {device!r}: index {i} out of range; {name} has {len(devices)} '
                         f'device(s); available: {available}')
    return devices[i]


def _available_platforms() -> list[str]:
    out = []
    for name in ('cpu', 'gpu', 'tpu'):
        try:
            n = len(jax.devices(name))
        except RuntimeError:
            continue
        out.append(f'{name} (x{n})')
    return out


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform_lib.processor() or platform_lib.machine()


def _memory_gb() -> float | None:
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemTotal:'):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def affinity() -> list[int]:
    """CPU cores this process may run on (``os.sched_getaffinity``)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # Not Linux.
        return list(range(os.cpu_count() or 1))


def identity(device: Any = None) -> dict[str, Any]:
    """Identity fields of ``device`` in this process (no measurement)."""
    dev = resolve_device(device)
    import jaxlib  # pylint: disable=g-import-not-at-top
    fields = {
        'platform': dev.platform,
        'device_kind': str(dev.device_kind),
        'cpu_model': _cpu_model(),
        'affinity_cores': len(affinity()),
        'memory_gb': _memory_gb(),
        'jax_version': jax.__version__,
        'jaxlib_version': getattr(jaxlib, '__version__', ''),
        'xla_flags': os.environ.get('XLA_FLAGS', ''),
        'num_devices': len(jax.devices(dev.platform)),
    }
    return fields


def fingerprint_id(fields: dict[str, Any]) -> str:
    """Stable 16-hex-digit hash of the identity fields."""
    blob = json.dumps({k: fields.get(k) for k in IDENTITY_FIELDS}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _spec_features(device_kind: str) -> dict[str, Any]:
    """Datasheet values from ``ofa_jax.hardware`` if that module knows the device."""
    try:
        spec = hardware.lookup(device_kind)
    except Exception:  # pylint: disable=broad-except
        return {}  # The spec table is optional: never let it break a measurement.
    if spec is None:
        return {}
    out = {}
    for name in ('name', 'cores', 'sm_count', 'memory_gb', 'bandwidth_gbs', 'fp32_tflops',
                 'source'):
        if hasattr(spec, name):
            value = getattr(spec, name)
            out[f'spec_{name}'] = value if isinstance(value, (int, float, str)) else str(value)
    return out


def _time_best(fn, *args, repeats: int = 5) -> float:
    fn(*args).block_until_ready()
    best = float('inf')
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return best


def copy_bandwidth_gbs(device: Any = None, mbytes: int = 64) -> float:
    """Streaming copy bandwidth (GB/s, read + write) of a jitted ``x + 1`` on ``device``."""
    dev = resolve_device(device)
    n = mbytes * 2**20 // 4
    x = jax.device_put(jnp.zeros((n,), jnp.float32), dev)
    t = _time_best(jax.jit(lambda a: a + 1.0), x)
    return 2 * n * 4 / t / 1e9


def matmul_gflops(device: Any = None, n: int = 1024) -> float:
    """float32 matmul throughput (GFLOP/s) of an ``n x n`` product on ``device``."""
    dev = resolve_device(device)
    a = jax.device_put(jnp.ones((n, n), jnp.float32), dev)
    t = _time_best(jax.jit(lambda x: x @ x), a)
    return 2 * n**3 / t / 1e9


@functools.lru_cache(maxsize=None)
def _measured(device: jax.Device) -> dict[str, float]:
    small = device.platform == 'cpu'
    return {
        'measured_copy_gbs': round(copy_bandwidth_gbs(device, 64 if small else 512), 3),
        'measured_matmul_gflops': round(matmul_gflops(device, 1024 if small else 4096), 3),
    }


def fingerprint(device: Any = None, *, microbenchmarks: bool = True) -> dict[str, Any]:
    """Identity, id, spec features and (optionally) measured features of ``device``.

    Returns:
      dict with the :data:`IDENTITY_FIELDS`, ``fingerprint_id``, ``affinity``
      (the core list), ``hostname``, ``spec_*`` fields when the spec table knows
      the device, and ``measured_copy_gbs`` / ``measured_matmul_gflops`` (cached
      per process) when ``microbenchmarks`` is true.
    """
    dev = resolve_device(device)
    out = identity(dev)
    out['fingerprint_id'] = fingerprint_id(out)
    out['affinity'] = affinity()
    out['hostname'] = platform_lib.node()
    out['device_str'] = str(dev)
    out.update(_spec_features(out['device_kind']))
    if microbenchmarks:
        out.update(_measured(dev))
    return out


def hardware_features(fp: dict[str, Any]) -> np.ndarray:
    """Numeric feature vector (cores, memory GB, bandwidth GB/s, GFLOP/s) of a fingerprint.

    Spec values win where present; measured values fill the gaps, so any
    device gets four finite numbers.
    """
    cores = fp.get('spec_cores') or fp.get('affinity_cores') or 1
    memory = fp.get('spec_memory_gb') or fp.get('memory_gb') or 0.0
    bandwidth = fp.get('spec_bandwidth_gbs') or fp.get('measured_copy_gbs') or 0.0
    tflops = fp.get('spec_fp32_tflops')
    gflops = tflops * 1e3 if tflops else fp.get('measured_matmul_gflops') or 0.0
    return np.array([cores, memory, bandwidth, gflops], np.float64)
