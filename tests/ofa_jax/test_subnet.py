"""Tests for the static sub-network built from one architecture."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import space
from ofa_jax import subnet

# Correctness does not need XLA's backend optimisations; skipping them halves compiles.
jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def _num_params(model, size=32):
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(
        (1, size, size, 3))))
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes['params']))


class SubNetTest(parameterized.TestCase):

    @parameterized.named_parameters(
        ('w10_largest', 1.0, 'largest', 7_664_760),
        ('w12_largest', 1.2, 'largest', 10_701_632),
        ('w12_smallest', 1.2, 'smallest', 4_602_456),
    )
    def test_param_count_matches_ofa(self, width, which, want):
        arch = getattr(space, which)()
        self.assertEqual(_num_params(subnet.build_subnet(arch, width)), want)

    def test_structure_follows_arch(self):
        arch = space.from_ofa_dict({
            'ks': [3, 5, 7, 3] * 5,
            'e': [3, 4, 6, 4] * 5,
            'd': [2, 3, 4, 2, 3],
            'r': [160]
        })
        model = subnet.build_subnet(arch, 1.0, depthwise='conv')
        self.assertEqual(model.depthwise, 'conv')
        self.assertEqual([b.position for b in model.blocks],
                         [0, 1, 4, 5, 6, 8, 9, 10, 11, 12, 13, 16, 17, 18])
        shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(
            (1, 32, 32, 3))))['params']
        self.assertEqual({k for k in shapes if k.startswith('blocks_')},
                         {f'blocks_{b.position}' for b in model.blocks})
        # Block 5 (stage 2, kernel 5, expand 4, SE): in 40, mid make_divisible(160) = 160.
        b5 = shapes['blocks_5']
        self.assertEqual(b5['depth_conv']['kernel'].shape, (5, 5, 1, 160))
        self.assertEqual(b5['se']['reduce']['kernel'].shape, (160, 40))
        self.assertNotIn('se', shapes['blocks_8'])
        self.assertEqual(shapes['first_block']['depth_conv']['kernel'].shape, (3, 3, 1, 16))
        self.assertNotIn('inverted_bottleneck', shapes['first_block'])

    def test_variable_shapes_equal_a_whole_network_trace(self):
        rng = np.random.default_rng(11)
        for width, impl, r in ((1.0, 'conv', 128), (1.2, 'shifted', 160), (1.2, 'conv', 224)):
            for arch in space.unstack(space.sample_np(rng, 2, resolutions=(r,))):
                model = subnet.build_subnet(arch, width, num_classes=17, depthwise=impl)
                want = jax.eval_shape(
                    lambda m=model: m.init(jax.random.PRNGKey(0), jnp.zeros((2, r, r, 3))))
                got = subnet.variable_shapes(model)
                self.assertEqual(jax.tree_util.tree_structure(got),
                                 jax.tree_util.tree_structure(want))
                for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
                    self.assertEqual((g.shape, g.dtype), (w.shape, w.dtype))
        # The cache holds shapes only: a caller's tree is its own.
        first = subnet.variable_shapes(model)
        first['params'].pop('head')
        self.assertIn('head', subnet.variable_shapes(model)['params'])

    def test_auto_depthwise_is_resolved(self):
        model = subnet.build_subnet(space.smallest(), 1.2)
        self.assertIn(model.depthwise, ('conv', 'shifted'))
        self.assertEqual(model.depthwise, 'shifted' if jax.default_backend() == 'cpu' else 'conv')

    def test_bad_input(self):
        with self.assertRaisesRegex(ValueError, r'width: value 1\.5.*\(1\.0, 1\.2\)'):
            subnet.build_subnet(space.smallest(), 1.5)
        with self.assertRaisesRegex(ValueError, 'depthwise'):
            subnet.build_subnet(space.smallest(), 1.2, depthwise='winograd')
        with self.assertRaisesRegex(ValueError, 'batch shape'):
            subnet.build_subnet(space.sample_np(np.random.default_rng(0), 2))
        bad = space.smallest().replace(kernel=np.full(20, 4, np.int32))
        with self.assertRaisesRegex(ValueError, 'kernel: value 4'):
            subnet.build_subnet(bad)

    def test_impls_agree_and_train_mode_updates_stats(self):
        arch = space.smallest()
        x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
        conv = subnet.build_subnet(arch, 1.0, num_classes=10, depthwise='conv')
        shifted = subnet.build_subnet(arch, 1.0, num_classes=10, depthwise='shifted')
        v = subnet.init_variables(conv, x.shape)
        a = jit(conv.apply)(v, x)
        b = jit(shifted.apply)(v, x)
        chex.assert_shape(a, (2, 10))
        self.assertGreater(float(jnp.max(jnp.abs(a))), 1e-2)
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
        logits, upd = jit(lambda v, x: conv.apply(v, x, train=True, mutable=['batch_stats']))(v, x)
        chex.assert_tree_all_finite(logits)
        self.assertFalse(np.allclose(upd['batch_stats']['first_conv']['bn']['mean'], 0.0))


if __name__ == '__main__':
    absltest.main()
