"""Tests for the search space: sampling, canonical form, OFA dicts, encoding."""

import math

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import encoding
from ofa_jax import space
from ofa_jax import spec

GOOD = {'ks': [3] * 20, 'e': [3] * 20, 'd': [2] * 5, 'r': [128]}


def _with(**changes):
    d = {k: list(v) for k, v in GOOD.items()}
    d.update(changes)
    return d


class ValidationTest(parameterized.TestCase):

    @parameterized.named_parameters(
        ('wrong_length', _with(ks=[3] * 19), ['kernel', '19', '20']),
        ('kernel_4', _with(ks=[4] + [3] * 19), ['kernel', '4', '(3, 5, 7)']),
        ('expand_5', _with(e=[5] + [3] * 19), ['expand', '5', '(3, 4, 6)']),
        ('depth_1', _with(d=[1, 2, 2, 2, 2]), ['depth', '1', '(2, 3, 4)']),
        ('resolution_130', _with(r=[130]), ['resolution', '130', '[128, 224]']),
        ('resolution_512', _with(r=512), ['resolution', '512', '[128, 224]']),
        ('negative', _with(ks=[-3] + [3] * 19), ['kernel', '-3', '(3, 5, 7)']),
        ('float', _with(e=[3.0] + [3] * 19), ['expand', '3.0', '(3, 4, 6)']),
        ('float_resolution', _with(r=[128.0]), ['resolution', '128.0']),
        ('bool', _with(d=[True, 2, 2, 2, 2]), ['depth', 'True']),
        ('missing_key', {
            k: v for k, v in GOOD.items() if k != 'd'
        }, ["'d'", 'depth']),
        ('unknown_key', _with(x=[1]), ['unknown', 'x']),
    )
    def test_bad_dict_names_field_value_and_allowed(self, bad, fragments):
        with self.assertRaises(ValueError) as ctx:
            space.from_ofa_dict(bad)
        for fragment in fragments:
            self.assertIn(fragment, str(ctx.exception))

    def test_validate_rejects_bad_batch_field(self):
        arch = space.sample_np(np.random.default_rng(0), 4)
        bad = arch.replace(kernel=arch.kernel[:, :19])
        with self.assertRaisesRegex(ValueError, 'kernel.*shape'):
            space.validate(bad)
        with self.assertRaisesRegex(ValueError, 'resolution: value 130'):
            space.validate(arch.replace(resolution=np.array([128, 130, 128, 128])))

    def test_parse_child_arch_refuses_code(self):
        with self.assertRaisesRegex(ValueError, 'child_arch'):
            space.parse_child_arch("__import__('os').system('true')")
        with self.assertRaisesRegex(ValueError, 'child_arch'):
            space.parse_child_arch("{'ks': [3]*20}")

    def test_bad_resolution_list(self):
        with self.assertRaisesRegex(ValueError, 'resolution: value 130'):
            space.parse_resolutions('128,130')
        with self.assertRaisesRegex(ValueError, 'resolutions'):
            space.parse_resolutions('128,abc')


