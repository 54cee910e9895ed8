"""Tests for the OFA state-dict <-> SuperNet variables conversion."""

import functools

from absl.testing import absltest
import chex
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from ofa_jax import layers
from ofa_jax import ofa_weights
from ofa_jax import space
from ofa_jax import subnet
from ofa_jax import supernet


@functools.lru_cache(maxsize=None)
def variables(width):
    model = supernet.build_supernet(width, depthwise='conv')
    v = subnet.init_variables(model, (1, 32, 32, 3), seed=3, arch=space.largest())
    rng = np.random.default_rng(4)
    # Distinct values everywhere, so a wrong transpose or swapped tensor shows.
    return jax.tree_util.tree_map(lambda a: np.asarray(rng.standard_normal(a.shape), np.float32), v)


class OfaWeightsTest(absltest.TestCase):

    def test_round_trip_and_torch_layouts(self):
        v = variables(1.2)
        sd = ofa_weights.to_ofa_state_dict(v, 1.2)
        self.assertEqual(sd['first_conv.conv.weight'].shape, (24, 3, 3, 3))
        self.assertEqual(sd['blocks.1.conv.depth_conv.conv.conv.weight'].shape, (144, 1, 7, 7))
        self.assertEqual(sd['blocks.1.conv.depth_conv.conv.7to5_matrix'].shape, (25, 25))
        # Stage 2 (SE): max mid 32 * 6 = 192, squeeze make_divisible(48) = 48.
        self.assertEqual(sd['blocks.5.conv.depth_conv.se.fc.reduce.weight'].shape, (48, 192, 1, 1))
        self.assertEqual(sd['blocks.5.conv.depth_conv.se.fc.expand.weight'].shape, (192, 48, 1, 1))
        self.assertNotIn('blocks.1.conv.depth_conv.se.fc.reduce.weight', sd)
        self.assertEqual(sd['feature_mix_layer.conv.weight'].shape, (1536, 1152, 1, 1))
        self.assertEqual(sd['classifier.linear.weight'].shape, (1000, 1536))
        self.assertEqual(sd['blocks.20.conv.point_linear.bn.bn.running_var'].shape, (192,))
        back = ofa_weights.from_ofa_state_dict(sd, 1.2, reference=v)
        chex.assert_trees_all_equal(back, v)

    def test_old_names_and_collapsed_wrappers(self):
        v = variables(1.0)
        sd = ofa_weights.to_ofa_state_dict(v, 1.0)
        old = {}
        for k, a in sd.items():
            k = k.replace('.conv.inverted', '.mobile_inverted_conv.inverted')
            k = k.replace('.conv.depth_conv', '.mobile_inverted_conv.depth_conv')
            k = k.replace('.conv.point_linear', '.mobile_inverted_conv.point_linear')
            old[k.replace('.bn.bn.', '.bn.')] = a
        old['first_conv.bn.num_batches_tracked'] = np.array(7)
        chex.assert_trees_all_equal(ofa_weights.from_ofa_state_dict(old, 1.0), v)

    def test_conv_semantics_match_pytorch(self):
        # PyTorch conv2d(x NCHW, w OIHW, padding 1, stride 2) == our first conv on NHWC.
        v = variables(1.0)
        sd = ofa_weights.to_ofa_state_dict(v, 1.0)
        w = sd['first_conv.conv.weight']
        x = np.random.default_rng(0).standard_normal((1, 3, 9, 9)).astype(np.float32)
        ref = lax.conv_general_dilated(x,
                                       w, (2, 2), ((1, 1), (1, 1)),
                                       dimension_numbers=('NCHW', 'OIHW', 'NCHW'))
        conv = layers.ConvBNAct(16, 3, 2, act='none')
        out = conv.apply(
            {
                'params': {
                    'conv': v['params']['first_conv']['conv'],
                    'bn': {
                        'scale': jnp.ones(16),
                        'bias': jnp.zeros(16)
                    }
                },
                'batch_stats': {
                    'bn': {
                        'mean': jnp.zeros(16),
                        'var': jnp.ones(16) - layers.BN_EPSILON
                    }
                }
            }, x.transpose(0, 2, 3, 1))
        np.testing.assert_allclose(out, np.asarray(ref).transpose(0, 2, 3, 1), atol=1e-4)

    def test_errors(self):
        v = variables(1.0)
        sd = ofa_weights.to_ofa_state_dict(v, 1.0)
        missing = dict(sd)
        del missing['blocks.3.conv.depth_conv.conv.5to3_matrix']
        with self.assertRaisesRegex(ValueError, 'missing.*5to3_matrix'):
            ofa_weights.from_ofa_state_dict(missing, 1.0)
        with self.assertRaisesRegex(ValueError, 'unknown.*blocks.21'):
            ofa_weights.from_ofa_state_dict({**sd, 'blocks.21.conv.x.weight': np.zeros(1)}, 1.0)
        with self.assertRaisesRegex(ValueError, 'first_conv.conv.weight: converted shape'):
            ofa_weights.from_ofa_state_dict(sd, 1.2, reference=variables(1.2))


if __name__ == '__main__':
    absltest.main()
