"""Tests of the per-position block geometry in ofa_jax.spec.

The vectorised tables (``position_tables``, ``position_sizes``,
``position_grid``, ``position_blocks``) are checked against ``block_specs``,
which walks one arch block by block and carries the feature size from each
block to the next: an independent derivation of the same geometry.
"""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import space
from ofa_jax import spec

_RESOLUTIONS = (128, 132, 164, 200, 224)


def _archs(n, seed=0, resolutions=space.RESOLUTIONS):
    return space.unstack(space.sample_np(np.random.default_rng(seed), n, resolutions=resolutions))


class PositionGeometryTest(parameterized.TestCase):

    @parameterized.parameters(1.0, 1.2)
    def test_grid_and_blocks_match_the_block_walk(self, width):
        net = spec.net_spec(width)
        grids = {r: spec.position_grid(net, r) for r in _RESOLUTIONS}
        for arch in _archs(200, seed=int(width * 10), resolutions=_RESOLUTIONS):
            r = int(arch.resolution)
            walked = spec.block_specs(net, arch)
            self.assertLen(walked, int(np.sum(arch.depth)))
            for b in walked:
                ki = space.KERNEL_CHOICES.index(b.kernel)
                ei = space.EXPAND_CHOICES.index(b.expand)
                self.assertEqual(grids[r].block_at((b.position, ki, ei)), b)
                self.assertEqual(spec.position_blocks(net, r)[b.position][ki][ei], b)
                self.assertEqual(spec.position_block(net, r, b.position, b.kernel, b.expand), b)

    def test_grid_over_resolutions_and_backends(self):
        net = spec.net_spec(1.2)
        res = np.asarray(_RESOLUTIONS)
        grid = spec.position_grid(net, res)
        for field in ('in_size', 'mid_channels', 'kernel', 'expand', 'se_channels'):
            value = getattr(grid, field)
            self.assertEqual(value.shape, (len(res), 20, 3, 3))
            self.assertEqual(value.dtype, np.int64)
        for i, r in enumerate(_RESOLUTIONS):
            single = spec.position_grid(net, r)
            for field in ('in_size', 'out_size', 'mid_channels', 'stride', 'se_channels'):
                np.testing.assert_array_equal(getattr(grid, field)[i], getattr(single, field))
        jgrid = jax.jit(lambda x: spec.position_grid(net, x))(jnp.asarray(res))
        for field in ('in_size', 'out_size', 'in_channels', 'mid_channels', 'kernel', 'expand'):
            got = getattr(jgrid, field)
            self.assertEqual(got.dtype, jnp.int32)
            np.testing.assert_array_equal(got, getattr(grid, field))
        np.testing.assert_array_equal(jgrid.residual, grid.residual)
        # Residual flags of the grid are those of the BlockSpecs.
        blocks = spec.position_blocks(net, 224)
        flags = [[[b.residual for b in per_k] for per_k in per_p] for per_p in blocks]
        np.testing.assert_array_equal(grid.residual[-1], flags)

    def test_position_sizes(self):
        for r in (128, 130, 164, 224, 301):
            in_size, out_size = spec.position_sizes(r)
            stage_in = spec.stage_input_sizes(r)
            np.testing.assert_array_equal(in_size[::space.MAX_DEPTH], stage_in)
            np.testing.assert_array_equal(in_size[1:], out_size[:-1])
            self.assertEqual(int(out_size[-1]), spec.final_size(r))
        res = jnp.asarray([[128, 224], [160, 200]])
        in_size, out_size = jax.jit(spec.position_sizes)(res)
        self.assertEqual(in_size.shape, (2, 2, 20))
        np.testing.assert_array_equal(out_size[0, 1], spec.position_sizes(224)[1])

    @parameterized.parameters(1.0, 1.2)
    def test_position_tables(self, width):
        net = spec.net_spec(width)
        t = spec.position_tables(net)
        for p in range(space.NUM_BLOCKS):
            stage = p // space.MAX_DEPTH
            self.assertEqual(t['stride'][p], spec.position_stride(p))
            for ei, e in enumerate(space.EXPAND_CHOICES):
                mid = net.mid_channels(p, e)
                self.assertEqual(t['mid_channels'][p, ei], mid)
                want = net.se_channels(mid) if spec.STAGE_SE[stage] else 0
                self.assertEqual(t['se_channels'][p, ei], want)
        self.assertEqual(spec.position_stride(0), 2)
        self.assertEqual(spec.position_stride(12), 1)  # stage 4 keeps the size
        self.assertEqual(spec.position_stride(13), 1)

    def test_block_se_channels(self):
        net = spec.net_spec(1.2)
        blocks = spec.block_specs(net, space.largest(224))
        self.assertEqual(blocks[0].se_channels, 0)  # stage 1 has no SE
        self.assertEqual(blocks[4].se_channels, net.se_channels(blocks[4].mid_channels))

    @parameterized.named_parameters(
        ('kernel', dict(kernel=4), 'kernel: value 4'),
        ('expand', dict(expand=5), 'expand: value 5'),
        ('position', dict(position=20), 'position: value 20'),
    )
    def test_position_block_rejects_bad_genes(self, change, fragment):
        args = dict(position=0, kernel=3, expand=3)
        args.update(change)
        with self.assertRaisesRegex(ValueError, fragment):
            spec.position_block(spec.net_spec(1.2), 128, **args)


if __name__ == '__main__':
    absltest.main()
