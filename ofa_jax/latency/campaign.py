"""A measurement campaign: sample archs, measure each on one device, store every row.

:func:`run` is what ``experiments/measure_latency.py`` calls. It is
restartable: the list of jobs is a pure function of the config (seeded
sampling), the store is keyed by (device, arch, batch, dtype, protocol, ...),
and only pending jobs are measured, so Ctrl-C or SIGKILL at any moment
followed by the same command finishes the campaign with every row present
once. Every run ends by writing ``WORKDIR/latency.csv`` (OFA CSV) with every
row of this device in the store.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Sequence

import ml_collections
import numpy as np

from ofa_jax import errors
from ofa_jax import space
from ofa_jax.latency import fingerprint as fp_lib
from ofa_jax.latency import measure
from ofa_jax.latency import store as store_lib

DRIFT_ACTIONS = ('flag', 'remeasure', 'none')

ConfigError = errors.ConfigError


def parse_int_list(name: str, value: Any, allowed: Sequence[int] | None = None) -> tuple[int, ...]:
    """Parses ``'128,160'``, ``'128-224'`` (step 4 for resolutions), ``128`` or a sequence.

    Raises:
      ConfigError: naming the field, the bad value and the allowed values.
    """
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace(' ', ',').split(',') if p.strip()]
    elif isinstance(value, (int, np.integer)):
        parts = [value]
    else:
        parts = list(value)
    try:
        out = []
        for p in parts:
            if isinstance(p, str) and '-' in p.strip('-'):  # 'A-B': A to B step 4 / 1.
                lo, hi = (int(v) for v in p.split('-'))
                out.extend(range(lo, hi + 1, 4 if name == 'resolutions' else 1))
            else:
                out.append(int(p))
        out = tuple(out)
    except (TypeError, ValueError):
        raise ConfigError(f'config.{name}: {value!r} is not a comma-separated list of integers '
                          f'(e.g. --config.{name}=128,160)') from None
    if not out:
        raise ConfigError(f'config.{name}: empty; give at least one value')
    if allowed is not None:
        bad = [v for v in out if v not in allowed]
        if bad:
            raise ConfigError(f'config.{name}: {bad} not allowed; allowed: multiples of 4 in '
                              f'[{allowed[0]}, {allowed[-1]}]' if name == 'resolutions' else
                              f'config.{name}: {bad} not allowed; allowed: {tuple(allowed)}')
    elif any(v < 1 for v in out):
        raise ConfigError(f'config.{name}: {out} must all be >= 1')
    return tuple(dict.fromkeys(out))


def protocol_from_config(cfg: Any) -> measure.Protocol:
    """Builds a :class:`measure.Protocol` from a config section (ConfigError on bad values)."""
    fields = {f.name for f in dataclasses.fields(measure.Protocol)}
    values = {k: v for k, v in dict(cfg).items() if k in fields}
    unknown = sorted(set(dict(cfg)) - fields)
    if unknown:
        raise ConfigError(f'config.protocol: unknown field(s) {unknown}; known: {sorted(fields)}')
    try:
        return measure.Protocol(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f'config.protocol: {err}') from None


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
    records its baseline in the store; later calls (resumed campaigns, the
    lookup-table build, verification runs, other processes) reuse it, so every
    paired latency in the store is on one scale.
    """
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


