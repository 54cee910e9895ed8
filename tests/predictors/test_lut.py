"""Tests of the lookup-table latency model (predictors.lut)."""

import os

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import csvio
from ofa_jax import external_data
from ofa_jax import space
from ofa_jax import spec
from predictors import lut

_EXTERNAL = external_data.root()


def _synthetic(resolutions=(128, 160), width=1.2, num_classes=10):
    """A table where every key costs a distinct, known amount."""
    tables = {}
    for r in resolutions:
        keys = lut.all_keys(r, width, num_classes)
        tables[r] = {
            k: lut.LutEntry(count=3, mean=0.01 * (i + 1), std=0.0) for i, k in enumerate(keys)
        }
    return lut.LookupTable(tables, width=width, num_classes=num_classes)


class KeyTest(parameterized.TestCase):

    def test_smallest_keys(self):
        keys = lut.layer_keys(space.smallest(128), width=1.2, num_classes=1000)
        self.assertEqual(keys[0], 'Conv-input:128x128x3-output:64x64x24')
        self.assertEqual(
            keys[1], 'expanded_conv-input:64x64x24-output:64x64x24-expand:24-kernel:3-stride:1-'
            'idskip:1-se:0-hs:0')
        self.assertEqual(
            keys[2], 'expanded_conv-input:64x64x24-output:32x32x32-expand:72-kernel:3-stride:2-'
            'idskip:0-se:0-hs:0')
        self.assertEqual(keys[-4:], [
            'Conv_1-input:4x4x192-output:4x4x1152', 'AvgPool2D-input:4x4x1152-output:1x1x1152',
            'Conv_2-input:1x1x1152-output:1x1x1536', 'Logits-input:1x1x1536-output:1000'
        ])
        # Stem + fixed block + 2 blocks x 5 stages + 4 final layers.
        self.assertLen(keys, 2 + 10 + 4)

    def test_sizes_round_up(self):
        keys = lut.layer_keys(space.largest(164), width=1.2)
        self.assertIn('Conv-input:164x164x3-output:82x82x24', keys)
        # 82 -> 41 -> 21 -> 11 -> 11 -> 6: ceil at every stride 2.
        self.assertIn('Conv_1-input:6x6x192-output:6x6x1152', keys)

    def test_stage4_first_block_has_no_skip(self):
        keys = lut.layer_keys(space.largest(224), width=1.0)
        self.assertIn(
            'expanded_conv-input:14x14x80-output:14x14x112-expand:480-kernel:7-stride:1-'
            'idskip:0-se:1-hs:1', keys)

    @parameterized.parameters(1.0, 1.2)
    def test_all_keys_cover_every_walked_arch(self, width):
        # all_keys comes from spec.position_blocks, layer_keys from the block walk.
        res = (128, 164, 224)
        keys = {r: set(lut.all_keys(r, width)) for r in res}
        archs = space.sample_np(np.random.default_rng(5), 200, resolutions=res)
        for a in space.unstack(archs):
            self.assertLessEqual(set(lut.layer_keys(a, width)), keys[int(a.resolution)])

    def test_position_block_lives_in_spec(self):
        self.assertIs(lut.position_block, spec.position_block)
        net = spec.net_spec(1.2)
        self.assertEqual(
            lut.block_key(lut.position_block(net, 224, 12, 7, 4)),
            'expanded_conv-input:14x14x96-output:14x14x136-expand:384-kernel:7-'
            'stride:1-idskip:0-se:1-hs:1')
        with self.assertRaisesRegex(ValueError, 'kernel: value 4'):
            lut.position_block(net, 128, 0, 4, 3)

    @parameterized.parameters(128, 224)
    def test_all_keys_count(self, r):
        # 6 fixed layers + 5 stages x (first, rest) x 3 kernels x 3 expands.
        self.assertLen(lut.all_keys(r), 6 + 90)


