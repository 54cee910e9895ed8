"""Tests of latency measurement and the device fingerprint (ofa_jax.latency)."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import space
from ofa_jax.latency import fingerprint as fp_lib
from ofa_jax.latency import measure


class StatsTest(parameterized.TestCase):

    def test_robust_stats(self):
        s = measure.robust_stats([1.0, 2.0, 3.0, 4.0, 100.0], trim=0.2)
        self.assertEqual(s['median'], 3.0)
        self.assertEqual(s['trimmed_mean'], 3.0)  # The outlier is trimmed.
        self.assertEqual(s['min'], 1.0)
        self.assertEqual(s['iqr'], 2.0)
        self.assertGreater(s['cv'], 1.0)

    def test_protocol_name_changes_with_fields(self):
        a, b = measure.Protocol(), measure.Protocol(repeats=31)
        self.assertNotEqual(a.name, b.name)
        self.assertEqual(a.name, measure.Protocol().name)
        with self.assertRaisesRegex(ValueError, 'statistic'):
            measure.Protocol(statistic='p99')

    @parameterized.named_parameters(('none', None), ('empty_dict', {}), ('empty_list', []),
                                    ('list', [{
                                        'flops': 2.0,
                                        'bytes accessed': 3.0
                                    }]), ('dict', {
                                        'flops': 2.0
                                    }))
    def test_cost_analysis_best_effort(self, value):

        class Fake:

            def cost_analysis(self):
                return value

            def memory_analysis(self):
                raise NotImplementedError

        cost = measure.cost_of(Fake())
        if value and (isinstance(value, dict) or value[0]):
            self.assertEqual(cost['flops'], 2.0)
        else:
            self.assertIsNone(cost['flops'])
        self.assertIsNone(cost['peak_bytes'])


class FingerprintTest(absltest.TestCase):

    def test_stable_id_ignores_measured_numbers(self):
        a = fp_lib.fingerprint(microbenchmarks=False)
        b = dict(a, measured_copy_gbs=1.0, hostname='elsewhere')
        self.assertEqual(fp_lib.fingerprint_id(a), fp_lib.fingerprint_id(b))
        self.assertEqual(a['fingerprint_id'], fp_lib.fingerprint_id(a))
        c = dict(a, xla_flags='--xla_foo')
        self.assertNotEqual(fp_lib.fingerprint_id(a), fp_lib.fingerprint_id(c))
        self.assertGreaterEqual(a['affinity_cores'], 1)

    def test_features_for_unknown_device(self):
        fp = {
            'affinity_cores': 2,
            'memory_gb': 8.0,
            'measured_copy_gbs': 5.0,
            'measured_matmul_gflops': 50.0
        }
        np.testing.assert_array_equal(fp_lib.hardware_features(fp), [2, 8, 5, 50])

    def test_microbenchmarks_positive(self):
        self.assertGreater(fp_lib.copy_bandwidth_gbs(mbytes=4), 0)
        self.assertGreater(fp_lib.matmul_gflops(n=128), 0)

    def test_unknown_device(self):
        with self.assertRaisesRegex(ValueError, 'available'):
            fp_lib.resolve_device('nosuchplatform')
        with self.assertRaisesRegex(ValueError, 'out of range'):
            fp_lib.resolve_device('cpu:99')


class MeasureTest(absltest.TestCase):

    def test_tiny_subnet_end_to_end(self):
        arch = space.smallest(128)
        r = measure.measure_latency(arch,
                                    1,
                                    'float32',
                                    'cpu',
                                    measure.FAST_PROTOCOL,
                                    num_classes=10,
                                    depthwise='auto')
        self.assertEqual(r.arch_key, space.arch_key(arch))
        self.assertGreater(r.latency_ms, 0)
        self.assertLen(r.samples_ms, 3)
        self.assertGreater(r.compile_s, 0)
        self.assertGreater(r.lower_s, 0)
        self.assertIn(r.depthwise, ('conv', 'shifted'))
        self.assertEqual(r.latency_ms, r.stats['median'])
        if r.cost['flops'] is not None:
            self.assertGreater(r.cost['flops'], 1e6)

    def test_measure_module_and_rounds(self):
        import flax.linen as nn
        module = nn.Dense(16)
        p = measure.Protocol(warmup=1, repeats=6, min_time=0.0, rounds=2, number=2)
        r = measure.measure_module(module, (4, 8), 'float32', None, p, key='dense')
        self.assertLen(r.samples_ms, 6)
        self.assertEqual(r.number, 2)
        self.assertGreater(r.latency_ms, 0)

    def test_paired_protocol_cancels_a_machine_slowdown(self):
        # A fake machine that turns 3x slower halfway through: the target takes
        # 5 ms x k and the gauge's reference 10 ms x k. Raw samples see both speeds;
        # paired samples are target / reference x baseline = 5 ms throughout.
        import time as time_lib
        calls = {'target': 0}
        slow = lambda: 3.0 if calls['target'] > 6 else 1.0

        def target():
            calls['target'] += 1
            time_lib.sleep(0.005 * slow())
            return np.zeros(1)

        def reference():
            time_lib.sleep(0.010 * slow())
            return np.zeros(1)

        compiled = measure.Compiled(executable=reference,
                                    args=(),
                                    lower_s=0.0,
                                    compile_s=0.0,
                                    cost={})
        gauge = measure.Gauge(compiled=compiled, baseline_ms=10.0, arch_key='fake')
        p = measure.Protocol(warmup=0, repeats=12, min_time=0.0, number=1, paired=True)
        stats, samples, _, _ = measure.time_executable(target, (), p, gauge)  # A Timing unpacks.
        self.assertLen(samples, 12)
        self.assertAlmostEqual(stats['latency'], 5.0, delta=1.0)
        self.assertGreater(stats['raw_median'], 8.0)  # Half the raw samples are 3x slower.
        self.assertAlmostEqual(stats['speed'], 10.0 / stats['reference_median'])
        with self.assertRaisesRegex(ValueError, 'paired'):
            measure.time_executable(target, (), p)  # No gauge.

    def test_paired_protocol_has_its_own_id(self):
        self.assertNotEqual(measure.Protocol(paired=True).name, measure.Protocol().name)

    def test_synthetic_params(self):
        shapes = {
            'params': {
                'conv': {
                    'kernel': jax.ShapeDtypeStruct((3, 3, 4, 8), jnp.float32)
                },
                'bn': {
                    'scale': jax.ShapeDtypeStruct((8,), jnp.float32),
                    'bias': jax.ShapeDtypeStruct((8,), jnp.float32)
                }
            },
            'batch_stats': {
                'bn': {
                    'var': jax.ShapeDtypeStruct((8,), jnp.float32),
                    'mean': jax.ShapeDtypeStruct((8,), jnp.float32)
                }
            }
        }
        p = measure.synthetic_params(shapes)
        np.testing.assert_array_equal(p['batch_stats']['bn']['var'], 1.0)
        np.testing.assert_array_equal(p['params']['bn']['bias'], 0.0)
        self.assertLess(np.abs(p['params']['conv']['kernel']).max(), 3.0)


if __name__ == '__main__':
    absltest.main()
