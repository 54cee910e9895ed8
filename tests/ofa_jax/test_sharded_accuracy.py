"""Tests for ofa_jax.sharded_accuracy: sharded masked-supernet accuracy and its store.

The device tests run once in a subprocess with two forced XLA:CPU devices
(``XLA_FLAGS`` must be set before jax is imported) and report JSON; the
store tests run here with a stand-in evaluator (nothing to compile).
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest
import numpy as np

from ofa_jax import accuracy_data, space
from ofa_jax import sharded_accuracy as sa

# Tiny setup: width 1.0, 10 classes (cifar10 mock labels are 0..9), 32x32
# images, batches of 4 (2 rows per device), 2 calibration batches and 10
# evaluation examples (so the last eval batch is padded).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXTRACTED = (0, 2)  # archs also run through accuracy_data (a compile each: keep few).
SETUP = dict(calib_batches=2, batch_size=4, num_eval=10, image_size=32, seed=0)
NUM_MOCK = 16
# Tests only: cheaper LLVM code generation (compiles dominate on 2 cores).
FAST_XLA = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'


def _archs():
    rng = np.random.default_rng(3)
    return [space.smallest(128), space.largest(128)
           ] + [space.sample_np(rng, resolutions=(128,)) for _ in range(2)]


def _worker(out_path: str, store_path: str) -> None:
    """Runs in the 2-device subprocess; writes everything the tests check to ``out_path``."""
    import socket

    import jax
    import tensorflow_datasets as tfds

    from ofa_jax import subnet, supernet

    with socket.socket() as s:  # a free port for the single-process coordinator.
        s.bind(('localhost', 0))
        port = s.getsockname()[1]
    sa.initialize_distributed(f'localhost:{port}', num_processes=1, process_id=0)
    sa.initialize_distributed()  # a second call is a no-op.
    out = {'devices': len(jax.devices()), 'process_count': jax.process_count(), 'seconds': {}}
    net = supernet.build_supernet(1.0, num_classes=10, depthwise='conv')
    variables = subnet.init_variables(net, (1, 32, 32, 3), seed=0, arch=space.smallest(128))
    # Move the running statistics away from (0, 1), so that keeping or
    # replacing them shows in the outputs.
    variables = dict(variables,
                     batch_stats=jax.tree_util.tree_map(lambda v: v * 0.5 + 0.25,
                                                        variables['batch_stats']))
    archs = _archs()
    with tfds.testing.mock_data(num_examples=NUM_MOCK):
        train = tfds.data_source('cifar10', split='train')
        val = tfds.data_source('cifar10', split='test')

        def run(mesh, store=None):
            t = time.time()
            ev = sa.ShardedEvaluator(net, variables, mesh)
            recs = sa.evaluate_archs(ev,
                                     archs,
                                     train_source=train,
                                     eval_source=val,
                                     store=store,
                                     cache_images=True,
                                     **SETUP)
            return ev, recs, time.time() - t

        ev2, recs2, out['seconds']['two_devices'] = run(sa.data_mesh(), store_path)
        out['two'] = [r.accuracy for r in recs2]
        out['num_examples'] = [r.num_examples for r in recs2]
        out['trace_counts'] = [[k[0], list(k[1]), n] for k, n in ev2.trace_counts.items()]
        out['mesh_size'] = ev2.num_devices
        out['local_rows'] = [ev2.local_rows(4).start, ev2.local_rows(4).stop]
        try:
            ev2.local_rows(3)
            out['odd_batch_refused'] = False
        except ValueError:
            out['odd_batch_refused'] = True
        ev_again, recs_again, out['seconds']['rerun'] = run(sa.data_mesh(), store_path)
        out['rerun'] = [r.accuracy for r in recs_again]
        out['rerun_traces'] = sum(ev_again.trace_counts.values())

        ev1, recs1, out['seconds']['one_device'] = run(sa.data_mesh(jax.devices()[:1]))
        out['one'] = [r.accuracy for r in recs1]
        # Re-calibrated statistics of one arch on 2 devices vs 1 (strongest check).
        calib_idx = accuracy_data.calibration_indices(len(train), 2, 4, 0)
        stats, first = [], []
        for ev in (ev2, ev1):
            xs = [x for x, _ in accuracy_data.batches(train, calib_idx, 32, 4)]
            v = ev.recalibrate(archs[2], xs, 4)
            stats.append(jax.tree_util.tree_leaves(v['batch_stats']))
            first.append(sa.host_value(v['batch_stats']['first_conv']['bn']['var']))
        # The first BatchNorm sees the raw images: a per-device (not global)
        # statistic would differ by O(1) here, rounding only by ~1e-7.
        out['first_bn_rel_diff'] = float(np.max(np.abs(first[0] - first[1]) / np.abs(first[1])))
        # Largest difference relative to the leaf's scale (variances reach ~30).
        out['stats_rel_diff'] = max(
            float(
                np.max(np.abs(sa.host_value(a) - sa.host_value(b))) /
                max(1.0, np.max(np.abs(sa.host_value(b))))) for a, b in zip(*stats))
        out['stats_changed'] = max(
            float(np.max(np.abs(sa.host_value(a) - np.asarray(b))))
            for a, b in zip(stats[0], jax.tree_util.tree_leaves(variables['batch_stats'])))

        t = time.time()
        ref = accuracy_data.build_dataset(variables, [archs[i] for i in EXTRACTED],
                                          train_source=train,
                                          eval_source=val,
                                          width=1.0,
                                          depthwise='conv',
                                          **SETUP)
        out['seconds']['extracted'] = time.time() - t
        out['extracted'] = [r.accuracy for r in ref]
    with open(out_path, 'w') as f:
        json.dump(out, f)


def _multihost_worker(process_id: int, num_processes: int, port: int, out_path: str,
                      store_path: str) -> None:
    """One of ``num_processes`` CPU "hosts" (one device each, gloo collectives)."""
    import jax
    import tensorflow_datasets as tfds

    from ofa_jax import subnet, supernet

    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    sa.initialize_distributed(f'localhost:{port}', num_processes, process_id)
    net = supernet.build_supernet(1.0, num_classes=10, depthwise='conv')
    variables = subnet.init_variables(net, (1, 32, 32, 3), seed=0, arch=space.smallest(128))
    variables = dict(variables,
                     batch_stats=jax.tree_util.tree_map(lambda v: v * 0.5 + 0.25,
                                                        variables['batch_stats']))
    with tfds.testing.mock_data(num_examples=NUM_MOCK):
        train = tfds.data_source('cifar10', split='train')
        val = tfds.data_source('cifar10', split='test')
        ev = sa.ShardedEvaluator(net, variables)
        recs = sa.evaluate_archs(ev,
                                 _archs(),
                                 train_source=train,
                                 eval_source=val,
                                 store=store_path,
                                 **SETUP)
    rows = ev.local_rows(SETUP['batch_size'])
    with open(out_path, 'w') as f:
        json.dump(
            {
                'devices': len(jax.devices()),
                'local_devices': len(jax.local_devices()),
                'rows': [rows.start, rows.stop],
                'accuracies': [r.accuracy for r in recs],
                'traces': sum(ev.trace_counts.values()),
            }, f)


def _worker_env(**extra):
    return dict(os.environ,
                JAX_PLATFORMS='cpu',
                PYTHONPATH=os.pathsep.join([ROOT] + sys.path),
                **extra)


class ShardedEvaluationTest(absltest.TestCase):
    """Two forced CPU devices in a subprocess; one run shared by the tests."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.TemporaryDirectory()
        out = os.path.join(cls.tmp.name, 'out.json')
        cls.store_path = os.path.join(cls.tmp.name, 'acc.jsonl')
        env = _worker_env(XLA_FLAGS=f'--xla_force_host_platform_device_count=2 {FAST_XLA}',
                          SHARDED_ACCURACY_WORKER='devices')
        proc = subprocess.run([sys.executable, __file__, out, cls.store_path],
                              env=env,
                              cwd=ROOT,
                              capture_output=True,
                              text=True,
                              timeout=600)
        if proc.returncode:
            raise AssertionError(f'worker failed:\n{proc.stderr[-4000:]}')
        with open(out) as f:
            cls.out = json.load(f)
        print('sharded accuracy worker:', json.dumps(cls.out), file=sys.stderr)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()
        super().tearDownClass()

    def test_two_devices_one_host(self):
        self.assertEqual(self.out['devices'], 2)
        self.assertEqual(self.out['mesh_size'], 2)
        self.assertEqual(self.out['process_count'], 1)
        self.assertEqual(self.out['local_rows'], [0, 4])  # one host feeds the whole batch.
        self.assertTrue(self.out['odd_batch_refused'])  # 3 rows do not split over 2 devices.

    def test_sharded_equals_one_device(self):
        np.testing.assert_allclose(self.out['two'], self.out['one'], atol=1e-6)
        self.assertEqual(self.out['num_examples'], [10] * 4)
        # The re-calibrated statistics agree to float rounding: the first
        # BatchNorm to ~1e-7 (so its batch statistic is global, not per
        # device), and every one to ~3e-5 of its scale, as rounding grows
        # through 20 random-init blocks in train mode on batches of 4 ...
        self.assertLess(self.out['first_bn_rel_diff'], 1e-5)
        self.assertLess(self.out['stats_rel_diff'], 1e-3)
        # ... and the re-calibration really replaced the stored statistics.
        self.assertGreater(self.out['stats_changed'], 0.1)

    def test_one_trace_per_input_shape(self):
        counts = {(k, tuple(s)): n for k, s, n in self.out['trace_counts']}
        self.assertEqual(counts, {
            ('calibrate', (4, 32, 32, 3)): 1,
            ('evaluate', (4, 32, 32, 3)): 1,
            ('finalize', ()): 1,
        })

    def test_rerun_evaluates_nothing(self):
        self.assertEqual(self.out['rerun_traces'], 0)
        self.assertEqual(self.out['rerun'], self.out['two'])
        store = sa.AccuracyStore(self.store_path)
        self.assertEqual(store.keys(), [space.arch_key(a) for a in _archs()])
        self.assertEqual([r['accuracy'] for r in store.rows()], self.out['two'])

    def test_agrees_with_extracted_subnets(self):
        # Same batches, same statistics definition; the two programs differ
        # only in float rounding (masked 7x7 vs exact k x k kernels), so the
        # accuracies agree exactly on these 10 examples.
        np.testing.assert_allclose([self.out['two'][i] for i in EXTRACTED],
                                   self.out['extracted'],
                                   atol=1e-6)


