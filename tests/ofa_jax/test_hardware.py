"""Tests for the accelerator spec table (ofa_jax.hardware)."""

from absl.testing import absltest
from absl.testing import parameterized

from ofa_jax import hardware


class HardwareTest(parameterized.TestCase):

    @parameterized.parameters(
        ('2080ti', 'rtx_2080_ti'),
        ('rtx_2080_ti', 'rtx_2080_ti'),
        ('NVIDIA GeForce RTX 2080 Ti', 'rtx_2080_ti'),
        ('titan_rtx', 'titan_rtx'),
        ('titan_xp', 'titan_xp'),
        ('NVIDIA TITAN Xp', 'titan_xp'),
        ('NVIDIA H100 80GB HBM3', 'h100_sxm'),
        ('NVIDIA H100 PCIe', 'h100_pcie'),
        ('Tesla V100-SXM2-16GB', 'v100_sxm2_16gb'),
        ('NVIDIA A100-SXM4-80GB', 'a100_sxm4_80gb'),
        ('Tesla T4', 't4'),
        ('TPU v4', 'tpu_v4'),
        ('TPU v5 lite', 'tpu_v5e'),
    )
    def test_lookup_aliases(self, alias, name):
        self.assertEqual(hardware.lookup(alias).name, name)

    def test_unknown(self):
        self.assertIsNone(hardware.lookup('voodoo3'))
        with self.assertRaisesRegex(ValueError, 'unknown device.*rtx_2080_ti'):
            hardware.get('voodoo3')

    @parameterized.parameters(
        ('rtx_2080_ti', 4352, 11, 616),
        ('titan_rtx', 4608, 24, 672),
        ('titan_xp', 3840, 12, 547.6),
        ('p40', 3840, 24, 347),
        ('v100', 5120, 16, 900),
    )
    def test_values_match_data_readme(self, name, cores, mem, bw):
        spec = hardware.get(name)
        self.assertEqual((spec.cores, spec.memory_gb, spec.bandwidth_gbs), (cores, mem, bw))

    def test_required_devices_present(self):
        for name in ('k80', 'p4', 'p40', 'p100', 'v100_pcie_32gb', 't4', 'a10', 'a30', 'a40',
                     'a100_pcie_80gb', 'l4', 'l40s', 'h100_pcie', 'h200', 'gtx_1080_ti', 'rtx_3090',
                     'rtx_4090', 'tpu_v2', 'tpu_v3'):
            spec = hardware.get(name)
            self.assertGreater(spec.peak_tflops, 0)
            self.assertTrue(spec.source)
            self.assertLen(hardware.raw_features(spec), len(hardware.FEATURE_NAMES))


if __name__ == '__main__':
    absltest.main()
