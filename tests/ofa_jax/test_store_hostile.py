"""Hostile inputs for the latency store: nothing is accepted that should not be.

Every fixture is generated in a temporary folder. File cases check that the
error names the path and what the file is, that the file is byte for byte
unchanged (sha256) and that nothing (no -wal, -shm, -journal or .lock file)
appeared next to it; key cases check that the error names the field and the
value and that nothing was written.
"""

import hashlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import types
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from ofa_jax import space
from ofa_jax.latency import store as store_lib

_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
_ENV = dict(os.environ, PYTHONPATH=_ROOT, JAX_PLATFORMS='cpu')
_KEY = store_lib.RowKey('dev', space.arch_key(space.smallest(128)), 1, 'float32', 'p-test')


def _keys(n, device='dev', seed=0):
    archs = space.unstack(space.sample_np(np.random.default_rng(seed), n, resolutions=(128, 160)))
    return [store_lib.RowKey(device, space.arch_key(a), 1, 'float32', 'p-test') for a in archs]


def _snapshot(folder):
    """{name: sha256} of every entry of ``folder`` (folders as '<dir>')."""
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and not os.path.islink(path):
            with open(path, 'rb') as f:
                out[name] = hashlib.sha256(f.read()).hexdigest()
        else:
            out[name] = '<other>'
    return out


def _make_store(path, n=3, pad=0):
    with store_lib.LatencyStore(path) as s:
        for k in _keys(n):
            s.add(k, 1.5, provenance={'pad': 'x' * pad})
        s.add_device({'fingerprint_id': 'dev', 'device_kind': 'cpu'})


def _raw(path, *statements, wal=False):
    """Runs SQL on ``path`` with plain sqlite3 (another application's view)."""
    conn = sqlite3.connect(path, isolation_level=None)
    if wal:
        conn.execute('PRAGMA journal_mode = WAL')
    for s in statements:
        conn.execute(s)
    conn.close()


def _our_tables(version):
    meta = 'CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)'
    devices = 'CREATE TABLE devices (fingerprint_id TEXT, fingerprint_json TEXT, first_seen TEXT)'
    cols = ', '.join(f'{c} TEXT' for c in store_lib._COLUMNS)  # pylint: disable=protected-access
    out = [meta, devices, f'CREATE TABLE measurements (id INTEGER PRIMARY KEY, {cols})']
    if version is not None:
        out.append(f"INSERT INTO meta VALUES ('schema_version', '{version}')")
    return out


# -- fixtures: (writer, regex the message must match besides the path) --------


def _other_app(path):
    _raw(path, 'CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)',
         "INSERT INTO users VALUES (1, 'ada')", 'CREATE TABLE orders (id INTEGER)')


def _other_app_wal(path):
    _raw(path, 'CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)', wal=True)


def _no_tables(path):
    _raw(path, 'PRAGMA user_version = 7')


def _other_version(path):
    _raw(path, *_our_tables(2))


def _no_version(path):
    _raw(path, *_our_tables(None))


def _version_not_a_number(path):
    _raw(path, *_our_tables('one'))


def _meta_of_another_kind(path):
    _raw(path, 'CREATE TABLE meta (a, b)', 'INSERT INTO meta VALUES (1, 2)')


def _missing_columns(path):
    _raw(path, 'CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)',
         "INSERT INTO meta VALUES ('schema_version', '1')",
         'CREATE TABLE devices (fingerprint_id, fingerprint_json, first_seen)',
         'CREATE TABLE measurements (id INTEGER PRIMARY KEY, device, arch_key, latency_ms)')


def _our_store_next_version(path):
    _make_store(path)
    _raw(path, "UPDATE meta SET value = '2' WHERE key = 'schema_version'")


def _random_bytes(path):
    with open(path, 'wb') as f:
        f.write(np.random.default_rng(0).bytes(10000))


def _text_file(path):
    with open(path, 'w') as f:
        f.write('child_arch,latency\nthis is a CSV, not a store\n')


def _zeros(path):
    with open(path, 'wb') as f:
        f.write(b'\x00' * 8192)


def _magic_only(path):
    with open(path, 'wb') as f:
        f.write(b'SQLite format 3\x00')


def _short_header(path):
    with open(path, 'wb') as f:
        f.write(b'SQLite format 3\x00' + b'\x10\x00' * 20)


