"""The zoo job and onboarding a new device from its zoo on this CPU, a rerun, bad fields.

A two-member zoo is built by the zoo job from synthetic CSV files (few training
steps), then a device is onboarded from it with 1 reference arch and 5 shots.
"""

import json
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from experiments import config_fields as cf
from experiments.configs import build_zoo as zoo_config
from experiments.configs import onboard as onboard_config
from experiments.jobs import build_zoo as zoo_job
from experiments.jobs import onboard as onboard_job
from ofa_jax import counts
from ofa_jax import csvio
from ofa_jax import space
from predictors import checkpoint
from predictors import transfer
from predictors import work_linear
from predictors import zoo as zoo_lib


def write_device_csvs(folder, n=40):
    """Two synthetic devices' latencies of the same seeded archs at resolution 128."""
    archs = space.sample_np(np.random.default_rng(0), n, resolutions=(128,))
    macs = np.asarray(counts.count_macs(archs, 1.2, num_classes=10), np.float64) / 1e6
    depth = np.asarray(archs.depth).sum(-1)
    a = os.path.join(folder, 'fast_batch1.csv')
    b = os.path.join(folder, 'slow.csv')
    csvio.write_ofa_csv(a, archs, 0.5 + 0.01 * macs)
    csvio.write_ofa_csv(b, archs, 1.0 + 0.03 * macs + 0.2 * depth)
    return a, b


def tiny_zoo_config(a, b):
    """The zoo job on two CSV files with 20 training steps."""
    c = zoo_config.get_config()
    c.sources = (a, b)
    c.devices = (f'{os.path.basename(a)}:2080ti',)
    c.batch_sizes = (f'{os.path.basename(b)}:8',)
    c.fit.max_steps = 20
    c.fit.eval_every = 10
    return c


def tiny_config(zoo_dir):
    """1 reference arch + 5 shots at resolution 128, 10 classes, 3 timed runs, few steps."""
    c = onboard_config.get_config()
    c.zoo = zoo_dir
    c.device = 'cpu'
    c.shots = 5
    c.references = 1
    c.depthwise = 'conv'  # Compiles faster than 'shifted' on XLA:CPU; runs slower.
    c.pool = 200
    c.num_classes = 10
    c.microbenchmarks = False
    c.progress = False
    c.protocol.update(warmup=1, repeats=3, min_time=0.0, number=1, paired=False)
    c.curve = (2,)
    c.strategies = ('stack', 'affine', 'shots_only')  # finetune: seconds of compile
    c.finetune_steps = 5
    c.distill.archs = 64
    c.distill.max_steps = 20
    c.distill.eval_every = 10
    return c


