"""Deployable sub-networks: the exported program, reloaded elsewhere, gives the Flax logits."""

import json
import os
import subprocess
import sys

from absl.testing import absltest
import jax
import numpy as np

from ofa_jax import export
from ofa_jax import space

_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))

# Run in a fresh process: only JAX, Flax's msgpack reader and the folder, none
# of the exporter's state. argv: folder, 1 if the weights are in the program.
_RELOAD = r'''
import sys
import flax.serialization
import numpy as np
from jax import export
with open(sys.argv[1] + "/program.jaxexport", "rb") as f:
    program = export.deserialize(bytearray(f.read()))
args = ()
if sys.argv[2] == "0":
    with open(sys.argv[1] + "/weights.msgpack", "rb") as f:
        args = (flax.serialization.msgpack_restore(f.read()),)
for n in (1, 8):
    x = np.load(sys.argv[1] + f"/../x{n}.npy")
    np.save(sys.argv[1] + f"/../y{n}.npy", np.asarray(program.call(*args, x)))
'''


class ExportTest(absltest.TestCase):

    def test_reloaded_program_gives_the_flax_logits(self):
        tmp = self.create_tempdir().full_path
        out = os.path.join(tmp, 'found')
        arch = space.sample_np(np.random.default_rng(4), resolutions=(128,))
        images = export.random_images(128)
        meta = export.export_subnet(arch,
                                    out,
                                    num_classes=10,
                                    calibration_images=images,
                                    measured={
                                        'latency_ms': 12.5,
                                        'protocol': 'p-test'
                                    })
        self.assertEqual(meta['weights'], 'random, BatchNorm re-calibrated on 2 batches')
        self.assertEqual(meta['measured']['latency_ms'], 12.5)
        self.assertEqual(sorted(os.listdir(out)), sorted(export.FILES))
        with open(os.path.join(out, 'arch.json')) as f:
            self.assertEqual(space.arch_key(space.from_ofa_dict(json.load(f))),
                             space.arch_key(arch))
        model, variables, _ = export.subnet_variables(arch,
                                                      num_classes=10,
                                                      calibration_images=images)
        rng = np.random.default_rng(0)
        want = {}
        forward = jax.jit(model.apply)  # The Flax network, compiled as the program is.
        for n in (1, 8):
            x = rng.normal(size=(n, 128, 128, 3)).astype(np.float32)
            np.save(os.path.join(tmp, f'x{n}.npy'), x)
            want[n] = np.asarray(forward(variables, x))
        self.assertEqual(meta['program_args'], ['variables', 'images'])
        self._check_reload(tmp, out, '0', want)
        # The library loader binds the weights.
        np.testing.assert_allclose(np.asarray(export.load(out)(np.load(tmp + '/x8.npy'))),
                                   want[8],
                                   atol=1e-5,
                                   rtol=1e-5)
        # So does the report's snippet.
        scope = {'images': np.load(tmp + '/x1.npy')}
        exec(export.load_snippet(out), scope)  # pylint: disable=exec-used
        np.testing.assert_allclose(np.asarray(scope['logits']), want[1], atol=1e-5, rtol=1e-5)
        # The same folder is ours: exporting again replaces it, here with the
        # weights baked into the program (one file, images only).
        again = export.export_subnet(arch,
                                     out,
                                     num_classes=10,
                                     calibration_images=images,
                                     weights_in_program=True)
        self.assertEqual((again['weights'], again['measured'], again['program_args']),
                         ('random, BatchNorm re-calibrated on 2 batches', {}, ['images']))
        self.assertEqual(export.load_program(out).in_avals[0].shape[1:], (128, 128, 3))
        self.assertEqual(export.program_args(out), ())
        self._check_reload(tmp, out, '1', want)

    def _check_reload(self, tmp, out, weights_in_program, want):
        env = dict(os.environ, JAX_PLATFORMS='cpu')
        subprocess.run([sys.executable, '-c', _RELOAD, out, weights_in_program],
                       check=True,
                       env=env,
                       cwd=tmp)
        for n in (1, 8):
            got = np.load(os.path.join(tmp, f'y{n}.npy'))
            self.assertEqual(got.shape, (n, 10))
            np.testing.assert_allclose(got, want[n], atol=1e-5, rtol=1e-5)

    def test_a_folder_that_is_not_ours_is_refused_untouched(self):
        tmp = self.create_tempdir().full_path
        theirs = os.path.join(tmp, 'theirs')
        os.makedirs(theirs)
        with open(os.path.join(theirs, 'notes.txt'), 'w') as f:
            f.write('keep me')
        arch = space.smallest(128)
        with self.assertRaisesRegex(
                export.ExportError, r'theirs exists and is not an ofa_jax '
                r'export \(it holds notes.txt\)'):
            export.export_subnet(arch, theirs, num_classes=10)
        self.assertEqual(os.listdir(theirs), ['notes.txt'])
        a_file = os.path.join(tmp, 'file')
        with open(a_file, 'w') as f:
            f.write('x')
        with self.assertRaisesRegex(export.ExportError, 'is not a folder'):
            export.check_folder(a_file)


if __name__ == '__main__':
    absltest.main()
