"""predictors.proxy_fit on synthetic data with known coefficients."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from predictors import metrics
from predictors import proxy_fit


def _synthetic(k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(5.0, 50.0, size=(2, k))
    return x, 0.7 * x[0] + 0.4 * x[1] + 1.5


class ProxyFitTest(parameterized.TestCase):

    def test_recovers_known_coefficients(self):
        x, y = _synthetic(20)
        fit = proxy_fit.proxy_fit(x, y)
        self.assertEqual(fit.method, 'least_squares')
        np.testing.assert_allclose(fit.weights, [0.7, 0.4], atol=1e-9)
        self.assertAlmostEqual(fit.offset, 1.5, places=8)
        x_new, y_new = _synthetic(7, seed=1)
        np.testing.assert_allclose(proxy_fit.proxy_apply(fit, x_new), y_new, rtol=1e-10)

    def test_three_rows_are_enough_for_three_parameters(self):
        x, y = _synthetic(3)
        fit = proxy_fit.proxy_fit(x, y)
        self.assertEqual(fit.method, 'least_squares')
        np.testing.assert_allclose(fit.weights, [0.7, 0.4], atol=1e-6)

    def test_log_space_recovers_power_law(self):
        rng = np.random.default_rng(2)
        x = rng.uniform(5.0, 50.0, size=(2, 30))
        y = np.exp(0.6 * np.log(x[0]) + 0.5 * np.log(x[1]) - 0.2)
        fit = proxy_fit.proxy_fit(x, y, log_space=True)
        np.testing.assert_allclose(fit.weights, [0.6, 0.5], atol=1e-9)
        self.assertAlmostEqual(fit.offset, -0.2, places=8)
        np.testing.assert_allclose(proxy_fit.proxy_apply(fit, x), y, rtol=1e-10)

    @parameterized.parameters(1, 2)
    def test_fallback_below_three_rows(self, k):
        # y = 2 x on both proxies: the one-parameter scale on their mean is exact.
        x = np.array([[10.0, 20.0][:k], [12.0, 18.0][:k]])
        y = 2.0 * x.mean(axis=0)
        fit = proxy_fit.proxy_fit(x, y)
        self.assertEqual(fit.method, 'mean_scale')
        np.testing.assert_allclose(fit.weights, [1.0, 1.0])
        self.assertEqual(fit.offset, 0.0)
        np.testing.assert_allclose(proxy_fit.proxy_apply(fit, [[30.0], [40.0]]), [70.0])
        log_fit = proxy_fit.proxy_fit(x, y, log_space=True)
        self.assertEqual(log_fit.method, 'mean_scale')
        self.assertTrue(np.all(np.isfinite(proxy_fit.proxy_apply(log_fit, x))))

    def test_one_proxy_as_a_vector(self):
        x = np.array([1.0, 2.0, 3.0, 4.0])
        fit = proxy_fit.proxy_fit(x, 3.0 * x - 1.0)
        np.testing.assert_allclose(fit.weights, [3.0])
        self.assertAlmostEqual(fit.offset, -1.0)

    def test_ridge_shrinks_weights(self):
        x, y = _synthetic(20)
        y = y + np.random.default_rng(3).normal(0, 0.5, 20)
        free = proxy_fit.proxy_fit(x, y)
        shrunk = proxy_fit.proxy_fit(x, y, ridge=1e5)
        self.assertLess(np.abs(shrunk.weights).sum(), np.abs(free.weights).sum())

    def test_exact_on_noise_free_rows(self):
        x, y = _synthetic(50)
        pred = proxy_fit.proxy_apply(proxy_fit.proxy_fit(x[:, :10], y[:10]), x[:, 10:])
        self.assertLess(metrics.mape(pred, y[10:]), 1e-8)

    @parameterized.named_parameters(
        ('columns', lambda x, y: proxy_fit.proxy_fit(x, y[:-1]), 'target_ms'),
        ('rank3', lambda x, y: proxy_fit.proxy_fit(x[None], y), 'proxies_ms'),
        ('target_2d', lambda x, y: proxy_fit.proxy_fit(x, y[None]), 'target_ms'),
        ('empty', lambda x, y: proxy_fit.proxy_fit(x[:, :0], y[:0]), 'target_ms: no rows'),
        ('nan', lambda x, y: proxy_fit.proxy_fit(x, np.r_[np.nan, y[1:]]), 'target_ms'),
        ('log_negative', lambda x, y: proxy_fit.proxy_fit(-x, y, log_space=True), 'proxies_ms'),
        ('ridge', lambda x, y: proxy_fit.proxy_fit(x, y, ridge=-1.0), 'ridge'),
        ('apply_proxies', lambda x, y: proxy_fit.proxy_apply(proxy_fit.proxy_fit(x, y), x[:1]),
         'proxies_ms'),
    )
    def test_refuses_bad_input(self, call, name):
        x, y = _synthetic(6)
        with self.assertRaisesRegex(ValueError, name):
            call(x, y)


if __name__ == '__main__':
    absltest.main()
