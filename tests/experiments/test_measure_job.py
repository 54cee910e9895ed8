"""Tests of the measurement job and its command line (experiments/measure_latency.py)."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

from absl.testing import absltest
from absl.testing import parameterized

from ofa_jax import csvio
from experiments import config_fields as cf
from experiments.jobs import measure_latency as campaign
from ofa_jax import progress as progress_lib
from ofa_jax.latency import gauges
from ofa_jax.latency import store as store_lib
from experiments.configs import measure_latency as config_lib

_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def _fast_args(store, workdir, num_archs=3):
    """A campaign small enough for a test: tiny classifier, 3 timed runs, no extras."""
    return [
        sys.executable, '-m', 'experiments.measure_latency',
        '--config=experiments/configs/measure_latency.py', f'--config.num_archs={num_archs}',
        '--config.resolutions=128', '--config.batch_sizes=1', '--config.width=1.2',
        '--config.seed=0', f'--config.store={store}', f'--workdir={workdir}',
        '--config.num_classes=10', '--config.protocol.warmup=1', '--config.protocol.repeats=3',
        '--config.protocol.min_time=0', '--config.protocol.number=1', '--config.drift.interval=0',
        '--config.microbenchmarks=False'
    ]


def _env():
    return dict(os.environ, PYTHONPATH=_ROOT, JAX_PLATFORMS='cpu')


def _count(store):
    if not os.path.exists(store):
        return 0
    try:
        con = sqlite3.connect(store, timeout=30)
        try:
            return con.execute('SELECT count(*) FROM measurements').fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # Schema not created yet.
        return 0


class ConfigTest(parameterized.TestCase):

    def _config(self, **overrides):
        c = config_lib.get_config()
        for k, v in overrides.items():
            c[k] = v
        return c

    @parameterized.named_parameters(
        ('bad_resolution', {
            'resolutions': (128, 130)
        }, 'resolutions'),
        ('not_a_number', {
            'resolutions': ('128,abc',)
        }, 'resolutions'),
        ('bad_batch', {
            'batch_sizes': (0,)
        }, 'batch_sizes'),
        ('bad_affinity', {
            'cpu_affinity': '0,99'
        }, 'cpu_affinity'),
        ('bad_shard', {
            'shard_index': 2,
            'num_shards': 2
        }, 'shard_index'),
        ('bad_dtype', {
            'dtype': 'int8'
        }, 'dtype'),
        ('bad_width', {
            'width': 1.1
        }, 'width'),
        ('unknown_device', {
            'device': 'tpu'
        }, 'device'),
    )
    def test_bad_config(self, overrides, field):
        workdir = self.create_tempdir().full_path
        with self.assertRaisesRegex(campaign.ConfigError, field):
            campaign.run(self._config(microbenchmarks=False, **overrides), workdir)

    def test_corrupt_store_is_config_error(self):
        workdir = self.create_tempdir().full_path
        bad = os.path.join(workdir, 'bad.sqlite')
        with open(bad, 'wb') as f:
            f.write(b'not a database' * 10)
        with self.assertRaisesRegex(campaign.ConfigError, 'bad.sqlite'):
            campaign.run(self._config(store=bad, microbenchmarks=False), workdir)

    def test_int_tuple(self):
        self.assertEqual(cf.int_tuple('resolutions', '128, 160,128', (128, 160)), (128, 160))
        self.assertEqual(cf.int_tuple('batch_sizes', 4), (4,))
        self.assertEqual(cf.int_tuple('batch_sizes', ('1,2',)), (1, 2))  # From the CLI.
        self.assertEqual(cf.int_tuple('resolutions', '128-140', range(128, 225, 4)),
                         (128, 132, 136, 140))

    def test_cli_bad_config_exits_2_without_traceback(self):
        workdir = self.create_tempdir().full_path
        args = _fast_args(os.path.join(workdir, 's.sqlite'), workdir)
        args = [a for a in args if not a.startswith('--config.resolutions')]
        proc = subprocess.run(args + ['--config.resolutions=128,999'],
                              cwd=_ROOT,
                              env=_env(),
                              capture_output=True,
                              text=True,
                              timeout=120)
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertNotIn('Traceback', proc.stderr)
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('error:')]
        self.assertLen(lines, 1)
        self.assertIn('resolutions', lines[0])


class ProgressTest(absltest.TestCase):

    def test_eta_respects_the_time_budget(self):
        import contextlib
        import io
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            bar = progress_lib.Progress(1000, time_budget_s=60.0)
            bar.start -= 6.0  # One item took 6 s: 999 more would take ~100 min.
            bar.update('x')
            open_ended = progress_lib.Progress(1000)
            open_ended.start -= 6.0
            open_ended.update('y')
        budgeted, plain = err.getvalue().splitlines()
        self.assertIn('1/1000', budgeted)
        self.assertRegex(budgeted, r'ETA 0\.9m \(budget\)')
        self.assertRegex(plain, r'ETA 99\.\dm y')


class DriftTest(absltest.TestCase):

    def test_reference_drift_flags_rows(self):
        workdir = self.create_tempdir().full_path
        c = config_lib.get_config()
        c.num_archs = 1
        c.resolutions = (128,)
        c.num_classes = 10
        c.microbenchmarks = False
        c.progress = False
        c.protocol.warmup = 1
        c.protocol.repeats = 3
        c.protocol.min_time = 0.0
        c.protocol.number = 1
        c.protocol.paired = False  # A paired protocol corrects drift instead of flagging it.
        c.drift.interval = 1
        c.drift.tolerance = 0.0  # Any change of the reference counts as drift.
        summary = campaign.run(c, workdir)
        self.assertEqual(summary['measured'], 1)
        self.assertEqual(summary['drift_checks'], 1)
        self.assertLen(summary['drift_history'], 2)
        self.assertEqual(summary['drift_flagged'], 1)
        table = csvio.read_ofa_csv(os.path.join(workdir, 'latency.csv'))
        self.assertEqual(table.extra['drift'], ['1'])


class PairedTest(absltest.TestCase):

    def test_paired_campaign_shares_one_gauge_baseline(self):
        workdir = self.create_tempdir().full_path
        c = config_lib.get_config()
        c.num_archs = 2
        c.resolutions = (128,)
        c.num_classes = 10
        c.microbenchmarks = False
        c.progress = False
        c.protocol.warmup = 1
        c.protocol.repeats = 3
        c.protocol.min_time = 0.0
        c.protocol.number = 1
        self.assertTrue(c.protocol.paired)  # The default.
        summary = campaign.run(c, workdir)
        self.assertEqual(summary['measured'], 2)
        baseline = summary['gauge']['baseline_ms']
        self.assertGreater(baseline, 0)
        self.assertLen(summary['speed_quantiles'], 5)
        store = store_lib.LatencyStore(os.path.join(workdir, 'latency.sqlite'))
        rows = store.rows(summary['fingerprint_id'])
        self.assertLen(rows, 2)
        for row in rows:
            self.assertIn('speed', row.stats)
            self.assertIn('raw_median', row.stats)
        # Another process (here: another call) reuses the stored baseline.
        gauge = gauges.open_gauge(store,
                                  summary['fingerprint_id'],
                                  batch=1,
                                  dtype='float32',
                                  device=None,
                                  width=1.2,
                                  num_classes=10,
                                  depthwise=rows[0].key.depthwise)
        self.assertEqual(gauge.baseline_ms, baseline)
        store.close()


class ResumeTest(absltest.TestCase):

    def test_sigkill_then_rerun_has_every_row_once(self):
        workdir = self.create_tempdir().full_path
        store = os.path.join(workdir, 'lat.sqlite')
        args = _fast_args(store, workdir, num_archs=3)
        proc = subprocess.Popen(args,
                                cwd=_ROOT,
                                env=_env(),
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 180
        while _count(store) < 1 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        killed_at = _count(store)
        self.assertGreaterEqual(killed_at, 1)
        done = subprocess.run(args,
                              cwd=_ROOT,
                              env=_env(),
                              capture_output=True,
                              text=True,
                              timeout=300)
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        con = sqlite3.connect(store)
        rows = con.execute('SELECT arch_key FROM measurements').fetchall()
        con.close()
        self.assertLen(rows, 3)
        self.assertLen(set(rows), 3)
        table = csvio.read_ofa_csv(os.path.join(workdir, 'latency.csv'))
        self.assertLen(table, 3)
        self.assertIn('protocol', table.extra)
        # A third run has nothing left to do and changes nothing.
        again = subprocess.run(args,
                               cwd=_ROOT,
                               env=_env(),
                               capture_output=True,
                               text=True,
                               timeout=300)
        self.assertEqual(again.returncode, 0, again.stderr[-2000:])
        self.assertIn('"measured": 0', again.stdout)
        self.assertEqual(_count(store), 3)


if __name__ == '__main__':
    absltest.main()