@absltest.skipUnless(
    os.environ.get('OFA_JAX_MULTIHOST_TEST'),
    'two CPU processes compile the supernet (~30 s more); set OFA_JAX_MULTIHOST_TEST=1')
class TwoProcessTest(absltest.TestCase):
    """Two processes joined by jax.distributed, one CPU device each: real multi-host feeding."""

    def _launch(self, port, tmp, store, tag):
        procs = []
        for pid in range(2):
            procs.append(
                subprocess.Popen([
                    sys.executable, __file__,
                    str(pid), '2',
                    str(port),
                    os.path.join(tmp, f'{tag}{pid}.json'), store
                ],
                                 env=_worker_env(XLA_FLAGS=FAST_XLA,
                                                 SHARDED_ACCURACY_WORKER='multihost'),
                                 cwd=ROOT,
                                 stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE,
                                 text=True))
        for p in procs:
            _, err = p.communicate(timeout=600)
            self.assertEqual(p.returncode, 0, err[-3000:])
        outs = []
        for pid in range(2):
            with open(os.path.join(tmp, f'{tag}{pid}.json')) as f:
                outs.append(json.load(f))
        return outs

    def test_each_host_feeds_its_rows_and_process_0_writes(self):
        import socket
        tmp = self.create_tempdir().full_path
        store = os.path.join(tmp, 'acc.jsonl')
        with socket.socket() as s:
            s.bind(('localhost', 0))
            port = s.getsockname()[1]
        first = self._launch(port, tmp, store, 'first')
        self.assertEqual([o['rows'] for o in first], [[0, 2], [2, 4]])
        self.assertEqual([(o['devices'], o['local_devices']) for o in first], [(2, 1)] * 2)
        self.assertEqual(first[0]['accuracies'], first[1]['accuracies'])
        rows = sa.AccuracyStore(store).rows()
        self.assertLen(rows, 4)  # process 1 never writes.
        self.assertEqual([r['accuracy'] for r in rows], first[0]['accuracies'])
        again = self._launch(port, tmp, store, 'again')
        self.assertEqual([o['traces'] for o in again], [0, 0])  # both hosts skip every arch.
        self.assertEqual(again[0]['accuracies'], first[0]['accuracies'])
        self.assertEqual(again[1]['accuracies'], [])  # only process 0 reads the store.


