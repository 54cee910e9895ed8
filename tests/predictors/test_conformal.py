"""Split-conformal latency bounds: coverage on held-out rows, ranges, files, bad input."""

import json
import os

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from predictors import conformal


def _rows(rng, n, spread=0.05):
    """Predictions and measurements with a relative error of ``spread`` (log-normal)."""
    p = rng.uniform(5.0, 30.0, n)
    return p, p * np.exp(rng.normal(0.0, spread, n))


class ConformalTest(parameterized.TestCase):

    @parameterized.parameters(0.8, 0.9, 0.95)
    def test_coverage_holds_on_held_out_rows(self, c):
        rng = np.random.default_rng(0)
        cal = conformal.fit(*_rows(rng, 400), max_bins=1)
        p, y = _rows(rng, 20000)
        got = cal.coverage_of(p, y, c)
        # 20k test rows: the share's standard error is ~0.2 points; split
        # conformal guarantees >= c and at most c + 1/(n+1) on average.
        self.assertBetween(got, c - 0.02, c + 0.02)
        # The bound scales with latency: a fixed factor over the prediction.
        ratio = cal.upper(p, c) / p
        np.testing.assert_allclose(ratio, ratio[0])
        self.assertGreater(ratio[0], 1.0)

    def test_finite_sample_quantile(self):
        scores = np.log(np.arange(1, 20) / 10.0)  # 19 rows
        self.assertEqual(conformal.min_rows(0.95), 19)
        # ceil(20 * 0.95) = 19: the largest of 19 scores.
        self.assertAlmostEqual(conformal.conformal_quantile(scores, 0.95), scores[-1])
        self.assertEqual(conformal.conformal_quantile(scores[:18], 0.95), np.inf)
        # ceil(20 * 0.8) = 16th smallest.
        self.assertAlmostEqual(conformal.conformal_quantile(scores, 0.8), scores[15])
        cal = conformal.Calibration(edges=np.zeros(0), scores=(np.sort(scores[:18]),))
        with self.assertRaisesRegex(ValueError, r'coverage: 0.95 needs >= 19 calibration rows'):
            cal.upper([10.0], 0.95)
        self.assertAlmostEqual(cal.max_coverage(), 18 / 19)

    def test_ranges_follow_uneven_errors(self):
        rng = np.random.default_rng(1)

        def uneven(n):  # Large networks are missed by 4x more.
            p = rng.uniform(5.0, 30.0, n)
            spread = np.where(p > 17.5, 0.12, 0.03)
            return p, p * np.exp(rng.normal(0.0, spread))

        binned = conformal.fit(*uneven(600), max_bins=3, min_per_bin=100)
        single = conformal.fit(*uneven(600), max_bins=1)
        self.assertLen(binned.scores, 3)
        self.assertLen(single.scores, 1)
        p, y = uneven(20000)
        big = p > 25.0
        # One global quantile under-covers the large networks; ranges do not.
        self.assertLess(single.coverage_of(p[big], y[big], 0.9), 0.85)
        self.assertBetween(binned.coverage_of(p[big], y[big], 0.9), 0.87, 0.93)
        self.assertBetween(binned.coverage_of(p, y, 0.9), 0.88, 0.92)
        # Too few rows for ranges: one range.
        self.assertLen(conformal.fit(*uneven(60), max_bins=3, min_per_bin=40).scores, 1)

    def test_bound_fn_is_jittable_and_matches_the_host_bound(self):
        rng = np.random.default_rng(2)
        cal = conformal.fit(*_rows(rng, 300), max_bins=3, min_per_bin=50)
        p = np.linspace(5.0, 30.0, 64).astype(np.float32)
        bound = jax.jit(cal.bound_fn(lambda x: x, 0.9))
        np.testing.assert_allclose(np.asarray(bound(p)), cal.upper(p, 0.9), rtol=1e-6)

    def test_ensemble_spread_narrows_the_bound_where_members_agree(self):
        rng = np.random.default_rng(4)

        def rows(n):  # Errors 4x larger where the (stand-in) members disagree 4x more.
            sd = rng.choice([0.02, 0.08], n)
            p = rng.uniform(5.0, 30.0, n)
            return p, p * np.exp(rng.normal(0.0, sd)), sd

        p, y, sd = rows(600)
        plain = conformal.fit(p, y, max_bins=1)
        norm = conformal.fit(p, y, max_bins=1, spread=sd)
        self.assertTrue(norm.normalized)
        self.assertFalse(plain.normalized)
        p, y, sd = rows(20000)
        calm = sd < 0.05
        # One factor for all rows under-covers the rows the members disagree on.
        self.assertLess(plain.coverage_of(p[~calm], y[~calm], 0.9), 0.87)
        self.assertBetween(norm.coverage_of(p[~calm], y[~calm], 0.9, sd[~calm]), 0.87, 0.93)
        self.assertBetween(norm.coverage_of(p, y, 0.9, sd), 0.88, 0.92)
        # ... and is tighter where they agree.
        self.assertLess(np.mean(norm.upper(p[calm], 0.9, sd[calm])),
                        np.mean(plain.upper(p[calm], 0.9)))
        with self.assertRaisesRegex(ValueError, r'^upper: .*normalised by an ensemble'):
            norm.upper(p, 0.9)
        bound = jax.jit(norm.bound_fn(lambda x: x[0], 0.9, lambda x: x[1]))
        q = np.stack([p[:64], sd[:64]]).astype(np.float32)
        np.testing.assert_allclose(np.asarray(bound(q)), norm.upper(q[0], 0.9, q[1]), rtol=1e-5)
        again = conformal.Calibration.from_dict(norm.to_dict())
        self.assertEqual(again.spread_floor, norm.spread_floor)
        self.assertFalse(conformal.fit(p, y, spread=np.zeros_like(p)).normalized)  # Agree.
        members = np.exp(rng.normal(2.0, 0.1, (5, 7)))
        np.testing.assert_allclose(conformal.log_spread(members), np.log(members).std(0))

    def test_save_load_round_trip_and_malformed_files(self):
        rng = np.random.default_rng(3)
        cal = conformal.fit(*_rows(rng, 200), estimator='additive', rows='validation rows')
        folder = self.create_tempdir().full_path
        path = cal.save(folder)
        self.assertEqual(os.path.basename(path), conformal.FILE)
        back = conformal.load(folder)
        self.assertEqual(back.estimator, 'additive')
        np.testing.assert_array_equal(back.factors(0.9), cal.factors(0.9))
        d = cal.to_dict()
        bad_cases = {
            'format': (dict(d, format='x'), 'not an ofa_jax.conformal/1'),
            'nan': (dict(d, edges_ms=[], log_ratio_scores=[[float('nan')]]), 'non-finite'),
            'edges': (dict(d, edges_ms=[1.0, 2.0, 3.0]), 'score lists for 3 edges'),
            'empty': (dict(d, edges_ms=[], log_ratio_scores=[[]]), 'non-empty'),
            'order': (dict(d, edges_ms=d['edges_ms'][::-1]), 'not strictly ascending'),
            'shape': (dict(d, log_ratio_scores='abc'), 'malformed|score lists'),
        }
        for name, (obj, message) in bad_cases.items():
            bad = os.path.join(folder, f'{name}.json')
            with open(bad, 'w') as f:
                json.dump(obj, f)
            with self.assertRaisesRegex(ValueError, message, msg=name):
                conformal.load(bad)
        with open(os.path.join(folder, 'junk.json'), 'wb') as f:
            f.write(b'\xff\xfe{')
        with self.assertRaisesRegex(ValueError, 'junk.json: unreadable calibration'):
            conformal.load(os.path.join(folder, 'junk.json'))

    @parameterized.parameters(0, 1, 1.5, -0.1, 'x', float('nan'))
    def test_coverage_outside_the_open_interval_is_refused(self, c):
        with self.assertRaisesRegex(ValueError, r'coverage: .*allowed: a number in \(0, 1\)'):
            conformal.check_coverage(c)

    def test_fit_refuses_bad_rows(self):
        with self.assertRaisesRegex(ValueError, r'measured_ms\[1\] = -1.0'):
            conformal.fit([1.0, 2.0, 3.0], [1.0, -1.0, 3.0])
        with self.assertRaisesRegex(ValueError, '1 calibration rows'):
            conformal.fit([1.0], [1.0])
        with self.assertRaisesRegex(ValueError, '3 predictions but 2'):
            conformal.fit([1.0, 2.0, 3.0], [1.0, 2.0])


if __name__ == '__main__':
    absltest.main()
