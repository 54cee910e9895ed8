"""Accuracy of many sub-networks with the masked supernet, sharded over devices and hosts.

:mod:`ofa_jax.accuracy_data` extracts each static sub-network, so every
architecture is a new program to compile. Here the masked
:class:`~ofa_jax.supernet.SuperNet` takes the architecture as an argument, so
ONE compiled calibration step and ONE compiled evaluation step (per input
shape) serve every sub-network::

    mesh = sharded_accuracy.data_mesh()              # all devices of all hosts
    ev = sharded_accuracy.ShardedEvaluator(net, variables, mesh)
    records = sharded_accuracy.evaluate_archs(ev, archs, train_source=train,
                                              eval_source=val, store='acc.jsonl')

For each architecture, BatchNorm is re-calibrated exactly as
:func:`ofa_jax.accuracy_data.recalibrate_bn` does it: each calibration batch
runs in train mode, every BatchNorm reports the batch's mean and biased
variance, and the new statistics are their batch-size weighted average.
The supernet's BatchNorm reports the running value for masked-off channels
(inactive hidden channels, skipped blocks), so those keep their statistics,
as OFA's dynamic BatchNorm does. The batches are the ones
:func:`accuracy_data.build_dataset` uses (same seeded calibration draw, same
padding of the last batch by its first example).

Sharding: a 1-d :class:`jax.sharding.Mesh` over the devices (axis
``'data'``); images and labels are split along the batch axis with a
:class:`~jax.sharding.NamedSharding`, variables and the architecture are
replicated. Batch statistics are means over the whole global batch (XLA
inserts the cross-device reductions), so the result does not depend on the
number of devices beyond float rounding. Over several hosts
(:func:`initialize_distributed`, then every host runs the same program), each
host loads and preprocesses only the rows of each global batch that its own
devices hold and assembles the global array with
:func:`jax.make_array_from_process_local_data`.

Results go to an :class:`AccuracyStore` (JSON lines keyed by
:func:`ofa_jax.space.arch_key`): a rerun skips archs already there, and a
kill loses at most the row being written.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ofa_jax import accuracy_data, files, layers, space, supernet

AXIS = 'data'
Batch = tuple[np.ndarray, np.ndarray]  # (images float32[b, r, r, 3], labels int32[b]).
METHOD = 'masked_supernet'


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           local_device_ids: Sequence[int] | None = None) -> None:
    """Joins this process to a multi-host JAX job (``jax.distributed.initialize``).

    Call it only when asked for (before any other JAX call). With no
    arguments, JAX finds the coordinator itself on Cloud TPU VMs and under
    SLURM/Open MPI; elsewhere pass all of ``coordinator_address``
    (``host:port`` of process 0), ``num_processes`` and ``process_id``. A
    second call in the same process does nothing.
    """
    if jax.distributed.is_initialized():
        return
    kwargs = {}
    if coordinator_address is not None:
        kwargs['coordinator_address'] = coordinator_address
    if num_processes is not None:
        kwargs['num_processes'] = int(num_processes)
    if process_id is not None:
        kwargs['process_id'] = int(process_id)
    if local_device_ids is not None:
        kwargs['local_device_ids'] = list(local_device_ids)
    jax.distributed.initialize(**kwargs)


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-d mesh with axis ``'data'`` over ``devices`` (default: every device of every host)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError('data_mesh: got no devices')
    return Mesh(np.asarray(devices, dtype=object), (AXIS,))


def replicate(tree: Any, sharding: NamedSharding) -> Any:
    """Host values (the same on every host) -> global jax arrays with a replicated ``sharding``."""

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(put, tree)


def host_value(x: jax.Array) -> np.ndarray:
    """The value of a fully replicated global array, read from this host's first shard."""
    return np.asarray(x.addressable_data(0))


