"""Budget-safe search: the calibrated bound in the constraint, and the closed loop.

The device is a stand-in (``search.measure_rows`` patched) that runs every
sub-network 15% slower than the predictor says, the bias that makes a search
on the point estimate pick sub-networks over budget.
"""

import json
import os
import tempfile

from absl.testing import absltest
import numpy as np
import tensorflow_datasets as tfds

from experiments import report
from experiments.configs import fit_predictor as fit_config
from experiments.configs import search as search_config
from experiments.jobs import fit_predictor as fit_job
from experiments.jobs import search as search_job
from ofa_jax import csvio
from ofa_jax import export as export_lib
from ofa_jax import space
from ofa_jax.latency import fingerprint as fp_lib
from ofa_jax.latency import store as store_lib
from predictors import checkpoint
from predictors import conformal
from predictors import lut

SLOWER = 1.15


class BudgetSafeSearchTest(absltest.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # One folder per class and process: pytest-xdist may run this class's
        # tests in both workers, each with its own setUpClass.
        os.makedirs(absltest.get_default_test_tmpdir(), exist_ok=True)
        cls.folder = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir(), prefix='budget_safe.')
        archs = space.sample_np(np.random.default_rng(7), 150, resolutions=(160, 192))
        rng = np.random.default_rng(8)
        lat = (1.0 + 0.2 * np.asarray(archs.depth).sum(-1) +
               0.05 * np.asarray(archs.kernel).sum(-1) * np.asarray(archs.resolution) / 160.0)
        lat *= np.exp(rng.normal(0.0, 0.03, lat.shape))
        data = os.path.join(cls.folder, 'rows.csv')
        csvio.write_ofa_csv(data, archs, lat)
        cfg = fit_config.get_config()
        cfg.update(data=data, width=1.2, model='additive', max_steps=300, eval_every=50)
        cls.fit = fit_job.run(cfg, os.path.join(cls.folder, 'fit'))
        cls.ckpt = os.path.join(cls.folder, 'fit', 'checkpoint')

    def _config(self, **kw):
        cfg = search_config.get_config()
        cfg.update(latency=self.ckpt,
                   resolutions=(160, 192),
                   budgets_ms=(9.0, 11.0),
                   seeds=2,
                   population_size=16,
                   num_generations=6,
                   export=False)
        cfg.update(**kw)
        return cfg

    def _slow_device(self, predictor):
        calls = []

        def fake(archs, config):
            del config
            calls.append(len(archs))
            return [float(SLOWER * predictor(space.stack(archs))[i]) for i in range(len(archs))]

        return fake, calls

    def _loop_at_11ms(self, **kw):
        """The search job, closed loop on, point-estimate constraint, one 11 ms budget."""
        return search_job.run(
            self._config(verify=True, uncertainty='none', budgets_ms=(11.0,), **kw),
            self.create_tempdir().full_path)

    def _cold_device(self, predictor):
        """A stand-in whose first batch measures 10x the prediction, later ones 5% under it."""
        calls = []

        def fake(archs, config):
            del config
            factor = 10.0 if not calls else 0.95
            calls.append(len(archs))
            return [float(factor * v) for v in np.asarray(predictor(space.stack(archs)))]

        return fake

    def _run_measured_by(self, cfg, fake, workdir=None):
        """The search job with ``search.measure_rows`` replaced by ``fake`` for the run."""
        original = search_job.measure_rows
        search_job.measure_rows = fake
        try:
            return search_job.run(cfg, workdir or self.create_tempdir().full_path)
        finally:
            search_job.measure_rows = original

    def _store(self, cfg, rows, batch=1):
        """Writes ``(arch, ms)`` rows under the verification's key into ``cfg.verify_store``."""
        protocol = search_job.cf.protocol(cfg.protocol)
        device = search_job.cf.device('cpu')
        depthwise = search_job.cf.depthwise('auto', device)
        with store_lib.LatencyStore(cfg.verify_store) as store:
            fid = store.add_device(fp_lib.fingerprint(device, microbenchmarks=False))
            for a, ms in rows:
                store.add(store_lib.RowKey(fid, space.arch_key(a), batch, 'float32', protocol.name,
                                           1.2, 1000, depthwise),
                          float(ms),
                          resolution=int(a.resolution))

    def test_fit_job_writes_a_calibration_with_test_coverage(self):
        cov = self.fit['conformal']
        self.assertEqual(cov['calibration_rows'], 23)  # the validation rows, 105..127 of 150
        self.assertEqual(set(cov['test_coverage']), {'0.8', '0.9', '0.95'})
        for c, share in cov['test_coverage'].items():
            self.assertBetween(share, 0.0, 1.0)
            self.assertGreater(cov['mean_bound_over_prediction'][c], 1.0)
        loaded = checkpoint.load(self.ckpt)
        self.assertIsInstance(loaded.calibration, conformal.Calibration)
        archs = space.sample_np(np.random.default_rng(0), 5, resolutions=(160,))
        np.testing.assert_allclose(np.asarray(loaded.upper(archs, 0.9)),
                                   loaded.calibration.upper(np.asarray(loaded(archs)), 0.9),
                                   rtol=1e-5)

    def test_search_constrains_the_bound(self):
        out = search_job.run(self._config(), self.create_tempdir().full_path)
        self.assertIn('0.9-coverage conformal bound', out['constraint'])
        for row in out['results']:
            self.assertLessEqual(row['bound_ms'], row['budget_ms'] * (1 + 1e-6))
            self.assertGreater(row['bound_ms'], row['latency_ms'])
        # The uncorrected search (point estimate) is reported beside it, and
        # gives up no less latency headroom: its picks predict closer to budget.
        self.assertLen(out['uncorrected'], len(out['results']))
        gap = [
            u['latency_ms'] - r['latency_ms'] for u, r in zip(out['uncorrected'], out['results'])
        ]
        self.assertGreater(np.mean(gap), 0.0)

    def test_closed_loop_brings_every_pick_within_budget(self):
        predictor = checkpoint.load(self.ckpt)
        fake, calls = self._slow_device(predictor)
        original = search_job.measure_rows
        search_job.measure_rows = fake
        try:
            out = search_job.run(self._config(verify=True, uncertainty='none', export=True),
                                 self.create_tempdir().full_path)
        finally:
            search_job.measure_rows = original
        rounds = out['rounds']
        # On the point estimate, a 15% slower device puts the first picks over.
        self.assertEqual(rounds[0]['within_budget'], 0)
        self.assertGreaterEqual(len(rounds), 2)
        # No store: a handful of measured rows, too few to refit on; the
        # constraint alone is tightened.
        self.assertNotIn('refit', rounds[1])
        self.assertEqual(rounds[-1]['share_within_budget'], 1.0)
        for row in out['results']:
            self.assertTrue(row['within_budget'])
            self.assertLessEqual(row['measured_ms'], row['budget_ms'])
            # Tightened below the budget, and the pick predicts within the tightened one.
            self.assertLess(row['effective_budget_ms'], row['budget_ms'])
            self.assertLessEqual(row['latency_ms'], row['effective_budget_ms'] * (1 + 1e-6))
        # Round 0 measures all 4 picks in one batch; later rounds only the open ones.
        self.assertEqual(calls[0], 4)
        self.assertTrue(all(n <= 4 for n in calls[1:]))
        for best in out['best']:
            self.assertTrue(best['within_budget'])
            # Each budget's pick is a deployable folder with its measured latency.
            with open(os.path.join(best['export'], 'export.json')) as f:
                meta = json.load(f)
            self.assertEqual(meta['measured']['latency_ms'], best['measured_ms'])
            self.assertTrue(meta['measured']['within_budget'])
            self.assertTrue(meta['weights'].startswith('random'))
            self.assertEqual(meta['arch_key'], space.arch_key(space.from_ofa_dict(best['arch'])))
        self.assertEqual([f['budget_ms'] for f in out['found']], [9.0, 11.0])
        # The report lists the folders and the lines that load the first one.
        md = '\n'.join(report.found_lines({'searches': {'additive': out}}))
        for f in out['found']:
            self.assertIn(f'`{f["folder"]}`', md)
        self.assertIn(export_lib.load_snippet(out['found'][0]['folder']), md + '\n')
        self.assertIn('program.call(variables, images)', md)

    def test_export_recalibrates_batchnorm_on_the_dataset_given(self):
        arch = space.smallest(128)
        best = [{'arch': space.to_ofa_dict(arch), 'budget_ms': 9.0}]
        cfg = self._config(export=True,
                           calib_dataset='cifar10',
                           calib_batches=2,
                           calib_batch_size=3,
                           num_classes=10)
        workdir = self.create_tempdir().full_path
        with tfds.testing.mock_data(num_examples=10):
            found = search_job.export_found(best, cfg, workdir)
            images = search_job.calibration_images(search_job.calibration_source(cfg), cfg, 128)
        self.assertEqual([x.shape for x in images], [(3, 128, 128, 3)] * 2)
        with open(os.path.join(found[0]['folder'], 'export.json')) as f:
            meta = json.load(f)
        self.assertIn('BatchNorm re-calibrated on 2 batches', meta['weights'])
        with self.assertRaisesRegex(search_job.ConfigError, r"^config.calib_dataset: 'no_such"):
            search_job.calibration_source(self._config(calib_dataset='no_such_dataset'))

    def test_point_estimate_picks_are_kept_only_where_they_measure_within_budget(self):
        predictor = checkpoint.load(self.ckpt)
        for factor in (1.0, SLOWER):
            calls = []

            def fake(archs, config, factor=factor):
                del config
                calls.append(len(archs))
                return [float(factor * v) for v in np.asarray(predictor(space.stack(archs)))]

            original = search_job.measure_rows
            search_job.measure_rows = fake
            try:
                out = search_job.run(self._config(verify=True, max_rounds=0),
                                     self.create_tempdir().full_path)
            finally:
                search_job.measure_rows = original
            cands = out['point_candidates']
            self.assertNotEmpty(cands)
            # One batch: the bound's 4 picks and each distinct point-estimate pick once.
            self.assertEqual(calls, [4 + len(cands)])
            keys = [(r['budget_ms'], space.arch_key(space.from_ofa_dict(r['arch']))) for r in cands]
            self.assertLen(set(keys), len(keys))
            plain = {r['budget_ms']: r for r in out['uncorrected_best']}
            for best in out['best']:
                within = [
                    r for r in out['results'] + cands
                    if r['budget_ms'] == best['budget_ms'] and r['within_budget']
                ]
                self.assertEqual(best['objective'], max(r['objective'] for r in within))
                # The point estimate's best pick carries what it measured.
                self.assertEqual(plain[best['budget_ms']]['within_budget'], factor == 1.0)
                if factor == 1.0:
                    # Measured as predicted: the point estimate's best pick is within
                    # budget and kept, so nothing is given up.
                    self.assertEqual(best.get('source'), 'point estimate')
                    self.assertEqual(best['objective'], plain[best['budget_ms']]['objective'])
                else:
                    self.assertNotIn('source', best)

    def test_store_rows_within_budget_are_candidates(self):
        cfg = self._config(verify=True, device='cpu', depthwise='auto', num_classes=1000)
        cfg.verify_store = os.path.join(self.create_tempdir().full_path, 'lat.sqlite')
        archs = space.unstack(space.sample_np(np.random.default_rng(3), 12, resolutions=(160, 192)))
        self._store(cfg, [(a, 8.0 + 0.5 * i) for i, a in enumerate(archs)])
        # Another batch size is another key: never a candidate.
        self._store(cfg, [(space.largest(160), 1.0)], batch=64)
        objective = search_job.load_objective('', 1.2)
        predictor = checkpoint.load(self.ckpt)
        got = search_job.store_candidates(cfg, [9.0, 11.0001, 1.0], objective, predictor,
                                          (160, 192), None)
        score = np.asarray(objective(space.stack(archs)))
        # The budgets as the searches' rows hold them (float32); nothing fits in 1 ms.
        self.assertEqual([r['budget_ms'] for r in got], [9.0, float(np.float32(11.0001))])
        for r in got:
            fits = [i for i in range(len(archs)) if 8.0 + 0.5 * i <= r['budget_ms']]
            best = max(fits, key=lambda i: score[i])
            self.assertEqual(r['arch'], space.to_ofa_dict(archs[best]))
            self.assertEqual(r['measured_ms'], 8.0 + 0.5 * best)
            self.assertTrue(r['within_budget'])
            self.assertEqual(r['source'], 'store')
        # Only resolutions the search covers.
        self.assertEqual(
            search_job.store_candidates(cfg, [11.0], objective, predictor, (224,), None), [])

    def test_a_budget_below_the_bound_is_served_from_the_store(self):
        # The bound puts the smallest sub-network above 3 ms, but the device
        # already measured one within it: that budget leaves the search and
        # still gets a pick, the stored row.
        cfg = self._config(verify=True,
                           device='cpu',
                           depthwise='auto',
                           num_classes=1000,
                           budgets_ms=(3.0, 11.0),
                           unreachable='drop',
                           loop_refit=False)
        cfg.verify_store = os.path.join(self.create_tempdir().full_path, 'lat.sqlite')
        small = space.smallest(160)
        self._store(cfg, [(small, 2.5)])
        predictor = checkpoint.load(self.ckpt)
        original = search_job.measure_rows
        search_job.measure_rows, _ = self._slow_device(predictor)
        try:
            out = search_job.run(cfg, self.create_tempdir().full_path)
        finally:
            search_job.measure_rows = original
        self.assertEqual(out['dropped_budgets'], [3.0])
        self.assertEqual({r['budget_ms'] for r in out['results']}, {11.0})
        best = {b['budget_ms']: b for b in out['best']}
        self.assertEqual(best[3.0]['source'], 'store')
        self.assertEqual(best[3.0]['arch'], space.to_ofa_dict(small))
        self.assertEqual(best[3.0]['measured_ms'], 2.5)

    def test_closed_loop_gives_up_after_max_rounds_and_says_so(self):
        predictor = checkpoint.load(self.ckpt)
        original = search_job.measure_rows
        # A device 3x slower than predicted: one tightening round is not enough.
        search_job.measure_rows = lambda archs, config: [
            float(3.0 * predictor(space.stack(archs))[i]) for i in range(len(archs))
        ]
        try:
            out = self._loop_at_11ms(max_rounds=1, loop_refit=False)
        finally:
            search_job.measure_rows = original
        self.assertLen(out['rounds'], 2)
        self.assertNotIn('refit', out['rounds'][1])
        self.assertFalse(any(r['within_budget'] for r in out['results']))
        self.assertFalse(out['best'][0]['within_budget'])

    def test_a_constraint_that_finds_nothing_is_backed_off(self):
        # The first batch measures 10x over (a cold device), so the tightened
        # constraint is below every sub-network; later batches measure 5% under
        # the prediction. Tightening further would never find a pick again.
        original = search_job.measure_rows
        search_job.measure_rows = self._cold_device(checkpoint.load(self.ckpt))
        try:
            out = self._loop_at_11ms(max_rounds=6, loop_refit=False, measure_point_picks=False)
        finally:
            search_job.measure_rows = original
        rounds = out['rounds']
        self.assertEqual(rounds[1]['infeasible'], 2)  # 1.1 ms: nothing fits.
        later = [r['effective_budgets_ms'][0] for r in rounds[2:]]
        self.assertGreater(later[0], rounds[1]['effective_budgets_ms'][0])  # Backed off.
        for row in out['results']:
            self.assertTrue(row['within_budget'])
            self.assertLess(row['effective_budget_ms'], 11.0)

    def test_a_round_that_measured_nothing_is_not_refitted_again(self):
        # As above: round 1's constraint finds nothing, so round 2 has the rows
        # round 1 was refitted on and nothing more; it must not refit again.
        refits = []

        def refit(pred, archs, ms, config):
            del archs, config
            refits.append(len(ms))
            return pred, {'rows': len(ms), 'mape_before': 0.0, 'mape_after': 0.0}

        originals = search_job.measure_rows, search_job.refit_predictor
        search_job.measure_rows = self._cold_device(checkpoint.load(self.ckpt))
        search_job.refit_predictor = refit
        try:
            out = self._loop_at_11ms(max_rounds=6, refit_min_rows=1, measure_point_picks=False)
        finally:
            search_job.measure_rows, search_job.refit_predictor = originals
        rounds = out['rounds']
        self.assertEqual(rounds[1]['infeasible'], 2)
        self.assertIn('refit', rounds[1])
        self.assertNotIn('refit', rounds[2])
        self.assertEqual(refits, [2])  # Round 0's two picks, refitted on once.
        self.assertTrue(all(r['within_budget'] for r in out['results']))

    def test_the_loop_refits_on_the_store_and_learns_the_device(self):
        # The store holds 60 sub-networks this device measured, 15% slower than
        # predicted: refitted on them and round 0's picks, the predictor learns
        # the device, and round 1's picks measure within budget.
        cfg = self._config(verify=True,
                           device='cpu',
                           depthwise='auto',
                           num_classes=1000,
                           uncertainty='none',
                           measure_point_picks=False)
        cfg.verify_store = os.path.join(self.create_tempdir().full_path, 'lat.sqlite')
        predictor = checkpoint.load(self.ckpt)
        archs = space.sample_np(np.random.default_rng(5), 60, resolutions=(160, 192))
        self._store(cfg, zip(space.unstack(archs), SLOWER * np.asarray(predictor(archs))))
        out = self._run_measured_by(cfg, self._slow_device(predictor)[0])
        rounds = out['rounds']
        self.assertEqual(rounds[0]['within_budget'], 0)
        refit = rounds[1]['refit']
        self.assertEqual(refit['rows'], 64)  # The store's 60 and round 0's 4 picks.
        self.assertLess(refit['mape_after'], refit['mape_before'] / 2)
        self.assertEqual(rounds[-1]['share_within_budget'], 1.0)
        # The refitted predictor is kept, without the original's calibration.
        kept = checkpoint.load(refit['checkpoint'])
        self.assertIsNone(kept.calibration)
        self.assertEqual(kept.meta['refit']['rows'], 64)

    def test_the_loop_recalibrates_a_lut_on_the_store(self):
        # A LUT whose sums miss this device by a power law (1.3 x sum ** 1.1,
        # what a table of layers timed alone does to whole networks): every
        # round-0 pick measures over budget. Recalibrated on the store's 60
        # rows and round 0's picks, with a bound from its own misses, the next
        # picks measure within it.
        rng = np.random.default_rng(11)
        table = lut.LookupTable(
            {
                r: {
                    k: lut.LutEntry(3,
                                    float(rng.uniform(0.05, 0.3)) * r / 160, 0.0)
                    for k in lut.all_keys(r, 1.2, 1000)
                } for r in (160, 192)
            },
            width=1.2,
            num_classes=1000)
        lut_dir = self.create_tempdir().full_path
        lut.save_lut(lut_dir, table)

        def device(archs):
            return 1.3 * table.predict_np(archs)**1.1

        archs = space.sample_np(np.random.default_rng(5), 60, resolutions=(160, 192))
        budget = float(np.median(device(archs)))
        # The table's own calibration, from rows where its sums were 2-8% low.
        raw = table.predict_np(archs)
        old = conformal.fit(raw, raw * rng.uniform(1.02, 1.08, raw.shape))
        cal_path = old.save(self.create_tempdir().full_path)
        cfg = self._config(latency=lut_dir,
                           verify=True,
                           device='cpu',
                           depthwise='auto',
                           num_classes=1000,
                           uncertainty='conformal',
                           calibration=cal_path,
                           measure_point_picks=False,
                           compare_uncorrected=False,
                           budgets_ms=(budget,))
        cfg.verify_store = os.path.join(self.create_tempdir().full_path, 'lat.sqlite')
        self._store(cfg, zip(space.unstack(archs), device(archs)))
        # Rows the table has no sum for (it covers 160 and 192): not learnt from.
        self._store(cfg,
                    [(a, 9.0) for a in space.unstack(space.sample_np(rng, 3, resolutions=(224,)))])
        work = os.path.join(self.create_tempdir().full_path, 'new')  # Made by the job.
        out = self._run_measured_by(
            cfg, lambda a, config: [float(v) for v in device(space.stack(a))] if a else [], work)
        rounds = out['rounds']
        self.assertEqual(rounds[0]['within_budget'], 0)
        refit = rounds[1]['refit']
        self.assertEqual(refit['rows'], 62)  # The store's 60 and round 0's 2 picks.
        self.assertGreater(refit['mape_before'], 20.0)
        self.assertLess(refit['mape_after'], 1.0)
        # The bound after the refit: from the recalibrated table's cross-validated
        # misses (none: the device is the power law), not the raw table's.
        self.assertGreater(old.factors(0.9).min(), 1.05)
        self.assertLess(refit['bound_over_estimate'], 1.01)
        self.assertEqual(rounds[-1]['share_within_budget'], 1.0)
        with open(os.path.join(work, 'refitted_lut.json')) as f:
            kept = json.load(f)
        self.assertEqual((kept['rows'], kept['lut']), (62, lut_dir))
        self.assertBetween(kept['scale'], 1.0, 1.1)  # Its ridge on (a - 1)^2 pulls toward 1.
        np.testing.assert_allclose(lut.Recalibrated(table, kept['scale'],
                                                    kept['offset']).predict_np(archs),
                                   device(archs),
                                   rtol=0.02)

    def test_refit_rows_merge_the_store_and_the_measured_rows(self):
        cfg = self._config(verify=True, device='cpu', depthwise='auto', num_classes=1000)
        cfg.verify_store = os.path.join(self.create_tempdir().full_path, 'lat.sqlite')
        archs = space.unstack(space.sample_np(np.random.default_rng(4), 3, resolutions=(160,)))
        self._store(cfg, [(archs[0], 5.0), (archs[1], 6.0)])
        rows = [{
            'arch': space.to_ofa_dict(archs[1]),
            'measured_ms': 7.5
        }, {
            'arch': space.to_ofa_dict(archs[2]),
            'measured_ms': 8.0
        }, {
            'arch': space.to_ofa_dict(archs[0])
        }]  # Not measured: not a row.
        got, ms = search_job.refit_rows(rows, cfg)
        by_key = dict(zip(map(space.arch_key, space.unstack(got)), ms))
        self.assertEqual(by_key, {
            space.arch_key(archs[0]): 5.0,
            space.arch_key(archs[1]): 7.5,
            space.arch_key(archs[2]): 8.0
        })
        tuned, info = search_job.refit_predictor(checkpoint.load(self.ckpt), got, ms, cfg)
        self.assertEqual(info['rows'], 3)
        self.assertLess(info['mape_after'], info['mape_before'])
        np.testing.assert_allclose(np.asarray(tuned(got)), ms, rtol=0.05)

    def test_drop_searches_the_budgets_that_can_be_met(self):
        out = search_job.run(self._config(budgets_ms=(1.0, 9.0), unreachable='drop', seeds=1),
                             self.create_tempdir().full_path)
        self.assertEqual(out['dropped_budgets'], [1.0])
        self.assertGreater(out['smallest_ms'], 1.0)
        self.assertEqual({r['budget_ms'] for r in out['results']}, {9.0})

    def test_bad_inputs_name_the_field(self):
        tmp = self.create_tempdir().full_path
        for coverage in (0.0, 1.0, 1.2):
            with self.assertRaisesRegex(search_job.ConfigError, r'^config.coverage: .*\(0, 1\)'):
                search_job.run(self._config(coverage=coverage), tmp)
        # 23 calibration rows bound at most 23/24 = 0.958.
        with self.assertRaisesRegex(search_job.ConfigError,
                                    r'^config.coverage: 0.99 needs >= 99 calibration rows'):
            search_job.run(self._config(coverage=0.99, uncertainty='conformal'), tmp)
        with self.assertRaisesRegex(search_job.ConfigError, r'^config.budgets_ms: \[1.0\] below'):
            search_job.run(self._config(budgets_ms=(1.0, 9.0)), tmp)
        with self.assertRaisesRegex(search_job.ConfigError, r'^config.budgets_ms: \[1.0\] below'):
            search_job.run(self._config(budgets_ms=(1.0,), unreachable='drop'), tmp)
        with self.assertRaisesRegex(search_job.ConfigError,
                                    r"^config.unreachable: 'skip'; allowed: error, drop"):
            search_job.run(self._config(unreachable='skip'), tmp)
        with self.assertRaisesRegex(search_job.ConfigError, r'^config.calibration: '):
            search_job.run(self._config(calibration=os.path.join(tmp, 'nope.json')), tmp)
        with self.assertRaisesRegex(search_job.ConfigError, r'^config.uncertainty: '):
            search_job.run(self._config(uncertainty='bayes'), tmp)
        theirs = os.path.join(tmp, 'found', '9ms')
        os.makedirs(theirs)
        with open(os.path.join(theirs, 'model.onnx'), 'w') as f:
            f.write('not ours')
        with self.assertRaisesRegex(search_job.ConfigError,
                                    r'^config.export: .*9ms exists and is not an ofa_jax export'):
            search_job.run(self._config(export=True), tmp)
        self.assertEqual(os.listdir(theirs), ['model.onnx'])


if __name__ == '__main__':
    absltest.main()