class _FakeNet:
    width = 1.0
    num_classes = 10


class _FakeModel:
    net = _FakeNet()


class _FakeEvaluator:
    """Duck-typed ShardedEvaluator: accuracy = kernel sum / 1000; counts calls."""

    model = _FakeModel()
    num_devices = 1

    def __init__(self):
        self.calls = 0

    def local_rows(self, global_batch):
        return slice(0, global_batch)

    def recalibrate(self, arch, batches, global_batch):
        list(batches)
        return None

    def accuracy(self, variables, arch, batches, global_batch):
        self.calls += 1
        n = sum(int(np.sum(y >= 0)) for _, y in batches)
        return float(np.sum(arch.kernel)) / 1000, n


class _Source:
    """A tiny random-access source of 8x8 images."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {'image': np.full((8, 8, 3), i, np.uint8), 'label': i % 3}


def _run(path, archs, **kwargs):
    ev = _FakeEvaluator()
    recs = sa.evaluate_archs(ev,
                             archs,
                             train_source=_Source(6),
                             eval_source=_Source(5),
                             calib_batches=1,
                             batch_size=2,
                             image_size=8,
                             store=path,
                             **kwargs)
    return ev, recs


class AccuracyStoreTest(absltest.TestCase):

    def setUp(self):
        super().setUp()
        self.path = os.path.join(self.create_tempdir().full_path, 'acc.jsonl')
        self.archs = _archs()

    def test_resume_skips_stored_archs(self):
        ev, recs = _run(self.path, self.archs[:2])
        self.assertEqual(ev.calls, 2)
        self.assertEqual([r.num_examples for r in recs], [5, 5])
        ev, recs = _run(self.path, self.archs)
        self.assertEqual(ev.calls, 2)  # only the two new ones.
        self.assertLen(recs, 4)
        ev, recs2 = _run(self.path, self.archs + self.archs[:1])  # a duplicate runs once.
        self.assertEqual(ev.calls, 0)
        self.assertEqual([r.accuracy for r in recs2], [r.accuracy for r in recs])
        want = [float(np.sum(a.kernel)) / 1000 for a in self.archs]
        self.assertEqual([r.accuracy for r in recs2], want)
        self.assertEqual(recs2[1].arch, space.to_ofa_dict(self.archs[1]))

    def test_torn_last_line_is_dropped_atomically(self):
        _run(self.path, self.archs[:2])
        with open(self.path, 'ab') as f:
            f.write(b'{"arch_key": "r128-d2')  # a kill in the middle of a write.
        store = sa.AccuracyStore(self.path)
        self.assertTrue(store.repaired)
        self.assertLen(store, 2)
        with open(self.path, 'rb') as f:
            self.assertTrue(f.read().endswith(b'}\n'))
        ev, _ = _run(self.path, self.archs)
        self.assertEqual(ev.calls, 2)
        lines = open(self.path).read().splitlines()
        self.assertLen(lines, 4)
        self.assertLen({json.loads(line)['arch_key'] for line in lines}, 4)

    def test_corrupt_middle_line_fails(self):
        _run(self.path, self.archs[:2])
        lines = open(self.path).read().splitlines()
        with open(self.path, 'w') as f:
            f.write(lines[0] + '\nnot json\n' + lines[1] + '\n')
        with self.assertRaisesRegex(ValueError, 'line 2 .* corrupt'):
            sa.AccuracyStore(self.path)

    def test_other_config_is_refused(self):
        _run(self.path, self.archs[:1])
        with self.assertRaisesRegex(ValueError, 'another file'):
            _run(self.path, self.archs, config={'checkpoint': 'other'})

    def test_duplicate_add_refused(self):
        store = sa.AccuracyStore(self.path)
        rec = accuracy_data.AccuracyRecord(space.to_ofa_dict(self.archs[0]), 0.5, 10)
        store.add(rec, {})
        with self.assertRaisesRegex(ValueError, 'already has'):
            store.add(rec, {})
        self.assertEqual(sa.AccuracyStore(self.path).records()[0].accuracy, 0.5)


if __name__ == '__main__':
    if os.environ.get('SHARDED_ACCURACY_WORKER') == 'devices':
        _worker(sys.argv[1], sys.argv[2])
    elif os.environ.get('SHARDED_ACCURACY_WORKER') == 'multihost':
        _multihost_worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
                          sys.argv[5])
    else:
        absltest.main()
