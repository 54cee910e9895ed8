"""Tests for the supernet (traced arch, one compile) and sub-network extraction."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import extract
from ofa_jax import layers
from ofa_jax import space
from ofa_jax import spec
from ofa_jax import subnet
from ofa_jax import supernet

NUM_CLASSES = 10
# Compiles dominate this file's runtime on a small CPU host; correctness does not
# need XLA's backend optimisations, and both sides of each comparison use the same.
jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def randomize(variables, seed):
    """Non-trivial BN statistics, scale/bias, SE biases and transform matrices."""
    rng = np.random.default_rng(seed)

    def f(path, leaf):
        name = str(getattr(path[-1], 'key', path[-1]))
        shape = leaf.shape
        if name.endswith('_matrix'):
            value = np.eye(shape[0]) + 0.2 * rng.standard_normal(shape)
        elif name == 'scale':
            value = rng.uniform(0.5, 1.5, shape)
        elif name in ('bias', 'mean'):
            value = 0.2 * rng.standard_normal(shape)
        elif name == 'var':
            value = rng.uniform(0.5, 2.0, shape)
        else:
            return leaf
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(f, variables)


def to_jax(arch):
    return jax.tree_util.tree_map(jnp.asarray, arch)


@functools.lru_cache(maxsize=None)
def setup(width, size):
    """Supernet, random variables and ONE jitted inference function per (width, size)."""
    model = supernet.build_supernet(width, num_classes=NUM_CLASSES, depthwise='conv')
    variables = randomize(
        subnet.init_variables(model, (2, size, size, 3), seed=int(width * 10),
                              arch=space.largest()), 1)

    traces = []

    # One trace per (width, size): every arch must reuse it. (chex's
    # assert_max_traces keys its counter on the call stack's frame names, which
    # two parameterizations of one test share when they land on one worker.)
    @jit
    def compiled(variables, x, arch):
        traces.append(arch)  # Runs only while tracing.
        if len(traces) > 1:
            raise AssertionError(f'supernet width {width} at {size}px traced {len(traces)} '
                                 'times; one compile must serve every arch')
        return model.apply(variables, x, arch)

    def infer(variables, x, arch):
        # Full float32 (no TF32 on GPUs): the bound is 1e-4 on the logits. The
        # precision is part of jit's cache key, so every call sets the same one.
        with jax.default_matmul_precision('float32'):
            return compiled(variables, x, arch)

    infer.cache_size = compiled._cache_size
    return model, variables, infer


class TransformTest(absltest.TestCase):

    def test_matches_pytorch_formula(self):
        # OFA: crop the OIHW filter, view(C, t*t), F.linear(., M) = . @ M.T, view back.
        rng = np.random.default_rng(0)
        c = 3
        w_oihw = rng.standard_normal((c, 1, 7, 7)).astype(np.float32)
        m75 = rng.standard_normal((25, 25)).astype(np.float32)
        m53 = rng.standard_normal((9, 9)).astype(np.float32)
        ref5 = (w_oihw[:, :, 1:6, 1:6].reshape(c, 25) @ m75.T).reshape(c, 1, 5, 5)
        ref3 = (ref5[:, :, 1:4, 1:4].reshape(c, 9) @ m53.T).reshape(c, 1, 3, 3)
        ks = supernet.active_kernels(jnp.asarray(w_oihw.transpose(2, 3, 1, 0)), m75, m53)
        np.testing.assert_allclose(ks[5], ref5.transpose(2, 3, 1, 0), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ks[3], ref3.transpose(2, 3, 1, 0), rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(ks[7], w_oihw.transpose(2, 3, 1, 0))


class BlockTest(parameterized.TestCase):

    @parameterized.named_parameters(('k3_e3_se', 5, 3, 3), ('k5_e4', 8, 5, 4),
                                    ('k7_e6_stride', 16, 7, 6))
    def test_dynamic_block_matches_static_in_train_mode(self, pos, kernel, expand):
        net = spec.net_spec(1.0)
        dyn = supernet.DynamicMBConv(net, pos, 'conv')
        cin = net.block_in_channels(pos)
        x = jnp.asarray(np.random.default_rng(pos).standard_normal((3, 8, 8, cin)), jnp.float32)
        args = (jnp.int32(kernel), jnp.int32(expand), jnp.bool_(True))
        v = randomize(
            subnet.init_variables(dyn, x.shape, 0, kernel=args[0], expand=args[1], active=args[2]),
            2)
        arch = space.largest()
        arch.kernel[pos], arch.expand[pos] = kernel, expand
        b = [b for b in spec.block_specs(net, arch) if b.position == pos][0]
        sub_p, sub_s = extract._block(v['params'], v['batch_stats'], b,
                                      net.se_channels(b.mid_channels))
        static = layers.MBConv(b.in_channels, b.out_channels, b.mid_channels, b.kernel, b.stride,
                               b.act, b.se, 'conv')
        run_dyn = jit(lambda v, x: dyn.apply(v, x, *args, True, mutable=['batch_stats']))
        run_sta = jit(lambda v, x: static.apply(v, x, True, mutable=['batch_stats']))
        y_dyn, new_dyn = run_dyn(v, x)
        y_sta, new_sta = run_sta({'params': sub_p, 'batch_stats': sub_s}, x)
        np.testing.assert_allclose(y_dyn, y_sta, atol=1e-4, rtol=1e-4)
        # Running statistics: the active channels move exactly like the static block's,
        # the inactive ones keep their values (OFA updates only its slice).
        m = b.mid_channels
        got = new_dyn['batch_stats']['depth_bn']
        want = new_sta['batch_stats']['depth_bn']
        np.testing.assert_allclose(got['mean'][:m], want['mean'], atol=1e-5)
        np.testing.assert_allclose(got['var'][:m], want['var'], atol=1e-5, rtol=1e-5)
        old = v['batch_stats']['depth_bn']
        np.testing.assert_array_equal(got['var'][m:], old['var'][m:])
        self.assertFalse(np.allclose(got['var'][:m], old['var'][:m]))

    def test_elastic_depthwise_impls_agree(self):
        x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 9, 9, 8)), jnp.float32)
        outs = {}
        for impl in ('conv', 'shifted'):
            m = supernet.ElasticDepthwiseConv(8, 2, impl)
            v = randomize(subnet.init_variables(m, x.shape, 0, kernel_size=jnp.int32(5)), 4)
            run = jit(lambda v, x, k, m=m: m.apply(v, x, k))
            outs[impl] = [run(v, x, jnp.int32(k)) for k in space.KERNEL_CHOICES]
        for a, b in zip(outs['conv'], outs['shifted']):
            chex.assert_shape(a, (2, 5, 5, 8))
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
        # The three kernel sizes give three different convolutions.
        self.assertGreater(float(jnp.max(jnp.abs(outs['conv'][0] - outs['conv'][1]))), 1e-3)

    def test_inactive_block_is_identity_and_keeps_stats(self):
        net = spec.net_spec(1.0)
        dyn = supernet.DynamicMBConv(net, 6, 'conv')  # stage 1, third block: may be skipped.
        x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 4, 40)), jnp.float32)
        args = (jnp.int32(5), jnp.int32(4), jnp.bool_(False))
        v = randomize(
            subnet.init_variables(dyn, x.shape, 0, kernel=args[0], expand=args[1], active=args[2]),
            3)
        y, new = jit(lambda v, x: dyn.apply(v, x, *args, True, mutable=['batch_stats']))(v, x)
        np.testing.assert_array_equal(y, x)
        chex.assert_trees_all_equal(new['batch_stats'], v['batch_stats'])


class SuperNetTest(parameterized.TestCase):

    @parameterized.named_parameters(('w10_32px', 1.0, 32, (0, 1)), ('w12_40px', 1.2, 40, (2, 3)))
    def test_extracted_subnet_matches_supernet(self, width, size, seeds):
        model, variables, infer = setup(width, size)
        x = jnp.asarray(
            np.random.default_rng(size).standard_normal((2, size, size, 3)), jnp.float32)
        for seed in seeds:
            arch = space.sample_np(np.random.default_rng(seed))
            want = infer(variables, x, to_jax(arch))
            sub, sub_vars = extract.extract_subnet(variables, arch, width, depthwise='conv')
            self.assertEqual([f'blocks_{b.position}' for b in sub.blocks],
                             sorted((k for k in sub_vars['params'] if k.startswith('blocks_')),
                                    key=lambda k: int(k.split('_')[1])))
            with jax.default_matmul_precision('float32'):
                got = jit(sub.apply)(sub_vars, x)
            chex.assert_shape(got, (2, NUM_CLASSES))
            self.assertGreater(float(jnp.std(want)), 1e-2)  # logits are not trivially small
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)

    def test_one_compile_serves_twenty_archs(self):
        model, variables, infer = setup(1.0, 32)
        x = jnp.ones((2, 32, 32, 3))
        archs = space.sample_np(np.random.default_rng(7), 20)
        outs = [infer(variables, x, to_jax(a)) for a in space.unstack(archs)]
        self.assertEqual(infer.cache_size(), 1)
        # Different archs really give different networks.
        self.assertGreater(float(jnp.max(jnp.abs(outs[0] - outs[1]))), 1e-4)

    def test_train_mode_runs_under_jit(self):
        model, variables, _ = setup(1.0, 32)
        arch = to_jax(space.smallest())
        step = jit(lambda v, x, a: model.apply(v, x, a, True, mutable=['batch_stats']))
        x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
        logits, new = step(variables, x, arch)
        chex.assert_tree_all_finite(logits)
        # Depth 2 everywhere: blocks 2 and 3 of each stage keep their statistics.
        chex.assert_trees_all_equal(new['batch_stats']['blocks_2'],
                                    variables['batch_stats']['blocks_2'])
        self.assertFalse(
            np.allclose(new['batch_stats']['blocks_1']['point_linear']['bn']['mean'],
                        variables['batch_stats']['blocks_1']['point_linear']['bn']['mean']))

    def test_rejects_batched_arch(self):
        model, variables, _ = setup(1.0, 32)
        with self.assertRaisesRegex(ValueError, 'one architecture'):
            model.apply(variables, jnp.ones((1, 32, 32, 3)),
                        space.sample_np(np.random.default_rng(0), 2))

    def test_extract_rejects_wrong_width(self):
        _, variables, _ = setup(1.0, 32)
        with self.assertRaisesRegex(ValueError, 'width'):
            extract.extract_subnet(variables, space.smallest(), 1.2)


if __name__ == '__main__':
    absltest.main()
