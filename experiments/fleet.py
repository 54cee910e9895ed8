"""Latency campaigns on a fleet of devices: one Ray actor per device, one writer.

``python -m experiments.measure_latency --config.cluster=local|auto|HOST:PORT|ray://HOST:PORT``
runs :func:`run` instead of the single-process loop of
:mod:`experiments.jobs.measure_latency`. The campaign (archs, batch sizes,
shards, protocol) is the same; what changes is who measures:

* One actor per device: CPU actors take ``num_cpus=1`` each (and, with
  ``config.fleet_pin_cores``, pin themselves to a core no other actor on the
  node holds, so two actors never time each other's threads), GPU actors
  (``config.device=gpu``) ``num_gpus=1``. ``config.fleet_size`` actors; 0 =
  one per CPU (GPU) of the cluster.
* Each actor computes its own device fingerprint
  (:func:`ofa_jax.latency.fingerprint.fingerprint`), depthwise implementation,
  protocol and, for a paired protocol, its gauge
  (:class:`ofa_jax.latency.measure.Gauge`). Rows are keyed by the actor's
  fingerprint id, so rows of different devices never mix; actors with the
  same id share one queue (and one gauge baseline, kept in the store's meta
  table as :mod:`ofa_jax.latency.gauges` does for every other job).
* The driver (this process) hands archs out from the queue, a few at a time
  per actor, and is the one writer of the SQLite store: actors never open it.
  Each row is committed as it comes back (with the actor's name, node, pid
  and core in its provenance), so a driver killed at any instant loses
  nothing committed and a rerun measures only what is missing.
* An actor that dies (``ray.exceptions.RayActorError``) has its in-flight
  archs put back at the front of the queue; the campaign continues with the
  others and, while ``config.fleet_restarts`` allows, a replacement actor.

Ray is an optional dependency (``pip install -e '.[cluster]'``); nothing in
``ofa_jax`` imports it. The measurement itself is
:func:`ofa_jax.latency.measure.measure_latency`, as in the single-process job.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import os
import socket
import tempfile
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import ray
from ray import exceptions as ray_exceptions

from experiments import config_fields as cf
from experiments.jobs import measure_latency as campaign
from ofa_jax import depthwise as dw
from ofa_jax import files
from ofa_jax import progress as progress_lib
from ofa_jax import space
from ofa_jax.latency import fingerprint as fp_lib
from ofa_jax.latency import gauges
from ofa_jax.latency import measure
from ofa_jax.latency import store as store_lib

# Archs handed to one actor ahead of time: the next one waits in the actor, so the
# round trip to the driver never leaves the device idle.
PREFETCH = 2
# How long actors may take to be scheduled and to start (import, fingerprint, gauge).
START_TIMEOUT_S = 900.0
# Node-local lock files by which CPU actors claim a core each (released when they die).
CORE_LOCK_DIR = os.path.join(tempfile.gettempdir(), 'ofa_jax_fleet_cores')
# How long an actor waits for a core to free up (its previous holder still dying).
CORE_WAIT_S = 30.0


def _claim_core(wait_s: float = CORE_WAIT_S) -> tuple[int | None, int | None]:
    """Pins this process to an allowed core no other live actor on this node has claimed.

    A core whose last actor is still dying frees up within seconds, so this
    waits up to ``wait_s`` for one before giving up.

    Returns:
      (core, lock fd), or (None, None) when every core stays taken (the process
      then keeps its affinity, and so gets another fingerprint id).
    """
    os.makedirs(CORE_LOCK_DIR, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        for core in fp_lib.affinity():
            fd = os.open(os.path.join(CORE_LOCK_DIR, f'core{core}.lock'),
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            os.sched_setaffinity(0, {core})
            return core, fd
        if time.monotonic() > deadline:
            return None, None
        time.sleep(0.2)


class Worker:
    """One device of the fleet: measures the keys the driver sends; never opens a store.

    Args:
      spec: the campaign's network and protocol: ``name``, ``device`` ('cpu' or
        'gpu'), ``pin_core``, ``microbenchmarks``, ``protocol`` (a
        :class:`measure.Protocol` as a dict), ``dtype``, ``width``,
        ``num_classes``, ``depthwise`` (``'auto'`` resolves for the device).
    """

    def __init__(self, spec: dict[str, Any]):
        self.name = str(spec['name'])
        if spec['device'] == 'cpu':
            jax.config.update('jax_platforms', 'cpu')  # Before any backend starts.
        self.core, self._lock = _claim_core() if spec['pin_core'] else (None, None)
        self.device = fp_lib.resolve_device(spec['device'])
        self.depthwise = dw.resolve(spec['depthwise'], self.device.platform)
        self.fingerprint = fp_lib.fingerprint(self.device,
                                              microbenchmarks=bool(spec['microbenchmarks']))
        self.protocol = measure.Protocol(**spec['protocol'])
        self.net = dict(dtype=spec['dtype'],
                        width=float(spec['width']),
                        num_classes=int(spec['num_classes']),
                        depthwise=self.depthwise)
        self.gauges: dict[int, measure.Gauge] = {}

    def info(self) -> dict[str, Any]:
        """Who this actor is: fingerprint, depthwise, protocol id, host, node, pid, core."""
        return {
            'name': self.name,
            'fingerprint': self.fingerprint,
            'depthwise': self.depthwise,
            'protocol': self.protocol.name,
            'host': socket.gethostname(),
            'node_id': ray.get_runtime_context().get_node_id(),
            'pid': os.getpid(),
            'core': self.core,
        }

    def open_gauge(self, batch: int, baseline_ms: float | None) -> dict[str, Any]:
        """Compiles the gauge at ``batch``; times its baseline unless one is given."""
        gauge = measure.Gauge.build(int(batch),
                                    self.net['dtype'],
                                    self.device,
                                    width=self.net['width'],
                                    num_classes=self.net['num_classes'],
                                    depthwise=self.depthwise,
                                    baseline_ms=baseline_ms)
        self.gauges[int(batch)] = gauge
        return {'arch_key': gauge.arch_key, 'baseline_ms': gauge.baseline_ms}

    def set_baseline(self, batch: int, baseline_ms: float) -> None:
        """Adopts the baseline the store kept (another actor of this device recorded it first)."""
        self.gauges[int(batch)].baseline_ms = float(baseline_ms)

    def measure(self, key: tuple[Any, ...]) -> tuple[measure.LatencyResult, dict[str, float]]:
        """Measures one store key on this actor's device.

        Returns:
          (the :class:`measure.LatencyResult`, {'actor_s': seconds it took here,
          'done_at': wall-clock time it finished}).
        """
        key = store_lib.RowKey(*key)
        own = (self.fingerprint['fingerprint_id'], self.protocol.name, self.depthwise)
        if (key.device, key.protocol, key.depthwise) != own:
            raise ValueError(f'fleet actor {self.name}: key {key} is not for this actor '
                             f'(device, protocol, depthwise = {own})')
        t0 = time.time()
        result = measure.measure_latency(space.from_key(key.arch_key),
                                         key.batch,
                                         device=self.device,
                                         protocol=self.protocol,
                                         gauge=self.gauges.get(key.batch),
                                         **self.net)
        return result, {'actor_s': time.time() - t0, 'done_at': time.time()}

    def ping(self, sent_at: float) -> float:
        """``sent_at`` back (to time a round trip)."""
        return sent_at


_RemoteWorker = ray.remote(max_restarts=0)(Worker)


def _connect(cluster: str) -> bool:
    """Connects to (or starts) Ray; True when this call started it (and should stop it)."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {'include_dashboard': False, 'log_to_driver': False}
    if cluster == 'local':
        kwargs['num_cpus'] = len(fp_lib.affinity())
    else:
        kwargs['address'] = cluster
    try:
        ray.init(**kwargs)
    except Exception as err:  # pylint: disable=broad-except
        # Ray raises ConnectionError, RuntimeError, ValueError, ... for a bad address.
        raise cf.ConfigError(f'config.cluster: cannot connect to Ray at {cluster!r} '
                             f'({type(err).__name__}: {err}); allowed: local, auto, HOST:PORT or '
                             'ray://HOST:PORT of a running cluster') from None
    return True


