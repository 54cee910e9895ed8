"""Tests of fleet latency campaigns on Ray (experiments/fleet.py, --config.cluster).

One local Ray instance (2 CPUs) for the module; tiny campaigns (resolution
128, 10 classes, 3 timed runs, XLA's fast compile) so each arch takes seconds.
Skipped when Ray is not installed.
"""

import fcntl
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest

try:
    import ray
except ImportError:  # Optional extra: pip install -e '.[cluster]'.
    ray = None

from experiments.configs import measure_latency as config_lib
from experiments.jobs import measure_latency as campaign
from ofa_jax import space
from ofa_jax.latency import store as store_lib

if ray is not None:
    from experiments import fleet

_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
# Compiles ~2x faster; the fingerprint records it (every row of these tests shares it).
_FAST_XLA = '--xla_backend_optimization_level=0'
_saved_env = {}
_address = None
# Actors claim this node's cores (experiments.fleet.CORE_LOCK_DIR); two test
# processes running fleets at once (pytest -n 2) would starve each other's
# actors of cores, and so of one shared fingerprint. One fleet at a time.
_NODE_LOCK = os.path.join(tempfile.gettempdir(), 'ofa_jax_fleet_tests.lock')
_lock_fd = None


def setUpModule():
    global _address, _lock_fd
    if ray is None:
        raise absltest.SkipTest('ray is not installed (pip install -e .[cluster])')
    _lock_fd = os.open(_NODE_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(_lock_fd, fcntl.LOCK_EX)  # Waits for another process's fleet tests.
    for name, value in (('XLA_FLAGS', _FAST_XLA), ('JAX_PLATFORMS', 'cpu')):
        _saved_env[name] = os.environ.get(name)
        os.environ[name] = value  # The actors inherit it from the raylet.
    ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    _address = ctx.address_info['gcs_address']


def tearDownModule():
    global _lock_fd
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    if _lock_fd is not None:
        os.close(_lock_fd)  # Releases the flock.
        _lock_fd = None
    for name, value in _saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _config(store, num_archs, paired=False):
    c = config_lib.get_config()
    c.num_archs = num_archs
    c.resolutions = (128,)
    c.num_classes = 10
    c.microbenchmarks = False
    c.progress = False
    c.protocol.warmup = 1
    c.protocol.repeats = 3
    c.protocol.min_time = 0.0
    c.protocol.number = 1
    c.protocol.paired = paired
    c.drift.interval = 0
    c.store = store
    c.cluster = 'local'  # Ray is already up: the fleet uses it.
    c.fleet_size = 2
    c.fleet_restarts = 1
    return c


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


class ClusterFieldTest(absltest.TestCase):

    def test_cluster_values(self):
        for ok in ('', 'local', 'auto', '10.0.0.1:6379', 'ray://head:10001'):
            self.assertEqual(campaign.cluster(ok), ok)
        for bad in ('ray', 'host:port', 'ray://:10001', 'h:0'):
            with self.assertRaisesRegex(campaign.ConfigError, 'config.cluster'):
                campaign.cluster(bad)

    def test_too_many_actors_is_a_config_error(self):
        workdir = self.create_tempdir().full_path
        c = _config(os.path.join(workdir, 's.sqlite'), 2)
        c.fleet_size = 3
        with self.assertRaisesRegex(campaign.ConfigError, r'config.fleet_size: 3; allowed: 1 to 2'):
            campaign.run(c, workdir)


# Archs of the actor-kill test: 8 keeps CI short on 2 cores (each is a compile);
# OFA_JAX_FLEET_ARCHS=20 runs the 20-arch check.
FLEET_ARCHS = int(os.environ.get('OFA_JAX_FLEET_ARCHS', '8'))


class FleetTest(absltest.TestCase):

    def test_an_actor_killed_mid_way_loses_nothing_and_doubles_nothing(self):
        workdir = self.create_tempdir().full_path
        path = os.path.join(workdir, 'fleet.sqlite')
        config = _config(path, FLEET_ARCHS, paired=True)
        killed = []

        def kill_one(measured, actors):
            if measured == 2 and not killed:
                killed.append(actors[0])
                ray.kill(actors[0])  # Its in-flight archs must come back to the queue.

        summary = fleet.run(config, workdir, campaign.plan(config, workdir), on_row=kill_one)
        self.assertLen(killed, 1)
        self.assertEqual(summary['stopped'], 'done')
        self.assertEqual(summary['measured'], FLEET_ARCHS)
        self.assertEqual(summary['left'], 0)
        self.assertEqual(summary['actors_died'], 1)
        self.assertEqual(summary['actors_restarted'], 1)
        self.assertGreaterEqual(summary['requeued'], 1)
        actors = {a['name']: a for a in summary['actors']}
        self.assertLen(actors, 3)  # Two, then a replacement.
        self.assertEqual(sum(a['died'] for a in actors.values()), 1)
        expected = {space.arch_key(a) for a in campaign.plan(config, workdir).archs}
        self.assertLen(expected, FLEET_ARCHS)
        with store_lib.LatencyStore(path, readonly=True) as st:
            rows = st.rows()
            devices = st.devices()
            baselines = st.meta_items('gauge_baseline_ms/')
        # Both actors (and the replacement) share one device id, so one gauge baseline.
        self.assertLen(baselines, 1)
        self.assertEqual(summary['gauge']['baseline_ms'], float(baselines[0][1]))
        keys = [r.key.arch_key for r in rows]
        self.assertLen(keys, FLEET_ARCHS)
        self.assertEqual(set(keys), expected)  # Distinct rows, none twice.
        per_actor = {}
        for row in rows:
            actor = actors[row.provenance['actor']]
            per_actor[actor['name']] = per_actor.get(actor['name'], 0) + 1
            # Each row carries the fingerprint its own actor computed, and that actor's pid.
            self.assertEqual(row.key.device, actor['fingerprint_id'])
            self.assertEqual(row.provenance['fingerprint_id'], actor['fingerprint_id'])
            self.assertEqual(row.provenance['pid'], actor['pid'])
            self.assertIn(row.key.device, devices)
            self.assertEqual(devices[row.key.device]['affinity_cores'], 1)  # Pinned.
            self.assertIn('speed', row.stats)  # Timed against the gauge.
        self.assertEqual(per_actor, {n: a['rows'] for n, a in actors.items() if a['rows']})
        cores = [a['core'] for a in actors.values() if not a['died']]
        self.assertLen(set(cores), 2)  # The two live actors never shared a core.

    def test_driver_sigkill_then_rerun_measures_only_the_rest(self):
        workdir = self.create_tempdir().full_path
        path = os.path.join(workdir, 'fleet.sqlite')
        n = 3
        args = [
            sys.executable, '-m', 'experiments.measure_latency', f'--config.num_archs={n}',
            '--config.resolutions=128', '--config.batch_sizes=1', f'--config.store={path}',
            f'--workdir={workdir}', '--config.num_classes=10', '--config.protocol.warmup=1',
            '--config.protocol.repeats=3', '--config.protocol.min_time=0',
            '--config.protocol.number=1', '--config.drift.interval=0',
            '--config.microbenchmarks=False', '--config.protocol.paired=False',
            f'--config.cluster={_address}', '--config.fleet_size=2'
        ]
        proc = subprocess.Popen(args,
                                cwd=_ROOT,
                                env=dict(os.environ, PYTHONPATH=_ROOT),
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        while _count(path) < 1 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        self.assertIsNone(proc.poll(), 'the driver ended before it could be killed')
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        killed_at = _count(path)
        self.assertBetween(killed_at, 1, n - 1)
        config = _config(path, n)
        summary = campaign.run(config, workdir)  # The rerun resumes from the store.
        self.assertEqual(summary['already_done'], killed_at)
        self.assertEqual(summary['measured'], n - killed_at)
        self.assertEqual(summary['left'], 0)
        with store_lib.LatencyStore(path, readonly=True) as st:
            rows = st.rows()
        keys = [r.key for r in rows]
        # The killed driver committed the first rows, this one the rest.
        drivers = [r.provenance['driver'] for r in rows]
        self.assertLen(set(drivers[:killed_at]), 1)
        self.assertNotIn(f':{os.getpid()}', drivers[0])
        self.assertEqual(set(drivers[killed_at:]), {f'{socket.gethostname()}:{os.getpid()}'})
        self.assertLen(keys, n)
        self.assertLen(set(keys), n)


if __name__ == '__main__':
    absltest.main()
