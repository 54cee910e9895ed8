"""The search job (experiments/search.py) on OFA's Note10 LUT when it is present."""

import contextlib
import io
import json
import os

from absl.testing import absltest
import numpy as np

from experiments import pareto_plot
from experiments.configs import search as search_config
from experiments.jobs import search as experiment
from ofa_jax import external_data
from ofa_jax import search
from ofa_jax import space
from ofa_jax.latency import store as store_lib

_EXTERNAL = external_data.root()
_LUT_DIR = os.path.join(_EXTERNAL, 'ofa_note10_lut')


class ExperimentTest(absltest.TestCase):

    def _config(self, **kw):
        cfg = search_config.get_config()
        cfg.update(population_size=8, num_generations=3, export=False)
        cfg.update(**kw)
        return cfg

    def test_bad_config_names_field(self):
        tmp = self.create_tempdir().full_path
        with self.assertRaisesRegex(experiment.ConfigError, '^config.latency: .*does not exist'):
            experiment.run(self._config(latency='/nonexistent/lut'), tmp)
        with self.assertRaisesRegex(experiment.ConfigError, '^config.budgets_ms: '):
            experiment.run(self._config(latency=tmp, budgets_ms=('15,x',)), tmp)
        with self.assertRaisesRegex(experiment.ConfigError, '^config.latency: .*neither'):
            experiment.run(self._config(latency=tmp), tmp)

    @absltest.skipUnless(os.path.isdir(_LUT_DIR), 'Note10 LUT not present')
    def test_lut_search_writes_json(self):
        tmp = self.create_tempdir().full_path
        with self.assertRaisesRegex(experiment.ConfigError, '^config.budgets_ms: .*smallest'):
            experiment.run(self._config(latency=_LUT_DIR, budgets_ms=(1.0, 20.0)), tmp)
        with self.assertRaisesRegex(experiment.ConfigError, '^config.accuracy: '):
            experiment.run(self._config(latency=_LUT_DIR, accuracy='/nonexistent.pth'), tmp)
        out = experiment.run(self._config(latency=_LUT_DIR, budgets_ms=(15.0, 30.0), seeds=2), tmp)
        with open(os.path.join(tmp, 'search.json')) as f:
            saved = json.load(f)
        self.assertEqual(saved['results'], out['results'])
        self.assertLen(saved['results'], 4)
        self.assertTrue(os.path.exists(os.path.join(tmp, 'pareto.png')))
        for row in saved['results']:
            self.assertEqual(row['objective_name'], 'proxy:macs_millions')
            self.assertLessEqual(row['latency_ms'], row['budget_ms'])
            self.assertTrue(row['feasible'])
            # Never more rows than drawn: up to 20 rounds of first population,
            # then 1.25 x population_size candidates per generation.
            n, gens = saved['population_size'], saved['num_generations']
            self.assertBetween(row['latency_evaluations'], n, n * (20 + 1.25 * gens))
            self.assertBetween(row['objective_evaluations'], n, n * (1 + gens))
            space.from_ofa_dict(row['arch'])
        self.assertEqual(saved['resolutions'], list(range(160, 225, 4)))
        self.assertGreater(saved['search_seconds'], 0.0)
        # The best seed of each budget, budgets ascending.
        self.assertEqual([b['budget_ms'] for b in saved['best']], [15.0, 30.0])
        for b in saved['best']:
            same = [r['objective'] for r in saved['results'] if r['budget_ms'] == b['budget_ms']]
            self.assertEqual(b['objective'], max(same))
        rows = [dict(saved['results'][0], feasible=False), saved['results'][1]]
        self.assertEqual(experiment.best_per_budget(rows), [saved['results'][1]])

    @absltest.skipUnless(os.path.isdir(_LUT_DIR), 'Note10 LUT not present')
    def test_verify_with_a_store_uses_its_gauge(self):
        tmp = self.create_tempdir().full_path
        store_path = os.path.join(tmp, 'lat.sqlite')
        with store_lib.LatencyStore(store_path) as store:
            self.assertEqual(store.meta_items('gauge_baseline_ms/'), [])
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            out = experiment.run(
                self._config(latency=_LUT_DIR,
                             budgets_ms=(15.0,),
                             resolutions=(160,),
                             verify=True,
                             closed_loop=False,
                             verify_store=store_path), tmp)
        # The pick's measurement shows a progress line.
        self.assertRegex(err.getvalue(), r'\] 1/1 100.0% .* r160 [0-9.]+ms')
        (row,) = out['results']
        self.assertTrue(row['measured_protocol'].startswith('p-'))
        self.assertGreater(row['measured_ms'], 0.0)
        self.assertAlmostEqual(row['measured_over_budget'], row['measured_ms'] / 15.0, places=5)
        with store_lib.LatencyStore(store_path) as store:
            self.assertLen(store.meta_items('gauge_baseline_ms/'), 1)  # Recorded for reuse.


class ParetoPlotTest(absltest.TestCase):

    def test_plot_writes_png(self):
        n = 4
        res = search.BudgetResults(budget=np.array([1., 2., 3., 4.]),
                                   seed=np.zeros(n, np.int32),
                                   arch=None,
                                   objective=np.array([.1, .2, .25, .3]),
                                   latency=np.array([.9, 1.9, 2.5, 3.9]),
                                   feasible=np.array([True, True, True, False]),
                                   history=np.zeros((n, 2)),
                                   evaluations=np.zeros((n, 2), np.int32))
        path = os.path.join(self.create_tempdir().full_path, 'p.png')
        pareto_plot.plot_pareto(path, res, objective_name='proxy:macs', reference={2.0: 0.2})
        self.assertGreater(os.path.getsize(path), 1000)


if __name__ == '__main__':
    absltest.main()
