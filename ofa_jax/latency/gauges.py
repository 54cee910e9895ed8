"""A device's gauge baseline kept in the latency store, and measuring archs against it.

A paired protocol divides every sample by a sample of one fixed reference
network (:class:`ofa_jax.latency.measure.Gauge`) and multiplies by that
reference's baseline. Every paired latency of a device is on one scale only
if every job (campaigns, lookup-table builds, verification of searched
archs, other processes) uses the same baseline, so the first job to need it
times it and records it in the store's meta table, and later ones read it.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ofa_jax import depthwise as dw
from ofa_jax import progress as progress_lib
from ofa_jax import space
from ofa_jax.latency import fingerprint as fp_lib
from ofa_jax.latency import measure
from ofa_jax.latency import store as store_lib


def gauge_meta_key(fid: str, batch: int, dtype: str, width: float, num_classes: int,
                   depthwise: str) -> str:
    """Store meta key of a gauge baseline (one per device and network configuration)."""
    ref = space.arch_key(measure.gauge_arch())
    return (f'gauge_baseline_ms/{fid}/{ref}/b{int(batch)}/{dtype}/w{float(width)}/'
            f'c{int(num_classes)}/{depthwise}')


def open_gauge(store: store_lib.LatencyStore, fid: str, *, batch: int, dtype: str, device: Any,
               width: float, num_classes: int, depthwise: str) -> measure.Gauge:
    """The device's :class:`measure.Gauge`, with the baseline recorded in ``store``.

    The first call for a device and configuration times the reference and
    records its baseline in the store; later calls reuse it.
    """
    depthwise = dw.resolve(depthwise, fp_lib.resolve_device(device).platform)
    key = gauge_meta_key(fid, batch, dtype, width, num_classes, depthwise)
    stored = store.get_meta(key)
    gauge = measure.Gauge.build(batch,
                                dtype,
                                device,
                                width=width,
                                num_classes=num_classes,
                                depthwise=depthwise,
                                baseline_ms=None if stored is None else float(stored))
    if stored is None:
        gauge.baseline_ms = float(store.set_meta(key, repr(gauge.baseline_ms)))
    return gauge


def device_gauge(store: store_lib.LatencyStore, device: Any, *, batch: int, dtype: str,
                 width: float, num_classes: int, depthwise: str) -> tuple[str, measure.Gauge]:
    """Registers ``device``'s fingerprint in ``store``; returns (its id, its gauge)."""
    fp = fp_lib.fingerprint(device, microbenchmarks=False)
    fid = store.add_device(fp)
    return fid, open_gauge(store,
                           fid,
                           batch=batch,
                           dtype=dtype,
                           device=device,
                           width=width,
                           num_classes=num_classes,
                           depthwise=depthwise)


def stored_latencies(store: store_lib.LatencyStore, device_id: str, *, batch: int, dtype: str,
                     protocol: measure.Protocol, width: float, num_classes: int,
                     depthwise: str) -> dict[str, float]:
    """Arch key -> latency (ms) of the store's rows under exactly this key (device, batch, ...)."""
    net = (int(batch), dtype, protocol.name, float(width), int(num_classes), depthwise)
    return {
        row.key.arch_key: row.latency_ms
        for row in store.rows(device_id, batch=int(batch), dtype=dtype, protocol=protocol.name)
        if row.key == _row_key(device_id, row.key.arch_key, *net)
    }


def _row_key(device_id: str, arch_key: str, batch: int, dtype: str, protocol: str, width: float,
             num_classes: int, depthwise: str) -> store_lib.RowKey:
    return store_lib.RowKey(device_id, arch_key, int(batch), dtype, protocol, float(width),
                            int(num_classes), depthwise)


def measure_archs(archs: Sequence[space.Arch],
                  *,
                  device: Any,
                  protocol: measure.Protocol,
                  batch: int = 1,
                  dtype: str = 'float32',
                  width: float = 1.2,
                  num_classes: int = 1000,
                  depthwise: str = 'auto',
                  store: store_lib.LatencyStore | None = None,
                  device_id: str = '',
                  gauge: measure.Gauge | None = None,
                  provenance: Mapping[str, Any] | None = None,
                  progress: bool = False) -> list[float]:
    """The measured latency (ms) of each arch on ``device``, through one path.

    This is how every job verifies what a search found. With a ``store``, a
    row already stored under the same key (device, arch, batch, dtype,
    protocol, width, classes, depthwise) is reused and every new measurement
    is added to it; without one, each distinct arch is measured once. A
    paired ``protocol`` needs the device's ``gauge`` (:func:`open_gauge`).

    Args:
      archs: architectures (duplicates are measured once).
      device: the ``jax.Device`` (or name) that runs the programs.
      protocol: the timing protocol; its name is part of the store key.
      batch, dtype, width, num_classes: the network and input measured.
      depthwise: ``'auto'`` resolves for ``device``'s platform.
      store: latency store to reuse rows from and add rows to (optional).
      device_id: the device's fingerprint id in ``store`` (required with it).
      gauge: the reference network of a paired protocol.
      provenance: recorded with every new row.
      progress: a progress line on stderr over the archs to measure (those
        not already stored), one update per arch.

    Returns:
      latency in ms, one per arch, in order.
    """
    dev = fp_lib.resolve_device(device)
    depthwise = dw.resolve(depthwise, dev.platform)
    if store is not None and not device_id:
        raise ValueError('measure_archs: device_id is required with a store')

    # Rows already stored under these keys, read once: arch key -> latency.
    cache: dict[str, float] = {}
    if store is not None:
        cache = stored_latencies(store,
                                 device_id,
                                 batch=batch,
                                 dtype=dtype,
                                 protocol=protocol,
                                 width=width,
                                 num_classes=num_classes,
                                 depthwise=depthwise)
    todo = {space.arch_key(a) for a in archs} - set(cache)
    bar = progress_lib.Progress(len(todo), enabled=progress and bool(todo))
    out = []
    for arch in archs:
        arch_key = space.arch_key(arch)
        if arch_key not in cache:
            result = measure.measure_latency(arch,
                                             int(batch),
                                             dtype,
                                             dev,
                                             protocol,
                                             width=width,
                                             num_classes=num_classes,
                                             depthwise=depthwise,
                                             gauge=gauge)
            if store is not None:
                key = _row_key(device_id, arch_key, batch, dtype, protocol.name, width, num_classes,
                               depthwise)
                store.add_result(key, result, provenance=dict(provenance or {}))
            cache[arch_key] = result.latency_ms
            bar.update(f'r{int(arch.resolution)} {result.latency_ms:.2f}ms')
        out.append(cache[arch_key])
    bar.close()
    return out
