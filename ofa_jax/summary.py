"""The issue-2 main job: build, extract and size OFA sub-networks.

:func:`run` samples a random architecture, extracts its static sub-network
from a randomly initialised supernet, runs it once on a random image at the
arch's resolution and reports its params, MACs and output shape, then the
params of the largest and smallest sub-network of each width with their MACs
at 224 and 128. ``experiments/main.py`` is a thin absl wrapper around it.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import counts
from ofa_jax import extract
from ofa_jax import files
from ofa_jax import space
from ofa_jax import subnet
from ofa_jax import supernet


def size_table() -> list[dict[str, Any]]:
    """Params and MACs at 224 and 128 of the largest and smallest sub-network per width."""
    rows = []
    for width in space.WIDTHS:
        for name in ('largest', 'smallest'):
            arch = getattr(space, name)()
            rows.append({
                'width': width,
                'arch': name,
                'params': counts.count_params(arch, width),
                'macs_224': counts.count_macs(arch, width, resolution=224),
                'macs_128': counts.count_macs(arch, width, resolution=128),
            })
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Fixed-width text table of :func:`size_table` rows."""
    lines = [f"{'width':>5}  {'sub-network':<11} {'params':>12} {'MACs@224':>10} {'MACs@128':>10}"]
    for r in rows:
        lines.append(f"{r['width']:>5}  {r['arch']:<11} {r['params']:>12,} "
                     f"{r['macs_224'] / 1e6:>9.1f}M {r['macs_128'] / 1e6:>9.1f}M")
    return '\n'.join(lines)


def run(workdir: str | None,
        *,
        width: float = 1.2,
        seed: int = 0,
        depthwise: str = 'auto',
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the job and writes ``summary.json`` to ``workdir`` (if given).

    Args:
      workdir: output folder, created if needed; ``None`` writes nothing.
      width: supernet width, 1.0 or 1.2.
      seed: seed of the architecture, the weights and the input.
      depthwise: depthwise implementation of the static sub-network.
      log: where the readable lines go.

    Returns:
      The summary dict (also the content of ``summary.json``).
    """
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    arch = space.sample_np(rng)
    r = int(arch.resolution)
    sup = supernet.build_supernet(width)
    # Only shapes are traced here; the supernet itself is never compiled.
    sup_vars = subnet.init_variables(sup, (1, r, r, 3), seed=seed, arch=space.largest())
    model, variables = extract.extract_subnet(sup_vars, arch, width, depthwise=depthwise)
    x = jnp.asarray(rng.standard_normal((1, r, r, 3)), jnp.float32)
    logits = jax.jit(model.apply)(variables, x)
    logits.block_until_ready()
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(variables['params']))
    result = {
        'arch': space.format_child_arch(arch),
        'arch_key': space.arch_key(arch),
        'width': float(width),
        'resolution': r,
        'depthwise': model.depthwise,
        'params': counts.count_params(arch, width),
        'params_in_tree': n_params,
        'macs': counts.count_macs(arch, width),
        'input_shape': list(x.shape),
        'output_shape': list(logits.shape),
        'logits_finite': bool(jnp.all(jnp.isfinite(logits))),
        'sizes': size_table(),
        'backend': jax.default_backend(),
        'seconds': round(time.perf_counter() - start, 2),
    }
    log(f"random sub-network (w{width}, seed {seed}): {result['arch']}")
    log(f"  params {result['params']:,}  MACs {result['macs'] / 1e6:.1f}M  "
        f"input {tuple(x.shape)} -> output {tuple(logits.shape)}  "
        f"(depthwise={model.depthwise}, extracted from a random supernet)")
    log(format_table(result['sizes']))
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        files.write_json(os.path.join(workdir, 'summary.json'), result, default=int)
        log(f"wrote {os.path.join(workdir, 'summary.json')}")
    return result
