"""Tests for the depthwise implementations and the MobileNetV3 layers."""

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from ofa_jax import depthwise as dw
from ofa_jax import layers
from ofa_jax import subnet


class DepthwiseTest(parameterized.TestCase):

    @parameterized.product(kernel=(3, 5, 7), stride=(1, 2), size=(7, 8))
    def test_impls_agree(self, kernel, stride, size):
        rng = np.random.default_rng(kernel * 100 + stride * 10 + size)
        x = jnp.asarray(rng.standard_normal((2, size, size + 1, 5)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((kernel, kernel, 1, 5)), jnp.float32)
        outs = {
            name: jax.jit(fn, static_argnums=(2, 3))(x, w, stride, kernel // 2)
            for name, fn in dw.DEPTHWISE_IMPLS.items()
        }
        want_h = (size - 1) // stride + 1
        self.assertEqual(outs['conv'].shape, (2, want_h, (size + 1 - 1) // stride + 1, 5))
        np.testing.assert_allclose(outs['shifted'], outs['conv'], atol=1e-5, rtol=1e-5)

    def test_matches_per_channel_reference(self):
        # One channel of a depthwise conv is an ordinary single-channel conv.
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((1, 6, 6, 3)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((3, 3, 1, 3)), jnp.float32)
        out = dw.depthwise_conv(x, w, 2, 1, 'shifted')
        for c in range(3):
            ref = lax.conv_general_dilated(x[..., c:c + 1],
                                           w[..., c:c + 1],
                                           window_strides=(2, 2),
                                           padding=((1, 1), (1, 1)),
                                           dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
            np.testing.assert_allclose(out[..., c], ref[..., 0], atol=1e-5)

    def test_default_and_resolve(self):
        self.assertEqual(dw.default_depthwise('cpu'), 'shifted')
        self.assertEqual(dw.default_depthwise('gpu'), 'conv')
        self.assertEqual(dw.default_depthwise('tpu'), 'conv')
        self.assertEqual(dw.resolve('auto'), dw.default_depthwise(jax.default_backend()))
        with self.assertRaisesRegex(ValueError, "depthwise: value 'fft'.*conv.*shifted"):
            dw.resolve('fft')


class LayersTest(parameterized.TestCase):

    def test_activations(self):
        x = jnp.array([-4.0, -3.0, -1.0, 0.0, 1.0, 3.0, 5.0])
        np.testing.assert_allclose(layers.hsigmoid(x), [0, 0, 1 / 3, 0.5, 2 / 3, 1, 1], atol=1e-6)
        np.testing.assert_allclose(layers.hswish(x),
                                   x * np.array([0, 0, 1 / 3, 0.5, 2 / 3, 1, 1]),
                                   atol=1e-6)
        with self.assertRaisesRegex(ValueError, "act: value 'gelu'"):
            layers.activation('gelu')

    def test_conv_pads_symmetrically(self):
        # 'SAME' would pad (0, 1) at stride 2 on an even input; PyTorch and OFA pad (1, 1).
        rng = np.random.default_rng(1)
        x = jnp.asarray(rng.standard_normal((1, 8, 8, 3)), jnp.float32)
        m = layers.ConvBNAct(4, 3, 2, act='none')
        v = subnet.init_variables(m, x.shape)
        w = v['params']['conv']['kernel']
        ref = lax.conv_general_dilated(x,
                                       w, (2, 2), ((1, 1), (1, 1)),
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
        same = lax.conv_general_dilated(x,
                                        w, (2, 2),
                                        'SAME',
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
        out = m.apply(v, x)
        np.testing.assert_allclose(out, ref / np.sqrt(1 + layers.BN_EPSILON), atol=1e-5)
        self.assertGreater(float(jnp.max(jnp.abs(out - same))), 1e-3)

    def test_batchnorm_train_updates_masked_channels_only(self):
        bn = layers.BatchNorm(3)
        x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 2, 2, 3)) * 2 + 1, jnp.float32)
        v = bn.init(jax.random.PRNGKey(0), x)
        mask = jnp.array([True, False, True])
        y, upd = bn.apply(v, x, True, mask, mutable=['batch_stats'])
        mean = np.asarray(x).reshape(-1, 3).mean(0)
        var_unbiased = np.asarray(x).reshape(-1, 3).var(0, ddof=1)
        stats = upd['batch_stats']
        np.testing.assert_allclose(stats['mean'], np.where(mask, 0.1 * mean, 0.0), atol=1e-5)
        np.testing.assert_allclose(stats['var'],
                                   np.where(mask, 0.9 + 0.1 * var_unbiased, 1.0),
                                   atol=1e-5)
        np.testing.assert_allclose(y.reshape(-1, 3).mean(0), 0.0, atol=1e-5)
        # Inference uses the running statistics.
        np.testing.assert_allclose(bn.apply(v, x), x / np.sqrt(1 + 1e-5), atol=1e-5)

    @parameterized.named_parameters(
        ('residual', 8, 8, 24, 1, True, True),
        ('stride2', 8, 8, 24, 2, True, False),
        ('wider_out', 8, 16, 24, 1, False, False),
    )
    def test_mbconv_structure(self, cin, cout, mid, stride, se, residual):
        m = layers.MBConv(cin, cout, mid, 5, stride, 'hswish', se, depthwise='shifted')
        x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 9, 9, cin)), jnp.float32)
        v = subnet.init_variables(m, x.shape)
        p = v['params']
        self.assertEqual(p['inverted_bottleneck']['conv']['kernel'].shape, (1, 1, cin, mid))
        self.assertEqual(p['depth_conv']['kernel'].shape, (5, 5, 1, mid))
        self.assertEqual(p['point_linear']['conv']['kernel'].shape, (1, 1, mid, cout))
        if se:
            self.assertEqual(p['se']['reduce']['kernel'].shape, (mid, 8))  # make_divisible(24//4)
            self.assertEqual(p['se']['expand']['kernel'].shape, (8, mid))
        else:
            self.assertNotIn('se', p)
        self.assertEqual(m.residual, residual)
        out = jax.jit(m.apply)(v, x)
        size = (9 - 1) // stride + 1
        chex.assert_shape(out, (2, size, size, cout))
        if residual:
            # Zeroing the projection's BN leaves exactly the identity shortcut.
            p0 = jax.tree_util.tree_map(lambda a: a, p)
            p0['point_linear']['bn'] = {'scale': jnp.zeros(cout), 'bias': jnp.zeros(cout)}
            np.testing.assert_allclose(jax.jit(m.apply)({**v, 'params': p0}, x), x, atol=1e-6)

    def test_expand_one_block_has_no_inverted_bottleneck(self):
        m = layers.MBConv(8, 8, 8, 3, 1, 'relu', False)
        v = subnet.init_variables(m, (1, 5, 5, 8))
        self.assertEqual(set(v['params']), {'depth_conv', 'depth_bn', 'point_linear'})

    def test_head(self):
        m = layers.Head(16, 10)
        x = jnp.ones((2, 3, 3, 8))
        v = subnet.init_variables(m, x.shape)
        self.assertNotIn('bias', v['params']['feature_mix'])
        chex.assert_shape(m.apply(v, x), (2, 10))


if __name__ == '__main__':
    absltest.main()