def fleet_shape(config: ml_collections.ConfigDict) -> tuple[str, int, dict[str, Any]]:
    """(actor device 'cpu' or 'gpu', number of actors, Ray options of one actor).

    Raises:
      ConfigError: a device the fleet cannot use, or more actors than devices.
    """
    device = str(config.device or 'cpu').strip().lower().partition(':')[0]
    if device not in ('cpu', 'gpu'):
        raise cf.ConfigError(f'config.device: {config.device!r}; allowed with config.cluster: '
                             "'' or 'cpu' (CPU actors) or 'gpu' (one actor per GPU)")
    resource = device.upper()
    have = int(ray.cluster_resources().get(resource, 0))
    size = cf.one_int('fleet_size', config.fleet_size, minimum=0) or have
    if size < 1 or size > have:
        raise cf.ConfigError(f'config.fleet_size: {config.fleet_size}; allowed: 1 to {have} '
                             f'(the cluster has {have} {resource}s), or 0 = one actor per '
                             f'{resource}')
    options = {'num_cpus': 1} if device == 'cpu' else {'num_cpus': 1, 'num_gpus': 1}
    return device, size, options


@dataclasses.dataclass
class Slot:
    """One live actor as the driver sees it."""

    name: str
    handle: Any
    info: dict[str, Any]
    fid: str
    provenance: dict[str, Any]
    inflight: dict[Any, store_lib.RowKey] = dataclasses.field(default_factory=dict)
    measured: int = 0