class TableTest(parameterized.TestCase):

    def test_sum_matches_key_walk(self):
        table = _synthetic()
        archs = space.sample_np(np.random.default_rng(0), 64, resolutions=(128, 160))
        host = np.array([table.predict_arch(a) for a in space.unstack(archs)])
        np.testing.assert_allclose(table.predict_np(archs), host, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(jax.jit(table.predict)(archs)), host, rtol=1e-5)

    def test_breakdown_is_the_entries_per_block(self):
        table = _synthetic(resolutions=(128, 160))
        archs = space.sample_np(np.random.default_rng(2), 16, resolutions=(128, 160))
        parts = table.breakdown(archs)
        np.testing.assert_allclose(parts['fixed_ms'] + parts['blocks_ms'].sum(-1),
                                   table.predict_np(archs),
                                   rtol=1e-12)
        np.testing.assert_array_equal(parts['residual_ms'], 0.0)
        a = space.unstack(archs)[3]
        r = int(a.resolution)
        entries = table.entries(r)
        active = np.asarray(space.active_blocks(a.depth))
        for p in range(space.NUM_BLOCKS):
            block = lut.position_block(table.net, r, p, int(a.kernel[p]), int(a.expand[p]))
            want = entries[lut.block_key(block)].mean if active[p] else 0.0
            self.assertAlmostEqual(parts['blocks_ms'][3, p], want, places=12)
        self.assertAlmostEqual(parts['fixed_ms'][3],
                               sum(entries[k].mean for k in lut.fixed_keys(table.net, r)),
                               places=12)

    def test_sum_is_sum_of_entries(self):
        table = _synthetic(resolutions=(128,))
        arch = space.smallest(128)
        entries = table.entries(128)
        want = sum(entries[k].mean for k in lut.layer_keys(arch, 1.2, 10))
        self.assertAlmostEqual(table.predict_arch(arch), want, places=12)

    def test_jit_vmap_scan(self):
        table = _synthetic()
        archs = jax.tree_util.tree_map(
            jnp.asarray, space.sample_np(np.random.default_rng(1), 8, resolutions=(128, 160)))
        direct = table.predict(archs)
        vmapped = jax.jit(jax.vmap(table.predict))(archs)
        _, scanned = jax.lax.scan(lambda c, a: (c, table.predict(a)), 0, archs)
        np.testing.assert_allclose(vmapped, direct, rtol=1e-6)
        np.testing.assert_allclose(scanned, direct, rtol=1e-6)
        self.assertEqual(direct.dtype, jnp.float32)

    def test_uncovered_resolution(self):
        table = _synthetic(resolutions=(128,))
        arch = space.smallest(160)
        with self.assertRaisesRegex(KeyError, 'resolution 160'):
            table.predict_arch(arch)
        with self.assertRaisesRegex(KeyError, '160'):
            table.predict_np(arch)
        self.assertTrue(np.isnan(float(table.predict(arch))))

    def test_missing_key_rejected_at_build(self):
        r = 128
        keys = lut.all_keys(r, 1.2, 10)
        entries = {k: lut.LutEntry(1, 1.0, 0.0) for k in keys}
        victim = [k for k in keys if 'kernel:7' in k][0]
        del entries[victim]
        with self.assertRaisesRegex(KeyError, 'kernel:7'):
            lut.LookupTable({r: entries}, width=1.2, num_classes=10)

    def test_yaml_round_trip(self):
        table = _synthetic()
        d = self.create_tempdir().full_path
        paths = lut.save_lut(d, table)
        self.assertLen(paths, 2)
        again = lut.load_lut(d, width=1.2, num_classes=10)
        self.assertEqual(again.resolutions, (128, 160))
        np.testing.assert_array_equal(again.block_ms, table.block_ms)
        one = lut.load_lut(paths[0], width=1.2, num_classes=10)
        self.assertEqual(one.resolutions, (128,))

    def test_bad_yaml(self):
        p = self.create_tempfile(content='Conv-input:128x128x3-output:64x64x24: {count: 1}\n')
        with self.assertRaisesRegex(ValueError, 'mean'):
            lut.read_lut_yaml(p.full_path)


class BuilderTest(absltest.TestCase):

    def test_layer_modules_cover_every_key_with_matching_shapes(self):
        from predictors import lut_builder
        mods = lut_builder.layer_modules(128, 1.2, 10)
        self.assertEqual(sorted(mods), lut.all_keys(128, 1.2, 10))
        for key, (module, shape) in list(mods.items())[::7] + list(mods.items())[-4:]:
            x = jax.ShapeDtypeStruct((1,) + shape, jnp.float32)
            out = jax.eval_shape(lambda v, x, m=module: m.apply(v, x),
                                 jax.eval_shape(module.init, jax.random.PRNGKey(0), x),
                                 x)
            want = key.split('output:')[1].split('-')[0].split('x')
            self.assertEqual(
                tuple(out.shape[1:]) if out.ndim == 4 else
                (1, 1, out.shape[-1]) if 'Logits' not in key else (out.shape[-1],),
                tuple(int(w) for w in want), key)

    def test_build_two_layers_and_resume(self):
        from predictors import lut_builder
        from ofa_jax.latency import measure
        cache = os.path.join(self.create_tempdir().full_path, 'cache.jsonl')
        keys = lut.all_keys(128, 1.2, 10)
        # Pre-fill the cache with every layer but the classifier and pooling: only those two
        # are compiled and timed, the rest is resumed from the cache.
        with open(cache, 'w') as f:
            for k in keys:
                if not k.startswith(('Logits', 'AvgPool2D')):
                    f.write('{"key": "%s", "count": 1, "mean": 0.5, "std": 0.0}\n' % k)
            f.write('{"key": "trunc')  # A line cut by a kill is ignored.
        table, summary = lut_builder.build_lut([128],
                                               num_classes=10,
                                               protocol=measure.FAST_PROTOCOL,
                                               cache_path=cache,
                                               progress=False)
        self.assertEqual(summary['timed_now'], 2)
        self.assertEqual(summary['layers'], 96)
        got = table.entries(128)
        self.assertGreater(got[[k for k in keys if k.startswith('Logits')][0]].mean, 0)
        self.assertGreater(table.predict_arch(space.smallest(128)), 0.5 * 14)


class Note10ParityTest(absltest.TestCase):

    def test_reproduces_note10_column(self):
        lut_dir = os.path.join(_EXTERNAL, 'ofa_note10_lut')
        csv_path = os.path.join(_EXTERNAL, 'ofanas_ofa_w1.0', 'note10_lookuptable_ofa.csv')
        if not (os.path.isdir(lut_dir) and os.path.exists(csv_path)):
            self.skipTest(f'external data not found under {_EXTERNAL}')
        table = lut.load_lut(lut_dir, width=1.2)
        rows = csvio.read_ofa_csv(csv_path)
        np.testing.assert_allclose(table.predict_np(rows.archs), rows.latency_ms, atol=1e-9)
        np.testing.assert_allclose(np.asarray(jax.jit(table.predict)(rows.archs)),
                                   rows.latency_ms,
                                   rtol=1e-6)
        for i in range(0, len(rows), 997):  # Host key walk on a spread of rows.
            self.assertAlmostEqual(table.predict_arch(rows.archs[i]), rows.latency_ms[i], places=9)


if __name__ == '__main__':
    absltest.main()
