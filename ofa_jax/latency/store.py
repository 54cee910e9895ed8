"""Crash-safe, resumable latency dataset (SQLite in WAL mode).

One row per measurement, unique on (device fingerprint id, canonical arch key,
width, num_classes, depthwise implementation, batch, dtype, protocol): a rerun
skips what is done (``INSERT OR IGNORE``) and nothing is ever duplicated. Each
finished measurement is committed at once in its own transaction with
``synchronous=FULL``, so a SIGKILL at any instant loses at most the
measurement in flight. Several processes may write at once (WAL + busy
timeout), so sharded cluster jobs can share one store on a local disk; stores
from several hosts merge with :meth:`LatencyStore.merge_from`.

A file that is not a latency store fails loudly with its path and is never
modified.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sqlite3
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np

from ofa_jax import csvio
from ofa_jax import space

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 120.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
  fingerprint_id TEXT PRIMARY KEY,
  fingerprint_json TEXT NOT NULL,
  first_seen TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS measurements (
  id INTEGER PRIMARY KEY,
  device TEXT NOT NULL,
  arch_key TEXT NOT NULL,
  width REAL NOT NULL,
  num_classes INTEGER NOT NULL,
  depthwise TEXT NOT NULL,
  batch INTEGER NOT NULL,
  dtype TEXT NOT NULL,
  protocol TEXT NOT NULL,
  resolution INTEGER NOT NULL,
  latency_ms REAL NOT NULL,
  drift INTEGER NOT NULL DEFAULT 0,
  source TEXT NOT NULL DEFAULT 'measured',
  lower_s REAL,
  compile_s REAL,
  time_s REAL,
  stats_json TEXT,
  cost_json TEXT,
  provenance_json TEXT,
  started_at TEXT,
  finished_at TEXT,
  UNIQUE (device, arch_key, width, num_classes, depthwise, batch, dtype, protocol)
);
CREATE INDEX IF NOT EXISTS measurements_by_device ON measurements (device, batch, dtype);
"""

_COLUMNS = ('device', 'arch_key', 'width', 'num_classes', 'depthwise', 'batch', 'dtype', 'protocol',
            'resolution', 'latency_ms', 'drift', 'source', 'lower_s', 'compile_s', 'time_s',
            'stats_json', 'cost_json', 'provenance_json', 'started_at', 'finished_at')


class StoreError(RuntimeError):
    """The store file cannot be used (corrupt, not a store, unreadable)."""


class RowKey(NamedTuple):
    """Identity of one measurement (the store's UNIQUE key)."""

    device: str
    arch_key: str
    batch: int
    dtype: str
    protocol: str
    width: float = 1.2
    num_classes: int = 1000
    depthwise: str = ''


@dataclasses.dataclass
class Row:
    """One stored measurement (JSON fields decoded)."""

    key: RowKey
    resolution: int
    latency_ms: float
    drift: bool
    source: str
    lower_s: float | None
    compile_s: float | None
    time_s: float | None
    stats: dict[str, Any]
    cost: dict[str, Any]
    provenance: dict[str, Any]
    started_at: str | None
    finished_at: str | None


def cost_matrix(rows: Sequence['Row | None'], fields: Sequence[str]) -> np.ndarray:
    """float64[len(rows), len(fields)]: each row's ``cost`` entries; NaN where a row
    (or its entry) is missing."""
    value = lambda row, f: float(row.cost[f]) if row and row.cost.get(f) is not None else np.nan
    return np.array([[value(r, f) for f in fields] for r in rows],
                    np.float64).reshape(len(rows), len(fields))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='milliseconds')


def _dumps(x: Any) -> str:
    return json.dumps(x, sort_keys=True, default=str)


