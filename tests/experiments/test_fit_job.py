"""The fit_predictor experiment end to end on a tiny CSV (and the Note10 LUT if present)."""

import dataclasses
import json
import os

from absl.testing import absltest
import numpy as np

from experiments import report
from experiments.configs import fit_predictor as fit_config
from experiments.jobs import fit_predictor as experiment_fit
from experiments.jobs import main as main_job
from ofa_jax import csvio
from ofa_jax import dataset
from ofa_jax import external_data
from ofa_jax import space
from ofa_jax.latency import store as store_lib
from predictors import checkpoint
from predictors import xla_cost

EXTERNAL = external_data.root()


def _merged_split(archs, lat, split):
    """The fit job's rows after merging repeats, and its split of them."""
    merged = dataset.dedupe(archs, lat, 'mean')
    return (merged, *experiment_fit.split_indices(merged.num_rows, split))


class FitExperimentTest(absltest.TestCase):

    def test_split_is_file_order(self):
        tr, va, te = experiment_fit.split_indices(20, (0.7, 0.15, 0.15))
        np.testing.assert_array_equal(np.concatenate([tr, va, te]), np.arange(20))
        self.assertEqual((len(tr), len(va), len(te)), (14, 3, 3))
        with self.assertRaisesRegex(ValueError, 'split'):
            experiment_fit.split_indices(20, '0.5,0.5')

    def test_run_additive_writes_everything(self):
        folder = self.create_tempdir().full_path
        archs = space.sample_np(np.random.default_rng(0), 200, resolutions=(160, 224))
        lat = 2.0 + np.asarray(archs.depth).sum(-1) * 0.3 + np.asarray(archs.kernel).mean(-1)
        path = os.path.join(folder, 'dev.csv')
        csvio.write_ofa_csv(path, archs, lat)
        cfg = fit_config.get_config()
        cfg.data = path
        cfg.model = 'additive'
        cfg.max_steps = 20
        cfg.eval_every = 10
        work = os.path.join(folder, 'work')
        out = experiment_fit.run(cfg, work)
        with open(os.path.join(work, 'metrics.json')) as f:
            saved = json.load(f)
        for key in ('rmse_ms', 'mae_ms', 'mape', 'acc5', 'acc10', 'kendall_tau', 'spearman'):
            self.assertIn(key, saved)
        self.assertEqual(
            saved['rows'], {
                'read': 200,
                'distinct': 200,
                'duplicates_merged': 0,
                'merge': 'mean',
                'train': 140,
                'val': 30,
                'test': 30
            })
        self.assertEqual(set(out), set(saved) | {'test_pred_ms'})
        self.assertLess(out['mape'], 10.0)  # plumbing test: 140 rows, 362 table entries
        self.assertTrue(os.path.exists(os.path.join(work, 'pred_vs_measured.png')))
        loaded = checkpoint.load(os.path.join(work, 'checkpoint'))
        self.assertEqual(np.asarray(loaded(archs[170:])).shape, (30,))
        # The returned test predictions are the saved predictor's (the main job uses them).
        np.testing.assert_allclose(out['test_pred_ms'], loaded(archs[170:]), rtol=1e-5)
        # Rows handed over by a caller (the main job): split and fitted as given,
        # config.data only labels them and is never read.
        cfg.data = os.path.join(folder, 'not_there.sqlite')
        out = experiment_fit.run(cfg, work, data=(archs[:100], lat[:100]))
        self.assertEqual([out['rows'][k] for k in ('read', 'train', 'val', 'test')],
                         [100, 70, 15, 15])
        with self.assertRaisesRegex(ValueError, '100 archs and latencies of shape'):
            experiment_fit.run(cfg, work, data=(archs[:100], lat[:99]))
        cfg.model = 'xla_cost'
        with self.assertRaisesRegex(ValueError, 'no XLA costs'):
            experiment_fit.run(cfg, work, data=(archs[:100], lat[:100]))

    def test_an_ensemble_is_calibrated_on_its_spread(self):
        folder = self.create_tempdir().full_path
        archs = space.sample_np(np.random.default_rng(5), 200, resolutions=(160,))
        rng = np.random.default_rng(6)
        lat = (2.0 + np.asarray(archs.depth).sum(-1) * 0.3) * np.exp(rng.normal(0, 0.03, 200))
        path = os.path.join(folder, 'dev.csv')
        csvio.write_ofa_csv(path, archs, lat)
        cfg = fit_config.get_config()
        cfg.update(data=path, model='mlp', max_steps=20, eval_every=10, members=3)
        out = experiment_fit.run(cfg, os.path.join(folder, 'work'))
        self.assertIn('plain', out['conformal'])
        self.assertEqual(set(out['conformal']['test_coverage']), {'0.8', '0.9', '0.95'})
        loaded = checkpoint.load(os.path.join(folder, 'work', 'checkpoint'))
        self.assertTrue(loaded.calibration.normalized)
        spread = np.asarray(loaded.log_spread(archs[:8]))
        self.assertTrue(np.all(spread > 0))
        upper = np.asarray(loaded.upper(archs[:8], 0.9))
        want = loaded.calibration.upper(np.asarray(loaded(archs[:8])), 0.9, spread)
        np.testing.assert_allclose(upper, want, rtol=1e-5)

    def test_repeated_archs_are_merged_before_the_split(self):
        folder = self.create_tempdir().full_path
        archs = space.sample_np(np.random.default_rng(1), 60, resolutions=(160,))
        lat = 2.0 + np.asarray(archs.depth).sum(-1) * 0.3
        # Each of the first 20 archs comes back later, 1 ms slower: 80 rows, 60 archs.
        again = np.concatenate([np.arange(60), np.arange(20)])
        rows = archs[again]
        y = np.concatenate([lat, lat[:20] + 1.0])
        path = os.path.join(folder, 'dup.csv')
        csvio.write_ofa_csv(path, rows, y)
        cfg = fit_config.get_config()
        cfg.data = path
        cfg.max_steps = 2
        out = experiment_fit.run(cfg, os.path.join(folder, 'w'))
        self.assertEqual(
            [out['rows'][k] for k in ('read', 'distinct', 'duplicates_merged', 'merge')],
            [80, 60, 20, 'mean'])
        self.assertEqual(out['rows']['train'] + out['rows']['val'] + out['rows']['test'], 60)
        # The merged latency is the mean of the arch's rows, and the split is of
        # distinct archs: every test arch appears once, none of them in training.
        merged, tr, va, te = _merged_split(rows, y, cfg.split)
        np.testing.assert_allclose(merged.latency_ms[:20], lat[:20] + 0.5)
        train_keys = {
            space.arch_key(a) for a in space.unstack(merged.archs[np.concatenate([tr, va])])
        }
        test_keys = [space.arch_key(a) for a in space.unstack(merged.archs[te])]
        self.assertEqual(len(set(test_keys)), len(test_keys))
        self.assertFalse(train_keys & set(test_keys))
        merged_first = experiment_fit.merge_duplicates(rows, y, 'first')
        np.testing.assert_allclose(merged_first[1][:20], lat[:20])
        cfg.duplicates = 'max'
        with self.assertRaisesRegex(experiment_fit.ConfigError,
                                    r"config.duplicates: 'max'.*allowed: mean, median, first"):
            experiment_fit.run(cfg, os.path.join(folder, 'w'))

    def test_too_few_archs_is_a_config_error(self):
        folder = self.create_tempdir().full_path
        archs = space.sample_np(np.random.default_rng(2), 2, resolutions=(160,))
        path = os.path.join(folder, 'two.csv')
        # Three rows, two distinct archs: merged to 2, below the minimum.
        csvio.write_ofa_csv(path, archs[np.array([0, 1, 0])], np.array([1.0, 2.0, 1.2]))
        cfg = fit_config.get_config()
        cfg.data = path
        with self.assertRaisesRegex(experiment_fit.ConfigError,
                                    r'2 distinct archs split .*allowed: >= 5 archs'):
            experiment_fit.run(cfg, os.path.join(folder, 'w'))

    def test_store_rows_by_protocol_and_width(self):
        folder = self.create_tempdir().full_path
        path = os.path.join(folder, 'lat.sqlite')
        archs = space.unstack(space.sample_np(np.random.default_rng(3), 30, resolutions=(128,)))
        with store_lib.LatencyStore(path) as s:
            for i, a in enumerate(archs):
                s.add(store_lib.RowKey('dev', space.arch_key(a), 1, 'float32', 'p-a'), 1.0 + i)
            for a in archs[:10]:  # Re-measured later under another protocol.
                s.add(store_lib.RowKey('dev', space.arch_key(a), 1, 'float32', 'p-b'), 100.0)
        cfg = fit_config.get_config()
        cfg.data, cfg.device = path, 'dev'
        _, lat = experiment_fit.load_rows(cfg)  # Any protocol: the latest row per arch.
        np.testing.assert_array_equal(lat, np.r_[11.0 + np.arange(20), np.full(10, 100.0)])
        cfg.protocol = 'p-a'
        _, lat = experiment_fit.load_rows(cfg)
        np.testing.assert_array_equal(lat, 1.0 + np.arange(30))
        cfg.protocol = 'p-c'
        with self.assertRaisesRegex(
                experiment_fit.ConfigError, r'protocol p-c, width 1.2; stored for it: 30 rows at '
                r'batch 1, dtype float32, protocol p-a, width 1.2; 10 rows .* protocol p-b'):
            experiment_fit.load_rows(cfg)
        cfg.protocol, cfg.width = 'p-a', 1.0
        with self.assertRaisesRegex(experiment_fit.ConfigError, 'width 1.0; stored'):
            experiment_fit.load_rows(cfg)
        cfg.data, cfg.width = os.path.join(folder, 'rows.csv'), 1.2
        with self.assertRaisesRegex(experiment_fit.ConfigError, "protocol: 'p-a' filters store"):
            experiment_fit.run(cfg, os.path.join(folder, 'work'))

    def test_drift_follows_the_latest_level(self):
        folder = self.create_tempdir().full_path
        rng = np.random.default_rng(1)
        archs = space.sample_np(rng, 400, resolutions=(160, 224))
        lat = 2.0 + np.asarray(archs.depth).sum(-1) * 0.3 + np.asarray(archs.kernel).mean(-1)
        lat = lat + rng.normal(0.0, 0.05, 400)
        lat[320:] += 1.0  # The device slows down from row 320 (validation is 280-340).
        path = os.path.join(folder, 'dev.csv')
        csvio.write_ofa_csv(path, archs, lat)
        out = {}
        for drift in ('none', 'last_level'):
            cfg = fit_config.get_config()
            cfg.update(data=path, model='additive', max_steps=300, eval_every=50, drift=drift)
            out[drift] = experiment_fit.run(cfg, os.path.join(folder, drift))
        level = out['last_level']['drift']
        self.assertEqual(level['start_row'], 320)
        self.assertAlmostEqual(level['offset_ms'], 1.0, delta=0.2)
        self.assertLess(out['last_level']['rmse_ms'], 0.5 * out['none']['rmse_ms'])
        # The offset is part of the saved predictor.
        loaded = checkpoint.load(os.path.join(folder, 'last_level', 'checkpoint'))
        self.assertAlmostEqual(loaded.offset_ms, level['offset_ms'], places=6)
        plain = checkpoint.load(os.path.join(folder, 'none', 'checkpoint'))
        self.assertEqual(plain.offset_ms, 0.0)
        cfg.update(model='lut', lut=folder)
        with self.assertRaisesRegex(experiment_fit.ConfigError, '^config.drift: '):
            experiment_fit.run(cfg, folder)

    def test_last_level_finds_the_latest_shift_only_when_there_is_one(self):
        from predictors import drift
        rng = np.random.default_rng(0)
        noise = rng.normal(0.0, 0.1, 1000)
        # A big shift at 300, then a smaller one at 700: the tail after the
        # first is split again, so the latest level is found.
        shifted = noise + np.where(np.arange(1000) >= 300, 0.8, 0.0) + np.where(
            np.arange(1000) >= 700, -0.3, 0.0)
        level = drift.last_level(shifted)
        self.assertAlmostEqual(level['start'], 700, delta=10)
        self.assertAlmostEqual(level['offset_ms'], 0.5, delta=0.03)
        self.assertLen(level['shifts'], 2)
        flat = drift.last_level(noise)
        self.assertEqual((flat['start'], flat['shifts']), (0, []))
        self.assertAlmostEqual(flat['offset_ms'], noise.mean())
        with self.assertRaisesRegex(ValueError, 'residuals_ms'):
            drift.last_level([0.0, np.nan])

    def test_slow_spells_sees_the_device_not_a_reference(self):
        from predictors import drift
        rng = np.random.default_rng(0)
        base = rng.uniform(5.0, 20.0, 1000)  # The archs' "true" latency, random order.
        ref_a = base * 1.3 * np.exp(rng.normal(0, 0.02, 1000))
        ref_b = base * 0.7 * np.exp(rng.normal(0, 0.02, 1000))
        y = base * np.exp(rng.normal(0, 0.02, 1000))
        y[850:950] *= 1.25  # The device runs 25% slow for 100 of its last 200 rows.
        spells = drift.slow_spells(y, [ref_a, ref_b], 800)
        self.assertAlmostEqual(spells['eval_share'], 0.5, delta=0.06)
        self.assertEqual(spells['adapt_share'], 0.0)
        # 100 of 200 rows off by 1 - 1/1.25 = 20%: 10% added MAPE.
        self.assertAlmostEqual(spells['mape_added'], 10.0, delta=1.0)
        # A spell of one reference alone is not the device's.
        ref_a[850:950] /= 1.25
        y[850:950] /= 1.25
        self.assertEqual(drift.slow_spells(y, [ref_a, ref_b], 800)['eval_share'], 0.0)
        with self.assertRaisesRegex(ValueError, '^references_ms: '):
            drift.slow_spells(y, [ref_a[:10]], 800)
        with self.assertRaisesRegex(ValueError, '^cut: '):
            drift.slow_spells(y, [ref_a], 1000)
        with self.assertRaisesRegex(ValueError, '^half_window / threshold: '):
            drift.slow_spells(y, [ref_a], 800, threshold=0.0)

    def test_xla_cost_fit_recovers_a_roofline(self):
        rng = np.random.default_rng(0)
        costs = np.stack([rng.uniform(2e8, 9e8, 60), rng.uniform(1e8, 4e8, 60)], axis=1)
        lat = 0.4 + 2.0 * costs[:, 0] / 1e9 + 5.0 * costs[:, 1] / 1e9
        model = xla_cost.fit(costs, lat + rng.normal(0, 1e-3, 60))
        np.testing.assert_allclose([model.intercept_ms, model.ms_per_gflop, model.ms_per_gb],
                                   [0.4, 2.0, 5.0],
                                   atol=0.05)
        self.assertAlmostEqual(model.to_dict()['effective_gflop_per_s'], 500.0, delta=15)
        # A latency that falls with the bytes: that term is clamped at 0 and the
        # flops term refit alone (the best non-negative fit), never negative.
        model = xla_cost.fit(costs, 1.0 + 3.0 * costs[:, 0] / 1e9 - 2.0 * costs[:, 1] / 1e9)
        self.assertEqual(model.ms_per_gb, 0.0)
        self.assertGreater(model.ms_per_gflop, 0.0)
        self.assertIsNone(model.to_dict()['effective_gb_per_s'])
        costs[7, 1] = np.nan
        with self.assertRaisesRegex(ValueError, '1 of 60 rows have no XLA cost.*row 7'):
            xla_cost.fit(costs, lat)

    def test_run_xla_cost_on_a_store(self):
        folder = self.create_tempdir().full_path
        path = os.path.join(folder, 'lat.sqlite')
        archs = space.unstack(space.sample_np(np.random.default_rng(1), 40, resolutions=(128,)))
        rng = np.random.default_rng(2)
        flops = rng.uniform(2e8, 9e8, 40)
        with store_lib.LatencyStore(path) as s:
            for i, a in enumerate(archs):
                key = store_lib.RowKey('dev', space.arch_key(a), 1, 'float32', 'p')
                cost = {'flops': flops[i], 'bytes_accessed': flops[i] / 4}
                s.add(key, 0.5 + 3.0 * flops[i] / 1e9, cost=cost)
            np.testing.assert_array_equal(s.load_costs('dev')[:, 0], flops)
        cfg = fit_config.get_config()
        cfg.data, cfg.device, cfg.model = path, 'dev', 'xla_cost'
        work = os.path.join(folder, 'work')
        out = experiment_fit.run(cfg, work)
        self.assertLess(out['rmse_ms'], 1e-6)  # exactly a roofline here
        with open(os.path.join(work, 'metrics.json')) as f:
            self.assertIn('ms_per_gflop', json.load(f)['xla_cost'])
        self.assertFalse(os.path.exists(os.path.join(work, 'checkpoint')))
        cfg.data = 'rows.csv'
        with self.assertRaisesRegex(experiment_fit.ConfigError, 'only a latency store'):
            experiment_fit.run(cfg, work)
        cfg.data, cfg.drift = path, 'last_level'
        with self.assertRaisesRegex(experiment_fit.ConfigError, 'model=xla_cost: none'):
            experiment_fit.run(cfg, work)
        # The main job's comparison row, from the same store rows.
        with store_lib.LatencyStore(path) as s:
            rows = {r.key.arch_key: r for r in s.rows('dev')}
        keys = list(rows)
        lat = np.array([rows[k].latency_ms for k in keys])
        tr, te = np.arange(30), np.arange(30, 40)
        estimate = main_job.xla_cost_estimator
        est, pred = estimate(rows, keys, lat, tr, te)
        self.assertIsNone(est.latency_path)  # never searched
        self.assertLess(est.metrics['rmse_ms'], 1e-6)
        self.assertEqual(est.measurements, 30)
        np.testing.assert_allclose(pred, lat[te])
        rows[keys[3]] = dataclasses.replace(rows[keys[3]], cost={})
        self.assertIsNone(estimate(rows, keys, lat, tr, te))

    def test_main_job_breakdown_adds_up_per_estimator(self):
        from predictors import features
        from predictors import fit
        from predictors import lut as lut_lib
        from predictors import train as train_lib
        folder = self.create_tempdir().full_path
        archs = space.sample_np(np.random.default_rng(0), 80, resolutions=(128, 160))
        table = lut_lib.LookupTable(
            {
                r: {
                    k: lut_lib.LutEntry(count=1, mean=0.01 * (i + 1), std=0.0)
                    for i, k in enumerate(lut_lib.all_keys(r))
                } for r in (128, 160)
            },
            width=1.2)
        lut_lib.save_lut(os.path.join(folder, 'lut'), table)
        lat = table.predict_np(archs)
        cfg = train_lib.TrainParams(max_steps=20, eval_every=10, patience=2, batch_size=32)
        paths = {'lut': os.path.join(folder, 'lut')}
        fspec = features.fit_feature_spec(archs[:60])
        for model in ('additive', 'mlp'):
            pred, _ = fit.fit_predictor(model, archs[:60], lat[:60], fspec=fspec, config=cfg)
            paths[model] = os.path.join(folder, model)
            checkpoint.save(pred, paths[model])
        test = archs[60:]
        out = main_job.latency_breakdown(paths, test, lat[60:], 1.2)
        self.assertEqual(list(out['mean_ms']), ['lut', 'additive'])  # the MLP has no parts
        self.assertLen(out['mean_ms']['lut'], len(main_job.BREAKDOWN_PARTS))
        self.assertAlmostEqual(sum(out['mean_ms']['lut']), lat[60:].mean(), places=9)
        self.assertEqual(out['mean_ms']['lut'][-1], 0.0)  # a table has no residual
        additive = np.asarray(checkpoint.load(paths['additive'])(test))
        self.assertAlmostEqual(sum(out['mean_ms']['additive']), additive.mean(), places=4)
        self.assertAlmostEqual(out['measured_mean_ms'], lat[60:].mean())
        lines = report.breakdown_lines({
            'breakdown': out,
            'estimators': {
                'lut': {
                    'label': 'LUT'
                },
                'additive': {
                    'label': 'ours'
                }
            }
        })
        self.assertIn('| part | LUT | ours |', lines)
        self.assertIn(f'**{sum(out["mean_ms"]["lut"]):.3f}**', '\n'.join(lines))
        self.assertEqual(report.breakdown_lines({}), [])

    def test_bad_model(self):
        cfg = fit_config.get_config()
        cfg.data = 'x.csv'
        cfg.model = 'transformer'
        with self.assertRaisesRegex(experiment_fit.ConfigError, 'model.*allowed: mlp'):
            experiment_fit.run(cfg, self.create_tempdir().full_path)

    def test_note10_lut_is_exact(self):
        data = os.path.join(EXTERNAL, 'ofanas_ofa_w1.0', 'note10_lookuptable_ofa.csv')
        lut = os.path.join(EXTERNAL, 'ofa_note10_lut')
        if not (os.path.exists(data) and os.path.isdir(lut)):
            self.skipTest('external data absent')
        cfg = fit_config.get_config()
        cfg.data = data
        cfg.model = 'lut'
        cfg.lut = lut
        cfg.max_rows = 400
        out = experiment_fit.run(cfg, self.create_tempdir().full_path)
        self.assertLess(out['rmse_ms'], 1e-3)


if __name__ == '__main__':
    absltest.main()
