"""Tests of the crash-safe latency store (ofa_jax.latency.store)."""

import os
import sqlite3
import subprocess
import sys
import textwrap

from absl.testing import absltest
import numpy as np

from ofa_jax import csvio
from ofa_jax import space
from ofa_jax.latency import store as store_lib

_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def _keys(n, device='dev', seed=0, batch=1):
    archs = space.unstack(space.sample_np(np.random.default_rng(seed), n, resolutions=(128, 160)))
    return [store_lib.RowKey(device, space.arch_key(a), batch, 'float32', 'p-test') for a in archs]


class StoreTest(absltest.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.create_tempdir().full_path
        self.path = os.path.join(self.dir, 'lat.sqlite')

    def test_unique_and_pending(self):
        keys = _keys(5)
        with store_lib.LatencyStore(self.path) as s:
            self.assertTrue(s.add(keys[0], 1.0))
            self.assertFalse(s.add(keys[0], 2.0))  # Same key: ignored, never duplicated.
            self.assertEqual(s.pending(keys + keys), keys[1:])
            self.assertLen(s, 1)
            self.assertEqual(s.rows()[0].latency_ms, 1.0)
        with store_lib.LatencyStore(self.path) as s:  # Reopen: still there.
            self.assertTrue(s.has(keys[0]))

    def test_meta_first_writer_wins_and_persists(self):
        with store_lib.LatencyStore(self.path) as s:
            self.assertIsNone(s.get_meta('gauge'))
            self.assertEqual(s.set_meta('gauge', '12.5'), '12.5')
            self.assertEqual(s.set_meta('gauge', '99'), '12.5')  # Kept.
        with store_lib.LatencyStore(self.path) as s:
            self.assertEqual(s.get_meta('gauge'), '12.5')
            self.assertEqual(s.set_meta('gauge', '7', overwrite=True), '7')
            self.assertIn(('gauge', '7'), s.meta_items('ga'))
            self.assertEqual(s.meta_items('x'), [])

    def test_other_batch_is_another_row(self):
        k = _keys(1)[0]
        with store_lib.LatencyStore(self.path) as s:
            s.add(k, 1.0)
            s.add(k._replace(batch=8), 5.0)
            s.add(k._replace(width=1.0), 0.8)
            self.assertLen(s, 3)

    def test_csv_round_trip(self):
        keys = _keys(20)
        lat = np.linspace(1.0, 9.5, 20)
        with store_lib.LatencyStore(self.path) as s:
            for k, v in zip(keys, lat):
                s.add(k, float(v), stats={'cv': 0.01}, cost={'flops': 1e6})
            out = os.path.join(self.dir, 'out.csv')
            self.assertEqual(s.export_ofa_csv(out, 'dev'), 20)
        table = csvio.read_ofa_csv(out)
        np.testing.assert_array_equal(table.latency_ms, lat)
        self.assertEqual([space.arch_key(a) for a in space.unstack(table.archs)],
                         [k.arch_key for k in keys])
        self.assertIn('protocol', table.extra)
        other = os.path.join(self.dir, 'other.sqlite')
        with store_lib.LatencyStore(other) as s2:
            self.assertEqual(s2.import_ofa_csv(out, 'dev', protocol='p-test'), (20, 0))
            self.assertEqual(s2.import_ofa_csv(out, 'dev', protocol='p-test'), (0, 20))
            archs, y = s2.load_arrays('dev')
            np.testing.assert_array_equal(y, lat)
            self.assertEqual(archs.kernel.shape, (20, 20))

    def test_bad_csv_rows(self):
        bad = os.path.join(self.dir, 'bad.csv')
        arch = space.format_child_arch(space.smallest(128))
        with open(bad, 'w') as f:
            f.write('child_arch,latency\n')
            f.write(f'"{arch}",1.5\n')
            f.write(f'"{arch}",-3\n')
        with store_lib.LatencyStore(self.path) as s:
            with self.assertRaisesRegex(ValueError, r'bad\.csv:3:.*latency'):
                s.import_ofa_csv(bad, 'dev')
            self.assertLen(s, 0)  # Nothing half-imported.

    def test_parquet_export(self):
        import pyarrow.parquet as pq
        with store_lib.LatencyStore(self.path) as s:
            for k in _keys(4):
                s.add(k, 2.0)
            p = os.path.join(self.dir, 'x.parquet')
            self.assertEqual(s.export_parquet(p), 4)
        t = pq.read_table(p)
        self.assertEqual(t.num_rows, 4)
        self.assertIn('child_arch', t.column_names)
        self.assertIn('latency_ms', t.column_names)

    def test_merge_without_loss_or_duplicates(self):
        a_path, b_path = os.path.join(self.dir, 'a.sqlite'), os.path.join(self.dir, 'b.sqlite')
        ka, kb = _keys(6, 'host-a', seed=1), _keys(6, 'host-b', seed=2)
        with store_lib.LatencyStore(a_path) as a:
            for k in ka:
                a.add(k, 1.0)
            a.add_device({'fingerprint_id': 'host-a', 'device_kind': 'cpu'})
        with store_lib.LatencyStore(b_path) as b:
            for k in kb + ka[:3]:  # Overlap of 3 rows.
                b.add(k, 1.0)
        with store_lib.LatencyStore(self.path) as m:
            self.assertEqual(m.merge_from(a_path), 6)
            self.assertEqual(m.merge_from(b_path), 6)
            self.assertEqual(m.merge_from(b_path), 0)
            self.assertEqual(m.keys(), set(ka) | set(kb))
            self.assertIn('host-a', m.devices())
            self.assertEqual(m.resolve_device('cpu'), 'host-a')

    def test_corrupt_store_fails_loudly_and_is_untouched(self):
        junk = b'\x00garbage' * 500
        with open(self.path, 'wb') as f:
            f.write(junk)
        with self.assertRaisesRegex(store_lib.StoreError, 'lat.sqlite'):
            store_lib.LatencyStore(self.path)
        with open(self.path, 'rb') as f:
            self.assertEqual(f.read(), junk)
        # A merge from a corrupt store adds nothing and harms nothing.
        good = os.path.join(self.dir, 'good.sqlite')
        with store_lib.LatencyStore(good) as g:
            g.add(_keys(1)[0], 1.0)
            with self.assertRaises(store_lib.StoreError):
                g.merge_from(self.path)
            self.assertLen(g, 1)

    def test_truncated_sqlite_fails_loudly(self):
        with store_lib.LatencyStore(self.path) as s:
            for k in _keys(50):
                s.add(k, 1.0, provenance={'pad': 'x' * 2000})
        with open(self.path, 'rb') as f:
            head = f.read(4096 + 100)
        broken = os.path.join(self.dir, 'broken.sqlite')
        with open(broken, 'wb') as f:
            f.write(head[:100] + b'\xff' * 4096)
        with self.assertRaises(store_lib.StoreError):
            s = store_lib.LatencyStore(broken)
            s.rows()

    def test_missing_folder(self):
        with self.assertRaisesRegex(store_lib.StoreError, 'does not exist'):
            store_lib.LatencyStore(os.path.join(self.dir, 'nope', 'x.sqlite'))

    def test_drift_flag_and_replace(self):
        keys = _keys(3)
        with store_lib.LatencyStore(self.path) as s:
            for k in keys:
                s.add(k, 1.0)
            self.assertEqual(s.set_drift(keys[:2]), 2)
            _, y = s.load_arrays('dev')
            self.assertLen(y, 1)
            s.replace(keys[0], 3.0)
            self.assertLen(s, 3)
            self.assertEqual(sorted(r.latency_ms for r in s.rows()), [1.0, 1.0, 3.0])

    def test_store_written_by_earlier_code(self):
        # Earlier code switched to WAL before creating the schema, so while its
        # writer is open the schema may live only in the -wal file.
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute('PRAGMA journal_mode = WAL')
        conn.executescript(store_lib._SCHEMA)  # pylint: disable=protected-access
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        try:
            with store_lib.LatencyStore(self.path, readonly=True) as r:
                self.assertLen(r, 0)
            with store_lib.LatencyStore(self.path) as s:
                s.add(_keys(1)[0], 1.0)
        finally:
            conn.close()
        with store_lib.LatencyStore(self.path, readonly=True) as r:
            self.assertEqual(r.mode, 'immutable')
            self.assertLen(r, 1)

    def test_validate_key_normalises(self):
        k = _keys(1)[0]
        odd = k._replace(batch=np.int64(8), width=1, num_classes=np.int32(10))
        self.assertEqual(store_lib.validate_key(odd), k._replace(batch=8, width=1.0,
                                                                 num_classes=10))
        with store_lib.LatencyStore(self.path) as s:
            s.add(odd, 1.0)
            self.assertTrue(s.has(odd))
            self.assertEqual(s.keys(), {store_lib.validate_key(odd)})

    def test_two_writer_processes(self):
        script = textwrap.dedent("""
            import sys
            import numpy as np
            from ofa_jax import space
            from ofa_jax.latency import store as store_lib
            path, seed = sys.argv[1], int(sys.argv[2])
            archs = space.unstack(space.sample_np(np.random.default_rng(seed), 150))
            s = store_lib.LatencyStore(path)
            for a in archs:
                s.add(store_lib.RowKey('dev', space.arch_key(a), 1, 'float32', 'p'), 1.0)
        """)
        env = dict(os.environ, PYTHONPATH=_ROOT, JAX_PLATFORMS='cpu')
        # Seeds 0 and 0 write the same rows at once (contention on every key), seed 1 others.
        procs = [
            subprocess.Popen([sys.executable, '-c', script, self.path,
                              str(seed)], env=env) for seed in (0, 0, 1)
        ]
        self.assertEqual([p.wait(timeout=120) for p in procs], [0, 0, 0])
        want = set()
        for seed in (0, 1):
            archs = space.unstack(space.sample_np(np.random.default_rng(seed), 150))
            want |= {space.arch_key(a) for a in archs}
        with store_lib.LatencyStore(self.path) as s:
            self.assertLen(s, len(want))
            self.assertEqual({k.arch_key for k in s.keys()}, want)


if __name__ == '__main__':
    absltest.main()
