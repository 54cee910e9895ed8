"""Tests for ofa_jax.accuracy_data with tfds.testing.mock_data and a tiny setup."""

from absl.testing import absltest
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from ofa_jax import accuracy_data, layers, space, subnet, supernet


class PreprocessTest(absltest.TestCase):

    def test_resize_crop_any_size(self):
        for shape in ((37, 90, 3), (300, 41, 3), (128, 128, 1)):
            img = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
            x = accuracy_data.preprocess(img, 128)
            self.assertEqual(x.shape, (128, 128, 3))
            self.assertEqual(x.dtype, np.float32)


class RecalibrateTest(absltest.TestCase):

    def test_stats_are_batch_averages(self):
        bn = layers.BatchNorm(4)
        x1 = np.random.default_rng(0).normal(2.0, 3.0, (8, 4)).astype(np.float32)
        x2 = np.random.default_rng(1).normal(-1.0, 0.5, (4, 4)).astype(np.float32)
        v = bn.init(jax.random.key(0), jnp.zeros((1, 4)))
        new = accuracy_data.recalibrate_bn(bn, v, [x1, x2])
        # OFA's set_running_statistics: biased variances, batches weighted by size.
        want_mean = (8 * x1.mean(0) + 4 * x2.mean(0)) / 12
        want_var = (8 * x1.var(0) + 4 * x2.var(0)) / 12
        np.testing.assert_allclose(new['batch_stats']['mean'], want_mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(new['batch_stats']['var'], want_var, rtol=1e-4, atol=1e-5)


class _HalfMasked(nn.Module):
    """A BatchNorm whose last two channels are masked off (like an inactive expand)."""

    @nn.compact
    def __call__(self, x, train=False):
        return layers.BatchNorm(4, name='bn')(x, train, jnp.array([True, True, False, False]))


class MaskedRecalibrateTest(absltest.TestCase):

    def test_masked_channels_keep_their_statistics(self):
        model = _HalfMasked()
        v = model.init(jax.random.key(0), jnp.zeros((1, 4)))
        v = dict(v, batch_stats={'bn': {'mean': jnp.full(4, 5.0), 'var': jnp.full(4, 7.0)}})
        x = np.random.default_rng(2).normal(1.0, 2.0, (6, 4)).astype(np.float32)
        new = accuracy_data.recalibrate_bn(model, v, [x])['batch_stats']['bn']
        np.testing.assert_allclose(new['mean'], np.r_[x.mean(0)[:2], 5.0, 5.0], rtol=1e-5)
        np.testing.assert_allclose(new['var'], np.r_[x.var(0)[:2], 7.0, 7.0], rtol=1e-5)


class BuildDatasetTest(absltest.TestCase):

    def test_mock_imagenet_two_archs(self):
        net = supernet.build_supernet(1.2, num_classes=1000, depthwise='shifted')
        variables = subnet.init_variables(net, (1, 32, 32, 3), seed=0, arch=space.smallest(128))
        archs = [space.smallest(128), space.sample_np(np.random.default_rng(0), resolutions=(128,))]
        with tfds.testing.mock_data(num_examples=12):
            train = tfds.data_source('imagenet2012', split='train')
            val = tfds.data_source('imagenet2012', split='validation')
            records = accuracy_data.build_dataset(variables,
                                                  archs,
                                                  train_source=train,
                                                  eval_source=val,
                                                  calib_batches=1,
                                                  batch_size=4,
                                                  num_eval=6,
                                                  depthwise='shifted')
        self.assertLen(records, 2)
        for rec, arch in zip(records, archs):
            self.assertEqual(rec.num_examples, 6)
            self.assertBetween(rec.accuracy, 0.0, 1.0)
            self.assertEqual(rec.arch, space.to_ofa_dict(arch))
        x, y = accuracy_data.to_training_data(records)
        self.assertEqual(x.kernel.shape, (2, 20))
        self.assertEqual(y.shape, (2,))


if __name__ == '__main__':
    absltest.main()
