"""The main job with ``--config.zoo``: onboarding as one more estimator, and a bad zoo.

A two-member zoo is built by the zoo job from synthetic CSV files (as in
``test_onboard.py``); the main job's tiny config (``test_main.tiny_config``)
then also onboards this CPU from it with 2 reference archs and 4 shots, and
the onboarded checkpoint is scored on the same held-out rows as the fits.
"""

import json
import os
import shlex
import tempfile

from absl.testing import absltest
import numpy as np

from experiments import config_fields as cf
from experiments.jobs import build_zoo as zoo_job
from experiments.jobs import main as main_job
import test_main
import test_onboard


def onboard_config(zoo_dir):
    """``test_main.tiny_config()`` plus onboarding from ``zoo_dir``: 2 references + 4 shots."""
    c = test_main.tiny_config()
    # About a minute less on one core: faster compiles, and the searches' picks are not
    # measured (test_main.py covers the verification path every estimator shares).
    c.depthwise = 'conv'
    c.verify = False
    c.zoo = zoo_dir
    c.shots = 4
    c.onboard.references = 2
    c.onboard.pool = 200
    c.onboard.curve = (2,)
    c.onboard.strategies = ('stack', 'affine', 'shots_only')  # finetune: a compile per fold
    c.onboard.distill.archs = 64
    c.onboard.distill.max_steps = 20
    c.onboard.distill.eval_every = 10
    return c


class MainOnboardTest(absltest.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # One folder per class and process: pytest-xdist may run this class's
        # tests in both workers, each with its own setUpClass.
        os.makedirs(absltest.get_default_test_tmpdir(), exist_ok=True)
        cls.folder = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir(),
                                      prefix='main_onboard_test.')
        csvs = test_onboard.write_device_csvs(cls.folder)
        cls.zoo_dir = os.path.join(cls.folder, 'zoo')
        zoo_job.run(test_onboard.tiny_zoo_config(*csvs), cls.zoo_dir)

    def test_onboard_is_one_more_estimator_on_the_same_test_rows(self):
        workdir = os.path.join(self.folder, 'work')
        summary = main_job.run(onboard_config(self.zoo_dir), workdir, sanity=False)
        ests = summary['estimators']
        self.assertEqual(set(ests), {'lut', 'additive', 'onboard', 'xla_cost'})
        onboard = ests['onboard']
        for name in ('rmse_ms', 'mae_ms', 'mape', 'acc10', 'kendall_tau'):
            self.assertTrue(np.isfinite(onboard['metrics'][name]), name)
        # The same held-out rows as the fits: the same count, and predictions.csv holds
        # every estimator's prediction of each of them.
        self.assertEqual(onboard['metrics'].keys(), ests['additive']['metrics'].keys())
        with open(os.path.join(workdir, 'report', 'predictions.csv')) as f:
            lines = f.read().splitlines()
        self.assertIn('pred_onboard', lines[0].split(','))
        self.assertLen(lines[1:], summary['rows']['test'])
        self.assertEqual(summary['rows']['total'], 20)  # Onboarding rows are not fit rows.

        info = summary['onboard']
        self.assertEqual(onboard['measurements'], 2 + 4)  # Device rows it adapted on.
        self.assertEqual((info['references'], len(info['shot_keys'])), (2, 4))
        self.assertEqual((info['measured_now'], info['already_done']), (6, 0))
        self.assertTrue(info['same_device'])  # The campaign's device, protocol and store.
        self.assertGreater(info['device_s'], 0.0)
        self.assertGreaterEqual(info['measured_now_s'], 0.0)
        self.assertEqual(info['test_overlap'], 0)
        # Its cost: the rows' device-seconds plus the adaptation, as timed by the onboarding.
        self.assertAlmostEqual(onboard['cost_minutes'],
                               (info['device_s'] + info['adaptation_s']['total']) / 60.0)
        self.assertIn(f'{info["device_s"]:.1f} device-s', onboard['measurement_kind'])
        # An ordinary checkpoint: searched like the fits.
        self.assertNotEmpty(summary['searches']['onboard']['results'])
        self.assertIn('onboard', summary['stages_s'])

        with open(os.path.join(workdir, 'report', 'report.md')) as f:
            md = f.read()
        self.assertIn('onboarded from a zoo', md)
        self.assertIn('The onboarded predictor costs the whole sub-networks it adapted on', md)
        with open(os.path.join(workdir, 'report', 'commands.txt')) as f:
            cmds = f.read().splitlines()
        onboard_cmd = [c for c in cmds if shlex.split(c)[2] == 'experiments.onboard']
        self.assertLen(onboard_cmd, 1)
        args = shlex.split(onboard_cmd[0])
        self.assertIn(f'--config.zoo={self.zoo_dir}', args)
        self.assertIn('--config.shots=4', args)
        self.assertIn(f'--config.store={summary["store"]}', args)  # The campaign's store.
        self.assertIn(f'--workdir={os.path.join(workdir, "onboard")}', args)
        with open(os.path.join(workdir, 'summary.json')) as f:
            self.assertEqual(json.load(f)['onboard']['chosen'], info['chosen'])

    def test_corrupt_zoo_fails_before_anything_is_measured(self):
        bad = self.create_tempdir().full_path
        with open(os.path.join(bad, 'zoo.json'), 'w') as f:
            f.write('{not json')
        workdir = self.create_tempdir().full_path
        with self.assertRaisesRegex(cf.ConfigError, f'^config.zoo: {bad}'):
            main_job.run(onboard_config(bad), workdir, sanity=False)
        self.assertFalse(os.path.exists(os.path.join(workdir, 'measure')))
        self.assertFalse(os.path.exists(os.path.join(workdir, 'latency.sqlite')))

    def test_missing_zoo_one_line_exit_2(self):
        workdir = self.create_tempdir().full_path
        run = test_main._run  # pylint: disable=protected-access
        proc = run(workdir, '--config.zoo=/nonexistent/zoo')
        self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
        errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
        self.assertLen(errors, 1, proc.stderr[-2000:])
        self.assertIn('config.zoo: /nonexistent/zoo: no such folder', errors[0])
        self.assertNotIn('Traceback', proc.stderr)
        self.assertFalse(os.path.exists(os.path.join(workdir, 'measure')))


if __name__ == '__main__':
    absltest.main()