class SpaceTest(parameterized.TestCase):

    def test_round_trip_child_arch(self):
        text = ("{'wid': None, 'ks': [7, 7, 3, 3, 5, 7, 3, 7, 3, 7, 3, 7, 5, 7, 7, 5, 5, 5, 7, 5], "
                "'e': [6, 3, 4, 4, 3, 6, 4, 6, 6, 3, 4, 6, 6, 3, 3, 4, 6, 4, 6, 6], "
                "'d': [2, 4, 2, 3, 3], 'r': [208]}")
        arch = space.parse_child_arch(text)
        self.assertEqual(int(arch.resolution), 208)
        # Blocks past a stage's depth are canonicalised; active ones kept.
        np.testing.assert_array_equal(arch.kernel[:4], [7, 7, 3, 3])
        np.testing.assert_array_equal(arch.expand[:4], [6, 3, 3, 3])
        again = space.parse_child_arch(space.format_child_arch(arch))
        self.assertEqual(space.arch_key(arch), space.arch_key(again))
        self.assertEqual(space.arch_key(space.from_key(space.arch_key(arch))), space.arch_key(arch))

    def test_canonical_equal_subnets_share_key(self):
        a = _with(d=[2, 2, 2, 2, 2])
        b = _with(d=[2, 2, 2, 2, 2], ks=[3, 3, 7, 5] * 5, e=[3, 3, 6, 4] * 5)
        self.assertEqual(space.arch_key(space.from_ofa_dict(a)),
                         space.arch_key(space.from_ofa_dict(b)))
        c = _with(ks=[5] + [3] * 19)
        self.assertNotEqual(space.arch_key(space.from_ofa_dict(a)),
                            space.arch_key(space.from_ofa_dict(c)))

    def test_sample_is_valid_canonical_and_jittable(self):
        batch = jax.jit(lambda k: space.sample(k, (64,), resolutions=(128, 160)))(jax.random.key(0))
        chex.assert_shape([batch.kernel, batch.expand, batch.depth, batch.resolution], [(64, 20),
                                                                                        (64, 20),
                                                                                        (64, 5),
                                                                                        (64,)])
        host = space.to_numpy(batch)
        space.validate(host)
        self.assertTrue(set(np.unique(host.resolution)) <= {128, 160})
        canon = space.canonicalize_np(host)
        chex.assert_trees_all_equal(host, canon)
        # Every gene value appears somewhere in a batch this size.
        self.assertEqual(set(np.unique(host.depth)), {2, 3, 4})

    def test_sample_np_matches_space(self):
        host = space.sample_np(np.random.default_rng(1), 32)
        space.validate(host)
        self.assertEqual(len(space.unstack(host)), 32)
        one = space.sample_np(np.random.default_rng(1))
        self.assertEqual(one.batch_shape, ())

    def test_space_size(self):
        self.assertEqual(space.num_subnets([224]), (81 + 729 + 6561)**5)
        self.assertAlmostEqual(space.space_size_log10(), math.log10(7371**5 * 25), places=6)


class IndexMapTest(parameterized.TestCase):

    @parameterized.parameters(False, True)
    def test_choices_map_to_their_index(self, gather):
        for fn, choices in ((space.kernel_index, space.KERNEL_CHOICES), (space.expand_index,
                                                                         space.EXPAND_CHOICES)):
            np.testing.assert_array_equal(fn(np.asarray(choices), gather=gather), [0, 1, 2])
            self.assertEqual(fn(np.asarray(choices)).dtype, np.int32)
            self.assertEqual(int(fn(choices[2], gather=gather)), 2)
            got = fn(jnp.asarray(choices), gather=gather)
            self.assertIsInstance(got, jax.Array)
            self.assertEqual(got.dtype, jnp.int32)
            np.testing.assert_array_equal(got, [0, 1, 2])
            jitted = jax.jit(lambda v, f=fn: f(v, gather=gather))(jnp.asarray(choices))
            np.testing.assert_array_equal(jitted, [0, 1, 2])

    def test_tables_agree_with_compares_for_every_value(self):
        values = np.arange(-3, 12)
        for fn, table in ((space.kernel_index, space.KERNEL_INDEX), (space.expand_index,
                                                                     space.EXPAND_INDEX)):
            np.testing.assert_array_equal(fn(values, gather=True), fn(values))
            np.testing.assert_array_equal(table, fn(np.arange(table.size)))
            self.assertFalse(table.flags.writeable)

    def test_batched_arch_genes(self):
        a = space.sample_np(np.random.default_rng(4), 32)
        k = space.kernel_index(a.kernel)
        e = space.expand_index(a.expand)
        self.assertEqual(k.shape, (32, 20))
        np.testing.assert_array_equal(np.asarray(space.KERNEL_CHOICES)[k], a.kernel)
        np.testing.assert_array_equal(np.asarray(space.EXPAND_CHOICES)[e], a.expand)

    def test_resolution_index(self):
        r = np.asarray(space.RESOLUTIONS)
        np.testing.assert_array_equal(space.resolution_index(r), np.arange(len(r)))
        np.testing.assert_array_equal(space.resolution_index(jnp.asarray([100, 130, 500])),
                                      [0, 0, 24])
        self.assertIsInstance(space.resolution_index(np.int32(224)), np.integer)

    def test_array_module_and_tracers(self):
        self.assertIs(space.array_module(np.ones(2), [1]), np)
        self.assertIs(space.array_module(np.ones(2), jnp.ones(2)), jnp)
        self.assertFalse(space.is_traced(space.smallest(), None))
        seen = []
        jax.jit(lambda x: seen.append((space.is_traced(x), space.array_module(x))) or x)(
            jnp.ones(2))
        self.assertEqual(seen, [(True, jnp)])

    def test_active_blocks_np_matches_jnp(self):
        depth = np.asarray([[2, 3, 4, 2, 3], [4, 4, 4, 4, 4]])
        mask = space.active_blocks_np(depth)
        self.assertIsInstance(mask, np.ndarray)
        np.testing.assert_array_equal(mask, np.asarray(space.active_blocks(depth)))