def _truncated_at_page(path):
    _make_store(path, n=40, pad=2000)
    with open(path, 'r+b') as f:
        f.truncate(2 * 4096)


def _truncated_mid_page(path):
    _make_store(path, n=40, pad=2000)
    size = os.path.getsize(path)
    with open(path, 'r+b') as f:
        f.truncate(size - 1000)


def _damaged_pages(path):
    _make_store(path, n=5)
    size = os.path.getsize(path)
    with open(path, 'r+b') as f:
        f.seek(4096)
        f.write(np.random.default_rng(1).bytes(size - 4096))


_FILE_CASES = (
    ('other_app', _other_app, r'another application \(tables: orders, users\)'),
    ('other_app_wal', _other_app_wal, r'another application \(tables: users\)'),
    ('sqlite_without_tables', _no_tables, 'without tables'),
    ('our_tables_other_version', _other_version, 'schema version 2; this code reads version 1'),
    ('our_tables_no_version', _no_version, 'no schema_version'),
    ('version_not_a_number', _version_not_a_number, "schema_version 'one', not a number"),
    ('meta_of_another_kind', _meta_of_another_kind, 'meta table is not a latency store'),
    ('missing_columns', _missing_columns, 'lacks the columns'),
    ('our_store_next_version', _our_store_next_version, 'schema version 2'),
    ('random_bytes', _random_bytes, 'not an SQLite database but binary data'),
    ('text_file', _text_file, "not an SQLite database but a text file \\(starting 'child_arch"),
    ('zeros', _zeros, 'not an SQLite database but binary data'),
    ('magic_only', _magic_only, 'truncated SQLite database'),
    ('short_header', _short_header, 'truncated SQLite database'),
    ('truncated_at_page', _truncated_at_page, 'truncated SQLite database .*header says'),
    ('truncated_mid_page', _truncated_mid_page, 'not a whole number of 4096-byte pages'),
    ('damaged_pages', _damaged_pages, 'damaged|malformed|not a latency store'),
)


def _cases_in_both_modes(cases):
    for name, *rest in cases:
        for readonly in (False, True):
            yield (f'{name}_{"readonly" if readonly else "writable"}', *rest, readonly)


class FileRefusalTest(parameterized.TestCase):
    """Anything that is not a store of this version is refused and left as it was."""

    def setUp(self):
        super().setUp()
        self.dir = self.create_tempdir().full_path
        self.path = os.path.join(self.dir, 'victim.db')

    def assert_refused(self, path, pattern, **kwargs):
        before = _snapshot(self.dir)
        with self.assertRaises(store_lib.StoreError) as ctx:
            store_lib.LatencyStore(path, **kwargs)
        message = str(ctx.exception)
        self.assertIn(path, message)
        self.assertRegex(message, pattern)
        self.assertNotIn('\n', message)
        self.assertEqual(_snapshot(self.dir), before)  # Same bytes, no sidecar files.
        return message

    @parameterized.named_parameters(*_cases_in_both_modes(_FILE_CASES))
    def test_refused_and_untouched(self, make, pattern, readonly):
        make(self.path)
        self.assertEqual(sorted(os.listdir(self.dir)), ['victim.db'])
        self.assert_refused(self.path, pattern, readonly=readonly)

    @parameterized.named_parameters(*_cases_in_both_modes(_FILE_CASES[:2] + _FILE_CASES[8:10]))
    def test_merge_from_refused_and_untouched(self, make, pattern, readonly):
        del readonly  # A merge always reads the other store read-only.
        make(self.path)
        target = os.path.join(self.create_tempdir().full_path, 'target.sqlite')
        _make_store(target, n=2)
        before = _snapshot(self.dir)
        with store_lib.LatencyStore(target) as t:
            with self.assertRaisesRegex(store_lib.StoreError,
                                        re.escape(self.path) + '.*' + pattern):
                t.merge_from(self.path)
            self.assertLen(t, 2)
        self.assertEqual(_snapshot(self.dir), before)

    def test_other_app_with_live_writer(self):
        """A WAL database another application holds open: its files stay as they are."""
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute('PRAGMA journal_mode = WAL')
        conn.execute('CREATE TABLE users (id INTEGER)')
        conn.execute('INSERT INTO users VALUES (1)')
        self.addCleanup(conn.close)
        names = sorted(os.listdir(self.dir))
        self.assertIn('victim.db-wal', names)
        before = {k: v for k, v in _snapshot(self.dir).items() if not k.endswith('-shm')}
        for readonly in (False, True):
            with self.assertRaisesRegex(store_lib.StoreError, 'another application'):
                store_lib.LatencyStore(self.path, readonly=readonly)
        self.assertEqual(sorted(os.listdir(self.dir)), names)
        after = {k: v for k, v in _snapshot(self.dir).items() if not k.endswith('-shm')}
        self.assertEqual(after, before)
        self.assertEqual(conn.execute('SELECT count(*) FROM users').fetchone()[0], 1)

    @parameterized.named_parameters(('writable', False), ('readonly', True))
    def test_directory_as_path(self, readonly):
        self.assert_refused(self.dir, 'is a folder', readonly=readonly)

    @parameterized.named_parameters(('writable', False), ('readonly', True))
    def test_fifo_as_path(self, readonly):
        os.mkfifo(self.path)
        self.assert_refused(self.path, 'not a regular file', readonly=readonly)

    @parameterized.named_parameters(('writable', False), ('readonly', True))
    def test_dangling_symlink(self, readonly):
        os.symlink(os.path.join(self.dir, 'elsewhere.sqlite'), self.path)
        self.assert_refused(self.path, 'dangling symbolic link', readonly=readonly)
        self.assertFalse(os.path.exists(os.path.join(self.dir, 'elsewhere.sqlite')))

    def test_symlink_to_other_app(self):
        target = os.path.join(self.dir, 'app.db')
        _other_app(target)
        os.symlink(target, self.path)
        self.assert_refused(self.path, 'another application')

    @parameterized.named_parameters(('writable', False), ('readonly', True))
    def test_missing_folder(self, readonly):
        path = os.path.join(self.dir, 'no-such-folder', 'x.sqlite')
        self.assert_refused(path, 'does not exist', readonly=readonly)


