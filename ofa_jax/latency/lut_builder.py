"""Builds an OFA-format latency lookup table on this host's device.

Done the way OFA and ProxylessNAS do it: enumerate every distinct layer
configuration the space produces at the chosen resolutions (stem conv, the
fixed first block, every stage position's block for each kernel and expand
with its input size, stride, SE and activation, then the final 1x1 conv,
pooling, feature-mix conv and classifier), compile each layer alone with the
same AOT machinery as whole networks (:mod:`ofa_jax.latency.measure`), time
it, and save one ``{r}_lookup_table.yaml`` per resolution. Layers with equal
keys at several resolutions are timed once.

The yaml ``mean`` holds the protocol's statistic (median by default), ``std``
the sample standard deviation and ``count`` the number of timed samples.
Finished layers are appended to a JSON-lines cache, so a killed build resumes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ofa_jax import layers
from ofa_jax import space
from ofa_jax import spec as spec_lib
from ofa_jax.latency import campaign
from ofa_jax.latency import fingerprint as fp_lib
from ofa_jax.latency import measure
from ofa_jax.latency import store as store_lib
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
    per_res = {int(r): layer_modules(r, width, num_classes, depthwise) for r in resolutions}
    todo: dict[str, tuple[nn.Module, tuple[int, ...]]] = {}
    for mods in per_res.values():
        todo.update(mods)
    done = _read_cache(cache_path) if cache_path else {}
    pending = [k for k in todo if k not in done]
    bar = campaign.Progress(len(pending), enabled=progress)
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
    }


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Builds the LUT of ``config`` into ``WORKDIR/lut/{r}_lookup_table.yaml``.

    Raises:
      campaign.ConfigError: bad resolution, device, dtype or protocol field.
    """
    campaign.set_affinity(config.cpu_affinity)
    resolutions = campaign.parse_int_list('resolutions', config.resolutions, space.RESOLUTIONS)
    batch = campaign.parse_int_list('batch', config.batch)[0]
    if config.dtype not in measure.DTYPES:
        raise campaign.ConfigError(f'config.dtype: {config.dtype!r} not one of '
                                   f'{tuple(measure.DTYPES)}')
    if float(config.width) not in space.WIDTHS:
        raise campaign.ConfigError(f'config.width: {config.width} not one of {space.WIDTHS}')
    protocol = campaign.protocol_from_config(config.protocol)
    try:
        device = fp_lib.resolve_device(config.device)
    except ValueError as err:
        raise campaign.ConfigError(f'config.device: {err}') from None
    try:
        from ofa_jax import depthwise as dw  # pylint: disable=g-import-not-at-top
        depthwise = (dw.default_depthwise(device.platform)
                     if config.depthwise == 'auto' else dw.resolve(config.depthwise))
    except ValueError as err:
        raise campaign.ConfigError(f'config.depthwise: {err}') from None
    out_dir = os.path.join(workdir, 'lut')
    os.makedirs(out_dir, exist_ok=True)
    fp = fp_lib.fingerprint(device, microbenchmarks=bool(config.microbenchmarks))
    cache = os.path.join(
        workdir, f'lut_layers-{fp["fingerprint_id"]}-b{batch}-{config.dtype}-'
        f'{depthwise}-{protocol.name}.jsonl')
    gauge = None
    if protocol.paired:
        # The baseline lives in the latency store, shared with the campaigns that
        # measure whole networks on this device: both end up on one scale.
        store_path = config.get('store', '') or os.path.join(workdir, 'latency.sqlite')
        try:
            store = store_lib.LatencyStore(store_path)
        except store_lib.StoreError as err:
            raise campaign.ConfigError(f'config.store: {err}') from None
        try:
            store.add_device(fp)
            gauge = campaign.open_gauge(store,
                                        fp['fingerprint_id'],
                                        batch=batch,
                                        dtype=config.dtype,
                                        device=device,
                                        width=float(config.width),
                                        num_classes=int(config.num_classes),
                                        depthwise=depthwise)
        finally:
            store.close()
    table, summary = build_lut(resolutions,
                               batch=batch,
                               width=float(config.width),
                               num_classes=int(config.num_classes),
                               dtype=config.dtype,
                               device=device,
                               protocol=protocol,
                               depthwise=depthwise,
                               cache_path=cache,
                               progress=bool(config.progress),
                               gauge=gauge)
    summary['paths'] = lut.save_lut(out_dir, table)
    summary.update({
        'fingerprint':
            fp,
        'protocol':
            protocol.to_dict(),
        'depthwise':
            depthwise,
        'batch':
            batch,
        'dtype':
            config.dtype,
        'gauge':
            None if gauge is None else {
                'arch_key': gauge.arch_key,
                'baseline_ms': gauge.baseline_ms
            },
    })
    with open(os.path.join(out_dir, 'provenance.json'), 'w') as f:
        json.dump(summary, f, indent=1, default=str)
    print(f'LUT with {summary["layers"]} layers -> {out_dir}', file=sys.stderr)
    return summary