def run(config: ml_collections.ConfigDict,
        workdir: str,
        p: Any,
        *,
        on_row: Callable[[int, list[Any]], None] | None = None) -> dict[str, Any]:
    """Runs (or resumes) the campaign ``p`` on a Ray fleet; see the module docstring.

    Args:
      config: the campaign's config (``experiments/configs/measure_latency.py``).
      workdir: output folder (created): ``latency.csv``, ``campaign.json``.
      p: the campaign's :class:`experiments.jobs.measure_latency.Plan`.
      on_row: called after each committed row with (rows measured so far, the
        live actors' handles) (tests kill an actor from it).

    Returns:
      the summary of the single-process job plus ``fingerprint_ids``,
      ``actors`` (per actor: name, fingerprint id, host, pid, core, rows),
      ``actors_died``, ``actors_restarted``, ``requeued``, ``left`` and
      ``return_ms_mean`` (an actor's result finished -> committed by the driver).
    """
    started = _connect(str(config.cluster))
    try:
        os.makedirs(workdir, exist_ok=True)
        store = cf.open_store(p.store_path)
        exit_stack = contextlib.ExitStack()
        slots: list[Slot] = []
        everyone: list[Any] = []
        try:
            try:
                exit_stack.enter_context(
                    store.writer_lease(f'measure_latency fleet shard {config.shard_index}/'
                                       f'{config.num_shards}'))
            except store_lib.StoreError as err:
                raise cf.ConfigError(f'config.store: {err}') from None
            device, size, options = fleet_shape(config)
            return _campaign(config, workdir, p, store, device, size, options, slots, everyone,
                             on_row)
        finally:
            for handle in everyone:
                with contextlib.suppress(Exception):
                    ray.kill(handle)
            exit_stack.close()
            store.close()
    finally:
        if started:
            ray.shutdown()