class ReadOnlyTest(parameterized.TestCase):
    """readonly=True creates nothing and needs no write access."""

    def setUp(self):
        super().setUp()
        self.dir = self.create_tempdir().full_path
        self.path = os.path.join(self.dir, 'lat.sqlite')

    def test_mistyped_path_leaves_nothing(self):
        _make_store(self.path)
        before = _snapshot(self.dir)
        typo = os.path.join(self.dir, 'lat.sqlit')
        with self.assertRaisesRegex(store_lib.StoreError, f'^no store at {re.escape(typo)}'):
            store_lib.LatencyStore(typo, readonly=True)
        self.assertEqual(_snapshot(self.dir), before)

    def test_empty_file_is_not_read_but_becomes_a_store_for_writing(self):
        open(self.path, 'wb').close()
        with self.assertRaisesRegex(store_lib.StoreError, re.escape(self.path) + '.*empty file'):
            store_lib.LatencyStore(self.path, readonly=True)
        self.assertEqual(os.path.getsize(self.path), 0)
        with store_lib.LatencyStore(self.path) as s:
            s.add(_KEY, 2.0)
        with store_lib.LatencyStore(self.path, readonly=True) as s:
            self.assertLen(s, 1)

    def _deny_writes(self, *paths):
        """Makes ``paths`` unwritable (for real, and for the store's check under root)."""
        for p in paths:
            mode = os.stat(p).st_mode
            os.chmod(p, 0o555 if os.path.isdir(p) else 0o444)
            self.addCleanup(os.chmod, p, mode)
        denied = {os.path.abspath(p) for p in paths}
        real = store_lib._can_write  # pylint: disable=protected-access
        fake = lambda p: os.path.abspath(p) not in denied and real(p)
        patcher = mock.patch.object(store_lib, '_can_write', fake)
        patcher.start()
        self.addCleanup(patcher.stop)

    def test_read_only_store_file(self):
        _make_store(self.path)
        before = _snapshot(self.dir)
        self._deny_writes(self.path)
        with self.assertRaisesRegex(store_lib.StoreError, re.escape(self.path) + '.*is read-only'):
            store_lib.LatencyStore(self.path)
        with store_lib.LatencyStore(self.path, readonly=True) as s:
            self.assertLen(s, 3)
            self.assertIn('dev', s.devices())
        self.assertEqual(_snapshot(self.dir), before)

    def test_read_only_folder_for_reading(self):
        _make_store(self.path)
        before = _snapshot(self.dir)
        self._deny_writes(self.dir)
        with store_lib.LatencyStore(self.path, readonly=True) as s:
            self.assertEqual(s.mode, 'immutable')
            self.assertLen(s.rows(), 3)
            _, y = s.load_arrays('dev')
            self.assertLen(y, 3)
        with self.assertRaisesRegex(store_lib.StoreError, 'folder .* is not writable'):
            store_lib.LatencyStore(self.path)
        self.assertEqual(_snapshot(self.dir), before)

    def test_writes_to_a_readonly_store_are_refused(self):
        _make_store(self.path)
        other = os.path.join(self.create_tempdir().full_path, 'other.sqlite')
        _make_store(other, n=2)
        before = _snapshot(self.dir)
        with store_lib.LatencyStore(self.path, readonly=True) as s:
            for write in (lambda: s.add(_KEY._replace(batch=9), 1.0), lambda: s.set_meta('x', '1'),
                          lambda: s.add_device({'fingerprint_id': 'z'}),
                          lambda: s.set_drift([_KEY]), lambda: s.merge_from(other),
                          lambda: s.writer_lease('x').__enter__()):
                with self.assertRaisesRegex(store_lib.StoreError, 'readonly=True'):
                    write()
        self.assertEqual(_snapshot(self.dir), before)

    def test_reader_beside_a_live_writer_sees_its_rows(self):
        with store_lib.LatencyStore(self.path) as w:
            w.add(_KEY, 3.0)
            names = sorted(os.listdir(self.dir))
            with store_lib.LatencyStore(self.path, readonly=True) as r:
                self.assertEqual(r.mode, 'ro')
                self.assertLen(r, 1)
                w.add(_KEY._replace(batch=2), 4.0)
                self.assertLen(r, 2)
            self.assertEqual(sorted(os.listdir(self.dir)), names)

    def test_reader_after_a_killed_writer(self):
        script = textwrap.dedent("""
            import sys, time
            from ofa_jax.latency import store as store_lib
            from ofa_jax import space
            s = store_lib.LatencyStore(sys.argv[1])
            s.add(store_lib.RowKey('dev', space.arch_key(space.smallest(128)), 1, 'float32',
                                   'p'), 1.0)
            print('ready', flush=True)
            time.sleep(600)
        """)
        p = subprocess.Popen([sys.executable, '-c', script, self.path],
                             env=_ENV,
                             stdout=subprocess.PIPE,
                             text=True)
        self.assertEqual(p.stdout.readline().strip(), 'ready')
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        p.stdout.close()
        with store_lib.LatencyStore(self.path, readonly=True) as s:
            self.assertLen(s, 1)
        with store_lib.LatencyStore(self.path) as s:
            self.assertLen(s, 1)

    def test_odd_characters_in_the_path(self):
        path = os.path.join(self.dir, 'we ?#%20ird&mode=ro.sqlite')
        with store_lib.LatencyStore(path) as s:
            s.add(_KEY, 1.0)
        with store_lib.LatencyStore(path, readonly=True) as s:
            self.assertLen(s, 1)
        self.assertEqual(os.listdir(self.dir), [os.path.basename(path)])