class ShardedEvaluator:
    """Re-calibrates and evaluates sub-networks of one supernet with batch-sharded data.

    Attributes:
      model: the :class:`~ofa_jax.supernet.SuperNet`.
      mesh: the data mesh.
      trace_counts: ``Counter`` of traces per ``(step, input shape)``, where
        step is ``'calibrate'``, ``'evaluate'`` or ``'finalize'`` (each
        should be 1 however many archs ran: the arch is a traced argument).
    """

    def __init__(self,
                 model: supernet.SuperNet,
                 variables: Mapping[str, Any],
                 mesh: Mesh | None = None):
        """Args: the supernet, its variables (``params``, ``batch_stats``), the mesh."""
        if 'batch_stats' not in variables:
            raise ValueError('ShardedEvaluator: variables have no batch_stats to re-calibrate')
        self.model = model
        self.mesh = data_mesh() if mesh is None else mesh
        self.trace_counts: collections.Counter = collections.Counter()
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec(AXIS))
        host = jax.tree_util.tree_map(np.asarray, dict(variables))
        self.variables = replicate(host, self.replicated)
        self._zero_sums = replicate(jax.tree_util.tree_map(np.zeros_like, host['batch_stats']),
                                    self.replicated)
        rep, bat = self.replicated, self.batch_sharding
        self._calibrate = jax.jit(self._calibrate_step,
                                  in_shardings=(rep, rep, bat, rep),
                                  out_shardings=rep)
        self._finalize = jax.jit(self._finalize_step,
                                 in_shardings=(rep, rep, rep),
                                 out_shardings=rep)
        self._evaluate = jax.jit(self._evaluate_step,
                                 in_shardings=(rep, bat, bat, rep),
                                 out_shardings=rep)

    @property
    def num_devices(self) -> int:
        """Devices in the mesh (all hosts)."""
        return int(self.mesh.devices.size)

    # Traced steps (a Python counter records each trace).
    def _calibrate_step(self, variables, sums, x, arch):
        self.trace_counts['calibrate', x.shape] += 1
        _, upd = self.model.apply(variables,
                                  x,
                                  arch,
                                  train=True,
                                  mutable=['batch_stats', layers.BATCH_MOMENTS])
        moments = accuracy_data._one_call(upd[layers.BATCH_MOMENTS])
        b = x.shape[0]
        return jax.tree_util.tree_map(lambda s, m: s + b * m, sums, moments)

    def _finalize_step(self, variables, sums, n):
        self.trace_counts['finalize', ()] += 1
        new = flax.traverse_util.flatten_dict(jax.tree_util.tree_map(lambda s: s / n, sums))
        stats = flax.traverse_util.flatten_dict(variables['batch_stats'])
        stats.update({k: v for k, v in new.items() if k in stats})
        return dict(variables, batch_stats=flax.traverse_util.unflatten_dict(stats))

    def _evaluate_step(self, variables, x, y, arch):
        self.trace_counts['evaluate', x.shape] += 1
        logits = self.model.apply(variables, x, arch)
        valid = y >= 0
        hits = jnp.sum((jnp.argmax(logits, -1) == y) & valid, dtype=jnp.int32)
        return hits, jnp.sum(valid, dtype=jnp.int32)

    # Host side.
    def local_rows(self, global_batch: int) -> slice:
        """The rows of a global batch that this host's devices hold (contiguous)."""
        if global_batch % self.num_devices:
            raise ValueError(f'batch_size: value {global_batch} must be a multiple of the '
                             f'{self.num_devices} devices of the mesh')
        index_map = self.batch_sharding.addressable_devices_indices_map((global_batch,))
        spans = sorted({(s[0].start or 0, global_batch if s[0].stop is None else s[0].stop)
                        for s in index_map.values()})
        for (_, stop), (start, _) in zip(spans, spans[1:]):
            if start != stop:
                raise ValueError(f'this host holds rows {spans} of the batch, not one '
                                 'contiguous block; order the mesh devices by host')
        return slice(spans[0][0], spans[-1][1])

    def shard_batch(self, x_local: np.ndarray, y_local: np.ndarray,
                    global_batch: int) -> tuple[jax.Array, jax.Array]:
        """This host's rows of a batch -> global batch-sharded (images, labels)."""
        x = jax.make_array_from_process_local_data(self.batch_sharding, x_local,
                                                   (global_batch,) + x_local.shape[1:])
        y = jax.make_array_from_process_local_data(self.batch_sharding, y_local, (global_batch,))
        return x, y

    def recalibrate(self, arch: space.Arch, batches: Iterable[np.ndarray], global_batch: int):
        """Variables with BatchNorm statistics re-calibrated for ``arch`` (replicated).

        ``batches`` yields this host's rows (:meth:`local_rows`) of each
        calibration batch of ``global_batch`` images.
        """
        arch = replicate(space.to_numpy(arch), self.replicated)
        sums, n = self._zero_sums, 0
        for x_local in batches:
            x = jax.make_array_from_process_local_data(self.batch_sharding, x_local,
                                                       (global_batch,) + x_local.shape[1:])
            sums = self._calibrate(self.variables, sums, x, arch)
            n += global_batch
        if n == 0:
            raise ValueError('recalibrate: no calibration batches')
        return self._finalize(self.variables, sums, replicate(np.float32(n), self.replicated))

    def accuracy(self, variables: Any, arch: space.Arch, batches: Iterable[Batch],
                 global_batch: int) -> tuple[float, int]:
        """Top-1 accuracy of ``arch``: (accuracy, examples) over the global batches.

        ``batches`` yields this host's rows of each eval batch (images,
        labels); labels -1 (padding) never count.
        """
        arch = replicate(space.to_numpy(arch), self.replicated)
        outs = [
            self._evaluate(variables, *self.shard_batch(x, y, global_batch), arch)
            for x, y in batches
        ]
        hits = sum(int(host_value(h)) for h, _ in outs)
        count = sum(int(host_value(c)) for _, c in outs)
        return (hits / count if count else float('nan')), count


