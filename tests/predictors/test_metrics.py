"""Hand-computed cases for predictors.metrics."""

import math

from absl.testing import absltest
import numpy as np

from predictors import metrics


class MetricsTest(absltest.TestCase):

    def test_errors(self):
        pred, true = [11.0, 9.0, 12.0, 10.0], [10.0, 10.0, 10.0, 10.0]
        # Errors 1, -1, 2, 0: MSE = 6/4, MAE = 1, relative errors 10%, 10%, 20%, 0%.
        self.assertAlmostEqual(metrics.rmse(pred, true), math.sqrt(1.5))
        self.assertAlmostEqual(metrics.mae(pred, true), 1.0)
        self.assertAlmostEqual(metrics.mape(pred, true), 10.0)
        self.assertAlmostEqual(metrics.within(pred, true, 0.05), 0.25)
        self.assertAlmostEqual(metrics.within(pred, true, 0.10), 0.75)

    def test_rmse_is_not_the_papers_mean_of_roots(self):
        pred, true = np.array([1.0, 3.0]), np.array([0.0, 0.0])
        self.assertAlmostEqual(metrics.rmse(pred, true), math.sqrt(5.0))
        self.assertAlmostEqual(metrics.mae(pred, true), 2.0)

    def test_rank_correlations(self):
        true = [1.0, 2.0, 3.0, 4.0]
        self.assertAlmostEqual(metrics.kendall_tau([1, 2, 3, 4], true), 1.0)
        self.assertAlmostEqual(metrics.kendall_tau([4, 3, 2, 1], true), -1.0)
        # One swapped pair out of 6: (5 - 1) / 6.
        self.assertAlmostEqual(metrics.kendall_tau([2, 1, 3, 4], true), 4 / 6)
        # Spearman with ranks (2,1,3,4): 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 12/60.
        self.assertAlmostEqual(metrics.spearman([2, 1, 3, 4], true), 0.8)

    def test_ties(self):
        # tau-b with one tie in pred: concordant 5, discordant 0, tied-in-pred 1.
        tau = metrics.kendall_tau([1, 1, 3, 4], [1, 2, 3, 4])
        self.assertAlmostEqual(tau, 5 / math.sqrt(5 * 6))
        # Ranks (1.5, 1.5, 3, 4) vs (1, 2, 3, 4).
        a = np.array([1.5, 1.5, 3, 4]) - 2.5
        b = np.array([1, 2, 3, 4]) - 2.5
        want = (a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())
        self.assertAlmostEqual(metrics.spearman([1, 1, 3, 4], [1, 2, 3, 4]), want)

    def test_blocked_kendall_matches_unblocked(self):
        rng = np.random.default_rng(0)
        x, y = rng.normal(size=300), rng.normal(size=300)
        self.assertAlmostEqual(metrics.kendall_tau(x, y, block=7),
                               metrics.kendall_tau(x, y, block=1000))

    def test_all_metrics_keys(self):
        out = metrics.all_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 3.5])
        self.assertEqual(tuple(out), metrics.METRIC_NAMES)

    def test_shape_mismatch(self):
        with self.assertRaisesRegex(ValueError, 'shape'):
            metrics.rmse([1.0, 2.0], [1.0])


if __name__ == '__main__':
    absltest.main()