def _fake_result(key, latency_ms=2.0, **overrides):
    fields = dict(arch_key=key.arch_key,
                  batch=key.batch,
                  dtype=key.dtype,
                  protocol=key.protocol,
                  latency_ms=latency_ms,
                  stats={'cv': 0.01},
                  samples_ms=[latency_ms],
                  number=1,
                  lower_s=0.1,
                  compile_s=0.2,
                  time_s=0.3,
                  cost={'flops': 1.0},
                  started_at=None,
                  finished_at=None)
    fields.update(overrides)
    return types.SimpleNamespace(**fields)


_NON_CANONICAL = _KEY.arch_key[:9] + '7' + _KEY.arch_key[10:]  # An inactive block's kernel.

_BAD_KEYS = (
    ('device_empty', 'device', ''),
    ('device_spaces', 'device', ' dev'),
    ('device_newline', 'device', 'dev\nx'),
    ('device_none', 'device', None),
    ('arch_key_garbage', 'arch_key', 'garbage'),
    ('arch_key_short', 'arch_key', 'r128-d22222-k333-e333'),
    ('arch_key_bad_resolution', 'arch_key', 'r130' + _KEY.arch_key[4:]),
    ('arch_key_bad_kernel', 'arch_key', _KEY.arch_key.replace('k3', 'k9', 1)),
    ('arch_key_not_canonical', 'arch_key', _NON_CANONICAL),
    ('arch_key_int', 'arch_key', 128),
    ('batch_zero', 'batch', 0),
    ('batch_negative', 'batch', -4),
    ('batch_float', 'batch', 1.5),
    ('batch_bool', 'batch', True),
    ('batch_str', 'batch', '1'),
    ('dtype_unknown', 'dtype', 'int8'),
    ('dtype_empty', 'dtype', ''),
    ('protocol_empty', 'protocol', ''),
    ('protocol_none', 'protocol', None),
    ('width_other', 'width', 1.1),
    ('width_nan', 'width', float('nan')),
    ('width_str', 'width', '1.2'),
    ('num_classes_zero', 'num_classes', 0),
    ('num_classes_float', 'num_classes', 10.0),
    ('depthwise_auto', 'depthwise', 'auto'),
    ('depthwise_unknown', 'depthwise', 'winograd'),
)

