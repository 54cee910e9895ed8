"""Tests for analytic params/MACs, their XLA cross-check and the info command."""

import contextlib
import io
import json

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import counts
from ofa_jax import info
from ofa_jax import space
from ofa_jax import spec
from ofa_jax import subnet
from ofa_jax import summary
from predictors import features


def _raw_archs(n, seed, resolutions=space.RESOLUTIONS):
    """Valid but not canonical archs (inactive blocks keep random genes)."""
    rng = np.random.default_rng(seed)
    return space.Arch(kernel=rng.choice(space.KERNEL_CHOICES, (n, 20)).astype(np.int32),
                      expand=rng.choice(space.EXPAND_CHOICES, (n, 20)).astype(np.int32),
                      depth=rng.choice(space.DEPTH_CHOICES, (n, 5)).astype(np.int32),
                      resolution=rng.choice(resolutions, (n,)).astype(np.int32))


def _bad(field, value):
    """space.smallest(128) with the first entry of ``field`` set to ``value``."""
    a = space.smallest(128)
    arr = np.array(getattr(a, field))
    arr.reshape(-1)[0] = value
    return a.replace(**{field: arr})


class CountsTest(parameterized.TestCase):

    @parameterized.named_parameters(
        # OFA's own counter (design.md): params, MACs rounded to 0.1M.
        ('w10_largest_224', 1.0, 'largest', 224, 7_664_760, 566.2),
        ('w12_largest_224', 1.2, 'largest', 224, 10_701_632, 843.1),
        ('w12_smallest_128', 1.2, 'smallest', 128, 4_602_456, 65.5),
    )
    def test_matches_ofa(self, width, which, resolution, params, mmacs):
        arch = getattr(space, which)(resolution)
        self.assertEqual(counts.count_params(arch, width), params)
        self.assertAlmostEqual(counts.count_macs(arch, width) / 1e6, mmacs, delta=0.05)

    def test_batched_numpy_and_jax_agree_with_singles(self):
        batch = space.sample_np(np.random.default_rng(0), 6)
        for width in space.WIDTHS:
            p = counts.count_params(batch, width)
            m = counts.count_macs(batch, width)
            self.assertEqual(p.shape, (6,))
            self.assertEqual(m.dtype, np.int64)
            for i, a in enumerate(space.unstack(batch)):
                self.assertEqual(counts.count_params(a, width), p[i])
                self.assertEqual(counts.count_macs(a, width), m[i])
            jbatch = jax.tree_util.tree_map(jnp.asarray, batch)
            jm = jax.jit(lambda a, w=width: counts.count_macs(a, w))(jbatch)
            jp = jax.jit(lambda a, w=width: counts.count_params(a, w))(jbatch)
            np.testing.assert_array_equal(np.asarray(jm), m)
            np.testing.assert_array_equal(np.asarray(jp), p)
        # 2-d batch and a resolution override.
        grid = batch[:4].replace(
            **{
                k: getattr(batch[:4], k).reshape((2, 2) + getattr(batch, k).shape[1:])
                for k in ('kernel', 'expand', 'depth', 'resolution')
            })
        self.assertEqual(counts.count_macs(grid, 1.0, resolution=160).shape, (2, 2))

    def test_macs_grow_with_resolution(self):
        arch = space.largest()
        self.assertLess(counts.count_macs(arch, 1.2, resolution=128),
                        counts.count_macs(arch, 1.2, resolution=224))

    @parameterized.parameters(1.0, 1.2)
    def test_params_match_flax_tree(self, width):
        # Running statistics live in batch_stats, so 'params' is exactly OFA's count.
        for seed in range(3):
            arch = space.sample_np(np.random.default_rng(seed))
            model = subnet.build_subnet(arch, width)
            shapes = jax.eval_shape(
                lambda m=model: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
            n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes['params']))
            self.assertEqual(n, counts.count_params(arch, width))

    def test_macs_match_xla_cost_analysis(self):
        # XLA counts 2 flops per MAC plus BN, activations, SE gating, residual and bias
        # adds and pooling, so its flops sit a few percent above 2 * MACs.
        arch = space.sample_np(np.random.default_rng(1), resolutions=[128])
        model = subnet.build_subnet(arch, 1.0, depthwise='conv')
        x = jnp.zeros((1, 128, 128, 3))
        variables = subnet.init_variables(model, x.shape)
        cost = jax.jit(model.apply).lower(variables, x).compile().cost_analysis()
        if isinstance(cost, (list, tuple)):
            cost = cost[0] if cost else None
        if not cost or 'flops' not in cost:
            self.skipTest('XLA gave no cost analysis on this backend')
        ratio = cost['flops'] / (2 * counts.count_macs(arch, 1.0))
        self.assertGreaterEqual(ratio, 1.0)
        self.assertLess(ratio, 1.10)


