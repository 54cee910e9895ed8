"""Crash-safe, resumable latency dataset (SQLite in WAL mode).

One row per measurement, unique on (device fingerprint id, canonical arch key,
width, num_classes, depthwise implementation, batch, dtype, protocol): a rerun
skips what is done (``INSERT OR IGNORE``) and nothing is ever duplicated. Each
finished measurement is committed at once in its own transaction with
``synchronous=FULL``, so a SIGKILL at any instant loses at most the
measurement in flight. Several processes may write at once (WAL + busy
timeout); stores from several hosts merge with :meth:`LatencyStore.merge_from`.

Campaigns that *time* networks must not share a store at the same time: each
one's measurements would run under the other's load (every row 2-2.5x its solo
value, silently). A campaign takes :meth:`LatencyStore.writer_lease`, an
exclusive ``flock`` on ``STORE.lock`` that the OS releases when the process
dies (SIGKILL included); a second campaign on the same store is refused with
the holder's pid, host and start time.

Nothing is accepted that should not be:

* A file is identified as a latency store (its ``meta`` table and schema
  version) before anything is written to it, not even a ``PRAGMA``. A new
  store is created only where the path does not exist or is an empty (0-byte)
  file; anything else that is not a store of this schema version (another
  application's SQLite database, a text file, random bytes, a damaged or
  truncated store, a store of another version) is refused with a
  :class:`StoreError` naming the path and what it is, and is left byte for
  byte unchanged, with no ``-wal``/``-shm``/``-journal`` file created next to
  it.
* ``readonly=True`` never creates or writes anything: a missing path is an
  error, and neither the file nor its folder needs to be writable.
* Every row written (:meth:`LatencyStore.add`, :meth:`LatencyStore.replace`,
  :meth:`LatencyStore.merge_from`, ...) is validated first (:func:`validate_key`,
  :func:`validate_latency`); a bad one is a ``ValueError`` naming the field,
  the value and what is allowed, and nothing is written. A merge validates
  every incoming row before it writes any.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import functools
import json
import math
import numbers
import os
import socket
import sqlite3
import stat
import time
import urllib.parse
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from ofa_jax import csvio
from ofa_jax import depthwise as dw_lib
from ofa_jax import files
from ofa_jax import space

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 120.0

# The dtypes a measurement can have (the keys of ``measure.DTYPES``; not
# imported from there so that reading a store does not need the timing code).
DTYPES = ('float32', 'bfloat16', 'float16')
# Plausible latencies: 1 ns to about 3 hours per call.
MIN_LATENCY_MS = 1e-6
MAX_LATENCY_MS = 1e7
# Suffix of the lock file that holds the writer lease, next to the store.
LOCK_SUFFIX = '.lock'

_SQLITE_MAGIC = b'SQLite format 3\x00'
_LEFT_ALONE = 'it was left untouched: move it away or choose another store path'

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
_SCHEMA_STATEMENTS = tuple(s.strip() for s in _SCHEMA.split(';') if s.strip())

_COLUMNS = ('device', 'arch_key', 'width', 'num_classes', 'depthwise', 'batch', 'dtype', 'protocol',
            'resolution', 'latency_ms', 'drift', 'source', 'lower_s', 'compile_s', 'time_s',
            'stats_json', 'cost_json', 'provenance_json', 'started_at', 'finished_at')
_DEVICE_COLUMNS = ('fingerprint_id', 'fingerprint_json', 'first_seen')


class StoreError(RuntimeError):
    """The store file cannot be used (corrupt, not a store, unreadable, in use)."""


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


# -- validation of what is written ----------------------------------------------


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_real(x: Any) -> bool:
    return (isinstance(x, (numbers.Real, np.floating, np.integer)) and
            not isinstance(x, (bool, np.bool_)))


def _text(field: str, value: Any, what: str) -> str:
    """``value`` if it is a non-empty single-line string without outer spaces."""
    if (not isinstance(value, str) or not value.strip() or value != value.strip() or
            not value.isprintable()):
        raise ValueError(f'{field}: {value!r} is not allowed; must be {what} (a non-empty '
                         'string without leading or trailing spaces or control characters)')
    return value


def depthwise_names() -> tuple[str, ...]:
    """The allowed ``RowKey.depthwise`` values: '' (not recorded) or an implementation."""
    return ('',) + tuple(sorted(dw_lib.DEPTHWISE_IMPLS))


@functools.lru_cache(maxsize=1 << 16)
def _arch_resolution(arch_key: str) -> int:
    """The resolution of a canonical arch key; ValueError if it is not one."""
    try:
        arch = space.from_key(arch_key)  # Validates every gene (space.validate).
    except ValueError as err:
        raise ValueError(f'arch_key: {arch_key!r} is not a valid arch key ({err}); must be '
                         'r<resolution>-d<5 depths>-k<20 kernels>-e<20 expands> as built by '
                         'space.arch_key') from None
    canonical = space.arch_key(arch)
    if canonical != arch_key:
        raise ValueError(f'arch_key: {arch_key!r} is not canonical; the key of the same network '
                         f'is {canonical!r} (build keys with space.arch_key)')
    return int(arch.resolution)


def validate_key(key: RowKey) -> RowKey:
    """Checks every field of a measurement's key.

    Args:
      key: a :class:`RowKey` (or a tuple of its 8 fields).

    Returns:
      the key with ``batch`` and ``num_classes`` as ``int`` and ``width`` as
      ``float`` (the form :meth:`LatencyStore.keys` returns).

    Raises:
      ValueError: naming the first bad field, its value and what is allowed:
        ``device`` and ``protocol`` are non-empty strings, ``arch_key`` a
        canonical key of :mod:`ofa_jax.space` (``space.arch_key``), ``batch``
        and ``num_classes`` integers >= 1, ``dtype`` one of :data:`DTYPES`,
        ``width`` one of ``space.WIDTHS`` and ``depthwise`` one of
        :func:`depthwise_names`.
    """
    if not isinstance(key, tuple) or len(key) != len(RowKey._fields):
        raise ValueError(
            f'key: {key!r} is not a RowKey; build it as RowKey({", ".join(RowKey._fields)})')
    k = RowKey(*key)
    _text('device', k.device, 'the fingerprint id of the measured device')
    if not isinstance(k.arch_key, str):
        raise ValueError(f'arch_key: {k.arch_key!r} is not a string; must be a key of '
                         'space.arch_key')
    _arch_resolution(k.arch_key)
    if not _is_int(k.batch) or k.batch < 1:
        raise ValueError(f'batch: {k.batch!r} is not allowed; must be an integer >= 1')
    if not isinstance(k.dtype, str) or k.dtype not in DTYPES:
        raise ValueError(f'dtype: {k.dtype!r} is not allowed; must be one of {DTYPES}')
    _text('protocol', k.protocol, 'the name of a timing protocol')
    if not _is_real(k.width) or float(k.width) not in space.WIDTHS:
        raise ValueError(f'width: {k.width!r} is not allowed; must be one of {space.WIDTHS}')
    if not _is_int(k.num_classes) or k.num_classes < 1:
        raise ValueError(f'num_classes: {k.num_classes!r} is not allowed; must be an integer '
                         '>= 1')
    if not isinstance(k.depthwise, str) or k.depthwise not in depthwise_names():
        raise ValueError(f'depthwise: {k.depthwise!r} is not allowed; must be one of '
                         f"{depthwise_names()} ('' = not recorded; 'auto' must be resolved)")
    return RowKey(k.device, k.arch_key, int(k.batch), k.dtype, k.protocol, float(k.width),
                  int(k.num_classes), k.depthwise)


def validate_latency(value: Any, field: str = 'latency_ms') -> float:
    """``value`` as a float if it is a plausible latency in ms.

    Raises:
      ValueError: naming ``field`` and the value unless it is a finite number
        in [:data:`MIN_LATENCY_MS`, :data:`MAX_LATENCY_MS`].
    """
    allowed = f'must be a finite latency in ms in [{MIN_LATENCY_MS:g}, {MAX_LATENCY_MS:g}]'
    if not _is_real(value):
        raise ValueError(f'{field}: {value!r} is not a number; {allowed}')
    v = float(value)
    if not math.isfinite(v):
        why = 'not finite'
    elif v <= 0:
        why = 'not positive'
    elif v < MIN_LATENCY_MS:
        why = 'implausibly small'
    elif v > MAX_LATENCY_MS:
        why = 'implausibly large'
    else:
        return v
    raise ValueError(f'{field}: {value!r} is not allowed ({why}); {allowed}')


def _optional_seconds(field: str, value: Any) -> float | None:
    if value is None:
        return None
    if not _is_real(value) or not math.isfinite(float(value)) or float(value) < 0:
        raise ValueError(f'{field}: {value!r} is not allowed; must be None or a finite number of '
                         'seconds >= 0')
    return float(value)


def _json_object(field: str, value: Any) -> str | None:
    if value is None:
        return None
    try:
        ok = isinstance(value, str) and isinstance(json.loads(value), dict)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f'{field}: {str(value)[:60]!r} is not allowed; must be None or the JSON '
                         'text of an object')
    return value


def _check_row(d: Mapping[str, Any]) -> tuple[Any, ...]:
    """The validated column values (in ``_COLUMNS`` order) of one measurement row."""
    key = validate_key(
        RowKey(d['device'], d['arch_key'], d['batch'], d['dtype'], d['protocol'], d['width'],
               d['num_classes'], d['depthwise']))
    resolution = _arch_resolution(key.arch_key)
    if not _is_int(d['resolution']) or int(d['resolution']) != resolution:
        raise ValueError(f'resolution: {d["resolution"]!r} is not allowed; must be the resolution '
                         f'of arch_key {key.arch_key!r} ({resolution})')
    drift = d['drift']
    if not isinstance(drift, (int, np.integer, np.bool_)) or drift not in (0, 1):
        raise ValueError(f'drift: {drift!r} is not allowed; must be 0 or 1')
    for field in ('started_at', 'finished_at'):
        if d[field] is not None and not isinstance(d[field], str):
            raise ValueError(f'{field}: {d[field]!r} is not allowed; must be None or a time stamp '
                             'string')
    row = {
        **key._asdict(),
        'resolution': resolution,
        'latency_ms': validate_latency(d['latency_ms']),
        'drift': int(drift),
        'source': _text('source', d['source'], "where the row comes from (e.g. 'measured')"),
        'started_at': d['started_at'],
        'finished_at': d['finished_at'],
    }
    for field in ('lower_s', 'compile_s', 'time_s'):
        row[field] = _optional_seconds(field, d[field])
    for field in ('stats_json', 'cost_json', 'provenance_json'):
        row[field] = _json_object(field, d[field])
    return tuple(row[c] for c in _COLUMNS)


# -- identification of a file before anything touches it ------------------------


def _can_write(path: str) -> bool:
    """Whether this process may write ``path`` (a hook for tests running as root)."""
    return os.access(path, os.W_OK)


def _connect(path: str, mode: str) -> sqlite3.Connection:
    """A connection; ``mode`` is 'ro', 'immutable' (no locks, no files), 'rw' or 'rwc'."""
    query = 'mode=ro&immutable=1' if mode == 'immutable' else f'mode={mode}'
    return sqlite3.connect(f'file:{urllib.parse.quote(os.path.abspath(path))}?{query}',
                           uri=True,
                           timeout=BUSY_TIMEOUT_S,
                           isolation_level=None,
                           check_same_thread=False)


def _what_bytes(head: bytes) -> str:
    """What a file that does not start like SQLite seems to be."""
    if b'\x00' not in head:
        try:
            text = head.decode('utf-8')
        except UnicodeDecodeError as err:
            text = head[:err.start].decode('utf-8') if err.start >= len(head) - 3 else None
        if text is not None:
            lines = text.strip().splitlines()
            return f'a text file (starting {lines[0][:40] if lines else text[:40]!r})'
    return f'binary data (starting with bytes {head[:8].hex(" ")})'


def _check_header(path: str, head: bytes, size: int) -> None:
    """Refuses an SQLite file whose header says it is cut short or damaged."""
    if len(head) < 100:
        raise StoreError(f'store {path}: is a truncated SQLite database ({size} bytes, shorter '
                         f'than its 100-byte header); {_LEFT_ALONE}')
    page = int.from_bytes(head[16:18], 'big')
    page = 65536 if page == 1 else page
    if page < 512 or page & (page - 1):
        raise StoreError(f'store {path}: is a damaged SQLite database (page size {page} in its '
                         f'header); {_LEFT_ALONE}')
    if size % page:
        raise StoreError(f'store {path}: is a truncated or damaged SQLite database ({size} bytes '
                         f'is not a whole number of {page}-byte pages); {_LEFT_ALONE}')
    pages = int.from_bytes(head[28:32], 'big')
    # The page count is valid when "version-valid-for" equals the change
    # counter; with a -wal file the newest pages may still be there.
    if (head[92:96] == head[24:28] and pages * page > size and not os.path.exists(path + '-wal')):
        raise StoreError(f'store {path}: is a truncated SQLite database ({size} bytes; its header '
                         f'says {pages} pages of {page} bytes); {_LEFT_ALONE}')


def _tables(conn: sqlite3.Connection) -> list[str]:
    return [
        str(r[0])
        for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    ]


def _inspect(conn: sqlite3.Connection, path: str) -> None:
    """Refuses (StoreError) unless ``conn`` reads a latency store of this schema version.

    Only reads; sqlite3 errors other than a missing column propagate.
    """
    tables = _tables(conn)
    if not tables:
        raise StoreError(f'store {path}: is an SQLite database without tables, not a latency '
                         'store (a new store is created only where there is no file or an empty '
                         f'one); {_LEFT_ALONE}')
    if 'meta' not in tables:
        shown = ', '.join(tables[:6]) + (', ...' if len(tables) > 6 else '')
        raise StoreError(f'store {path}: is an SQLite database of another application (tables: '
                         f'{shown}), not a latency store; {_LEFT_ALONE}')
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError as err:
        raise StoreError(f'store {path}: is an SQLite database whose meta table is not a latency '
                         f"store's ({err}); {_LEFT_ALONE}") from None
    if row is None:
        raise StoreError(f'store {path}: is an SQLite database with a meta table but no '
                         f'schema_version, not a latency store; {_LEFT_ALONE}')
    try:
        version = int(str(row[0]).strip())
    except ValueError:
        raise StoreError(f'store {path}: has schema_version {row[0]!r}, not a number: not a '
                         f'latency store; {_LEFT_ALONE}') from None
    if version != SCHEMA_VERSION:
        raise StoreError(f'store {path}: is a latency store of schema version {version}; this '
                         f'code reads version {SCHEMA_VERSION} only (use the ofa-jax release '
                         f'that wrote it); {_LEFT_ALONE}')
    for table, columns in (('devices', _DEVICE_COLUMNS), ('measurements', _COLUMNS)):
        if table not in tables:
            raise StoreError(f'store {path}: has schema_version {version} but no {table} table '
                             f'(damaged, or not a latency store); {_LEFT_ALONE}')
        have = {d[0] for d in conn.execute(f'SELECT * FROM {table} LIMIT 0').description}
        missing = [c for c in columns if c not in have]
        if missing:
            raise StoreError(f'store {path}: its {table} table lacks the columns {missing} of '
                             f'schema version {version} (damaged, or not a latency store); '
                             f'{_LEFT_ALONE}')


def _examine(path: str) -> tuple[str, bytes]:
    """('absent' | 'empty' | 'sqlite', first bytes); StoreError for anything else."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise StoreError(f'store {path}: is a dangling symbolic link (to '
                             f'{os.readlink(path)!r}); fix the link or choose another store '
                             'path') from None
        return 'absent', b''
    except OSError as err:
        raise StoreError(f'store {path}: cannot be examined ({err.strerror})') from None
    if stat.S_ISDIR(st.st_mode):
        raise StoreError(f'store {path}: is a folder; give a file path (e.g. '
                         f'{os.path.join(path, "latency.sqlite")})')
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f'store {path}: is not a regular file (a device, pipe or socket); give '
                         'the path of a store file')
    if st.st_size == 0:
        return 'empty', b''
    try:
        with open(path, 'rb') as f:
            head = f.read(512)
    except OSError as err:
        raise StoreError(f'store {path}: cannot be read ({err.strerror}); {_LEFT_ALONE}') from None
    if not head:
        return 'empty', b''
    if not head.startswith(_SQLITE_MAGIC):
        if _SQLITE_MAGIC.startswith(head):
            raise StoreError(f'store {path}: is a truncated SQLite database ({len(head)} bytes); '
                             f'{_LEFT_ALONE}')
        raise StoreError(f'store {path}: is not an SQLite database but {_what_bytes(head)}; '
                         f'{_LEFT_ALONE}')
    _check_header(path, head, st.st_size)
    return 'sqlite', head