_BAD_LATENCIES = (
    ('nan', float('nan')),
    ('inf', float('inf')),
    ('minus_inf', float('-inf')),
    ('zero', 0.0),
    ('negative', -1.0),
    ('below_a_nanosecond', 1e-9),
    ('above_1e7_ms', 1e8),
    ('str', '3.0'),
    ('none', None),
    ('bool', True),
)


class ValidationTest(parameterized.TestCase):
    """Bad keys and latencies are a ValueError naming field and value; nothing is written."""

    def setUp(self):
        super().setUp()
        self.path = os.path.join(self.create_tempdir().full_path, 'lat.sqlite')
        self.store = store_lib.LatencyStore(self.path)
        self.addCleanup(self.store.close)
        self.store.add(_KEY._replace(batch=64), 5.0)  # One good row that must survive.

    def assert_nothing_written(self):
        self.assertEqual([r.key.batch for r in self.store.rows()], [64])
        self.assertEqual(self.store.rows()[0].latency_ms, 5.0)

    @parameterized.named_parameters(*_BAD_KEYS)
    def test_bad_key_field(self, field, value):
        bad = _KEY._replace(**{field: value})
        pattern = f'^{field}: {re.escape(repr(value))}'
        for write in (lambda: self.store.add(bad, 1.0),
                      lambda: self.store.add_result(bad, _fake_result(_KEY), provenance={}),
                      lambda: self.store.replace(bad, 1.0), lambda: store_lib.validate_key(bad)):
            with self.assertRaisesRegex(ValueError, pattern):
                write()
        self.assert_nothing_written()

    @parameterized.named_parameters(*_BAD_LATENCIES)
    def test_bad_latency(self, value):
        pattern = f'^latency_ms: {re.escape(repr(value))} is not'
        for write in (lambda: self.store.add(_KEY, value),
                      lambda: self.store.add_result(_KEY, _fake_result(_KEY, value), provenance={}),
                      lambda: self.store.replace(_KEY._replace(batch=64), value)):
            with self.assertRaisesRegex(ValueError, pattern):
                write()
        self.assert_nothing_written()

    def test_bounds_are_allowed(self):
        self.store.add(_KEY, store_lib.MIN_LATENCY_MS)
        self.store.add(_KEY._replace(batch=2), store_lib.MAX_LATENCY_MS)
        self.assertLen(self.store, 3)

    @parameterized.named_parameters(
        ('resolution', dict(resolution=160), '^resolution: 160 is not allowed'),
        ('lower_s', dict(lower_s=-1.0), '^lower_s: -1.0'),
        ('compile_s', dict(compile_s=float('nan')), '^compile_s: nan'),
        ('stats', dict(stats=[1, 2]), '^stats: '),
        ('source', dict(source=''), "^source: ''"),
        ('finished_at', dict(finished_at=12), '^finished_at: 12'),
    )
    def test_bad_other_field(self, kwargs, pattern):
        with self.assertRaisesRegex(ValueError, pattern):
            self.store.add(_KEY, 1.0, **kwargs)
        with self.assertRaisesRegex(ValueError, pattern):
            self.store.replace(_KEY._replace(batch=64), 1.0, **kwargs)
        self.assert_nothing_written()

    @parameterized.named_parameters(('arch_key', 'arch_key', _keys(2, seed=5)[1].arch_key),
                                    ('batch', 'batch', 8), ('dtype', 'dtype', 'bfloat16'),
                                    ('protocol', 'protocol', 'other'))
    def test_result_of_another_key(self, field, value):
        result = _fake_result(_KEY, **{field: value})
        with self.assertRaisesRegex(ValueError, f'^result.{field}: {re.escape(repr(value))}'):
            self.store.add_result(_KEY, result, provenance={})
        self.assert_nothing_written()

    def test_schema_version_is_not_a_meta_value(self):
        with self.assertRaisesRegex(ValueError, 'schema_version'):
            self.store.set_meta('schema_version', '2', overwrite=True)
        self.assertEqual(self.store.get_meta('schema_version'), '1')

    def test_bad_fingerprint(self):
        for fp in ({}, {'fingerprint_id': ''}, 'cpu'):
            with self.assertRaisesRegex(ValueError, '^fingerprint'):
                self.store.add_device(fp)
        self.assertEqual(self.store.devices(), {})