class LatencyStore:
    """A latency dataset in one SQLite file.

    Args:
      path: the database file; created (with its schema) if absent.
      readonly: open without creating or writing.

    Raises:
      StoreError: the path is not a latency store or cannot be opened; the
        message names the path and what to do. The file is left untouched.
    """

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False):
        self.path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise StoreError(f'store {self.path}: folder {parent} does not exist; create it or '
                             'choose another store path')
        if os.path.isdir(self.path):
            raise StoreError(f'store {self.path}: is a folder; give a file path (e.g. '
                             f'{os.path.join(self.path, "latency.sqlite")})')
        if readonly and not os.path.exists(self.path):
            raise StoreError(f'store {self.path}: no such file')
        if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            with open(self.path, 'rb') as f:
                head = f.read(16)
            if head != b'SQLite format 3\x00':
                raise StoreError(f'store {self.path}: not an SQLite database (corrupt or another '
                                 'kind of file); it was left untouched: move it away or choose '
                                 'another store path')
        try:
            uri = f'file:{os.path.abspath(self.path)}' + ('?mode=ro' if readonly else '')
            self._conn = sqlite3.connect(uri,
                                         uri=True,
                                         timeout=BUSY_TIMEOUT_S,
                                         isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute(f'PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}')
            if not readonly:
                self._conn.execute('PRAGMA journal_mode = WAL')
                self._conn.execute('PRAGMA synchronous = FULL')
                self._conn.executescript(_SCHEMA)
                self._conn.execute('INSERT OR IGNORE INTO meta VALUES (?, ?)',
                                   ('schema_version', str(SCHEMA_VERSION)))
            version = self._conn.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            self._conn.execute('SELECT count(*) FROM measurements').fetchone()
        except sqlite3.DatabaseError as err:
            raise StoreError(f'store {self.path}: cannot be used as a latency store ({err}); it '
                             'was left untouched: move it away or choose another store '
                             'path') from None
        if version is None or int(version[0]) > SCHEMA_VERSION:
            raise StoreError(f'store {self.path}: schema version {version} is not supported '
                             f'(this code reads <= {SCHEMA_VERSION})')

    # -- basics --------------------------------------------------------------

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> 'LatencyStore':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._conn.execute('SELECT count(*) FROM measurements').fetchone()[0])

    # -- meta ----------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        """A value of the store's key-value table (None when absent)."""
        row = self._conn.execute('SELECT value FROM meta WHERE key = ?', (key,)).fetchone()
        return None if row is None else str(row[0])

    def meta_items(self, prefix: str = '') -> list[tuple[str, str]]:
        """(key, value) pairs of the key-value table whose key starts with ``prefix``."""
        rows = self._conn.execute('SELECT key, value FROM meta ORDER BY key').fetchall()
        return [(str(k), str(v)) for k, v in rows if str(k).startswith(prefix)]

    def set_meta(self, key: str, value: str, *, overwrite: bool = False) -> str:
        """Sets a value (kept if present unless ``overwrite``); returns the value in force.

        Without ``overwrite`` the first writer wins, so concurrent campaigns that
        race to record, e.g., a gauge baseline end up sharing one.
        """
        verb = 'INSERT OR REPLACE' if overwrite else 'INSERT OR IGNORE'
        self._conn.execute(f'{verb} INTO meta VALUES (?, ?)', (key, str(value)))
        return self.get_meta(key)

    # -- devices -------------------------------------------------------------

    def add_device(self, fingerprint: dict[str, Any]) -> str:
        """Records a device fingerprint (first one wins); returns its id."""
        fid = str(fingerprint['fingerprint_id'])
        self._conn.execute('INSERT OR IGNORE INTO devices VALUES (?, ?, ?)',
                           (fid, _dumps(fingerprint), _now()))
        return fid

    def devices(self) -> dict[str, dict[str, Any]]:
        """fingerprint id -> fingerprint dict."""
        return {
            fid: json.loads(blob)
            for fid, blob in self._conn.execute('SELECT fingerprint_id, fingerprint_json FROM '
                                                'devices ORDER BY first_seen')
        }

    # -- writing -------------------------------------------------------------

    def add(self,
            key: RowKey,
            latency_ms: float,
            *,
            resolution: int | None = None,
            drift: bool = False,
            source: str = 'measured',
            lower_s: float | None = None,
            compile_s: float | None = None,
            time_s: float | None = None,
            stats: dict[str, Any] | None = None,
            cost: dict[str, Any] | None = None,
            provenance: dict[str, Any] | None = None,
            started_at: str | None = None,
            finished_at: str | None = None) -> bool:
        """Inserts one row and commits it; returns False if the key was already there."""
        if not np.isfinite(latency_ms) or latency_ms <= 0:
            raise ValueError(f'latency_ms: {latency_ms} must be a positive finite number')
        if resolution is None:
            resolution = int(space.from_key(key.arch_key).resolution)
        values = (key.device, key.arch_key, float(key.width), int(key.num_classes), key.depthwise,
                  int(key.batch), key.dtype, key.protocol, int(resolution), float(latency_ms),
                  int(bool(drift)), source, lower_s, compile_s, time_s, _dumps(stats or {}),
                  _dumps(cost or {}), _dumps(provenance or {}), started_at, finished_at or _now())
        cur = self._conn.execute(
            f'INSERT OR IGNORE INTO measurements ({", ".join(_COLUMNS)}) '
            f'VALUES ({", ".join("?" * len(_COLUMNS))})', values)
        return cur.rowcount == 1

    def add_result(self,
                   key: RowKey,
                   result: Any,
                   *,
                   provenance: dict[str, Any],
                   drift: bool = False) -> bool:
        """Stores a :class:`ofa_jax.latency.measure.LatencyResult` under ``key``."""
        stats = dict(result.stats)
        stats['number'] = result.number
        stats['samples_ms'] = [round(s, 6) for s in result.samples_ms]
        return self.add(key,
                        result.latency_ms,
                        drift=drift,
                        lower_s=result.lower_s,
                        compile_s=result.compile_s,
                        time_s=result.time_s,
                        stats=stats,
                        cost=result.cost,
                        provenance=provenance,
                        started_at=result.started_at,
                        finished_at=result.finished_at)

    def set_drift(self, keys: Iterable[RowKey], drift: bool = True) -> int:
        """Flags (or unflags) rows as measured during drift; returns rows changed."""
        n = 0
        for k in keys:
            n += self._conn.execute(
                'UPDATE measurements SET drift = ? WHERE device = ? AND arch_key = ? AND '
                'width = ? AND num_classes = ? AND depthwise = ? AND batch = ? AND dtype = ? '
                'AND protocol = ?',
                (int(drift), k.device, k.arch_key, float(k.width), int(
                    k.num_classes), k.depthwise, int(k.batch), k.dtype, k.protocol)).rowcount
        return n

    def replace(self, key: RowKey, latency_ms: float, **fields) -> None:
        """Overwrites one row (used to re-measure rows flagged for drift)."""
        with self._transaction():
            self._delete(key)
            self.add(key, latency_ms, **fields)

    def _delete(self, k: RowKey) -> None:
        self._conn.execute(
            'DELETE FROM measurements WHERE device = ? AND arch_key = ? AND width = ? AND '
            'num_classes = ? AND depthwise = ? AND batch = ? AND dtype = ? AND protocol = ?',
            (k.device, k.arch_key, float(k.width), int(k.num_classes), k.depthwise, int(
                k.batch), k.dtype, k.protocol))

    class _Tx:

        def __init__(self, conn):
            self.conn = conn

        def __enter__(self):
            self.conn.execute('BEGIN IMMEDIATE')

        def __exit__(self, exc_type, *_):
            self.conn.execute('ROLLBACK' if exc_type else 'COMMIT')

    def _transaction(self) -> '_Tx':
        return self._Tx(self._conn)

    # -- reading -------------------------------------------------------------

    def has(self, key: RowKey) -> bool:
        return bool(
            self._conn.execute(
                'SELECT 1 FROM measurements WHERE device = ? AND arch_key = ? AND width = ? AND '
                'num_classes = ? AND depthwise = ? AND batch = ? AND dtype = ? AND protocol = ?',
                (key.device, key.arch_key, float(key.width), int(key.num_classes), key.depthwise,
                 int(key.batch), key.dtype, key.protocol)).fetchone())

    def keys(self) -> set[RowKey]:
        """Every stored key."""
        rows = self._conn.execute('SELECT device, arch_key, batch, dtype, protocol, width, '
                                  'num_classes, depthwise FROM measurements')
        return {RowKey(*r) for r in rows}

    def pending(self, keys: Sequence[RowKey]) -> list[RowKey]:
        """The keys not yet in the store, in the given order (to resume a campaign)."""
        done = self.keys()
        seen = set()
        out = []
        for k in keys:
            k = RowKey(k.device, k.arch_key, int(k.batch), k.dtype, k.protocol, float(k.width),
                       int(k.num_classes), k.depthwise)
            if k not in done and k not in seen:
                seen.add(k)
                out.append(k)
        return out

    def rows(self,
             device: str | None = None,
             *,
             batch: int | None = None,
             dtype: str | None = None,
             protocol: str | None = None,
             width: float | None = None) -> list[Row]:
        """Stored rows matching the filters, in insertion order."""
        where, args = [], []
        for col, value in (('device', device), ('batch', batch), ('dtype', dtype),
                           ('protocol', protocol), ('width', width)):
            if value is not None:
                where.append(f'{col} = ?')
                args.append(value)
        sql = f'SELECT {", ".join(_COLUMNS)} FROM measurements'
        if where:
            sql += ' WHERE ' + ' AND '.join(where)
        out = []
        for r in self._conn.execute(sql + ' ORDER BY id', args):
            d = dict(zip(_COLUMNS, r))
            out.append(
                Row(key=RowKey(d['device'], d['arch_key'], d['batch'], d['dtype'], d['protocol'],
                               d['width'], d['num_classes'], d['depthwise']),
                    resolution=d['resolution'],
                    latency_ms=d['latency_ms'],
                    drift=bool(d['drift']),
                    source=d['source'],
                    lower_s=d['lower_s'],
                    compile_s=d['compile_s'],
                    time_s=d['time_s'],
                    stats=json.loads(d['stats_json'] or '{}'),
                    cost=json.loads(d['cost_json'] or '{}'),
                    provenance=json.loads(d['provenance_json'] or '{}'),
                    started_at=d['started_at'],
                    finished_at=d['finished_at']))
        return out

    def resolve_device(self, device: str) -> str:
        """A stored fingerprint id from an id, a unique id prefix or a device kind."""
        ids = set(self.devices()) | {
            r[0] for r in self._conn.execute('SELECT DISTINCT device FROM measurements')
        }
        if device in ids:
            return device
        matches = sorted(i for i in ids if i.startswith(device))
        if not matches:
            matches = sorted(
                fid for fid, fp in self.devices().items() if fp.get('device_kind') == device)
        if len(matches) != 1:
            raise KeyError(f'device {device!r}: {"ambiguous" if matches else "not found"} in '
                           f'store {self.path}; stored devices: {sorted(ids)}')
        return matches[0]

    def _latest(self, device: str, batch: int, dtype: str, protocol: str | None,
                width: float | None, include_drift: bool) -> dict[str, Row]:
        """arch_key -> the latest matching row, in insertion order of those rows."""
        device = self.resolve_device(device)
        latest: dict[str, Row] = {}
        for row in self.rows(device, batch=batch, dtype=dtype, protocol=protocol, width=width):
            if row.drift and not include_drift:
                continue
            latest.pop(row.key.arch_key, None)
            latest[row.key.arch_key] = row
        if not latest:
            asked = f'batch {batch}, dtype {dtype}' + (f', protocol {protocol}' if protocol else
                                                       '') + (f', width {width}' if width else '')
            raise KeyError(f'store {self.path}: no rows for device {device}, {asked}; stored for '
                           f'it: {self._row_groups(device)}')
        return latest

    def _row_groups(self, device: str) -> str:
        """'N rows at batch B, dtype D, protocol P, width W; ...' for one device."""
        groups: dict[tuple[Any, ...], int] = {}
        for row in self.rows(device):
            k = row.key
            group = (k.batch, k.dtype, k.protocol, k.width)
            groups[group] = groups.get(group, 0) + 1
        return '; '.join(f'{n} rows at batch {b}, dtype {d}, protocol {p}, width {w}'
                         for (b, d, p, w), n in sorted(groups.items())) or 'nothing'

    def load_arrays(self,
                    device: str,
                    batch: int = 1,
                    dtype: str = 'float32',
                    *,
                    protocol: str | None = None,
                    width: float | None = None,
                    include_drift: bool = False) -> tuple[space.Arch, np.ndarray]:
        """Archs and latencies of one device for the predictors.

        When an arch was measured under several protocols (or widths), the
        latest row wins, so each arch appears once.

        Returns:
          (batched numpy ``Arch``, float64[n] latency in ms), in insertion order.
        """
        latest = self._latest(device, batch, dtype, protocol, width, include_drift)
        archs = space.stack([space.from_key(k) for k in latest])
        return archs, np.fromiter((r.latency_ms for r in latest.values()), np.float64, len(latest))

    def load_costs(self,
                   device: str,
                   batch: int = 1,
                   dtype: str = 'float32',
                   *,
                   fields: Sequence[str] = ('flops', 'bytes_accessed'),
                   protocol: str | None = None,
                   width: float | None = None,
                   include_drift: bool = False) -> np.ndarray:
        """float64[n, len(fields)]: XLA's cost analysis of the rows of :meth:`load_arrays`.

        Same rows in the same order; ``fields`` name entries of each row's
        ``cost`` (what ``measure.cost_of`` read from the compiled executable
        when the row was measured); NaN where a row has none.
        """
        latest = self._latest(device, batch, dtype, protocol, width, include_drift)
        return cost_matrix(list(latest.values()), fields)

    # -- import / export / merge ---------------------------------------------

    def import_ofa_csv(self,
                       path: str | os.PathLike,
                       device: str,
                       *,
                       batch: int = 1,
                       dtype: str = 'float32',
                       protocol: str = 'imported',
                       width: float = 1.2,
                       num_classes: int = 1000,
                       depthwise: str = '') -> tuple[int, int]:
        """Imports an OFA CSV (``child_arch,latency,...``) under ``device``.

        Bad rows fail with ``FILE:LINE: reason`` before anything is written.
        Extra columns are kept in the provenance.

        Returns:
          (rows added, rows skipped because their key was already stored).
        """
        table = csvio.read_ofa_csv(path)
        added = 0
        with self._transaction():
            for i, arch in enumerate(space.unstack(table.archs)):
                key = RowKey(device, space.arch_key(arch), batch, dtype, protocol, width,
                             num_classes, depthwise)
                extra = {name: values[i] for name, values in table.extra.items()}
                added += self.add(key,
                                  float(table.latency_ms[i]),
                                  resolution=int(arch.resolution),
                                  source=f'imported:{os.path.basename(os.fspath(path))}',
                                  provenance={
                                      'csv': os.fspath(path),
                                      'line_index': i,
                                      'extra': extra
                                  })
        return added, len(table) - added

    def export_ofa_csv(self, path: str | os.PathLike, device: str | None = None, **filters) -> int:
        """Writes rows as an OFA CSV (``child_arch,latency`` first, provenance columns after).

        Returns:
          the number of rows written.
        """
        rows = self.rows(device, **filters)
        archs = [space.from_key(r.key.arch_key) for r in rows]
        extra = {
            'device': [r.key.device for r in rows],
            'batch': [r.key.batch for r in rows],
            'dtype': [r.key.dtype for r in rows],
            'protocol': [r.key.protocol for r in rows],
            'width': [r.key.width for r in rows],
            'depthwise': [r.key.depthwise for r in rows],
            'drift': [int(r.drift) for r in rows],
            'cv': [r.stats.get('cv', '') for r in rows],
            'iqr_ms': [r.stats.get('iqr', '') for r in rows],
            'min_ms': [r.stats.get('min', '') for r in rows],
            'compile_s': ['' if r.compile_s is None else r.compile_s for r in rows],
            'flops': [r.cost.get('flops') or '' for r in rows],
            'finished_at': [r.finished_at or '' for r in rows],
        }
        if not rows:
            with open(path, 'w') as f:
                f.write('child_arch,latency,' + ','.join(extra) + '\n')
            return 0
        csvio.write_ofa_csv(path, archs, [r.latency_ms for r in rows], extra)
        return len(rows)

    def export_parquet(self, path: str | os.PathLike, device: str | None = None, **filters) -> int:
        """Writes every column of the matching rows to a Parquet file; returns the count."""
        import pyarrow as pa  # pylint: disable=g-import-not-at-top
        import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
        where, args = [], []
        for col, value in (('device', device), *filters.items()):
            if value is not None:
                where.append(f'{col} = ?')
                args.append(value)
        sql = f'SELECT {", ".join(_COLUMNS)} FROM measurements'
        if where:
            sql += ' WHERE ' + ' AND '.join(where)
        data = self._conn.execute(sql + ' ORDER BY id', args).fetchall()
        columns = {c: [r[i] for r in data] for i, c in enumerate(_COLUMNS)}
        columns['child_arch'] = [
            space.format_child_arch(space.from_key(k)) for k in columns['arch_key']
        ]
        table = pa.table(columns)
        tmp = f'{os.fspath(path)}.tmp-{os.getpid()}'
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return len(data)

    def merge_from(self, other: str | os.PathLike) -> int:
        """Adds every row and device of another store that this one lacks.

        Returns:
          the number of measurement rows added.
        """
        other = os.fspath(other)
        LatencyStore(other, readonly=True).close()  # Validates it; fails loudly if corrupt.
        self._conn.execute('ATTACH DATABASE ? AS other', (f'file:{os.path.abspath(other)}'
                                                          '?mode=ro',))
        try:
            with self._transaction():
                self._conn.execute('INSERT OR IGNORE INTO devices SELECT * FROM other.devices')
                cols = ', '.join(_COLUMNS)
                before = len(self)
                self._conn.execute(f'INSERT OR IGNORE INTO measurements ({cols}) '
                                   f'SELECT {cols} FROM other.measurements ORDER BY id')
                added = len(self) - before
        finally:
            self._conn.execute('DETACH DATABASE other')
        return added
