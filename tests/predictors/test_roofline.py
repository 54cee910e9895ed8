"""Tests for predictors.roofline on synthetic devices (no external data)."""

import dataclasses

from absl.testing import absltest
import numpy as np

from ofa_jax import counts
from ofa_jax import hardware
from ofa_jax import space
from predictors import roofline

TRUE = roofline.RooflineParams(eff_dense=0.4,
                               eff_depthwise=0.06,
                               eff_memory=0.7,
                               sm_gbs=6.0,
                               kernel_us=4.0,
                               host_us=15.0)


def _archs(n, seed=0):
    return space.sample_np(np.random.default_rng(seed), n)


class LayerWorkTest(absltest.TestCase):

    def test_flops_are_the_counted_macs_times_batch(self):
        archs = _archs(5)
        work = roofline.layer_work(archs, 8)
        conv = work.kind != roofline.ELEMENTWISE
        np.testing.assert_allclose(work.flops[:, conv].sum(1) / 2 / 8, counts.count_macs(archs))
        self.assertTrue(np.all(work.flops[:, work.kind == roofline.ELEMENTWISE] == 0))

    def test_inactive_blocks_launch_nothing(self):
        shallow = space.make_arch([3] * 20, [3] * 20, [2] * 5, 160)
        deep = space.make_arch([3] * 20, [3] * 20, [4] * 5, 160)
        k = roofline.layer_work(space.stack([shallow, deep]), 1).kernels.sum(1)
        self.assertLess(k[0], k[1])

    def test_activations_scale_with_batch_weights_do_not(self):
        arch = _archs(1)
        one, two = roofline.layer_work(arch, 1), roofline.layer_work(arch, 2)
        np.testing.assert_allclose(two.flops, 2 * one.flops)
        self.assertTrue(np.all(two.bytes <= 2 * one.bytes + 1e-6))
        self.assertTrue(np.all(two.bytes >= one.bytes))


class ModelTest(absltest.TestCase):

    def test_recovers_a_device_generated_by_its_own_form(self):
        archs = _archs(32)
        sources = []
        # Batch 1 rows make each source's host time identifiable (batch 16 is GPU bound).
        for name, batch in (('rtx_2080_ti', 16), ('titan_xp', 16), ('rtx_2080_ti', 1), ('titan_xp',
                                                                                        1)):
            device = hardware.get(name)
            y = roofline.predict(TRUE, archs, batch, device)
            sources.append(roofline.SourceTable(archs, y, batch, device))
        fitted = roofline.fit(sources, steps=300, learning_rate=0.05)
        held_out = _archs(16, seed=1)
        target = hardware.get('titan_rtx')
        for batch in (1, 16):
            want = roofline.predict(TRUE, held_out, batch, target)
            got = roofline.predict(fitted, held_out, batch, target)
            np.testing.assert_allclose(got, want, rtol=0.02)

    def test_monotone_in_work(self):
        device = hardware.get('titan_xp')
        small = space.make_arch([3] * 20, [3] * 20, [2] * 5, 160)
        wide = space.make_arch([3] * 20, [6] * 20, [2] * 5, 160)
        big_kernel = space.make_arch([7] * 20, [3] * 20, [2] * 5, 160)
        deep = space.make_arch([3] * 20, [3] * 20, [4] * 5, 160)
        big_res = space.make_arch([3] * 20, [3] * 20, [2] * 5, 224)
        lat = roofline.predict(TRUE, space.stack([small, wide, big_kernel, deep, big_res]), 32,
                               device)
        self.assertTrue(np.all(lat[1:] > lat[0]), lat)
        b1, b64 = (roofline.predict(TRUE, small, b, device)[0] for b in (1, 64))
        self.assertGreater(b64, b1)

    def test_faster_device_is_faster(self):
        archs = _archs(4)
        slow = roofline.predict(TRUE, archs, 64, hardware.get('titan_xp'))
        fast = roofline.predict(TRUE, archs, 64, hardware.get('a100'))
        self.assertTrue(np.all(fast < slow))


class BadInputTest(absltest.TestCase):

    def test_bad_batch(self):
        with self.assertRaisesRegex(ValueError, 'batch'):
            roofline.layer_work(_archs(2), 0)
        with self.assertRaisesRegex(ValueError, 'batch'):
            roofline.predict(TRUE, _archs(2), 2.5, hardware.get('titan_xp'))

    def test_bad_arch(self):
        arch = dataclasses.replace(space.sample_np(np.random.default_rng(0)),
                                   resolution=np.int64(150))
        with self.assertRaisesRegex(ValueError, 'resolution'):
            roofline.layer_work(arch, 1)

    def test_bad_device(self):
        with self.assertRaisesRegex(ValueError, 'device'):
            roofline.predict(TRUE, _archs(1), 1, hardware.get('tpu_v4'))
        with self.assertRaisesRegex(ValueError, 'device'):
            roofline.predict(TRUE, _archs(1), 1, 'titan_xp')

    def test_bad_sources(self):
        archs = _archs(3)
        device = hardware.get('titan_xp')
        with self.assertRaisesRegex(ValueError, 'sources'):
            roofline.fit([])
        with self.assertRaisesRegex(ValueError, 'latency_ms'):
            roofline.fit([roofline.SourceTable(archs, np.array([1.0, -1.0, 2.0]), 1, device)])
        with self.assertRaisesRegex(ValueError, 'archs'):
            roofline.fit([roofline.SourceTable(archs, np.ones(2), 1, device)])
        with self.assertRaisesRegex(ValueError, 'sm_roof'):
            roofline.fit([roofline.SourceTable(archs, np.ones(3), 1, device)], sm_roof='waves')

    def test_bad_host_us(self):
        with self.assertRaisesRegex(ValueError, 'host_us'):
            roofline.predict(TRUE, _archs(1), 1, hardware.get('titan_xp'), host_us=-1.0)


if __name__ == '__main__':
    absltest.main()
