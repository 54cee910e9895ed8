"""Tests for predictors.accuracy: OFA layout mapping, training, save/load."""

import os

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import encoding, space
from ofa_jax import external_data
from predictors import accuracy

_EXTERNAL = external_data.root()
_ACC_PTH = os.path.join(_EXTERNAL, 'ofa_acc_predictor', 'acc_predictor.pth')


def _numpy_forward(state, x):
    """OFA's nn.Sequential forward in numpy (torch Linear: y = x W^T + b)."""
    h = x
    for i in (0, 2, 4):
        h = np.maximum(h @ state[f'{i}.weight'].T + state[f'{i}.bias'], 0.0)
    return (h @ state['6.weight'].T + state.get('6.bias', 0.0))[:, 0]


def _archs(n, seed=0):
    return space.sample(jax.random.key(seed), (n,), resolutions=(160, 176, 192, 208, 224))


class AccuracyTest(absltest.TestCase):

    def test_ofa_layout_maps_to_same_function(self):
        rng = np.random.default_rng(0)
        dims = [128, 16, 16, 16]
        state = {}
        for j, i in enumerate((0, 2, 4)):
            state[f'{i}.weight'] = rng.normal(size=(dims[j + 1], dims[j])).astype(np.float32)
            state[f'{i}.bias'] = rng.normal(size=dims[j + 1]).astype(np.float32)
        state['6.weight'] = rng.normal(size=(1, 16)).astype(np.float32)
        state['6.bias'] = np.array([0.7], np.float32)
        pred = accuracy.from_ofa_state_dict(state)
        self.assertEqual(pred.hidden, (16, 16, 16))
        archs = _archs(32)
        want = _numpy_forward(state, np.asarray(encoding.onehot128(archs)))
        np.testing.assert_allclose(pred(archs), want, rtol=1e-5, atol=1e-5)
        # The later OFA layout: layers.* names, bias-free head and base_acc.
        later = {f'layers.{k}': v for k, v in state.items() if k != '6.bias'}
        later['base_acc'] = np.array(0.7, np.float32)
        np.testing.assert_allclose(accuracy.from_ofa_state_dict(later)(archs),
                                   want,
                                   rtol=1e-5,
                                   atol=1e-5)

    def test_bad_state_dict_is_refused(self):
        with self.assertRaisesRegex(ValueError, 'accuracy'):
            accuracy.from_ofa_state_dict({'weight': np.zeros((2, 2))})

    @absltest.skipUnless(os.path.exists(_ACC_PTH), 'OFA accuracy predictor not present')
    def test_ofa_pth_loads_without_torch(self):
        from ofa_jax import torch_pickle
        pred = accuracy.load_any(_ACC_PTH)
        state = torch_pickle.load(_ACC_PTH)
        archs = _archs(64)
        want = _numpy_forward(state, np.asarray(encoding.onehot128(archs)))
        got = np.asarray(pred(archs))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        self.assertTrue(((got > 0.6) & (got < 0.9)).all())
        big = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], space.largest(224))
        small = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], space.smallest(160))
        self.assertGreater(float(pred(big)[0]), float(pred(small)[0]))

    def test_train_reduces_loss_and_save_load_roundtrip(self):
        archs = _archs(256, seed=1)
        w = np.random.default_rng(1).normal(0, 0.01, encoding.ONEHOT_DIM)
        y = 0.75 + np.asarray(encoding.onehot128(archs)) @ w
        pred, losses = accuracy.train(archs,
                                      y,
                                      key=jax.random.key(0),
                                      steps=300,
                                      batch_size=64,
                                      hidden=(32, 32, 32))
        self.assertLess(losses[-20:].mean(), 0.25 * losses[:5].mean())
        path = self.create_tempdir().full_path
        accuracy.save(pred, path)
        again = accuracy.load_any(path)
        np.testing.assert_array_equal(np.asarray(again(archs)), np.asarray(pred(archs)))
        self.assertEqual(again.meta['trained_on'], 256)

    def test_missing_file(self):
        with self.assertRaisesRegex(FileNotFoundError, 'no such accuracy predictor'):
            accuracy.load_any('/nonexistent/acc.pth')


if __name__ == '__main__':
    absltest.main()
