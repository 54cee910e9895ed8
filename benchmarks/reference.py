"""This machine's float32 matmul rate right now, for benchmarks to report beside their figures.

The speed of a shared VM wanders by up to 30% from minute to minute, so a
benchmark that times its own work interleaved with :func:`seconds` can say
whether a figure came from a fast or a slow phase. The reference is a chain of
[2048, 400] x [400, 400] float32 matmuls with ReLU: the main layer of the
paper's latency MLP (and of OFA's accuracy predictor) at the scoring chunk
size, about as long as one 100,000-arch MLP call.
"""

import time

import jax

MATMULS = 100
FLOPS = MATMULS * 2 * 2048 * 400 * 400


@jax.jit
def matmuls(x: jax.Array) -> jax.Array:
    """The reference program (compiled on first call)."""
    w = jax.random.normal(jax.random.key(1), (400, 400)) * 0.07
    return jax.lax.fori_loop(0, MATMULS, lambda i, x: jax.nn.relu(x @ w), x)


def inputs() -> jax.Array:
    """The reference's input ([2048, 400] float32)."""
    return jax.random.normal(jax.random.key(0), (2048, 400))


def seconds(x: jax.Array) -> float:
    """Wall seconds of one reference call on ``x`` (compile it first with one call)."""
    t0 = time.perf_counter()
    jax.block_until_ready(matmuls(x))
    return time.perf_counter() - t0


def gflops(secs: float) -> float:
    """The reference's rate in GFLOP/s for a call that took ``secs``."""
    return FLOPS / secs / 1e9
