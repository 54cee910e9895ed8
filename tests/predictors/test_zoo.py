"""The predictor zoo: written from synthetic CSV files, loaded, refused when bad.

The members are fitted in closed form from the CSV rows (the zoo job, which
fits them with the fit job, is tested in ``tests/experiments/test_onboard.py``).
"""

import dataclasses
import json
import os
import shutil
import tempfile

from absl.testing import absltest
import numpy as np

from ofa_jax import counts
from ofa_jax import csvio
from ofa_jax import files
from ofa_jax import hardware
from ofa_jax import space
from predictors import checkpoint
from predictors import features
from predictors import train as train_lib
from predictors import zoo as zoo_lib


def write_device_csvs(folder, n=40):
    """Two devices' latencies of the same seeded archs at resolution 128 (MACs-driven)."""
    archs = space.sample_np(np.random.default_rng(0), n, resolutions=(128,))
    macs = np.asarray(counts.count_macs(archs, 1.2, num_classes=10), np.float64) / 1e6
    depth = np.asarray(archs.depth).sum(-1)
    a = os.path.join(folder, 'devA_batch1.csv')
    b = os.path.join(folder, 'devB_batch8.csv')
    csvio.write_ofa_csv(a, archs, 1.0 + 0.02 * macs)
    csvio.write_ofa_csv(b, archs, 0.5 + 0.05 * macs + 0.2 * depth)
    return a, b


def write_zoo(folder, csvs):
    """A zoo of one closed-form additive predictor per CSV file."""
    reference = zoo_lib.reference_archs((128,))
    entries = []
    for path, (name, device, batch) in zip(csvs, (('deva_batch1', '2080ti', 1),
                                                  ('devb_batch8', 'devB', 8))):
        table = csvio.read_ofa_csv(path)
        fspec = features.fit_feature_spec(table.archs, width=1.2)
        lin = train_lib.additive_lstsq_init(table.archs, table.latency_ms, fspec)
        predictor = checkpoint.Predictor(
            model_name='additive',
            model_kwargs={'residual_hidden': 0},
            fspec=fspec,
            norm=train_lib.TargetNorm('scale', 0.0, 1.0),
            params={'params': {
                k: np.asarray(v) for k, v in lin.items()
            }})
        member = os.path.join(folder, name)
        checkpoint.save(predictor, os.path.join(member, zoo_lib.CHECKPOINT_DIR))
        files.write_json(os.path.join(member, zoo_lib.METRICS_FILE), {'mape': 1.0})
        spec = hardware.lookup(device)
        zoo_lib.write_member(member,
                             hardware=None if spec is None else dataclasses.asdict(spec),
                             reference=reference,
                             reference_ms=np.asarray(predictor(reference)))
        entries.append({'name': name, 'device': device, 'batch': batch})
    zoo_lib.write_index(folder, entries, reference=reference, resolutions=(128,), width=1.2)
    return folder


class ZooTest(absltest.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # One folder per class and process: pytest-xdist may run this class's
        # tests in both workers, each with its own setUpClass.
        os.makedirs(absltest.get_default_test_tmpdir(), exist_ok=True)
        cls.folder = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir(), prefix='zoo_test.')
        cls.csvs = write_device_csvs(cls.folder)
        cls.zoo_dir = os.path.join(cls.folder, 'zoo')
        write_zoo(cls.zoo_dir, cls.csvs)

    def _copy(self):
        dst = os.path.join(self.create_tempdir().full_path, 'zoo')
        shutil.copytree(self.zoo_dir, dst)
        return dst

    def test_reference_archs_are_fixed_and_spread(self):
        ref = zoo_lib.reference_archs()
        self.assertLen(ref, zoo_lib.NUM_REFERENCES)
        again = zoo_lib.reference_archs()
        self.assertEqual([space.arch_key(a) for a in space.unstack(ref)],
                         [space.arch_key(a) for a in space.unstack(again)])
        self.assertGreater(len(set(np.asarray(ref.resolution).tolist())), 5)
        macs = np.asarray(counts.count_macs(ref, 1.2))
        self.assertGreater(macs.max() / macs.min(), 4.0)  # Small to large.
        one = zoo_lib.reference_archs((128,))
        self.assertEqual(set(np.asarray(one.resolution).tolist()), {128})

    def test_load_two_members(self):
        zoo = zoo_lib.load(self.zoo_dir)
        self.assertEqual(zoo.names, ('deva_batch1', 'devb_batch8'))
        self.assertEqual(zoo.reference_resolutions, (128,))
        a, b = zoo.members
        self.assertEqual((a.device, a.batch, b.device, b.batch), ('2080ti', 1, 'devB', 8))
        self.assertEqual(a.hardware['name'], 'rtx_2080_ti')
        self.assertIsNone(b.hardware)
        self.assertIn('mape', a.metrics)
        self.assertEqual(zoo.reference_ms().shape, (2, 10))
        self.assertIsInstance(a.predictor, checkpoint.Predictor)
        np.testing.assert_allclose(a.predictor(zoo.reference), a.reference_ms, rtol=1e-5)
        self.assertEqual(zoo.predict(zoo.reference[:3]).shape, (2, 3))
        with self.assertRaisesRegex(KeyError, 'no member .nope.*deva_batch1'):
            zoo.member('nope')

    def test_missing_and_corrupt_folders_name_the_file(self):
        missing = os.path.join(self.create_tempdir().full_path, 'none')
        with self.assertRaisesRegex(zoo_lib.ZooError, 'none: no such folder'):
            zoo_lib.load(missing)
        empty = self.create_tempdir().full_path
        with self.assertRaisesRegex(zoo_lib.ZooError, 'zoo.json: missing'):
            zoo_lib.load(empty)
        d = self._copy()
        with open(os.path.join(d, 'zoo.json'), 'w') as f:
            f.write('{"format": ')
        with self.assertRaisesRegex(zoo_lib.ZooError, 'zoo.json: not JSON'):
            zoo_lib.load(d)
        d = self._copy()
        with open(os.path.join(d, 'zoo.json')) as f:
            index = json.load(f)
        index['format'] = 'other/9'
        with open(os.path.join(d, 'zoo.json'), 'w') as f:
            json.dump(index, f)
        with self.assertRaisesRegex(zoo_lib.ZooError, "format 'other/9'"):
            zoo_lib.load(d)
        index['format'] = zoo_lib.FORMAT
        index['members'][1]['name'] = 'deva_batch1'
        with open(os.path.join(d, 'zoo.json'), 'w') as f:
            json.dump(index, f)
        with self.assertRaisesRegex(zoo_lib.ZooError,
                                    'members.1.: member name .deva_batch1. appears'):
            zoo_lib.load(d)
        d = self._copy()
        os.remove(os.path.join(d, 'devb_batch8', 'reference.csv'))
        with self.assertRaisesRegex(zoo_lib.ZooError, 'devb_batch8.reference.csv: missing'):
            zoo_lib.load(d)
        d = self._copy()
        shutil.rmtree(os.path.join(d, 'deva_batch1', 'checkpoint'))
        with self.assertRaisesRegex(zoo_lib.ZooError, 'predictor.json: missing'):
            zoo_lib.load(d)
        d = self._copy()
        with open(os.path.join(d, 'devb_batch8', 'checkpoint', 'params.msgpack'), 'wb') as f:
            f.write(b'garbage')
        zoo = zoo_lib.load(d)  # Checkpoints load lazily, and then name their file.
        with self.assertRaisesRegex(checkpoint.CheckpointError, 'params.msgpack: not a msgpack'):
            zoo.member('devb_batch8').predictor


if __name__ == '__main__':
    absltest.main()