def _open_identified(path: str, head: bytes) -> tuple[sqlite3.Connection, str]:
    """A read-only connection to the SQLite file ``path`` once it is known to be a store.

    Creates no file and takes no write lock: a database in WAL mode without a
    ``-wal`` file (no writer has it open) is read with ``immutable=1``, which
    needs no ``-shm``; otherwise with ``mode=ro`` (falling back to
    ``immutable=1`` where the ``-shm`` cannot be opened).

    Returns:
      (connection, 'ro' or 'immutable').
    """
    if not (head[18] == 2 or head[19] == 2):
        modes = ('ro',)  # Rollback journal: a reader creates no file.
    elif os.path.exists(path + '-wal'):
        modes = ('ro', 'immutable')  # A writer has it open (or died): follow its -wal.
    else:
        modes = ('immutable',)  # All in the main file; mode=ro would create -wal and -shm.
    for i, mode in enumerate(modes):
        conn = None
        try:
            conn = _connect(path, mode)
            _inspect(conn, path)
            return conn, mode
        except BaseException as err:  # pylint: disable=broad-except
            if conn is not None:
                conn.close()
            if isinstance(err, sqlite3.OperationalError):
                if i + 1 < len(modes):
                    continue
                raise StoreError(
                    f'store {path}: cannot be read by SQLite ({err}); {_LEFT_ALONE}') from None
            if isinstance(err, sqlite3.DatabaseError):
                raise StoreError(f'store {path}: is a damaged SQLite database ({err}); '
                                 f'{_LEFT_ALONE}') from None
            raise
    raise AssertionError('unreachable')


