"""Builds an OFA-format latency lookup table on this host's device.

Done the way OFA and ProxylessNAS do it: enumerate every distinct layer
configuration the space produces at the chosen resolutions (stem conv, the
fixed first block, every stage position's block for each kernel and expand
with its input size, stride, SE and activation, then the final 1x1 conv,
pooling, feature-mix conv and classifier), compile each layer alone with the
same AOT machinery as whole networks (:mod:`ofa_jax.latency.measure`) and
time it; :func:`predictors.lut.save_lut` writes one ``{r}_lookup_table.yaml``
per resolution (``experiments/build_lut.py`` is the job around it). Layers
with equal keys at several resolutions are timed once.

The yaml ``mean`` holds the protocol's statistic (median by default), ``std``
the sample standard deviation and ``count`` the number of timed samples.
Finished layers are appended to a JSON-lines cache, so a killed build resumes.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ofa_jax import depthwise as dw
from ofa_jax import layers
from ofa_jax import progress as progress_lib
from ofa_jax import space
from ofa_jax import spec as spec_lib
from ofa_jax.latency import fingerprint as fp_lib
from ofa_jax.latency import measure
from predictors import lut


class GlobalPool(nn.Module):
    """Global average pooling alone (OFA's ``AvgPool2D`` entry)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.mean(x, axis=(1, 2))


class FeatureMix(nn.Module):
    """The 1x1 feature-mix conv on the pooled vector + h-swish (``Conv_2``)."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return layers.hswish(nn.Dense(self.features, use_bias=False)(x))


def layer_modules(resolution: int,
                  width: float = 1.2,
                  num_classes: int = 1000,
                  depthwise: str = 'auto') -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """Every distinct layer at ``resolution``: key -> (module, input shape without batch)."""
    net = spec_lib.net_spec(width, num_classes)
    r = int(resolution)
    out: dict[str, tuple[nn.Module, tuple[int, ...]]] = {}
    out[lut.first_conv_key(net, r)] = (layers.ConvBNAct(net.first_channels, 3, 2,
                                                        act='hswish'), (r, r, 3))

    def add_block(b: spec_lib.BlockSpec) -> None:
        out[lut.block_key(b)] = (layers.MBConv(b.in_channels,
                                               b.out_channels,
                                               b.mid_channels,
                                               b.kernel,
                                               b.stride,
                                               b.act,
                                               b.se,
                                               depthwise=depthwise), (b.in_size, b.in_size,
                                                                      b.in_channels))

    add_block(spec_lib.first_block(net, r))
    for p in range(space.NUM_BLOCKS):
        for k in space.KERNEL_CHOICES:
            for e in space.EXPAND_CHOICES:
                add_block(lut.position_block(net, r, p, k, e))
    f = spec_lib.final_size(r)
    conv1, pool, conv2, logits = lut.final_keys(net, r)
    out[conv1] = (layers.ConvBNAct(net.final_channels, 1,
                                   act='hswish'), (f, f, net.stage_channels[-1]))
    out[pool] = (GlobalPool(), (f, f, net.final_channels))
    out[conv2] = (FeatureMix(net.feature_channels), (net.final_channels,))
    out[logits] = (nn.Dense(net.num_classes), (net.feature_channels,))
    return out


def _read_cache(path: str) -> dict[str, lut.LutEntry]:
    done: dict[str, lut.LutEntry] = {}
    if not os.path.exists(path):
        return done
    with open(path) as f:
        for line in f:
            try:
                d = json.loads(line)
                done[d['key']] = lut.LutEntry(int(d['count']), float(d['mean']), float(d['std']))
            except (ValueError, KeyError):
                continue  # A line cut by a kill: that layer is timed again.
    return done


def build_lut(resolutions: Sequence[int],
              *,
              batch: int = 1,
              width: float = 1.2,
              num_classes: int = 1000,
              dtype: str = 'float32',
              device: Any = None,
              protocol: measure.Protocol = measure.Protocol(),
              depthwise: str = 'auto',
              cache_path: str | None = None,
              progress: bool = True,
              gauge: measure.Gauge | None = None) -> tuple[lut.LookupTable, dict[str, Any]]:
    """Times every layer configuration and returns the table and a summary.

    Args:
      resolutions: input resolutions to cover (each a valid space value).
      batch: batch size of every layer's input.
      width, num_classes: the network the layers come from.
      dtype, device, protocol, depthwise: as in :func:`measure.measure_latency`.
      cache_path: JSON-lines file of finished layers (resume after a kill).
      progress: print a progress line per layer on stderr.
      gauge: the device's reference :class:`measure.Gauge`; required when
        ``protocol.paired`` (use the campaign's, so that layer and network
        latencies share one scale).

    Returns:
      (LookupTable, summary with counts and times).
    """
    depthwise = dw.resolve(depthwise, fp_lib.resolve_device(device).platform)
    per_res = {int(r): layer_modules(r, width, num_classes, depthwise) for r in resolutions}
    todo: dict[str, tuple[nn.Module, tuple[int, ...]]] = {}
    for mods in per_res.values():
        todo.update(mods)
    done = _read_cache(cache_path) if cache_path else {}
    pending = [k for k in todo if k not in done]
    bar = progress_lib.Progress(len(pending), enabled=progress)
    start = time.monotonic()
    compile_s = 0.0
    for key in pending:
        module, shape = todo[key]
        res = measure.measure_module(module, (int(batch),) + shape,
                                     dtype,
                                     device,
                                     protocol,
                                     key=key,
                                     gauge=gauge)
        compile_s += res.lower_s + res.compile_s
        entry = lut.LutEntry(count=len(res.samples_ms), mean=res.latency_ms, std=res.stats['std'])
        done[key] = entry
        if cache_path:
            with open(cache_path, 'a') as f:
                f.write(
                    json.dumps({
                        'key': key,
                        'count': entry.count,
                        'mean': entry.mean,
                        'std': entry.std
                    }) + '\n')
                f.flush()
                os.fsync(f.fileno())
        bar.update(f'{key[:40]} {res.latency_ms:.3f}ms')
    bar.close()
    tables = {r: {k: done[k] for k in mods} for r, mods in per_res.items()}
    table = lut.LookupTable(tables, width=width, num_classes=num_classes)
    return table, {
        'layers': len(todo),
        'timed_now': len(pending),
        'elapsed_s': time.monotonic() - start,
        'compile_s_total': compile_s,
        'depthwise': depthwise,
    }
