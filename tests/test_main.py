"""The main job's command line: bad configs end with one line and exit status 2."""

import os
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(workdir, *overrides):
    env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, '-m', 'experiments.main', f'--workdir={workdir}', *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600)


class MainErrorsTest(parameterized.TestCase):

    @parameterized.named_parameters(
        ('unknown_device', ['--config.device=tpu:7'], 'config.device'),
        ('unreadable_store', ['--config.store=/nonexistent/dir/x.sqlite'], 'config.store'),
        ('bad_resolution', ['--config.resolutions=130'], 'config.resolutions'),
        ('bad_predictor', ['--config.predictors=lstm'], 'config.predictors'),
        ('too_few_archs', ['--config.num_archs=3'], 'config.num_archs'),
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
