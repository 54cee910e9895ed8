"""The same seed gives the same archs, rows, fits and search results on CPU.

Each stage runs twice from scratch with one seed: the campaign's planned
archs, the rows a fit reads, the fitted predictor's parameters and
predictions, and the search's picks. The plan and the fit also run with
another seed, which must change them, so the comparisons can fail.
"""

import json
import os

from absl.testing import absltest
import jax
import numpy as np

from experiments.configs import fit_predictor as fit_config
from experiments.configs import measure_latency as measure_config
from experiments.configs import search as search_config
from experiments.jobs import fit_predictor as fit_job
from experiments.jobs import measure_latency as measure_job
from experiments.jobs import search as search_job
from ofa_jax import csvio
from ofa_jax import space
from predictors import checkpoint

# Drop the fields that record wall-clock time; everything else must repeat.
_TIMING = ('train_seconds', 'search_seconds', 'seconds', 'elapsed_s', 'compile_seconds')


def _without_timing(obj):
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if not k.endswith(_TIMING)}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


def _rows_csv(folder):
    """A synthetic device: latency a fixed function of the arch (no timing noise)."""
    archs = space.sample_np(np.random.default_rng(7), 120, resolutions=(160, 192))
    lat = (1.0 + 0.2 * np.asarray(archs.depth).sum(-1) +
           0.05 * np.asarray(archs.kernel).sum(-1) * np.asarray(archs.resolution) / 160.0)
    path = os.path.join(folder, 'rows.csv')
    csvio.write_ofa_csv(path, archs, lat)
    return path


class SameSeedTest(absltest.TestCase):

    def test_campaign_plans_the_same_archs(self):
        folder = self.create_tempdir().full_path

        def keys(seed):
            cfg = measure_config.get_config()
            cfg.update(num_archs=12, resolutions=(128, 160), seed=seed)
            return [space.arch_key(a) for a in measure_job.plan(cfg, folder).archs]

        self.assertEqual(keys(3), keys(3))
        self.assertNotEqual(keys(3), keys(4))
        self.assertLen(set(keys(3)), 12)

    def test_fit_and_search_repeat(self):
        folder = self.create_tempdir().full_path
        data = _rows_csv(folder)

        def fit(seed, name):
            cfg = fit_config.get_config()
            cfg.update(data=data, width=1.2, model='mlp', seed=seed, max_steps=40, eval_every=20)
            work = os.path.join(folder, name)
            out = fit_job.run(cfg, work)
            with open(os.path.join(work, 'metrics.json')) as f:
                saved = json.load(f)
            return out, saved, checkpoint.load(os.path.join(work, 'checkpoint'))

        a, saved_a, pred_a = fit(0, 'a')
        b, saved_b, pred_b = fit(0, 'b')
        c, _, _ = fit(1, 'c')
        self.assertEqual(_without_timing(saved_a), _without_timing(saved_b))
        np.testing.assert_array_equal(a['test_pred_ms'], b['test_pred_ms'])
        for x, y in zip(jax.tree.leaves(pred_a.params), jax.tree.leaves(pred_b.params)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        # Another seed initialises another network: the check above can fail.
        self.assertFalse(np.array_equal(a['test_pred_ms'], c['test_pred_ms']))

        def search(seed, name):
            cfg = search_config.get_config()
            cfg.update(latency=os.path.join(folder, 'a', 'checkpoint'),
                       budgets_ms=(10.0,),
                       resolutions=(160, 192),
                       population_size=16,
                       num_generations=4,
                       seed_offset=seed,
                       export=False)
            work = os.path.join(folder, name)
            search_job.run(cfg, work)
            with open(os.path.join(work, 'search.json')) as f:
                return _without_timing(json.load(f))

        first, again = search(0, 's0'), search(0, 's1')
        self.assertNotEmpty(first['results'])
        self.assertTrue(all(r['feasible'] for r in first['results']))
        self.assertEqual(first['results'], again['results'])
        self.assertEqual(first, again)


if __name__ == '__main__':
    absltest.main()
