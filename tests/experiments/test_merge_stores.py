"""Tests of merging latency stores (ofa_jax/latency/merge.py, experiments/merge_stores.py)."""

import hashlib
import json
import os
import shutil
import tempfile
import sqlite3
import subprocess
import sys

from absl.testing import absltest

from experiments.configs import measure_latency as config_lib
from experiments.jobs import measure_latency as campaign
from ofa_jax.latency import fingerprint as fp_lib
from ofa_jax.latency import merge as merge_lib
from ofa_jax.latency import store as store_lib

_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
NUM_ARCHS = 3


def _config(store, shard_index=0, num_shards=1):
    """A tiny campaign (resolution 128, 10 classes, 3 timed runs, unpaired)."""
    c = config_lib.get_config()
    c.num_archs = NUM_ARCHS
    c.resolutions = (128,)
    c.num_classes = 10
    c.microbenchmarks = False
    c.progress = False
    c.protocol.warmup = 1
    c.protocol.repeats = 3
    c.protocol.min_time = 0.0
    c.protocol.number = 1
    c.protocol.paired = False
    c.drift.interval = 0
    c.store = store
    c.shard_index = shard_index
    c.num_shards = num_shards
    return c


def _digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def _merge_cli(inputs, out, workdir):
    return subprocess.run([
        sys.executable, '-m', 'experiments.merge_stores', f'--config.inputs={",".join(inputs)}',
        f'--config.out={out}', f'--workdir={workdir}'
    ],
                          cwd=_ROOT,
                          env=dict(os.environ, PYTHONPATH=_ROOT, JAX_PLATFORMS='cpu'),
                          capture_output=True,
                          text=True,
                          timeout=120)


def _arch_keys(path):
    with store_lib.LatencyStore(path, readonly=True) as st:
        return sorted(r.key.arch_key for r in st.rows())


