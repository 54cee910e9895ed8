"""The measurement job: sample archs, measure each on one device, store every row.

:func:`run` is what ``experiments/measure_latency.py`` calls. It is
restartable: the list of jobs is a pure function of the config (seeded
sampling), the store is keyed by (device, arch, batch, dtype, protocol, ...),
and only pending jobs are measured, so Ctrl-C or SIGKILL at any moment
followed by the same command finishes the campaign with every row present
once. Every run ends by writing ``WORKDIR/latency.csv`` (OFA CSV) with every
row of this device in the store.

With ``config.cluster`` set (``local``, ``auto``, ``HOST:PORT`` or
``ray://HOST:PORT``) the same campaign runs on a fleet of Ray actors, one per
device, with this process as the one writer of the store
(:mod:`experiments.fleet`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import time
from typing import Any

import ml_collections
import numpy as np

from experiments import config_fields as cf
from ofa_jax import files
from ofa_jax import progress as progress_lib
from ofa_jax import space
from ofa_jax.latency import fingerprint as fp_lib
from ofa_jax.latency import gauges
from ofa_jax.latency import measure
from ofa_jax.latency import store as store_lib

DRIFT_ACTIONS = ('flag', 'remeasure', 'none')
CLUSTERS = ('', 'local', 'auto', 'HOST:PORT', 'ray://HOST:PORT')

ConfigError = cf.ConfigError


@dataclasses.dataclass
class Plan:
    """The validated, resolved campaign."""

    archs: list[space.Arch]
    batch_sizes: tuple[int, ...]
    resolutions: tuple[int, ...]
    protocol: measure.Protocol
    width: float
    num_classes: int
    dtype: str
    depthwise: str
    store_path: str


def cluster(value: Any, name: str = 'cluster') -> str:
    """The Ray cluster of a fleet campaign ('' = no fleet: this process measures).

    Raises:
      ConfigError: unless one of :data:`CLUSTERS` (HOST and PORT filled in).
    """
    text = str(value or '').strip()
    if text in ('', 'local', 'auto'):
        return text
    host, sep, port = text.removeprefix('ray://').rpartition(':')
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or ' ' in host:
        raise ConfigError(f'config.{name}: {value!r}; allowed: {", ".join(map(repr, CLUSTERS))} '
                          "('' = this process measures, no Ray)")
    return text


def row_provenance(fid: str, fp: dict[str, Any], protocol: measure.Protocol, depthwise: str,
                   seed: int, pid: int) -> dict[str, Any]:
    """What every row a campaign measures records of where and how it was timed."""
    return {
        'fingerprint_id': fid,
        'hostname': fp.get('hostname'),
        'affinity': fp.get('affinity'),
        'xla_flags': fp.get('xla_flags'),
        'jax_version': fp.get('jax_version'),
        'jaxlib_version': fp.get('jaxlib_version'),
        'device_kind': fp.get('device_kind'),
        'protocol': protocol.to_dict(),
        'depthwise': depthwise,
        'seed': seed,
        'pid': pid,
    }


def plan(config: ml_collections.ConfigDict, workdir: str) -> Plan:
    """Validates the config and lists the campaign's archs (pure; no device work).

    ``depthwise`` stays as configured (``'auto'`` included): :func:`run`
    resolves it for the device it measures on.
    """
    resolutions = cf.resolutions(config.resolutions)
    batch_sizes = cf.int_tuple('batch_sizes', config.batch_sizes)
    cf.one_int('num_archs', config.num_archs)
    num_shards = cf.one_int('num_shards', config.num_shards)
    if not 0 <= int(config.shard_index) < num_shards:
        raise ConfigError(f'config.shard_index: {config.shard_index}; allowed: an integer in '
                          f'[0, config.num_shards={num_shards})')
    dtype = cf.dtype(config.dtype)
    width = cf.width(config.width)
    cf.one_int('num_classes', config.num_classes)
    cf.choice('drift.action', config.drift.action, DRIFT_ACTIONS)
    cf.one_int('drift.interval', config.drift.interval, minimum=0)
    cf.number('drift.tolerance', config.drift.tolerance, low=0.0)
    cf.number('time_budget_s', config.time_budget_s, low=0.0)
    cf.choice('depthwise', config.depthwise, ('auto', 'conv', 'shifted'))
    cf.cpu_affinity(config.cpu_affinity)
    protocol = cf.protocol(config.protocol)
    if cluster(config.get('cluster', '')):
        cf.one_int('fleet_size', config.fleet_size, minimum=0)
        cf.one_int('fleet_restarts', config.fleet_restarts, minimum=0)
        if not protocol.paired and config.drift.action != 'none' and int(config.drift.interval):
            raise ConfigError(f'config.drift.action: {config.drift.action!r} with an unpaired '
                              'protocol is not supported by a fleet (config.cluster); allowed: '
                              "a paired protocol (config.protocol.paired=True), or "
                              "config.drift.action='none' or config.drift.interval=0")
    # Arch i depends only on (seed, i): raising num_archs extends a campaign (the first
    # archs stay the same, so a rerun resumes) and shards agree on the list.
    sampled = [
        space.sample_np(np.random.default_rng([int(config.seed), i]), resolutions=resolutions)
        for i in range(int(config.num_archs))
    ]
    archs = list({space.arch_key(a): a for a in sampled}.values())  # Dedupe, keep order.
    return Plan(archs=archs,
                batch_sizes=batch_sizes,
                resolutions=resolutions,
                protocol=protocol,
                width=width,
                num_classes=int(config.num_classes),
                dtype=dtype,
                depthwise=str(config.depthwise),
                store_path=cf.store_path(config.store, workdir))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) a measurement campaign; see the module docstring.

    Args:
      config: see ``experiments/configs/measure_latency.py``.
      workdir: output folder (created); receives ``latency.csv`` and
        ``campaign.json``.

    Returns:
      a summary dict (counts, throughput, compile time, fingerprint id, paths).

    Raises:
      ConfigError: bad config, unknown device or unusable store.
    """
    p = plan(config, workdir)
    if cluster(config.get('cluster', '')):
        if importlib.util.find_spec('ray') is None:
            raise ConfigError(f'config.cluster: {config.cluster!r} needs Ray, which is not '
                              "installed; install it with pip install -e '.[cluster]'")
        from experiments import fleet  # pylint: disable=g-import-not-at-top
        return fleet.run(config, workdir, p)
    cf.set_affinity(config.cpu_affinity)  # Before any device work: XLA's threads inherit it.
    device = cf.device(config.device)
    p.depthwise = cf.depthwise(config.depthwise, device)
    os.makedirs(workdir, exist_ok=True)
    store = cf.open_store(p.store_path)
    # One campaign at a time times into a store: two would time each other's load
    # (the gauge included) and every row would be off, silently.
    lease = contextlib.ExitStack()
    try:
        lease.enter_context(
            store.writer_lease(f'measure_latency shard {config.shard_index}/{config.num_shards}'))
    except store_lib.StoreError as err:
        store.close()
        raise ConfigError(f'config.store: {err}') from None
    fp = fp_lib.fingerprint(device, microbenchmarks=bool(config.microbenchmarks))
    fid = store.add_device(fp)
    base_provenance = row_provenance(fid, fp, p.protocol, p.depthwise, int(config.seed),
                                     os.getpid())
    jobs = []
    for i, (arch, batch) in enumerate((a, b) for a in p.archs for b in p.batch_sizes):
        if i % int(config.num_shards) != int(config.shard_index):
            continue
        key = store_lib.RowKey(fid, space.arch_key(arch), batch, p.dtype, p.protocol.name, p.width,
                               p.num_classes, p.depthwise)
        jobs.append(key)
    pending = store.pending(jobs)
    summary: dict[str, Any] = {
        'fingerprint_id': fid,
        'store': p.store_path,
        'jobs': len(jobs),
        'already_done': len(jobs) - len(pending),
        'measured': 0,
        'drift_checks': 0,
        'drift_flagged': 0,
        'remeasured': 0,
        'stopped': 'done',
        'protocol': p.protocol.name,
    }
    start = time.monotonic()
    compile_s, lower_s, timing_s, speeds = [], [], [], []
    progress = progress_lib.Progress(len(pending),
                                     enabled=bool(config.progress),
                                     time_budget_s=float(config.time_budget_s))
    drift = None
    since_check: list[store_lib.RowKey] = []
    flagged: list[store_lib.RowKey] = []
    budget = float(config.time_budget_s)

    # The network measured, as every measurement call takes it.
    net = dict(dtype=p.dtype,
               device=device,
               width=p.width,
               num_classes=p.num_classes,
               depthwise=p.depthwise)
    gauges_by_batch: dict[int, measure.Gauge] = {}

    def gauge_for(batch: int) -> measure.Gauge | None:
        """The device's gauge at ``batch`` (paired protocol), opened on first use."""
        if not p.protocol.paired:
            return None
        if batch not in gauges_by_batch:
            gauges_by_batch[batch] = gauges.open_gauge(store, fid, batch=batch, **net)
        return gauges_by_batch[batch]

    if pending and p.protocol.paired:
        gauge = gauge_for(p.batch_sizes[0])
        summary['gauge'] = {'arch_key': gauge.arch_key, 'baseline_ms': gauge.baseline_ms}

    def measure_key(key: store_lib.RowKey) -> measure.LatencyResult:
        return measure.measure_latency(space.from_key(key.arch_key),
                                       key.batch,
                                       protocol=p.protocol,
                                       gauge=gauge_for(key.batch),
                                       **net)

    def check_drift() -> bool:
        drifted, change = drift.check()
        summary['drift_checks'] += 1
        if drifted:
            store.set_drift(since_check)
            summary['drift_flagged'] += len(since_check)
            flagged.extend(since_check)
            progress.note(f'drift: reference changed {100 * change:+.1f}%; flagged '
                          f'{len(since_check)} row(s)')
        since_check.clear()
        return drifted

    try:
        for key in pending:
            if budget > 0 and time.monotonic() - start > budget:
                summary['stopped'] = 'time_budget'
                break
            # A paired protocol corrects drift sample by sample (the gauge is the monitor).
            if (drift is None and not p.protocol.paired and int(config.drift.interval) > 0 and
                    config.drift.action != 'none'):
                ref = space.sample_np(np.random.default_rng(12345), resolutions=p.resolutions[:1])
                drift = measure.DriftMonitor(ref,
                                             p.batch_sizes[0],
                                             protocol=p.protocol,
                                             tolerance=float(config.drift.tolerance),
                                             **net)
            result = measure_key(key)
            store.add_result(key, result, provenance=base_provenance)
            since_check.append(key)
            summary['measured'] += 1
            compile_s.append(result.compile_s)
            lower_s.append(result.lower_s)
            timing_s.append(result.time_s)
            speed = result.stats.get('speed')
            if speed is not None:
                speeds.append(speed)
            progress.update(f'{key.arch_key[:4]} b{key.batch} {result.latency_ms:.2f}ms '
                            f'cv {result.stats["cv"]:.2f} compile {result.compile_s:.1f}s' +
                            ('' if speed is None else f' speed {speed:.2f}'))
            if drift is not None and len(since_check) >= int(config.drift.interval):
                check_drift()
        if drift is not None and since_check:
            check_drift()
        if drift is not None and config.drift.action == 'remeasure' and flagged:
            drifted, _ = drift.check()
            if not drifted:  # Re-measure only once the device is back to its baseline.
                for key in flagged:
                    result = measure_key(key)
                    store.replace(key,
                                  result.latency_ms,
                                  stats=result.stats,
                                  cost=result.cost,
                                  provenance=dict(base_provenance, remeasured=True),
                                  lower_s=result.lower_s,
                                  compile_s=result.compile_s,
                                  time_s=result.time_s,
                                  started_at=result.started_at,
                                  finished_at=result.finished_at)
                    summary['remeasured'] += 1
    except KeyboardInterrupt:
        summary['stopped'] = 'interrupted'
        raise
    finally:
        progress.close()
        elapsed = time.monotonic() - start
        n = summary['measured']
        summary.update({
            'elapsed_s': elapsed,
            'per_minute': 60 * n / elapsed if n and elapsed > 0 else 0.0,
            'compile_s_mean': float(np.mean(compile_s)) if compile_s else None,
            'lower_s_mean': float(np.mean(lower_s)) if lower_s else None,
            'timing_s_mean': float(np.mean(timing_s)) if timing_s else None,
            # Paired protocol: machine speed vs the gauge baseline, per row.
            'speed_quantiles':
                ([float(v) for v in np.quantile(speeds, [0, 0.1, 0.5, 0.9, 1])] if speeds else None
                ),
            'drift_history': drift.history if drift is not None else [],
        })
        csv_path = os.path.join(workdir, 'latency.csv')
        summary['rows_in_csv'] = store.export_ofa_csv(csv_path, fid)
        summary['csv'] = csv_path
        files.write_json(os.path.join(workdir, 'campaign.json'), summary)
        lease.close()
        store.close()
    return summary