class EncodingTest(absltest.TestCase):

    def test_onehot_matches_ofa_layout(self):
        arch = space.from_ofa_dict({
            'ks': [7] * 20,
            'e': [4] * 20,
            'd': [2, 3, 4, 2, 2],
            'r': [160]
        })
        x = np.asarray(encoding.onehot128(arch))
        self.assertEqual(x.shape, (128,))
        active = [True] * 2 + [False] * 2 + [True] * 3 + [
            False
        ] + [True] * 4 + ([True] * 2 + [False] * 2) * 2
        for i in range(20):
            np.testing.assert_array_equal(x[3 * i:3 * i + 3], [0, 0, 1] if active[i] else [0, 0, 0])
            np.testing.assert_array_equal(x[60 + 3 * i:63 + 3 * i],
                                          [0, 1, 0] if active[i] else [0, 0, 0])
        np.testing.assert_array_equal(x[120:], np.eye(8)[(160 - 112) // 16])

    def test_batched_under_vmap_and_jit(self):
        batch = space.sample(jax.random.key(2), (10,))
        direct = encoding.onehot128(batch)
        mapped = jax.jit(jax.vmap(encoding.onehot128))(batch)
        chex.assert_trees_all_close(direct, mapped)
        depth_sum = jnp.sum(batch.depth, -1)
        np.testing.assert_array_equal(direct.sum(-1), 2 * depth_sum + 1)


class SpecTest(parameterized.TestCase):

    @parameterized.parameters((1.0, 16, (24, 40, 80, 112, 160), 960, 1280),
                              (1.2, 24, (32, 48, 96, 136, 192), 1152, 1536))
    def test_widths(self, width, first, stages, final, feature):
        s = spec.net_spec(width)
        self.assertEqual((s.first_channels, s.stage_channels, s.final_channels, s.feature_channels),
                         (first, stages, final, feature))

    def test_bad_width(self):
        with self.assertRaisesRegex(ValueError, r'width: value 1.5.*\(1.0, 1.2\)'):
            spec.net_spec(1.5)

    def test_feature_sizes(self):
        self.assertEqual(spec.stage_input_sizes(224), (112, 56, 28, 14, 14))
        self.assertEqual(spec.final_size(224), 7)
        self.assertEqual(spec.final_size(132), 5)
        blocks = spec.block_specs(spec.net_spec(1.2), space.largest(224))
        self.assertLen(blocks, 20)
        self.assertEqual(blocks[4].mid_channels, 32 * 6)
        self.assertTrue(blocks[1].residual)
        self.assertFalse(blocks[12].residual)  # stage 4 starts 96 -> 136 at stride 1


if __name__ == '__main__':
    absltest.main()