class MergeStoresTest(absltest.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # One folder per class and process: pytest-xdist may run this class's
        # tests in both workers, each with its own setUpClass.
        os.makedirs(absltest.get_default_test_tmpdir(), exist_ok=True)
        cls.dir = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir(), prefix='merge_stores.')
        cls.shards = []
        for i in range(2):
            path = os.path.join(cls.dir, f'shard_{i}.sqlite')
            summary = campaign.run(_config(path, i, 2), os.path.join(cls.dir, f'w{i}'))
            assert summary['measured'] >= 1, summary
            cls.shards.append(path)
        plan = campaign.plan(_config(os.path.join(cls.dir, 'unused.sqlite')), cls.dir)
        from ofa_jax import space  # pylint: disable=g-import-not-at-top
        cls.unsharded = sorted(space.arch_key(a) for a in plan.archs)

    def _copy(self, src, name):
        dst = os.path.join(self.create_tempdir().full_path, name)
        shutil.copy(src, dst)
        return dst

    def test_two_shards_merge_to_the_unsharded_arch_set(self):
        workdir = self.create_tempdir().full_path
        out = os.path.join(workdir, 'merged.sqlite')
        proc = _merge_cli(self.shards, out, workdir)
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        self.assertEqual(_arch_keys(out), self.unsharded)
        self.assertLen(self.unsharded, NUM_ARCHS)
        self.assertEqual(summary['added'], NUM_ARCHS)
        self.assertEqual(summary['duplicates'], 0)
        self.assertEqual(summary['rows'], NUM_ARCHS)
        self.assertEqual([e['store'] for e in summary['inputs']], self.shards)
        with open(os.path.join(workdir, 'merge.json')) as f:
            self.assertEqual(json.load(f)['added'], NUM_ARCHS)
        # Provenance and fingerprints come along as measured.
        with store_lib.LatencyStore(out, readonly=True) as merged:
            by_key = {r.key: r for r in merged.rows()}
            devices = merged.devices()
        for shard in self.shards:
            with store_lib.LatencyStore(shard, readonly=True) as st:
                self.assertEqual(set(st.devices()), set(devices))
                for row in st.rows():
                    self.assertEqual(by_key[row.key].provenance, row.provenance)
                    self.assertEqual(by_key[row.key].latency_ms, row.latency_ms)
                    self.assertEqual(row.provenance['fingerprint_id'], row.key.device)

    def test_merging_the_same_store_twice_adds_nothing(self):
        out = os.path.join(self.create_tempdir().full_path, 'merged.sqlite')
        first = merge_lib.merge_stores(self.shards, out)
        self.assertEqual(first['added'], NUM_ARCHS)
        again = merge_lib.merge_stores(self.shards, out)
        self.assertEqual(again['added'], 0)
        self.assertEqual(again['duplicates'], NUM_ARCHS)
        self.assertEqual(again['rows'], NUM_ARCHS)
        twice = merge_lib.merge_stores([self.shards[0], self.shards[0]],
                                       os.path.join(self.create_tempdir().full_path, 'm.sqlite'))
        n0 = len(_arch_keys(self.shards[0]))
        self.assertEqual([e['added'] for e in twice['inputs']], [n0, 0])
        self.assertEqual([e['duplicates'] for e in twice['inputs']], [0, n0])
        self.assertEqual(twice['rows'], n0)

    def test_an_arch_measured_in_two_shards_is_kept_once(self):
        other = os.path.join(self.create_tempdir().full_path, 'other.sqlite')
        with store_lib.LatencyStore(self.shards[0], readonly=True) as st:
            row = st.rows()[0]
            fp = st.devices()[row.key.device]
        with store_lib.LatencyStore(other) as st:
            st.add_device(fp)
            st.add(row.key, row.latency_ms * 2, provenance=dict(row.provenance, pid=-1))
        out = os.path.join(self.create_tempdir().full_path, 'merged.sqlite')
        summary = merge_lib.merge_stores([self.shards[0], other], out)
        self.assertEqual(summary['inputs'][1]['duplicates'], 1)
        self.assertEqual(summary['inputs'][1]['added'], 0)
        with store_lib.LatencyStore(out, readonly=True) as st:
            kept = [r for r in st.rows() if r.key == row.key]
        self.assertLen(kept, 1)
        self.assertEqual(kept[0].latency_ms, row.latency_ms)  # The first copy wins.

    def test_conflicting_protocol_is_refused_and_the_output_left_unchanged(self):
        workdir = self.create_tempdir().full_path
        out = os.path.join(workdir, 'merged.sqlite')
        merge_lib.merge_stores([self.shards[0]], out)
        before = _digest(out)
        # A store whose rows say the same protocol id was another protocol.
        bad = self._copy(self.shards[1], 'conflicting.sqlite')
        con = sqlite3.connect(bad)
        rows = con.execute('SELECT id, protocol, provenance_json FROM measurements').fetchall()
        for rid, _, blob in rows:
            prov = json.loads(blob)
            prov['protocol']['repeats'] = 30
            con.execute('UPDATE measurements SET provenance_json = ? WHERE id = ?',
                        (json.dumps(prov), rid))
        con.commit()
        con.close()
        protocol = rows[0][1]
        proc = _merge_cli([self.shards[0], bad], out, workdir)
        self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
        self.assertNotIn('Traceback', proc.stderr)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith('error:')]
        self.assertLen(errors, 1, proc.stderr)
        self.assertIn(bad, errors[0])
        self.assertIn(protocol, errors[0])
        self.assertIn('conflict', errors[0])
        self.assertEqual(_digest(out), before)
        self.assertEqual(_arch_keys(out), _arch_keys(self.shards[0]))
        # Nothing is created where the output did not exist either.
        fresh = os.path.join(workdir, 'fresh.sqlite')
        with self.assertRaisesRegex(merge_lib.MergeConflict, protocol):
            merge_lib.merge_stores([self.shards[0], bad], fresh)
        self.assertFalse(os.path.exists(fresh))

    def test_conflicting_fingerprint_is_refused(self):
        with store_lib.LatencyStore(self.shards[1], readonly=True) as st:
            row = st.rows()[0]
            fp = dict(st.devices()[row.key.device])
        fp['jax_version'] = '0.0.1'  # Same id, other identity: a conflict.
        bad = os.path.join(self.create_tempdir().full_path, 'other_device.sqlite')
        with store_lib.LatencyStore(bad) as st:
            st.add_device(fp)
            st.add(row.key, row.latency_ms)
        self.assertNotEqual(fp_lib.fingerprint_id(fp), row.key.device)
        out = os.path.join(self.create_tempdir().full_path, 'merged.sqlite')
        merge_lib.merge_stores([self.shards[0]], out)
        before = _digest(out)
        with self.assertRaisesRegex(merge_lib.MergeConflict,
                                    f'store {bad}: device fingerprint {row.key.device}'):
            merge_lib.merge_stores([bad], out)
        self.assertEqual(_digest(out), before)

    def test_gauge_baselines_are_copied_and_mismatches_reported(self):
        a = self._copy(self.shards[0], 'a.sqlite')
        b = self._copy(self.shards[1], 'b.sqlite')
        key = merge_lib.GAUGE_PREFIX + 'dev/ref/b1/float32/w1.2/c10/conv'
        for path, value in ((a, '20.0'), (b, '21.0')):
            with store_lib.LatencyStore(path) as st:
                st.set_meta(key, value)
        out = os.path.join(self.create_tempdir().full_path, 'merged.sqlite')
        summary = merge_lib.merge_stores([a, b], out)
        self.assertEqual(summary['gauges_added'], 1)
        self.assertEqual(summary['gauge_mismatches'], [{
            'key': key,
            'kept': 20.0,
            'other': 21.0,
            'store': b
        }])
        with store_lib.LatencyStore(out, readonly=True) as st:
            self.assertEqual(st.get_meta(key), '20.0')

    def test_bad_inputs(self):
        out = os.path.join(self.create_tempdir().full_path, 'merged.sqlite')
        with self.assertRaisesRegex(ValueError, 'is the output store'):
            merge_lib.merge_stores([self.shards[0], out], out)
        text = os.path.join(self.create_tempdir().full_path, 'notes.sqlite')
        with open(text, 'w') as f:
            f.write('hello\n')
        with self.assertRaisesRegex(store_lib.StoreError, 'notes.sqlite'):
            merge_lib.merge_stores([text], out)
        self.assertFalse(os.path.exists(out))


if __name__ == '__main__':
    absltest.main()