_BAD_MERGE_ROWS = (
    ('latency_negative', 'latency_ms', -3.0),
    ('latency_huge', 'latency_ms', 1e12),
    ('latency_text', 'latency_ms', 'abc'),
    ('width', 'width', 1.1),
    ('arch_key', 'arch_key', 'bogus'),
    ('batch', 'batch', 0),
    ('dtype', 'dtype', 'int4'),
    ('protocol', 'protocol', ''),
    ('device', 'device', ''),
    ('resolution', 'resolution', 999),
    ('stats_json', 'stats_json', '{not json'),
    ('drift', 'drift', 7),
)


class MergeTest(parameterized.TestCase):
    """A merge validates every incoming row first: one bad row and nothing is merged."""

    def setUp(self):
        super().setUp()
        self.dir = self.create_tempdir().full_path
        self.target = os.path.join(self.dir, 'target.sqlite')
        self.source = os.path.join(self.create_tempdir().full_path, 'source.sqlite')
        with store_lib.LatencyStore(self.target) as t:
            t.add(_KEY, 1.0)
        with store_lib.LatencyStore(self.source) as s:
            for k in _keys(5, device='host-b', seed=3):
                s.add(k, 2.0)
            s.add_device({'fingerprint_id': 'host-b'})

    def assert_merge_refused(self, pattern):
        before = _snapshot(os.path.dirname(self.source))
        with store_lib.LatencyStore(self.target) as t:
            with self.assertRaisesRegex(ValueError, pattern):
                t.merge_from(self.source)
            self.assertEqual(t.keys(), {_KEY})
            self.assertEqual(t.devices(), {})
        self.assertEqual(_snapshot(os.path.dirname(self.source)), before)

    @parameterized.named_parameters(*_BAD_MERGE_ROWS)
    def test_one_bad_row(self, column, value):
        conn = sqlite3.connect(self.source, isolation_level=None)
        conn.execute(f'UPDATE measurements SET {column} = ? WHERE id = 4', (value,))
        conn.close()
        self.assert_merge_refused(f'^merge from {re.escape(self.source)}: measurement id 4: '
                                  f'{column}: {re.escape(repr(value))[:20]}.*nothing was merged')

    def test_bad_device(self):
        conn = sqlite3.connect(self.source, isolation_level=None)
        conn.execute("UPDATE devices SET fingerprint_json = 'nope'")
        conn.close()
        self.assert_merge_refused(f"^merge from {re.escape(self.source)}: device 'host-b': "
                                  'fingerprint_json')

    def test_missing_source_creates_nothing(self):
        missing = os.path.join(self.dir, 'typo.sqlite')
        with store_lib.LatencyStore(self.target) as t:
            with self.assertRaisesRegex(store_lib.StoreError, f'no store at {re.escape(missing)}'):
                t.merge_from(missing)
        self.assertFalse(os.path.exists(missing))

    def test_good_merge_after_a_refused_one(self):
        with store_lib.LatencyStore(self.target) as t:
            self.assertEqual(t.merge_from(self.source), 5)
            self.assertEqual(t.merge_from(self.source), 0)
            self.assertIn('host-b', t.devices())