def plan(config: ml_collections.ConfigDict, workdir: str) -> Plan:
    """Validates the config and lists the campaign's archs (pure; no device work)."""
    resolutions = parse_int_list('resolutions', config.resolutions, space.RESOLUTIONS)
    batch_sizes = parse_int_list('batch_sizes', config.batch_sizes)
    if int(config.num_archs) < 1:
        raise ConfigError(f'config.num_archs: {config.num_archs} must be >= 1')
    if not 0 <= int(config.shard_index) < int(config.num_shards):
        raise ConfigError(f'config.shard_index: {config.shard_index} must be in [0, '
                          f'config.num_shards={config.num_shards})')
    if config.dtype not in measure.DTYPES:
        raise ConfigError(f'config.dtype: {config.dtype!r} not one of {tuple(measure.DTYPES)}')
    if float(config.width) not in space.WIDTHS:
        raise ConfigError(f'config.width: {config.width} not one of {space.WIDTHS}')
    if int(config.num_classes) < 1:
        raise ConfigError(f'config.num_classes: {config.num_classes} must be >= 1')
    if config.drift.action not in DRIFT_ACTIONS:
        raise ConfigError(f'config.drift.action: {config.drift.action!r} not one of '
                          f'{DRIFT_ACTIONS}')
    try:
        from ofa_jax import depthwise as dw  # pylint: disable=g-import-not-at-top
        depthwise = dw.resolve(config.depthwise)
    except ImportError:
        depthwise = str(config.depthwise)
    except ValueError as err:
        raise ConfigError(f'config.depthwise: {err}') from None
    protocol = protocol_from_config(config.protocol)
    # Arch i depends only on (seed, i): raising num_archs extends a campaign (the first
    # archs stay the same, so a rerun resumes) and shards agree on the list.
    sampled = [
        space.sample_np(np.random.default_rng([int(config.seed), i]), resolutions=resolutions)
        for i in range(int(config.num_archs))
    ]
    archs = list({space.arch_key(a): a for a in sampled}.values())  # Dedupe, keep order.
    store_path = config.store or os.path.join(workdir, 'latency.sqlite')
    return Plan(archs=archs,
                batch_sizes=batch_sizes,
                resolutions=resolutions,
                protocol=protocol,
                width=float(config.width),
                num_classes=int(config.num_classes),
                dtype=str(config.dtype),
                depthwise=depthwise,
                store_path=store_path)


def set_affinity(spec: str) -> list[int]:
    """Restricts this process to some cores before XLA starts its threads.

    ``spec`` is '' (leave as is), 'N' (the first N allowed cores) or a list
    '0,2'. Returns the cores in the affinity afterwards.
    """
    if not spec:
        return fp_lib.affinity()
    allowed = fp_lib.affinity()
    spec = str(spec)
    if ',' in spec:
        cores = parse_int_list('cpu_affinity', spec)
        if any(c not in allowed for c in cores):
            raise ConfigError(f'config.cpu_affinity: cores {cores} not all in this process\'s '
                              f'affinity {allowed}')
    else:
        n = parse_int_list('cpu_affinity', spec)[0]
        if n > len(allowed):
            raise ConfigError(f'config.cpu_affinity: {n} cores asked, {len(allowed)} allowed')
        cores = tuple(allowed[:n])
    os.sched_setaffinity(0, cores)
    return fp_lib.affinity()