class PerBlockTest(parameterized.TestCase):
    """The batched counters against a plain loop over ``spec.block_specs``."""

    @parameterized.parameters(1.0, 1.2)
    def test_vectorised_counts_match_block_loop(self, width):
        archs = _raw_archs(200, seed=int(width * 10), resolutions=(128, 132, 164, 200, 224))
        for nc in (1000, 10):
            net = spec.net_spec(width, nc)
            macs = counts.count_macs(archs, width, num_classes=nc)
            params = counts.count_params(archs, width, num_classes=nc)
            jmacs = jax.jit(lambda a: counts.count_macs(a, width, num_classes=nc))(
                jax.tree_util.tree_map(jnp.asarray, archs))
            np.testing.assert_array_equal(np.asarray(jmacs), macs)
            for i, arch in enumerate(space.unstack(archs)):
                blocks = spec.block_specs(net, arch)
                r = int(arch.resolution)
                want_macs = counts.fixed_macs(net, r) + sum(counts.block_macs(b) for b in blocks)
                want_params = counts.fixed_params(net) + sum(counts.block_params(b) for b in blocks)
                self.assertEqual(macs[i], want_macs)
                self.assertEqual(params[i], want_params)
                # Overriding the resolution is the same as changing the arch's.
                self.assertEqual(
                    counts.count_macs(arch, width, num_classes=nc, resolution=164),
                    counts.fixed_macs(net, 164) + sum(
                        counts.block_macs(b)
                        for b in spec.block_specs(net, arch.replace(resolution=np.int32(164)))))

    def test_one_block_by_hand(self):
        # Width 1.2, 224 px, position 4 (stage 2 starts: stride 2, SE, ReLU), kernel 5, expand 6.
        b = spec.position_block(spec.net_spec(1.2), 224, 4, 5, 6)
        self.assertEqual((b.in_size, b.out_size, b.in_channels, b.mid_channels, b.out_channels),
                         (56, 28, 32, 192, 48))
        self.assertEqual(b.se_channels, 48)
        expand, dw = 56 * 56 * 32 * 192, 28 * 28 * 192 * 25
        se, project = 2 * 192 * 48, 28 * 28 * 192 * 48
        self.assertEqual(counts.block_macs(b), expand + dw + se + project)
        weights = 32 * 192 + 192 * 25 + 2 * 192 * 48 + 192 * 48
        self.assertEqual(counts.block_params(b, weights_only=True), weights)
        bn, se_bias = 2 * 192 + 2 * 192 + 2 * 48, 48 + 192
        self.assertEqual(counts.block_params(b), weights + bn + se_bias)
        # The fixed first block has no expand conv (expand 1).
        first = spec.first_block(spec.net_spec(1.2), 224)
        self.assertEqual(counts.block_macs(first), 112 * 112 * 24 * 9 + 112 * 112 * 24 * 24)
        self.assertEqual(counts.block_params(first), 24 * 9 + 2 * 24 + 24 * 24 + 2 * 24)

    @parameterized.parameters(1.0, 1.2)
    def test_predictor_features_use_the_same_counts(self, width):
        net = spec.net_spec(width)
        table = features.block_macs_table(width)
        for ri, r in enumerate(space.RESOLUTIONS):
            for p, per_kernel in enumerate(spec.position_blocks(net, r)):
                for ki, per_expand in enumerate(per_kernel):
                    for ei, b in enumerate(per_expand):
                        self.assertEqual(table[ri, p, ki * 3 + ei],
                                         np.float32(counts.block_macs(b)))
        archs = _raw_archs(64, seed=3)
        macs, params = features.analytic_counts(jax.tree_util.tree_map(jnp.asarray, archs), width)
        np.testing.assert_allclose(np.asarray(macs), counts.count_macs(archs, width), rtol=1e-6)
        weights = [
            counts.fixed_params(net, weights_only=True) +
            sum(counts.block_params(b, weights_only=True)
                for b in spec.block_specs(net, a))
            for a in space.unstack(archs)
        ]
        np.testing.assert_allclose(np.asarray(params), weights, rtol=1e-6)