_HOLDER = textwrap.dedent("""
    import sys, time
    from ofa_jax.latency import store as store_lib
    with store_lib.LatencyStore(sys.argv[1]) as s:
        with s.writer_lease('holder under test'):
            print('held', flush=True)
            time.sleep(600)
""")

_CONTENDER = textwrap.dedent("""
    import sys
    from ofa_jax.latency import store as store_lib
    with store_lib.LatencyStore(sys.argv[1]) as s:
        try:
            with s.writer_lease('contender'):
                print('acquired', flush=True)
        except store_lib.StoreError as err:
            print(err, flush=True)
            sys.exit(3)
""")


def _reap(p):
    if p.poll() is None:
        p.kill()
    p.wait()
    p.stdout.close()
    p.stderr.close()


class WriterLeaseTest(absltest.TestCase):
    """One campaign at a time per store; a dead holder frees the lease."""

    def setUp(self):
        super().setUp()
        self.dir = self.create_tempdir().full_path
        self.path = os.path.join(self.dir, 'lat.sqlite')
        _make_store(self.path)

    def _start_holder(self):
        p = subprocess.Popen([sys.executable, '-c', _HOLDER, self.path],
                             env=_ENV,
                             stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE,
                             text=True)
        self.addCleanup(_reap, p)
        line = p.stdout.readline().strip()
        if line != 'held':
            self.fail(f'holder did not start: {line!r} {p.stderr.read()[-2000:]}')
        return p

    def test_held_by_another_process_then_freed_by_sigkill(self):
        holder = self._start_holder()
        with store_lib.LatencyStore(self.path) as s:
            self.assertEqual(s.lease_holder()['pid'], holder.pid)
            pattern = (f'^store {re.escape(self.path)} is in use by pid {holder.pid} on '
                       f'{re.escape(socket.gethostname())} since .* \\(holder under test\\); run '
                       'campaigns on one store one at a time, or give each its own '
                       '--config.store and merge them$')
            with self.assertRaisesRegex(store_lib.StoreError, pattern):
                with s.writer_lease('second campaign'):
                    self.fail('the lease was granted twice')
            s.add(_KEY, 1.0)  # The lease is advisory: the store itself still works.
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=60)
            self.assertIsNone(s.lease_holder())
            with s.writer_lease('after the kill') as info:
                self.assertEqual(info['pid'], os.getpid())
                self.assertEqual(s.lease_holder()['owner'], 'after the kill')
            self.assertIsNone(s.lease_holder())

    def test_second_process_is_refused(self):
        with store_lib.LatencyStore(self.path) as s, s.writer_lease('first campaign'):
            r = subprocess.run([sys.executable, '-c', _CONTENDER, self.path],
                               env=_ENV,
                               capture_output=True,
                               text=True,
                               timeout=120)
            self.assertEqual(r.returncode, 3, r.stderr[-2000:])
            self.assertIn(f'in use by pid {os.getpid()}', r.stdout)
            self.assertIn('(first campaign)', r.stdout)
        r = subprocess.run([sys.executable, '-c', _CONTENDER, self.path],
                           env=_ENV,
                           capture_output=True,
                           text=True,
                           timeout=120)
        self.assertEqual((r.returncode, r.stdout.strip()), (0, 'acquired'), r.stderr[-2000:])

    def test_second_lease_in_one_process_is_refused(self):
        with store_lib.LatencyStore(self.path) as a, store_lib.LatencyStore(self.path) as b:
            with a.writer_lease('a'):
                with self.assertRaisesRegex(store_lib.StoreError, f'pid {os.getpid()} .*\\(a\\)'):
                    with b.writer_lease('b'):
                        pass
            with b.writer_lease('b'):
                self.assertEqual(a.lease_holder()['owner'], 'b')

    def test_plain_opens_take_no_lease(self):
        with store_lib.LatencyStore(self.path) as s:
            self.assertIsNone(s.lease_holder())
            s.add(_KEY._replace(batch=3), 1.0)
        self.assertFalse(os.path.exists(self.path + store_lib.LOCK_SUFFIX))


if __name__ == '__main__':
    absltest.main()