class Progress:
    """Plain-text progress line on stderr: done/total, rate, ETA, last latency.

    With ``time_budget_s`` (> 0) the ETA is the earlier of the end of the work
    and the end of the budget, and says which (``ETA 4.2m (budget)``).
    """

    def __init__(self, total: int, enabled: bool = True, time_budget_s: float = 0.0):
        self.total = max(total, 1)
        self.enabled = enabled
        self.time_budget_s = float(time_budget_s)
        self.start = time.monotonic()
        self.done = 0
        self.tty = sys.stderr.isatty()

    def update(self, note: str = '') -> None:
        self.done += 1
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        rate = self.done / elapsed * 60 if elapsed > 0 else 0.0
        eta = (self.total - self.done) / (rate / 60) if rate > 0 else float('inf')
        eta_s = f'{eta / 60:.1f}m' if np.isfinite(eta) else '?'
        if self.time_budget_s > 0 and self.time_budget_s - elapsed < eta:
            eta_s = f'{max(self.time_budget_s - elapsed, 0.0) / 60:.1f}m (budget)'
        bar = '#' * int(20 * self.done / self.total)
        line = (f'[{bar:<20}] {self.done}/{self.total} {100 * self.done / self.total:5.1f}% '
                f'{rate:.1f}/min ETA {eta_s} {note}')
        sys.stderr.write(('\r' + line) if self.tty else line + '\n')
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write('\n')


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
    set_affinity(config.cpu_affinity)  # First: XLA's threads inherit it.
    p = plan(config, workdir)
    os.makedirs(workdir, exist_ok=True)
    try:
        device = fp_lib.resolve_device(config.device)
    except ValueError as err:
        raise ConfigError(f'config.device: {err}') from None
    if config.depthwise == 'auto':  # The measured device's default, not the host's backend.
        from ofa_jax import depthwise as dw  # pylint: disable=g-import-not-at-top
        p.depthwise = dw.default_depthwise(device.platform)
    try:
        store = store_lib.LatencyStore(p.store_path)
    except store_lib.StoreError as err:
        raise ConfigError(f'config.store: {err}') from None
    fp = fp_lib.fingerprint(device, microbenchmarks=bool(config.microbenchmarks))
    fid = store.add_device(fp)
    base_provenance = {
        'fingerprint_id': fid,
        'hostname': fp.get('hostname'),
        'affinity': fp.get('affinity'),
        'xla_flags': fp.get('xla_flags'),
        'jax_version': fp.get('jax_version'),
        'jaxlib_version': fp.get('jaxlib_version'),
        'device_kind': fp.get('device_kind'),
        'protocol': p.protocol.to_dict(),
        'depthwise': p.depthwise,
        'seed': int(config.seed),
        'pid': os.getpid(),
    }
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
    progress = Progress(len(pending),
                        enabled=bool(config.progress),
                        time_budget_s=float(config.time_budget_s))
    drift = None
    since_check: list[store_lib.RowKey] = []
    flagged: list[store_lib.RowKey] = []
    budget = float(config.time_budget_s)

    gauge = None
    if p.protocol.paired and pending:
        gauge = open_gauge(store,
                           fid,
                           batch=p.batch_sizes[0],
                           dtype=p.dtype,
                           device=device,
                           width=p.width,
                           num_classes=p.num_classes,
                           depthwise=p.depthwise)
        summary['gauge'] = {'arch_key': gauge.arch_key, 'baseline_ms': gauge.baseline_ms}
    gauges = {p.batch_sizes[0]: gauge}

    def gauge_for(batch: int) -> measure.Gauge | None:
        if gauge is not None and batch not in gauges:
            gauges[batch] = open_gauge(store,
                                       fid,
                                       batch=batch,
                                       dtype=p.dtype,
                                       device=device,
                                       width=p.width,
                                       num_classes=p.num_classes,
                                       depthwise=p.depthwise)
        return gauges.get(batch)

    def measure_key(key: store_lib.RowKey) -> measure.LatencyResult:
        return measure.measure_latency(space.from_key(key.arch_key),
                                       key.batch,
                                       p.dtype,
                                       device,
                                       p.protocol,
                                       width=p.width,
                                       num_classes=p.num_classes,
                                       depthwise=p.depthwise,
                                       gauge=gauge_for(key.batch))

    def check_drift() -> bool:
        drifted, change = drift.check()
        summary['drift_checks'] += 1
        if drifted:
            store.set_drift(since_check)
            summary['drift_flagged'] += len(since_check)
            flagged.extend(since_check)
            progress.enabled and sys.stderr.write(
                f'\ndrift: reference changed {100 * change:+.1f}%; flagged '
                f'{len(since_check)} row(s)\n')
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
                                             p.dtype,
                                             device,
                                             p.protocol,
                                             width=p.width,
                                             num_classes=p.num_classes,
                                             depthwise=p.depthwise,
                                             tolerance=float(config.drift.tolerance))
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
        with open(os.path.join(workdir, 'campaign.json'), 'w') as f:
            json.dump(summary, f, indent=1, default=str)
        store.close()
    return summary