class OnboardTest(parameterized.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # One folder per class and process: pytest-xdist may run this class's
        # tests in both workers, each with its own setUpClass.
        os.makedirs(absltest.get_default_test_tmpdir(), exist_ok=True)
        cls.folder = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir(),
                                      prefix='onboard_test.')
        cls.csvs = write_device_csvs(cls.folder)
        cls.zoo_dir = os.path.join(cls.folder, 'zoo')
        cls.zoo_summary = zoo_job.run(tiny_zoo_config(*cls.csvs), cls.zoo_dir)

    def test_zoo_job_wrote_a_zoo(self):
        self.assertEqual(self.zoo_summary['members'], ['fast_batch1', 'slow_b8'])
        zoo = zoo_lib.load(self.zoo_dir)
        fast, slow = zoo.members
        self.assertEqual((fast.device, fast.batch, slow.device, slow.batch),
                         ('2080ti', 1, 'slow', 8))
        self.assertEqual(fast.hardware['name'], 'rtx_2080_ti')
        self.assertIsNone(slow.hardware)
        self.assertEqual(fast.metrics['rows']['read'], 40)  # The fit job's metrics.json.
        self.assertEqual(zoo.reference_resolutions, (128,))
        np.testing.assert_allclose(slow.predictor(zoo.reference), slow.reference_ms, rtol=1e-5)

    def test_zoo_job_errors_name_the_field(self):
        c = tiny_zoo_config(*self.csvs)
        c.sources = (os.path.join(self.folder, 'nope.csv'),)
        with self.assertRaisesRegex(cf.ConfigError, 'config.sources: .*nope.csv.* does not exist'):
            zoo_job.run(c, self.create_tempdir().full_path)
        c = tiny_zoo_config(*self.csvs)
        c.batch_sizes = (f'{os.path.basename(self.csvs[0])}:zero',)
        with self.assertRaisesRegex(cf.ConfigError, "config.batch_sizes: 'zero'"):
            zoo_job.run(c, self.create_tempdir().full_path)
        c = tiny_zoo_config(*self.csvs)
        c.fit.model = 'lut'
        with self.assertRaisesRegex(cf.ConfigError, 'config.fit.model: .lut.; allowed: mlp'):
            zoo_job.run(c, self.create_tempdir().full_path)

    def test_onboard_then_rerun_measures_nothing(self):
        work = os.path.join(self.folder, 'work')
        out = onboard_job.run(tiny_config(self.zoo_dir), work)
        self.assertEqual((out['measured_now'], out['already_done']), (6, 0))
        self.assertEqual(out['selection'], 'disagreement')
        self.assertIn(out['chosen'], ('stack', 'affine', 'shots_only'))
        self.assertEqual([p['shots'] for p in out['curve']], [2, 5])
        self.assertEqual([p['rows'] for p in out['curve']], [3, 6])
        for p in out['curve']:
            self.assertEqual(set(p['cv']), {'stack', 'affine', 'shots_only'})
            self.assertTrue(all(np.isfinite(m['mape']) for m in p['cv'].values()))
        loaded = checkpoint.load(os.path.join(work, 'checkpoint'))
        archs = space.sample_np(np.random.default_rng(5), 7, resolutions=(128,))
        pred = np.asarray(loaded(archs))
        self.assertEqual(pred.shape, (7,))
        self.assertTrue(np.all(np.isfinite(pred) & (pred > 0)))
        self.assertEqual(loaded.meta['onboard']['strategy'], out['chosen'])
        self.assertIsNotNone(loaded.calibration)
        with open(os.path.join(work, 'report.md')) as f:
            md = f.read()
        for text in ('## Learning curve', '## Chosen adaptation', 'learning_curve.png',
                     'python -m experiments.onboard'):
            self.assertIn(text, md)
        self.assertTrue(os.path.exists(os.path.join(work, 'learning_curve.png')))
        with open(os.path.join(work, 'onboard.json')) as f:
            self.assertEqual(json.load(f)['chosen'], out['chosen'])

        t = out['adaptation_s']
        self.assertAlmostEqual(t['total'], t['choice'] + t['final_fit'])
        self.assertGreater(t['final_fit'], 0.0)
        self.assertIn('Adaptation after the measurements', md)

        again = onboard_job.run(tiny_config(self.zoo_dir), work)
        self.assertEqual((again['measured_now'], again['already_done']), (0, 6))
        self.assertEqual(again['shot_keys'], out['shot_keys'])  # Same plan, same rows.
        self.assertEqual(again['chosen'], out['chosen'])

        # The work model alone, on the rows already in the store: its checkpoint
        # is the closed-form fit of those rows.
        c = tiny_config(self.zoo_dir)
        c.strategies = ('work',)
        c.store = os.path.join(work, 'latency.sqlite')
        only = onboard_job.run(c, os.path.join(self.folder, 'work_only'))
        self.assertEqual((only['chosen'], only['measured_now']), ('work', 0))
        self.assertEqual(only['adapt_keys'], out['adapt_keys'])
        adapt = space.stack([space.from_key(k) for k in out['adapt_keys']])
        direct = work_linear.fit(adapt, out['adapt_ms'], batch=1, width=1.2)
        loaded = checkpoint.load(os.path.join(self.folder, 'work_only', 'checkpoint'))
        np.testing.assert_allclose(np.asarray(loaded(archs)), direct(archs), rtol=1e-4)

    def test_cross_validation_folds_cover_every_row_once(self):
        archs = space.sample_np(np.random.default_rng(2), 23, resolutions=(128,))
        y = 5.0 + np.asarray(archs.depth).sum(-1).astype(float)
        bases = onboard_job.Bases(np.stack([y * 1.1, y * 0.8]), None)
        c = tiny_config(self.zoo_dir)
        fspec = onboard_job.features.fit_feature_spec(archs, width=1.2)
        members = zoo_lib.load(self.zoo_dir).members
        adapter = onboard_job.Adapter(archs, y, bases, members, fspec, c)
        idx = np.arange(23)
        # An affine map of a member is exact here, so every held-out row is too.
        for folds in (0, 5, 30):
            oof = adapter.cross_val('stack', idx, folds)
            np.testing.assert_allclose(oof, y, rtol=1e-3)
        self.assertEqual(onboard_job.cv_name(10, 23), '10-fold cross-validation')
        self.assertEqual(onboard_job.cv_name(10, 8), 'leave-one-out')
        self.assertEqual(onboard_job.cv_name(0, 60), 'leave-one-out')

    def test_fine_tunes_of_17_to_32_rows_share_one_compile_and_padding_is_not_learnt(self):
        archs = space.sample_np(np.random.default_rng(4), 20, resolutions=(128,))
        member = zoo_lib.load(self.zoo_dir).members[0].predictor
        y = np.asarray(member(archs)) * (1.3 + 0.02 * np.asarray(archs.depth).sum(-1))
        batched = jax.tree_util.tree_map(lambda v: np.asarray(v)[None], archs)

        def tune(n, weights=None):
            rows = jax.tree_util.tree_map(lambda v: v[:, :n], batched)
            return transfer.finetune(member,
                                     rows,
                                     y[None, :n],
                                     mode='full',
                                     steps=60,
                                     learning_rate=1e-2,
                                     shot_weights=weights)[0]

        compiles = transfer._finetune_batch._cache_size  # pylint: disable=protected-access
        first = tune(18)
        compiled = compiles()
        weighted = tune(20, np.array([[1.0] * 18 + [0.0, 0.0]]))  # Rows 19-20 not learnt.
        tune(19)
        self.assertEqual(compiles(), compiled)
        np.testing.assert_allclose(np.asarray(weighted(archs)), np.asarray(first(archs)), rtol=1e-4)
        # The fine-tune moved the predictions: the check above is not of the base.
        moved = np.asarray(first(archs)) / np.asarray(member(archs)) - 1.0
        self.assertGreater(np.max(np.abs(moved)), 0.05)
        with self.assertRaisesRegex(ValueError, r'shot_weights: shape \(1, 18\)'):
            tune(18, np.zeros((1, 18)))  # Nothing to learn.

    def test_a_held_out_prediction_below_zero_is_floored(self):
        # Member 0 minus member 1 is the latency on every row but one, where it
        # is -20 ms: the stack fitted without that row predicts it below zero.
        archs = space.sample_np(np.random.default_rng(3), 23, resolutions=(128,))
        y = 5.0 + np.asarray(archs.depth).sum(-1).astype(float)
        m1 = 3.0 * y
        m0 = y + m1
        m0[7], m1[7] = 1.0, 21.0
        adapter = onboard_job.Adapter(archs, y, onboard_job.Bases(np.stack([m0, m1]), None),
                                      zoo_lib.load(self.zoo_dir).members,
                                      onboard_job.features.fit_feature_spec(archs, width=1.2),
                                      tiny_config(self.zoo_dir))
        oof = adapter.cross_val('stack', np.arange(23), 5)
        train = np.arange(23) % 5 != 7 % 5
        self.assertAlmostEqual(oof[7], onboard_job.HELD_OUT_FLOOR * y[train].min())
        self.assertTrue(np.all(oof > 0))
        cal = onboard_job.conformal.fit(oof, y)  # Calibrates, where <= 0 would raise.
        self.assertEqual(cal.num_rows, 23)

    def test_shots_are_a_prefix_and_spread(self):
        pool = space.sample_np(np.random.default_rng(1), 300, resolutions=(128, 160, 224))
        kw = dict(resolutions=(128, 160, 224), width=1.2, num_classes=10)
        ones = np.ones(300)
        five = onboard_job.choose_shots(5, pool, None, ones, **kw)
        ten = onboard_job.choose_shots(10, pool, None, ones, **kw)
        np.testing.assert_array_equal(ten[:5], five)
        self.assertLen(set(ten.tolist()), 10)
        self.assertGreater(len(set(np.asarray(pool.resolution[ten]).tolist())), 1)
        # All disagreement on one candidate: it is picked first.
        weight = np.full(300, 0.01)
        weight[17] = 1.0
        self.assertEqual(onboard_job.choose_shots(1, pool, None, weight, **kw)[0], 17)

    @parameterized.named_parameters(
        ('shots', 'shots', -1, r'config.shots: \(-1,\); allowed: integers >= 0'),
        ('selection', 'selection', 'best',
         "config.selection: 'best'; allowed: disagreement, spread"),
        ('strategy', 'strategies', ('stack', 'magic'),
         r"config.strategies: \['magic'\] not allowed; allowed: .*stack, affine, finetune"),
        ('references', 'references', 11, 'config.references: 11; allowed: 0 to 10'),
        ('resolution', 'resolutions', (130,), r'config.resolutions: \[130\] not allowed'),
        ('width', 'width', 1.0, 'config.width: 1.0; the zoo .* holds width 1.2.*allowed: 1.2'),
        ('members', 'members',
         ('fast_batch1', 'nope'), r"config.members: \['nope'\] not in the zoo; "
         'allowed: .*fast_batch1, slow_b8'),
        ('zoo', 'zoo', '/nonexistent/zoo', 'config.zoo: /nonexistent/zoo: no such folder'),
        ('pool', 'pool', 0, r'config.pool: \(0,\); allowed: integers >= 1'),
        ('cv_folds', 'cv_folds', 1, r'config.cv_folds: 1; allowed: 0 \(leave-one-out\) or >= 2'),
    )
    def test_bad_field_names_field_value_and_allowed(self, field, value, message):
        c = tiny_config(self.zoo_dir)
        c[field] = value
        with self.assertRaisesRegex(cf.ConfigError, message):
            onboard_job.make_plan(c)

    def test_lut_strategies_need_a_lut(self):
        c = tiny_config(self.zoo_dir)
        c.strategies = ('lut', 'blend')
        with self.assertRaisesRegex(cf.ConfigError, 'config.strategies: .* all need a LUT'):
            onboard_job.make_plan(c)
        c.lut, c.lut_dir = True, '/somewhere'
        with self.assertRaisesRegex(cf.ConfigError, 'config.lut_dir: .*allowed: one of'):
            onboard_job.make_plan(c)


if __name__ == '__main__':
    absltest.main()