# ---------------------------------------------------------------------------
# The resumable accuracy dataset.


class AccuracyStore:
    """An (arch, accuracy) dataset in a JSON-lines file, one row per sub-network.

    Each row is ``{"arch_key", "arch" (OFA dict), "accuracy", "num_examples",
    "config"}``; ``config`` records how it was measured, and every row of one
    file must have the same one (mixing settings in one dataset is an error).
    A row is appended with one ``write`` on an ``O_APPEND`` descriptor and
    fsynced, so a kill loses at most the row in flight; a torn last line (no
    newline, or not JSON) left by such a kill is dropped when the file is
    opened by rewriting the good rows atomically (:func:`ofa_jax.files.write_text`).
    A bad line before the last one is corruption, not a kill: opening fails.
    """

    def __init__(self, path: str | os.PathLike):
        """Opens (or, on the first :meth:`add`, creates) the store at ``path``."""
        self.path = os.fspath(path)
        self._rows: dict[str, dict[str, Any]] = {}
        self.repaired = False
        if os.path.exists(self.path):
            self._load()

    def _load(self) -> None:
        with open(self.path, 'rb') as f:
            data = f.read()
        lines = data.split(b'\n')
        torn = lines.pop()  # b'' when the file ends with a newline.
        good = []
        for i, line in enumerate(lines):
            row = self._parse(line)
            if row is None:
                if i == len(lines) - 1 and not torn:
                    torn = line  # a complete-looking but unparsable last line.
                    break
                raise ValueError(f'accuracy store {self.path}: line {i + 1} is not a JSON row '
                                 'with arch_key and accuracy; the file is corrupt')
            good.append(line)
            self._rows[row['arch_key']] = row
        if torn.strip():
            text = b''.join(line + b'\n' for line in good).decode('utf-8')
            files.write_text(self.path, text)
            self.repaired = True

    @staticmethod
    def _parse(line: bytes) -> dict[str, Any] | None:
        try:
            row = json.loads(line.decode('utf-8'))
        except (UnicodeDecodeError, ValueError):
            return None
        if not isinstance(row, dict) or not isinstance(row.get('arch_key'), str):
            return None
        if 'accuracy' not in row:
            return None
        return row

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def keys(self) -> list[str]:
        """Arch keys in the store, in file order."""
        return list(self._rows)

    def get(self, key: str) -> dict[str, Any] | None:
        """The row of ``key`` (or None)."""
        return self._rows.get(key)

    def rows(self) -> list[dict[str, Any]]:
        """Every row, in file order."""
        return list(self._rows.values())

    def check_config(self, config: Mapping[str, Any]) -> None:
        """Raises ValueError if the store's rows were measured with another ``config``."""
        want = json.loads(json.dumps(dict(config), default=files.json_default))
        for row in self._rows.values():
            if row.get('config') != want:
                raise ValueError(f'accuracy store {self.path} holds rows measured with config '
                                 f'{row.get("config")}, not {want}; use another file')

    def add(self, record: accuracy_data.AccuracyRecord, config: Mapping[str, Any]) -> dict:
        """Appends one row (durable when this returns); a key already present is an error."""
        key = space.arch_key(space.from_ofa_dict(record.arch))
        if key in self._rows:
            raise ValueError(f'accuracy store {self.path} already has {key}')
        row = {
            'arch_key': key,
            'arch': record.arch,
            'accuracy': record.accuracy,
            'num_examples': record.num_examples,
            'config': dict(config),
        }
        line = json.dumps(files._finite(row), default=files.json_default, allow_nan=False)
        data = (line + '\n').encode('utf-8')
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(f'accuracy store {self.path}: short write ({written} of {len(data)})')
            os.fsync(fd)
        finally:
            os.close(fd)
        row = json.loads(line)
        self._rows[key] = row
        return row

    def records(self) -> list[accuracy_data.AccuracyRecord]:
        """Every row as an :class:`~ofa_jax.accuracy_data.AccuracyRecord`."""
        return [_record(r) for r in self.rows()]


def _record(row: Mapping[str, Any]) -> accuracy_data.AccuracyRecord:
    acc = row['accuracy']
    return accuracy_data.AccuracyRecord(arch=row['arch'],
                                        accuracy=float('nan') if acc is None else float(acc),
                                        num_examples=int(row['num_examples']))


def _broadcast_done(done: np.ndarray) -> np.ndarray:
    """Process 0's ``done`` mask on every host (identity on one host)."""
    if jax.process_count() == 1:
        return done
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.broadcast_one_to_all(done.astype(np.int32))).astype(bool)