def _read_lease(fd: int) -> dict[str, Any] | None:
    """The holder's record in a lock file (None if it cannot be read in time)."""
    for _ in range(50):  # The holder writes it just after taking the lock.
        raw = os.pread(fd, 1 << 16, 0)
        try:
            info = json.loads(raw)
            if isinstance(info, dict):
                return info
        except ValueError:
            pass
        time.sleep(0.01)
    return None


class LatencyStore:
    """A latency dataset in one SQLite file.

    Args:
      path: the database file; created (with its schema) if it does not exist
        or is an empty (0-byte) file. Its folder must exist.
      readonly: open without creating or writing anything (not even ``-wal``
        or ``-shm`` files): the file must be a store, and neither it nor its
        folder needs to be writable. While no writer has the store open it is
        read as a snapshot (``immutable=1``); otherwise read-only alongside
        the writer (``mode=ro``).

    Attributes:
      path: the path given.
      readonly: whether the store was opened with ``readonly=True``.
      mode: how SQLite reads it: 'rw', 'ro' or 'immutable'.

    Raises:
      StoreError: the path is not a latency store of this schema version or
        cannot be opened; the one-line message names the path, what it is and
        what to do. The file is left byte for byte untouched and nothing is
        created next to it.
    """

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False):
        self.path = os.fspath(path)
        self.readonly = bool(readonly)
        self._abspath = os.path.abspath(self.path)
        self._conn: sqlite3.Connection | None = None
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise StoreError(f'store {self.path}: folder {parent} does not exist; create it or '
                             'choose another store path')
        kind, head = _examine(self.path)
        if self.readonly:
            if kind == 'absent':
                raise StoreError(f'no store at {self.path}: there is no such file (nothing was '
                                 'created); check the path')
            if kind == 'empty':
                raise StoreError(f'store {self.path}: is an empty file, not a latency store '
                                 '(nothing was written to it)')
            self._conn, self.mode = _open_identified(self.path, head)
            return
        if kind == 'sqlite':
            _open_identified(self.path, head)[0].close()  # Refuses what is not a store.
        if not _can_write(parent):
            raise StoreError(f'store {self.path}: its folder {parent} is not writable (SQLite '
                             'keeps -wal and -shm files next to the store); open it with '
                             'readonly=True to read it, or choose a writable store path')
        if kind != 'absent' and not _can_write(self.path):
            raise StoreError(f'store {self.path}: is read-only (no write permission on the '
                             'file); open it with readonly=True to read it, or fix its '
                             'permissions')
        self._conn = self._open_writer(create=kind != 'sqlite')
        self.mode = 'rw'

    def _open_writer(self, create: bool) -> sqlite3.Connection:
        """The read-write connection, after (re)checking the file is a store.

        A new store gets its schema in one transaction before the file is
        switched to WAL, so a file that is not empty always holds a whole
        schema and concurrent creators all end up with the same store.
        """
        try:
            conn = _connect(self.path, 'rwc' if create else 'rw')
        except sqlite3.Error as err:
            raise StoreError(f'store {self.path}: cannot be opened for writing ({err})') from None
        try:
            if create:
                conn.execute('BEGIN IMMEDIATE')
                try:
                    if not _tables(conn):
                        for statement in _SCHEMA_STATEMENTS:
                            conn.execute(statement)
                        conn.execute('INSERT INTO meta VALUES (?, ?)',
                                     ('schema_version', str(SCHEMA_VERSION)))
                    _inspect(conn, self.path)
                except BaseException:
                    if conn.in_transaction:
                        conn.execute('ROLLBACK')
                    raise
                conn.execute('COMMIT')
            else:
                _inspect(conn, self.path)
            conn.execute('PRAGMA journal_mode = WAL')
            conn.execute('PRAGMA synchronous = FULL')
        except sqlite3.Error as err:
            conn.close()
            raise StoreError(f'store {self.path}: cannot be opened for writing ({err})' +
                             ('' if create else f'; {_LEFT_ALONE}')) from None
        except BaseException:
            conn.close()
            raise
        return conn

    # -- basics --------------------------------------------------------------

    def close(self) -> None:
        """Closes the connection (a lease taken by :meth:`writer_lease` ends with its block)."""
        if self._conn is not None:
            self._conn.close()

    def __enter__(self) -> 'LatencyStore':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._conn.execute('SELECT count(*) FROM measurements').fetchone()[0])

    def _require_write(self, what: str) -> None:
        if self.readonly:
            raise StoreError(f'store {self.path}: opened with readonly=True; cannot {what}')

    # -- writer lease --------------------------------------------------------

    @property
    def lock_path(self) -> str:
        """The lock file of :meth:`writer_lease` (``PATH.lock``, next to the store)."""
        return self._abspath + LOCK_SUFFIX

    @contextlib.contextmanager
    def writer_lease(self, owner: str = '') -> Iterator[dict[str, Any]]:
        """Holds the store's exclusive writer lease for the ``with`` block.

        Campaigns that time networks take it so that no two of them measure
        into one store at the same time (each would time the other's load).
        The lease is an ``fcntl.flock`` on :attr:`lock_path`, which records the
        holder (pid, host, start time, ``owner``); the OS releases it when the
        process ends in any way, SIGKILL included, so a crashed campaign never
        leaves a stale lease. It is advisory: plain :meth:`add` calls do not
        check it. It is per open file: a second lease in the same process is
        refused too, and a child forked while it is held keeps it until the
        child ends. On NFS, ``flock`` is emulated with POSIX locks and works
        across hosts when the server supports locking.

        Args:
          owner: what takes it (e.g. 'measure_latency shard 0/2'), for the
            message another process gets.

        Yields:
          the holder record written to the lock file: {'pid', 'host', 'since',
          'owner', 'store'}.

        Raises:
          StoreError: another live process (or another lease of this one)
            holds it: 'store PATH is in use by pid N on HOST since T; ...'; or
            the lock file cannot be created, or the store is read-only.
        """
        self._require_write('take the writer lease')
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise StoreError(f'store {self.path}: cannot create its lock file {self.lock_path} '
                             f'({err.strerror})') from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise StoreError(f'store {self.path}: cannot lock {self.lock_path} '
                                     f'({err.strerror})') from None
                raise StoreError(self._in_use(_read_lease(fd))) from None
            info = {
                'pid': os.getpid(),
                'host': socket.gethostname(),
                'since': _now(),
                'owner': str(owner),
                'store': self._abspath,
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info, sort_keys=True) + '\n').encode(), 0)
            os.fsync(fd)
            try:
                yield info
            finally:
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # Releases the lock.

    def lease_holder(self) -> dict[str, Any] | None:
        """The record of the process holding :meth:`writer_lease`; None when it is free."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                return _read_lease(fd) or {}
            return None
        finally:
            os.close(fd)

    def _in_use(self, info: dict[str, Any] | None) -> str:
        if info:
            who = (f'pid {info.get("pid")} on {info.get("host")} since {info.get("since")}' +
                   (f' ({info["owner"]})' if info.get('owner') else ''))
        else:
            who = f'another process (see {self.lock_path})'
        return (f'store {self.path} is in use by {who}; run campaigns on one store one at a '
                'time, or give each its own --config.store and merge them')

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
        race to record, e.g., a gauge baseline end up sharing one. The key
        ``schema_version`` is the store's own and cannot be set.
        """
        self._require_write('set meta values')
        _text('meta key', key, 'a key of the meta table')
        if key == 'schema_version':
            raise ValueError("meta key: 'schema_version' is not allowed; it is the store's own")
        verb = 'INSERT OR REPLACE' if overwrite else 'INSERT OR IGNORE'
        self._conn.execute(f'{verb} INTO meta VALUES (?, ?)', (key, str(value)))
        return self.get_meta(key)

    # -- devices -------------------------------------------------------------

    def add_device(self, fingerprint: dict[str, Any]) -> str:
        """Records a device fingerprint (first one wins); returns its id."""
        self._require_write('add devices')
        if not isinstance(fingerprint, Mapping) or 'fingerprint_id' not in fingerprint:
            raise ValueError(f'fingerprint: {str(fingerprint)[:60]!r} is not allowed; must be a '
                             'dict with a fingerprint_id')
        fid = _text('fingerprint_id', fingerprint['fingerprint_id'], 'a device fingerprint id')
        self._conn.execute('INSERT OR IGNORE INTO devices VALUES (?, ?, ?)',
                           (fid, _dumps(dict(fingerprint)), _now()))
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
        """Inserts one row and commits it; returns False if the key was already there.

        Raises:
          ValueError: a bad key field (:func:`validate_key`), latency
            (:func:`validate_latency`), resolution (not the arch's), timing
            (not None or >= 0) or dict argument; nothing is written.
        """
        self._require_write('add rows')
        key = validate_key(key)
        for name, value in (('stats', stats), ('cost', cost), ('provenance', provenance)):
            if value is not None and not isinstance(value, Mapping):
                raise ValueError(f'{name}: {str(value)[:60]!r} is not allowed; must be a dict or '
                                 'None')
        values = _check_row({
            **key._asdict(),
            'resolution':
                _arch_resolution(key.arch_key) if resolution is None else resolution,
            'latency_ms':
                latency_ms,
            'drift':
                int(bool(drift)),
            'source':
                source,
            'lower_s':
                lower_s,
            'compile_s':
                compile_s,
            'time_s':
                time_s,
            'stats_json':
                _dumps(dict(stats or {})),
            'cost_json':
                _dumps(dict(cost or {})),
            'provenance_json':
                _dumps(dict(provenance or {})),
            'started_at':
                started_at,
            'finished_at':
                finished_at or _now(),
        })
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
        """Stores a :class:`ofa_jax.latency.measure.LatencyResult` under ``key``.

        Raises:
          ValueError: as :meth:`add`, or the result was measured for another
            arch, batch, dtype or protocol than ``key`` names.
        """
        key = validate_key(key)
        for field in ('arch_key', 'batch', 'dtype', 'protocol'):
            got = getattr(result, field, None)
            if got not in (None, '') and got != getattr(key, field):
                raise ValueError(f'result.{field}: {got!r} is not allowed; must be the key\'s '
                                 f'{field} {getattr(key, field)!r} (the result was measured for '
                                 'another key)')
        validate_latency(result.latency_ms)
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
        self._require_write('flag rows')
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
        """Overwrites one row (used to re-measure rows flagged for drift).

        Raises:
          ValueError: as :meth:`add`, before the old row is touched.
        """
        self._require_write('replace rows')
        key = validate_key(key)
        validate_latency(latency_ms)
        with self._transaction():
            self._delete(key)
            self.add(key, latency_ms, **fields)  # A bad field rolls the delete back.

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
            if not exc_type:
                self.conn.execute('COMMIT')
            elif self.conn.in_transaction:  # (SQLite may have rolled back already.)
                self.conn.execute('ROLLBACK')

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

        Bad rows fail with ``FILE:LINE: reason`` (or ``FILE: data row N:
        reason`` for what the store refuses) and nothing is written. Extra
        columns are kept in the provenance.

        Returns:
          (rows added, rows skipped because their key was already stored).
        """
        self._require_write('import rows')
        table = csvio.read_ofa_csv(path)
        added = 0
        with self._transaction():
            for i, arch in enumerate(space.unstack(table.archs)):
                key = RowKey(device, space.arch_key(arch), batch, dtype, protocol, width,
                             num_classes, depthwise)
                extra = {name: values[i] for name, values in table.extra.items()}
                try:
                    added += self.add(key,
                                      float(table.latency_ms[i]),
                                      resolution=int(arch.resolution),
                                      source=f'imported:{os.path.basename(os.fspath(path))}',
                                      provenance={
                                          'csv': os.fspath(path),
                                          'line_index': i,
                                          'extra': extra
                                      })
                except ValueError as err:
                    raise ValueError(f'{os.fspath(path)}: data row {i + 1}: {err}; nothing was '
                                     'imported') from None
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
            files.write_text(path, 'child_arch,latency,' + ','.join(extra) + '\n')
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

        The other store is opened read-only and every one of its rows is
        validated (as :meth:`add` would) before any is written; then all are
        added in one transaction.

        Returns:
          the number of measurement rows added.

        Raises:
          StoreError: ``other`` is not a latency store (see the constructor).
          ValueError: a row or device of ``other`` is not valid: names
            ``other``, the row id, the field and the value; nothing is merged.
        """
        self._require_write('merge rows into it')
        other = os.fspath(other)
        with LatencyStore(other, readonly=True) as src:
            devices = src._conn.execute(  # pylint: disable=protected-access
                f'SELECT {", ".join(_DEVICE_COLUMNS)} FROM devices ORDER BY rowid').fetchall()
            rows = src._conn.execute(  # pylint: disable=protected-access
                f'SELECT id, {", ".join(_COLUMNS)} FROM measurements ORDER BY id').fetchall()
        for fid, blob, first_seen in devices:
            try:
                _text('fingerprint_id', fid, 'a device fingerprint id')
                _json_object('fingerprint_json', blob)
                if not isinstance(first_seen, str):
                    raise ValueError(f'first_seen: {first_seen!r} is not allowed; must be a time '
                                     'stamp string')
            except ValueError as err:
                raise ValueError(f'merge from {other}: device {fid!r}: {err}; nothing was '
                                 'merged') from None
        values = []
        for row in rows:
            try:
                values.append(_check_row(dict(zip(_COLUMNS, row[1:]))))
            except ValueError as err:
                raise ValueError(f'merge from {other}: measurement id {row[0]}: {err}; nothing '
                                 'was merged') from None
        with self._transaction():
            self._conn.executemany('INSERT OR IGNORE INTO devices VALUES (?, ?, ?)', devices)
            before = len(self)
            self._conn.executemany(
                f'INSERT OR IGNORE INTO measurements ({", ".join(_COLUMNS)}) '
                f'VALUES ({", ".join("?" * len(_COLUMNS))})', values)
            added = len(self) - before
        return added
