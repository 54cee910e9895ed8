"""Config-field parsing shared by every experiment, and depthwise resolved per device."""

import os
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized
import jax

from experiments import cli
from experiments import config_fields as cf
from ofa_jax import depthwise as dw
from ofa_jax.latency import fingerprint as fp_lib
from ofa_jax.latency import measure

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


class ParseTest(parameterized.TestCase):

    @parameterized.parameters(
        ((128, 160), (128, 160)),
        ('128,160', (128, 160)),
        (('128,160',), (128, 160)),  # A tuple of strings from the command line.
        (128, (128,)),
        ('128-136', (128, 132, 136)),
        ((160, 128, 160), (160, 128)),
    )
    def test_resolutions(self, value, want):
        self.assertEqual(cf.resolutions(value), want)

    @parameterized.parameters(((130,), 'config.resolutions: \\[130\\] not allowed'),
                              ('abc', 'not a comma-separated list'), ((), 'empty'),
                              ((1.5,), 'not a comma-separated'))
    def test_bad_resolutions(self, value, message):
        with self.assertRaisesRegex(cf.ConfigError, message):
            cf.resolutions(value)

    def test_str_tuple_splits_and_checks(self):
        self.assertEqual(cf.str_tuple('predictors', ('mlp,additive',), ('mlp', 'additive')),
                         ('mlp', 'additive'))
        with self.assertRaisesRegex(cf.ConfigError, r"config.predictors: \['lstm'\] not allowed"):
            cf.str_tuple('predictors', 'lstm', ('mlp', 'additive'))

    def test_float_tuple(self):
        self.assertEqual(cf.float_tuple('budgets_ms', (15, '20')), (15.0, 20.0))
        self.assertEqual(cf.float_tuple('budgets_ms', ('',), allow_empty=True), ())
        for bad in ((0,), (-1.0,), ('nan',), ('x',)):
            with self.assertRaisesRegex(cf.ConfigError, 'config.budgets_ms'):
                cf.float_tuple('budgets_ms', bad)

    @parameterized.parameters(('mutate_prob', 7, 0.0, 1.0), ('mutate_prob', -0.1, 0.0, 1.0),
                              ('rate', float('nan'), 0.0, None), ('rate', 'x', 0.0, None))
    def test_number_ranges(self, name, value, low, high):
        with self.assertRaisesRegex(cf.ConfigError, f'config.{name}: .*allowed: a finite number'):
            cf.number(name, value, low=low, high=high)

    def test_split(self):
        self.assertEqual(cf.split('0.7,0.15,0.15'), (0.7, 0.15, 0.15))
        self.assertEqual(cf.split((0.6, 0.2, 0.2)), (0.6, 0.2, 0.2))
        for bad in ((0.5, 0.5), (0.5, 0.5, 0.0), (1.2, -0.1, -0.1), ('a',)):
            with self.assertRaisesRegex(cf.ConfigError, 'config.split'):
                cf.split(bad)

    def test_cpu_affinity_forms(self):
        allowed = fp_lib.affinity()
        self.assertIsNone(cf.cpu_affinity(''))
        self.assertEqual(cf.cpu_affinity('1'), tuple(allowed[:1]))
        self.assertEqual(cf.cpu_affinity(','.join(map(str, allowed))), tuple(allowed))
        with self.assertRaisesRegex(cf.ConfigError, 'config.cpu_affinity: cores \\[999\\]'):
            cf.cpu_affinity('0,999')
        with self.assertRaisesRegex(cf.ConfigError, 'config.cpu_affinity: 0 cores'):
            cf.cpu_affinity('0')

    def test_protocol(self):
        p = cf.protocol({'warmup': 1, 'repeats': 3})
        self.assertEqual((p.warmup, p.repeats), (1, 3))
        with self.assertRaisesRegex(cf.ConfigError, 'unknown field'):
            cf.protocol({'warmups': 1})
        with self.assertRaisesRegex(cf.ConfigError, 'config.protocol: protocol.max_time'):
            cf.protocol({'max_time': -1.0})

    def test_store_path_and_bad_store(self):
        self.assertEqual(cf.store_path('', 'w'), os.path.join('w', 'latency.sqlite'))
        with self.assertRaisesRegex(cf.ConfigError, 'config.store: cannot open'):
            cf.open_store('/nonexistent/dir/x.sqlite')


class DepthwiseForTheDeviceTest(absltest.TestCase):

    def test_auto_follows_the_device_not_the_default_backend(self):
        # JAX's default backend pretends to be a GPU; the program runs on the CPU.
        real = jax.default_backend
        jax.default_backend = lambda: 'gpu'
        try:
            self.assertEqual(dw.resolve('auto'), 'conv')  # What the old code did.
            cpu = jax.devices('cpu')[0]
            self.assertEqual(cf.depthwise('auto', cpu), 'shifted')
            self.assertEqual(dw.resolve('auto', cpu.platform), 'shifted')
            model = measure.build_network(measure.gauge_arch(), num_classes=10, device=cpu)
            self.assertEqual(model.depthwise, 'shifted')
        finally:
            jax.default_backend = real
        self.assertEqual(cf.depthwise('conv', cpu), 'conv')
        with self.assertRaisesRegex(cf.ConfigError, 'config.depthwise'):
            cf.depthwise('fft', cpu)


class QuoteListsTest(absltest.TestCase):
    """Tuple overrides whose items are not Python (paths) reach the config as strings."""

    def _config_file(self):
        path = os.path.join(self.create_tempdir().full_path, 'cfg.py')
        with open(path, 'w') as f:
            f.write('import ml_collections\n\ndef get_config():\n'
                    '    c = ml_collections.ConfigDict()\n'
                    '    c.sources = ()\n    c.name = ""\n    c.resolutions = (128,)\n'
                    '    c.fit = ml_collections.ConfigDict({"files": ()})\n    return c\n')
        return path

    def test_paths_become_tuples_and_the_rest_is_untouched(self):
        cfg = self._config_file()
        argv = [
            'prog', '--config.sources=../a.csv,/data/b.sqlite', '--config.name=x/y,z',
            '--config.resolutions=128,160', '--config.fit.files=/a,/b', '--workdir=/w,x',
            '--config.sources=("a", "b")'
        ]
        out = cli.quote_lists(argv, cfg)
        self.assertEqual(out[1], "--config.sources=('../a.csv', '/data/b.sqlite')")
        self.assertEqual(out[2:4], argv[2:4])  # a str field, and ints that parse
        self.assertEqual(out[4], "--config.fit.files=('/a', '/b')")
        self.assertEqual(out[5:], argv[5:])
        # --config=OTHER decides which fields are tuples; an unreadable one changes nothing.
        self.assertEqual(cli.quote_lists(['p', '--config=/nope.py', argv[1]], cfg),
                         ['p', '--config=/nope.py', argv[1]])

    def test_a_launcher_reads_absolute_and_parent_paths(self):
        proc = subprocess.run([
            sys.executable, '-m', 'experiments.build_zoo',
            '--config.sources=../no_such_a.csv,/no/such_b.csv',
            '--workdir=' + self.create_tempdir().full_path
        ],
                              cwd=ROOT,
                              env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT),
                              capture_output=True,
                              text=True,
                              timeout=300)
        self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
        self.assertIn("config.sources: '../no_such_a.csv' does not exist", proc.stderr)


if __name__ == '__main__':
    absltest.main()
