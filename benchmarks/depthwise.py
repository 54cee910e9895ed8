"""Depthwise convolution: ``'conv'`` (feature groups) against ``'shifted'`` slices.

Times both implementations of :mod:`ofa_jax.depthwise` on typical OFA
MobileNetV3 (w1.2) depthwise layers and on the whole largest w1.2
sub-network at 224, batch 1, and prints a table of medians (ms) over
``--repeats`` timed calls after ``--warmup`` untimed ones (AOT-compiled,
``block_until_ready`` before reading the clock). No asserts: a table to read.

    python -m benchmarks.depthwise
    python -m benchmarks.depthwise --repeats=30 > benchmarks/results/depthwise_cpu.txt

Timings on a shared host are noisy; compare the ratio, not the digits.
"""

import os
import platform
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import depthwise as dw
from ofa_jax import space
from ofa_jax import subnet

_REPEATS = flags.DEFINE_integer('repeats', 15, 'Timed calls per case.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed calls per case.')
_BATCH = flags.DEFINE_integer('batch', 1, 'Batch size.')
_NETWORK = flags.DEFINE_bool('network', True, 'Also time the largest w1.2 sub-network at 224.')

# (size, channels, kernel, stride): depthwise layers of the largest w1.2 sub-network.
LAYERS = (
    (112, 24, 3, 1),  # fixed first block
    (112, 144, 7, 2),  # stage 1, first block (mid 24 * 6)
    (56, 192, 7, 1),  # stage 1, later blocks
    (28, 288, 7, 1),  # stage 2 (48 * 6)
    (14, 576, 5, 1),  # stage 3 (96 * 6)
    (14, 816, 3, 1),  # stage 4 (136 * 6)
    (7, 1152, 7, 1),  # stage 5 (192 * 6)
)


def _time(compiled, *args) -> tuple[float, float]:
    for _ in range(_WARMUP.value):
        jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(_REPEATS.value):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def _row(name: str, results: dict[str, tuple[float, float, float]]) -> str:
    conv, shifted = results['conv'], results['shifted']
    return (f'{name:<34} {conv[0]:>10.2f} {shifted[0]:>10.2f} {conv[0] / shifted[0]:>7.1f}x '
            f'{conv[1]:>9.2f} {shifted[1]:>9.2f} {conv[2]:>7.1f} {shifted[2]:>7.1f}')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    b = _BATCH.value
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else None
    print(f'# jax {jax.__version__}, backend {jax.default_backend()}, '
          f'device {jax.devices()[0].device_kind}, {platform.machine()}, '
          f'cpu affinity {affinity}, batch {b}, float32, warmup {_WARMUP.value}, '
          f'repeats {_REPEATS.value}, load average {os.getloadavg()[0]:.1f}')
    print(f"{'case':<34} {'conv med':>10} {'shift med':>10} {'ratio':>8} {'conv min':>9} "
          f"{'shift min':>9} {'comp c':>7} {'comp s':>7}")
    print('# times in ms (median and min of the timed calls); compile times in s')
    rng = np.random.default_rng(0)
    for size, c, k, s in LAYERS:
        x = jnp.asarray(rng.standard_normal((b, size, size, c)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((k, k, 1, c)), jnp.float32)
        results = {}
        for name, fn in dw.DEPTHWISE_IMPLS.items():
            t0 = time.perf_counter()
            compiled = jax.jit(fn, static_argnums=(2, 3)).lower(x, w, s, k // 2).compile()
            compile_s = time.perf_counter() - t0
            med, low = _time(compiled, x, w)
            results[name] = (med, low, compile_s)
        print(_row(f'dw {size}x{size}x{c} k{k} s{s}', results), flush=True)
    if _NETWORK.value:
        arch = space.largest(224)
        x = jnp.asarray(rng.standard_normal((b, 224, 224, 3)), jnp.float32)
        results = {}
        variables = None
        for name in dw.DEPTHWISE_IMPLS:
            model = subnet.build_subnet(arch, 1.2, depthwise=name)
            if variables is None:
                variables = subnet.init_variables(model, x.shape)
            t0 = time.perf_counter()
            compiled = jax.jit(model.apply).lower(variables, x).compile()
            compile_s = time.perf_counter() - t0
            med, low = _time(compiled, variables, x)
            results[name] = (med, low, compile_s)
        print(_row('largest w1.2 sub-network @224', results), flush=True)


if __name__ == '__main__':
    app.run(main)