def evaluate_archs(evaluator: ShardedEvaluator,
                   archs: Sequence[space.Arch],
                   *,
                   train_source: Any,
                   eval_source: Any,
                   calib_batches: int = 4,
                   batch_size: int = 32,
                   num_eval: int | None = None,
                   seed: int = 0,
                   image_size: int | None = None,
                   store: str | os.PathLike | AccuracyStore | None = None,
                   config: Mapping[str, Any] | None = None,
                   cache_images: bool = False,
                   on_record: Callable[[int, accuracy_data.AccuracyRecord], None] | None = None,
                   image_key: str = 'image',
                   label_key: str = 'label') -> list[accuracy_data.AccuracyRecord]:
    """Re-calibrates BatchNorm and measures top-1 accuracy of each arch; optionally stores rows.

    Every host calls this with the same arguments. With ``store``, archs
    already in it are skipped (process 0 reads the file and tells the other
    hosts) and each new result is appended as soon as it is measured, by
    process 0 only.

    Args:
      evaluator: the :class:`ShardedEvaluator` (supernet, variables, mesh).
      archs: architectures (host side) to evaluate; duplicates run once.
      train_source: random-access calibration source (``tfds.data_source``).
      eval_source: random-access source to measure accuracy on.
      calib_batches: calibration batches per arch.
      batch_size: global batch size (a multiple of the mesh's devices).
      num_eval: evaluate the first ``num_eval`` examples (default: all).
      seed: picks the calibration examples (as :func:`accuracy_data.build_dataset`).
      image_size: feed images of this size instead of each arch's resolution.
      store: path of an :class:`AccuracyStore` (or the store) to resume from and append to.
      config: extra fields recorded with each row (e.g. checkpoint, dataset names).
      cache_images: keep this host's preprocessed batches in memory per image
        size (fast for many archs on a small eval set; memory grows with it).
      on_record: called as ``on_record(i, record)`` after each new arch.
      image_key, label_key: feature names in the sources.

    Returns:
      One :class:`~ofa_jax.accuracy_data.AccuracyRecord` per distinct arch,
      in order (stored rows for archs that were already there; hosts other
      than process 0 do not read the store and return only the new ones).
    """
    if batch_size < 1 or calib_batches < 1:
        raise ValueError('batch_size and calib_batches must be at least 1')
    unique: dict[str, space.Arch] = {}
    for a in archs:
        unique.setdefault(space.arch_key(a), a)
    keys = list(unique)
    full_config = {
        'method': METHOD,
        'width': float(evaluator.model.net.width),
        'num_classes': int(evaluator.model.net.num_classes),
        'calib_batches': int(calib_batches),
        'batch_size': int(batch_size),
        'num_eval': None if num_eval is None else int(num_eval),
        'seed': int(seed),
        'image_size': None if image_size is None else int(image_size),
        **dict(config or {}),
    }
    writer = jax.process_index() == 0
    if isinstance(store, (str, os.PathLike)):
        store = AccuracyStore(store) if writer else None
    elif not writer:
        store = None
    if store is not None:
        store.check_config(full_config)
    done = np.asarray([store is not None and k in store for k in keys], bool)
    done = _broadcast_done(done)

    rows = evaluator.local_rows(batch_size)
    calib_idx = accuracy_data.calibration_indices(len(train_source), calib_batches, batch_size,
                                                  seed)
    n_eval = len(eval_source) if num_eval is None else min(int(num_eval), len(eval_source))
    cache: dict[tuple[str, int], list] = {}

    def local_batches(kind, source, indices, size):
        if cache_images and (kind, size) in cache:
            return cache[kind, size]
        out = (accuracy_data.load_batch(source,
                                        idx[rows],
                                        valid[rows],
                                        size,
                                        image_key=image_key,
                                        label_key=label_key)
               for idx, valid in accuracy_data.batch_indices(indices, batch_size))
        if cache_images:
            out = cache[kind, size] = list(out)
        return out

    results: dict[str, accuracy_data.AccuracyRecord] = {}
    for i, (key, is_done) in enumerate(zip(keys, done)):
        arch = unique[key]
        if is_done:
            if store is not None:
                results[key] = _record(store.get(key))
            continue
        size = int(np.asarray(arch.resolution)) if image_size is None else int(image_size)
        calib = (x for x, _ in local_batches('calib', train_source, calib_idx, size))
        variables = evaluator.recalibrate(arch, calib, batch_size)
        acc, count = evaluator.accuracy(variables, arch,
                                        local_batches('eval', eval_source, range(n_eval), size),
                                        batch_size)
        rec = accuracy_data.AccuracyRecord(arch=space.to_ofa_dict(arch),
                                           accuracy=acc,
                                           num_examples=count)
        if store is not None:
            store.add(rec, full_config)
        results[key] = rec
        if on_record is not None:
            on_record(i, rec)
    return [results[k] for k in keys if k in results]