def _campaign(config, workdir, p, store, device, size, options, slots, everyone, on_row):
    """The driver loop of :func:`run` (store leased, Ray connected)."""
    spec = {
        'device': device,
        'pin_core': bool(config.fleet_pin_cores) and device == 'cpu',
        'microbenchmarks': bool(config.microbenchmarks),
        'protocol': p.protocol.to_dict(),
        'dtype': p.dtype,
        'width': p.width,
        'num_classes': p.num_classes,
        'depthwise': p.depthwise,
    }
    queues: dict[str, collections.deque] = {}
    summary: dict[str, Any] = {
        'cluster': str(config.cluster),
        'store': p.store_path,
        'fingerprint_ids': [],
        'jobs': 0,
        'already_done': 0,
        'measured': 0,
        'duplicates': 0,
        'drift_checks': 0,
        'drift_flagged': 0,
        'remeasured': 0,
        'stopped': 'done',
        'protocol': p.protocol.name,
        'actors_died': 0,
        'actors_restarted': 0,
        'requeued': 0,
    }
    actors: list[dict[str, Any]] = []
    restarts_left = cf.one_int('fleet_restarts', config.fleet_restarts, minimum=0)
    counter = [0]

    def jobs_for(fid: str, depthwise: str) -> list[store_lib.RowKey]:
        out = []
        for i, (arch, batch) in enumerate((a, b) for a in p.archs for b in p.batch_sizes):
            if i % int(config.num_shards) == int(config.shard_index):
                out.append(
                    store_lib.RowKey(fid, space.arch_key(arch), batch, p.dtype, p.protocol.name,
                                     p.width, p.num_classes, depthwise))
        return out

    def start(n: int) -> list[Slot]:
        """Starts ``n`` actors; registers their devices and gauges; returns the live ones."""
        handles = []
        for _ in range(n):
            name = f'fleet-{counter[0]}'
            counter[0] += 1
            handle = _RemoteWorker.options(**options).remote(dict(spec, name=name))
            everyone.append(handle)
            handles.append((name, handle, handle.info.remote()))
        new = []
        for name, handle, ref in handles:
            try:
                info = ray.get(ref, timeout=START_TIMEOUT_S)
            except ray_exceptions.RayActorError as err:
                summary['actors_died'] += 1
                progress.note(f'fleet: actor {name} died while starting ({type(err).__name__})')
                continue
            fp = info['fingerprint']
            fid = store.add_device(fp)
            if fid not in queues:
                jobs = jobs_for(fid, info['depthwise'])
                queues[fid] = collections.deque(store.pending(jobs))
                summary['fingerprint_ids'].append(fid)
                summary['jobs'] += len(jobs)
                summary['already_done'] += len(jobs) - len(queues[fid])
                progress.total += len(queues[fid])
            provenance = campaign.row_provenance(fid, fp, p.protocol, info['depthwise'],
                                                 int(config.seed), info['pid'])
            provenance.update(actor=name,
                              node_id=info['node_id'],
                              core=info['core'],
                              driver=f'{socket.gethostname()}:{os.getpid()}')
            slot = Slot(name, handle, info, fid, provenance)
            new.append(slot)
            actors.append({
                'name': name,
                'fingerprint_id': fid,
                'host': info['host'],
                'pid': info['pid'],
                'core': info['core'],
                'rows': 0,
                'died': False
            })
        if p.protocol.paired:
            new = open_gauges(new)
        return new

    def open_gauges(new: list[Slot]) -> list[Slot]:
        """Each actor's gauge per batch, on the baseline kept in the store (first one wins)."""
        asked = []
        for slot in new:
            for batch in p.batch_sizes:
                key = gauges.gauge_meta_key(slot.fid, batch, p.dtype, p.width, p.num_classes,
                                            slot.info['depthwise'])
                stored = store.get_meta(key)
                ref = slot.handle.open_gauge.remote(batch,
                                                    None if stored is None else float(stored))
                asked.append((slot, batch, key, stored, ref))
        dead = set()
        for slot, batch, key, stored, ref in asked:
            if slot.name in dead:
                continue
            try:
                got = ray.get(ref, timeout=START_TIMEOUT_S)
            except ray_exceptions.RayActorError:
                dead.add(slot.name)
                summary['actors_died'] += 1
                progress.note(f'fleet: actor {slot.name} died while timing its gauge')
                continue
            if stored is None:
                kept = float(store.set_meta(key, repr(got['baseline_ms'])))
                if kept != got['baseline_ms']:
                    slot.handle.set_baseline.remote(batch, kept)  # Runs before its next task.
                got['baseline_ms'] = kept
            summary.setdefault('gauge', {
                'arch_key': got['arch_key'],
                'baseline_ms': got['baseline_ms']
            })
        return [s for s in new if s.name not in dead]

    def fill(slot: Slot) -> None:
        queue = queues[slot.fid]
        while not stopping[0] and queue and len(slot.inflight) < PREFETCH:
            key = queue.popleft()
            slot.inflight[slot.handle.measure.remote(tuple(key))] = key

    def lost(slot: Slot, err: BaseException) -> None:
        """An actor died: its in-flight keys go back to the front of its queue."""
        keys = list(slot.inflight.values())
        slot.inflight.clear()
        queues[slot.fid].extendleft(reversed(keys))
        summary['requeued'] += len(keys)
        summary['actors_died'] += 1
        slots.remove(slot)
        for a in actors:
            if a['name'] == slot.name:
                a['died'] = True
        with contextlib.suppress(Exception):
            ray.kill(slot.handle)
        progress.note(f'fleet: actor {slot.name} died ({type(err).__name__}); {len(keys)} '
                      'arch(s) back in the queue')

    def short_handed() -> bool:
        """Whether a replacement actor is needed: fewer than asked, or a queue without one."""
        live = {s.fid for s in slots}
        orphaned = any(q for fid, q in queues.items() if fid not in live)
        return orphaned or (len(slots) < size and any(queues.values()))

    stopping = [False]
    progress = progress_lib.Progress(0,
                                     enabled=bool(config.progress),
                                     time_budget_s=float(config.time_budget_s))
    progress.total = 0  # Grows as each device's pending archs are known.
    budget = float(config.time_budget_s)
    compile_s, lower_s, timing_s, speeds, return_ms = [], [], [], [], []
    start_time = time.monotonic()
    try:
        slots.extend(start(size))
        start_time = time.monotonic()
        while True:
            if budget > 0 and time.monotonic() - start_time > budget and not stopping[0]:
                stopping[0] = True
                summary['stopped'] = 'time_budget'
            while restarts_left > 0 and not stopping[0] and short_handed():
                restarts_left -= 1
                summary['actors_restarted'] += 1
                slots.extend(start(1))
            for slot in slots:
                fill(slot)
            owner = {ref: slot for slot in slots for ref in slot.inflight}
            if not owner:
                break
            ready, _ = ray.wait(list(owner), num_returns=1)
            ref = ready[0]
            slot = owner[ref]
            try:
                result, timing = ray.get(ref)
            except ray_exceptions.RayActorError as err:
                lost(slot, err)
                continue
            key = slot.inflight.pop(ref)
            if store.add_result(key, result, provenance=slot.provenance):
                summary['measured'] += 1
                slot.measured += 1
                for a in actors:
                    if a['name'] == slot.name:
                        a['rows'] += 1
            else:
                summary['duplicates'] += 1
            return_ms.append(1e3 * max(0.0, time.time() - timing['done_at']))
            compile_s.append(result.compile_s)
            lower_s.append(result.lower_s)
            timing_s.append(result.time_s)
            speed = result.stats.get('speed')
            if speed is not None:
                speeds.append(speed)
            progress.update(f'{slot.name} {key.arch_key[:4]} b{key.batch} '
                            f'{result.latency_ms:.2f}ms compile {result.compile_s:.1f}s')
            if on_row is not None:
                on_row(summary['measured'], [s.handle for s in slots])
    except KeyboardInterrupt:
        summary['stopped'] = 'interrupted'
        raise
    finally:
        progress.close()
        left = sum(len(q) for q in queues.values()) + sum(len(s.inflight) for s in slots)
        if left and summary['stopped'] == 'done':
            summary['stopped'] = 'actors_lost'
        elapsed = time.monotonic() - start_time
        n = summary['measured']
        mean = lambda xs: float(np.mean(xs)) if xs else None
        summary.update({
            'fingerprint_id': (summary['fingerprint_ids'] or [None])[0],
            'left': left,
            'actors': actors,
            'elapsed_s': elapsed,
            'per_minute': 60 * n / elapsed if n and elapsed > 0 else 0.0,
            'compile_s_mean': mean(compile_s),
            'lower_s_mean': mean(lower_s),
            'timing_s_mean': mean(timing_s),
            'return_ms_mean': mean(return_ms),
            'speed_quantiles':
                ([float(v) for v in np.quantile(speeds, [0, 0.1, 0.5, 0.9, 1])] if speeds else None
                ),
            'drift_history': [],
        })
        csv_path = os.path.join(workdir, 'latency.csv')
        fids = summary['fingerprint_ids']
        summary['rows_in_csv'] = store.export_ofa_csv(csv_path, fids[0] if len(fids) == 1 else None)
        summary['csv'] = csv_path
        files.write_json(os.path.join(workdir, 'campaign.json'), summary)
    return summary


def round_trip_ms(handle: Any, n: int = 20) -> float:
    """Median ms of an empty call to an actor and back (the fleet's dispatch overhead)."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        ray.get(handle.ping.remote(t0))
        times.append(1e3 * (time.perf_counter() - t0))
    return float(np.median(times))
