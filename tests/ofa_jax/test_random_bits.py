"""Tests for ofa_jax.search.random_bits: the unrolled threefry behind the search's draws."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax.search import random_bits


class RandomBitsTest(absltest.TestCase):

    def test_threefry_known_answers(self):
        # Known-answer vectors of Threefry-2x32-20 from the Random123 suite
        # (key words, counter words -> output words).
        cases = [((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
                 ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
                 ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0))]
        for key, counter, want in cases:
            got = random_bits.threefry2x32(*key, *counter)
            self.assertEqual(tuple(int(v) for v in got), want)

    def test_same_stream_as_jax_random(self):
        for seed in (0, 7, 2**31 + 5):
            key = jax.random.key(seed)
            for shape in ((1,), (7,), (3, 5), (125, 36)):
                np.testing.assert_array_equal(random_bits.bits(key, shape),
                                              jax.random.bits(key, shape, jnp.uint32))
            for num in (2, 3, 500):
                np.testing.assert_array_equal(jax.random.key_data(random_bits.split(key, num)),
                                              jax.random.key_data(jax.random.split(key, num)))

    def test_same_stream_under_jit_and_vmap(self):
        keys = jax.random.split(jax.random.key(3), 15)
        ours = jax.jit(jax.vmap(lambda k: random_bits.bits(k, (4, 6))))(keys)
        theirs = jax.vmap(lambda k: jax.random.bits(k, (4, 6), jnp.uint32))(keys)
        np.testing.assert_array_equal(ours, theirs)
        self.assertEqual(len(np.unique(np.asarray(ours))), ours.size)

    def test_other_key_types_use_jax_random(self):
        key = jax.random.key(1, impl='rbg')
        np.testing.assert_array_equal(random_bits.bits(key, (9,)),
                                      jax.random.bits(key, (9,), jnp.uint32))
        self.assertEqual(str(jax.random.key_impl(random_bits.split(key, 2))), 'rbg')


if __name__ == '__main__':
    absltest.main()
