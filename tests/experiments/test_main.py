"""The main job end to end on a tiny config, and its command line's errors.

As flax's ``examples/imagenet/train_test.py`` runs ``train_and_evaluate``:
the whole job (sanity check, campaign, LUT, fits, comparison, searches,
verification, report) on tiny resolutions, few archs and few generations.
Then the report's ``commands.txt`` is checked to rerun a stage exactly.
"""

import json
import os
import shlex
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from experiments import commands
from experiments.configs import main as main_config
from experiments.jobs import main as main_job

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def _env():
    return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)


def _run(workdir, *overrides):
    return subprocess.run(
        [sys.executable, '-m', 'experiments.main', f'--workdir={workdir}', *overrides],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600)


def tiny_config():
    """The main job at resolution 128, 20 archs, short timing, few steps and generations."""
    c = main_config.get_config()
    c.resolutions = (128,)
    c.num_archs = 20
    c.measure_time_budget_s = 0.0
    c.num_classes = 10
    c.progress = False
    c.protocol.update(warmup=1, repeats=3, min_time=0.0, number=1, paired=False)
    c.measure.microbenchmarks = False
    c.measure.drift.interval = 0
    c.lut.microbenchmarks = False
    c.lut.protocol.update(min_time=0.0, repeats=3, min_sample=0.0)
    c.max_steps = 60
    c.fit.eval_every = 20
    c.population_size = 16
    c.num_generations = 4
    # Each is one more compile or export per estimator; tests/experiments/
    # test_budget_safe_search.py covers them.
    c.search.export = False
    c.search.compare_uncorrected = False
    c.search.max_rounds = 0  # Measure the picks, do not search again.
    c.predictors = ('additive',)  # The paper MLP's fit and search are tested on their own.
    return c


class MainJobTest(absltest.TestCase):

    def test_whole_job_then_a_listed_stage_command_reruns_it(self):
        workdir = self.create_tempdir().full_path
        summary = main_job.run(tiny_config(), workdir, sanity=False)
        self.assertEqual(summary['rows']['total'], 20)
        self.assertEqual(set(summary['estimators']), {'lut', 'additive', 'xla_cost'})
        for est in summary['estimators'].values():
            self.assertTrue(np.isfinite(est['metrics']['rmse_ms']))
        found = [r for s in summary['searches'].values() for r in s['results']]
        self.assertNotEmpty(found)
        self.assertTrue(all(r['measured_ms'] > 0 for r in found))  # Verified on the device.
        report = os.path.join(workdir, 'report')
        with open(os.path.join(report, 'report.md')) as f:
            md = f.read()
        for section in ('## Estimators on the same held-out', '## Search at three budgets',
                        '## Commands', 'Where the latency goes'):
            self.assertIn(section, md)
        for png in ('pred_vs_measured.png', 'error_distribution.png', 'breakdown.png',
                    'search_measured_vs_budget.png', 'front.png'):
            self.assertTrue(os.path.exists(os.path.join(report, png)), png)
        with open(os.path.join(workdir, 'summary.json')) as f:
            self.assertEqual(json.load(f)['rows']['total'], 20)

        # commands.txt: the main job, then one command per stage it ran.
        with open(os.path.join(report, 'commands.txt')) as f:
            cmds = f.read().splitlines()
        modules = [shlex.split(c)[2] for c in cmds]
        self.assertEqual(
            modules[:3],
            ['experiments.main', 'experiments.measure_latency', 'experiments.build_lut'])
        self.assertIn('experiments.fit_predictor', modules)
        self.assertIn('experiments.search', modules)
        # Rerun the additive fit's command into a new folder: the same metrics.
        fit = next(c for c in cmds if 'experiments.fit_predictor' in c and '/fit_additive' in c)
        args = shlex.split(fit)
        again = os.path.join(workdir, 'refit')
        args = [a for a in args if not a.startswith('--workdir=')] + [f'--workdir={again}']
        proc = subprocess.run([sys.executable] + args[1:],
                              cwd=ROOT,
                              env=_env(),
                              capture_output=True,
                              text=True,
                              timeout=600)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        with open(os.path.join(again, 'metrics.json')) as f:
            refit = json.load(f)
        ran = summary['estimators']['additive']['metrics']
        self.assertEqual(refit['rows']['test'], summary['rows']['test'])
        self.assertAlmostEqual(refit['rmse_ms'], ran['rmse_ms'], places=6)
        self.assertAlmostEqual(refit['mape'], ran['mape'], places=5)
        # The campaign's command finds every row measured: nothing left to do.
        measure = next(c for c in cmds if 'experiments.measure_latency' in c)
        proc = subprocess.run([sys.executable] + shlex.split(measure)[1:],
                              cwd=ROOT,
                              env=_env(),
                              capture_output=True,
                              text=True,
                              timeout=600)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        self.assertEqual(json.loads(proc.stdout.splitlines()[-1])['already_done'], 20)


class CommandsTest(absltest.TestCase):

    def test_only_changed_fields_and_tuples_as_lists(self):
        c = main_config.get_config()
        c.resolutions = (128, 160, 192)
        c.predictors = ('mlp',)
        cmd = commands.command('main', c.to_dict(), 'runs/x')
        self.assertIn('--config.resolutions=128,160,192', cmd)
        self.assertIn('--config.measure.resolutions=128,160,192', cmd)  # Tied: the same value.
        self.assertIn('--config.predictors=mlp', cmd)
        self.assertNotIn('--config.num_archs=', cmd)  # Unchanged.
        self.assertEqual(
            commands.command('main',
                             main_config.get_config().to_dict(), 'w'),
            'python -m experiments.main --config=experiments/configs/main.py '
            '--workdir=w')


class MainErrorsTest(parameterized.TestCase):

    @parameterized.named_parameters(
        ('unknown_device', ['--config.device=tpu:7'], 'config.device'),
        ('unreadable_store', ['--config.store=/nonexistent/dir/x.sqlite'], 'config.store'),
        ('bad_resolution', ['--config.resolutions=130'], 'config.resolutions'),
        ('bad_predictor', ['--config.predictors=lstm'], 'config.predictors'),
        ('too_few_archs', ['--config.num_archs=3'], 'config.num_archs'),
        ('bad_mutate_prob', ['--config.search.mutate_prob=7'], 'config.mutate_prob'),
        ('bad_learning_rate', ['--config.fit.learning_rate=-1'], 'learning_rate'),
        ('bad_split', ['--config.split=0.5,0.5'], 'config.split'),
        ('missing_accuracy', ['--config.accuracy=/nonexistent/acc.pth'], 'config.accuracy'),
        ('budget_below_smallest', ['--config.budgets_ms=0.001', '--config.resolutions=128'
                                  ], 'config.budgets_ms'),
    )
    def test_bad_config_one_line_exit_2(self, overrides, field):
        workdir = self.create_tempdir().full_path
        proc = _run(workdir, *overrides)
        self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
        errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
        self.assertLen(errors, 1, proc.stderr[-2000:])
        self.assertIn(field, errors[0])
        self.assertNotIn('Traceback', proc.stderr)
        # Nothing was measured before the error.
        self.assertFalse(os.path.exists(os.path.join(workdir, 'measure')))


if __name__ == '__main__':
    absltest.main()
