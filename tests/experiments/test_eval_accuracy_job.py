"""Tests of the accuracy-dataset job and its command line (experiments/eval_accuracy.py).

The sharded evaluation itself is tested in tests/ofa_jax/test_sharded_accuracy.py
(it compiles the supernet); here a stand-in evaluator checks the job's wiring:
config validation, data sources, the store, resuming, the summary.
"""

import json
import os
import subprocess
import sys
from unittest import mock

from absl.testing import absltest
import numpy as np
import tensorflow_datasets as tfds

from experiments import config_fields as cf
from experiments.configs import eval_accuracy as config_lib
from experiments.jobs import eval_accuracy as job
from ofa_jax import sharded_accuracy as sa
from ofa_jax import space

_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def _config(**overrides):
    c = config_lib.get_config()
    c.update(
        dict(num_archs=3,
             resolutions=(128,),
             width=1.0,
             num_classes=10,
             dataset='cifar10',
             train_split='train',
             eval_split='test',
             calib_batches=1,
             batch_size=2,
             num_eval=5,
             image_size=8,
             depthwise='conv'))
    c.update(overrides)
    return c


class _Evaluator:
    """Stands in for ShardedEvaluator: accuracy = (sum of kernel sizes) / 1000."""

    instances = []

    def __init__(self, model, variables, mesh):
        self.model, self.mesh = model, mesh
        self.num_devices = int(mesh.devices.size)
        self.trace_counts = {}
        self.calls = 0
        self.params = variables['params']
        _Evaluator.instances.append(self)

    def local_rows(self, global_batch):
        return slice(0, global_batch)

    def recalibrate(self, arch, batches, global_batch):
        self.calib_shapes = [x.shape for x in batches]

    def accuracy(self, variables, arch, batches, global_batch):
        self.calls += 1
        n = sum(int(np.sum(y >= 0)) for _, y in batches)
        return float(np.sum(arch.kernel)) / 1000, n


class PlanTest(absltest.TestCase):

    def test_archs_are_a_function_of_the_seed(self):
        a = job.plan(_config(), '/tmp/w')
        b = job.plan(_config(num_archs=5), '/tmp/w')
        self.assertLen(a.archs, 3)
        self.assertEqual([space.arch_key(x) for x in a.archs],
                         [space.arch_key(x) for x in b.archs[:3]])  # a longer run extends.
        self.assertEqual(a.store_path, '/tmp/w/accuracy.jsonl')
        self.assertEqual((a.num_eval, a.image_size), (5, 8))
        self.assertIsNone(job.plan(_config(num_eval=0, image_size=0), '/w').num_eval)

    def test_bad_fields_name_themselves(self):
        for field, value in (('width', 0.7), ('batch_size', 0), ('resolutions', (130,)),
                             ('depthwise', 'fft'), ('dataset', ''), ('process_id', -2)):
            with self.subTest(field=field):
                with self.assertRaisesRegex(cf.ConfigError, f'config.{field}'):
                    job.plan(_config(**{field: value}), '/w')


class RunTest(absltest.TestCase):

    def test_run_stores_rows_and_resumes(self):
        workdir = self.create_tempdir().full_path
        _Evaluator.instances.clear()
        with tfds.testing.mock_data(num_examples=6), mock.patch.object(
                sa, 'ShardedEvaluator', _Evaluator):
            first = job.run(_config(), workdir)
            again = job.run(_config(num_archs=4), workdir)
        self.assertEqual((first['evaluated'], first['skipped'], first['records']), (3, 0, 3))
        self.assertEqual((again['evaluated'], again['skipped'], again['records']), (1, 3, 4))
        self.assertEqual(first['processes'], 1)
        ev = _Evaluator.instances[0]
        self.assertEqual(ev.model.net.num_classes, 10)
        self.assertEqual(ev.calib_shapes, [(2, 8, 8, 3)])  # image_size and batch_size.
        rows = [json.loads(line) for line in open(os.path.join(workdir, 'accuracy.jsonl'))]
        self.assertLen(rows, 4)
        want = [space.arch_key(a) for a in job.plan(_config(num_archs=4), workdir).archs]
        self.assertEqual([r['arch_key'] for r in rows], want)
        self.assertEqual({r['num_examples'] for r in rows}, {5})
        self.assertEqual(rows[0]['config']['dataset'], 'cifar10')
        self.assertEqual(rows[0]['config']['method'], sa.METHOD)


class CommandLineTest(absltest.TestCase):

    def test_bad_config_is_one_line_and_status_2(self):
        workdir = self.create_tempdir().full_path
        proc = subprocess.run([
            sys.executable, '-m', 'experiments.eval_accuracy', f'--workdir={workdir}',
            '--config.width=0.7'
        ],
                              cwd=_ROOT,
                              env=dict(os.environ, PYTHONPATH=_ROOT, JAX_PLATFORMS='cpu'),
                              capture_output=True,
                              text=True,
                              timeout=120)
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertEqual(proc.stderr.strip().splitlines()[-1],
                         "error: config.width: 0.7; allowed: 1.0, 1.2")


if __name__ == '__main__':
    absltest.main()