class ValidationTest(parameterized.TestCase):

    @parameterized.named_parameters(
        ('kernel_4', 'kernel', 4, 'kernel: value 4'),
        ('expand_5', 'expand', 5, 'expand: value 5'),
        ('depth_1', 'depth', 1, 'depth: value 1'),
        ('resolution_130', 'resolution', 130, 'resolution: value 130'),
    )
    def test_host_archs_are_validated(self, field, value, fragment):
        bad = _bad(field, value)
        batch = space.stack([space.largest(), bad, space.smallest()])
        as_lists = jax.tree_util.tree_map(lambda x: np.asarray(x).tolist(), bad)
        concrete = jax.tree_util.tree_map(jnp.asarray, batch)  # jax arrays, not traced
        for count in (counts.count_macs, counts.count_params):
            for arch in (bad, batch, as_lists, concrete):
                with self.assertRaisesRegex(ValueError, fragment):
                    count(arch, 1.2)

    @parameterized.parameters(0, -8, 1.5, True)
    def test_bad_resolution_override(self, r):
        with self.assertRaisesRegex(ValueError, 'resolution: override'):
            counts.count_macs(space.largest(), 1.2, resolution=r)

    def test_any_positive_resolution_override(self):
        self.assertGreater(counts.count_macs(space.largest(), 1.2, resolution=130), 0)
        self.assertEqual(counts.count_macs(space.largest(), 1.2, resolution=np.int64(224)),
                         counts.count_macs(space.largest(224), 1.2))

    @parameterized.named_parameters(('kernel_4', 'kernel', 4), ('depth_1', 'depth', 1),
                                    ('resolution_130', 'resolution', 130))
    def test_traced_archs_are_not_checked(self, field, value):
        bad = jax.tree_util.tree_map(jnp.asarray, space.stack([_bad(field, value)] * 2))
        # Inside jit and vmap the inputs are tracers: no host check, no error.
        macs = jax.jit(lambda a: counts.count_macs(a, 1.2))(bad)
        params = jax.jit(lambda a: counts.count_params(a, 1.2))(bad)
        vmapped = jax.vmap(lambda a: counts.count_macs(a, 1.2))(bad)
        self.assertEqual(macs.shape, (2,))
        self.assertEqual(params.shape, (2,))
        np.testing.assert_array_equal(vmapped, macs)
        jax.jit(lambda a, r: counts.count_macs(a, 1.2, resolution=r))(bad, jnp.int32(-4))


class SummaryTest(absltest.TestCase):

    def test_size_table(self):
        rows = {(r['width'], r['arch']): r for r in summary.size_table()}
        self.assertLen(rows, 4)
        self.assertEqual(rows[1.0, 'largest']['params'], 7_664_760)
        # OFA's count_net_flops of its own sub-networks: 65,536,896 and 843,101,056
        # (it sums in float32, which rounds the latter; benchmarks/ofa_torch_parity.py).
        self.assertEqual(rows[1.2, 'smallest']['macs_128'], 65_536_896)
        self.assertEqual(rows[1.2, 'largest']['macs_224'], 843_101_040)
        text = summary.format_table(list(rows.values()))
        self.assertIn('10,701,632', text)
        self.assertIn('843.1M', text)


class InfoTest(parameterized.TestCase):

    def _run(self, argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = info.main(argv)
        return code, out.getvalue(), err.getvalue()

    def test_last_line_is_json(self):
        code, out, _ = self._run(['--width', '1.2', '--arch', 'largest', '--resolution', '224'])
        self.assertEqual(code, 0)
        last = json.loads(out.strip().splitlines()[-1])
        self.assertEqual(last['params'], 10_701_632)
        self.assertEqual(last['macs'], 843_101_040)
        self.assertEqual(last['output_shape'], [1, 1000])
        self.assertGreater(len(out.strip().splitlines()), 1)

    def test_dict_arch(self):
        d = space.to_ofa_dict(space.smallest(128), with_wid=True)
        code, out, _ = self._run(['--width', '1.2', '--arch', str(d)])
        self.assertEqual(code, 0)
        self.assertEqual(json.loads(out.splitlines()[-1])['params'], 4_602_456)

    @parameterized.named_parameters(
        ('width', ['--width', '1.5'], 'width: value'),
        ('resolution', ['--resolution', '130'], 'resolution: value 130'),
        ('resolution_text', ['--resolution', 'big'], "resolution: value 'big'"),
        ('arch_name', ['--arch', 'medium'], "arch: value 'medium'"),
        ('kernel', ['--arch',
                    str({
                        'ks': [4] * 20,
                        'e': [3] * 20,
                        'd': [2] * 5,
                        'r': [128]
                    })], 'kernel: value 4'),
    )
    def test_bad_input_exits_2(self, argv, fragment):
        code, out, err = self._run(argv)
        self.assertEqual(code, 2)
        self.assertEqual(out, '')
        self.assertEqual(len(err.strip().splitlines()), 1)
        self.assertIn(fragment, err)


if __name__ == '__main__':
    absltest.main()
