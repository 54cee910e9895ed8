"""Transfer to a new device: shots come only from allowed rows; strategies run end to end."""

import json
import os
import subprocess
import sys

from absl.testing import absltest
import numpy as np

from experiments.configs import transfer as transfer_config
from experiments.jobs import transfer as experiment_transfer
from ofa_jax import csvio
from ofa_jax import space
from predictors import transfer
from predictors import work_linear

_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def _write_devices(folder, n=120, poison_eval=False):
    rng = np.random.default_rng(0)
    archs = space.sample_np(rng, n, resolutions=(160, 192, 224))
    base = 1.0 + 0.5 * np.asarray(archs.depth).sum(-1) + np.asarray(archs.resolution) / 50.0
    paths = []
    for name, scale in (('2080ti', 1.0), ('titan_rtx', 0.9), ('titan_xp', 1.7)):
        lat = base * scale
        if poison_eval and name == 'titan_xp':
            lat = lat.copy()
            lat[int(0.8 * n):] *= 1000.0
        path = os.path.join(folder, f'{name}_batch64.csv')
        csvio.write_ofa_csv(path, archs, lat)
        paths.append(path)
    refs = os.path.join(folder, 'refs.json')
    with open(refs, 'w') as f:
        json.dump([3, 50, 110], f)
    return paths, refs


def _config(paths, refs, strategies):
    cfg = transfer_config.get_config()
    cfg.sources = tuple(paths[:2])
    cfg.target = paths[2]
    cfg.devices = ('2080ti_batch64.csv:2080ti', 'titan_rtx_batch64.csv:titan_rtx',
                   'titan_xp_batch64.csv:titan_xp')
    cfg.reference_index = refs
    cfg.shots = (0, 5)
    cfg.seeds = 2
    cfg.strategies = tuple(strategies.split(','))
    cfg.max_steps = 20
    cfg.eval_every = 10
    cfg.finetune_steps = 5
    cfg.full_finetune_steps = 5
    cfg.context_hidden = (16,)
    return cfg


class TransferTest(absltest.TestCase):

    def test_draw_shots_only_from_allowed(self):
        allowed = np.arange(10, 30)
        for seed in range(20):
            shots = transfer.draw_shots(np.random.default_rng(seed), allowed, 7)
            self.assertTrue(np.isin(shots, allowed).all())
            self.assertLen(np.unique(shots), 7)
        with self.assertRaisesRegex(ValueError, 'exceeds'):
            transfer.draw_shots(np.random.default_rng(0), allowed, 21)

    def test_target_view_hides_eval_rows(self):
        view = experiment_transfer.target_view(np.arange(1.0, 11.0), np.arange(8))
        np.testing.assert_array_equal(view[:8], np.arange(1.0, 9.0))
        self.assertTrue(np.isnan(view[8:]).all())

    def test_affine_fit(self):
        p = np.array([1.0, 2.0, 4.0, 8.0])
        a, b = transfer.affine_fit(p, 3.0 * p, ridge=0.0)
        self.assertAlmostEqual(a, 1.0)
        self.assertAlmostEqual(b, np.log(3.0))
        self.assertEqual(transfer.affine_fit([], []), (1.0, 0.0))
        cal = transfer.affine_fit(p, 3.0 * p, ridge=0.0)
        self.assertIsInstance(cal, transfer.AffineCalibration)
        self.assertEqual((cal.scale, cal.offset), (a, b))

    def test_stack_fit_picks_the_source_that_matches(self):
        rng = np.random.default_rng(0)
        good = np.exp(rng.uniform(0.0, 2.0, 30))
        bad = np.exp(rng.uniform(0.0, 2.0, 30))  # unrelated to the target
        target = 1.5 * good**0.9
        w, b = transfer.stack_fit(np.stack([good, bad]), target, ridge=0.0)
        np.testing.assert_allclose(w, [0.9, 0.0], atol=1e-9)
        self.assertAlmostEqual(b, np.log(1.5))
        np.testing.assert_allclose(transfer.stack_apply(np.stack([good, bad]), w, b), target)
        cal = transfer.stack_fit(np.stack([good, bad]), target, ridge=0.0)
        self.assertIsInstance(cal, transfer.StackCalibration)
        np.testing.assert_array_equal(cal.weights, w)
        self.assertEqual(cal.offset, b)
        # Few shots: equal weights, only the offset; no shots: the geometric mean.
        w, b = transfer.stack_fit(np.stack([good[:2], bad[:2]]), target[:2])
        np.testing.assert_allclose(w, [0.5, 0.5])
        w, b = transfer.stack_fit(np.zeros((2, 0)), [])
        np.testing.assert_allclose(w, [0.5, 0.5])
        self.assertEqual(b, 0.0)
        # One base and the same ridge: exactly the affine recalibration.
        a, b1 = transfer.affine_fit(good[:10], target[:10], ridge=0.7)
        w, b2 = transfer.stack_fit(good[None, :10], target[:10], ridge=0.7)
        self.assertAlmostEqual(a, w[0])
        self.assertAlmostEqual(b1, b2)

    def test_huber_stack_fit_ignores_slow_shots(self):
        rng = np.random.default_rng(1)
        good = np.exp(rng.uniform(0.0, 2.0, 30))
        other = good * np.exp(rng.normal(0.0, 0.3, 30))
        target = 1.5 * good**0.9
        measured = target.copy()
        measured[[3, 11, 20]] *= 1.4  # three shots that caught a slow run
        bases = np.stack([good, other])
        err = {}
        for delta in (0.0, 0.05):
            w, b = transfer.stack_fit(bases, measured, ridge=0.0, huber_delta=delta)
            err[delta] = np.abs(np.log(transfer.stack_apply(bases, w, b) / target)).mean()
        # Least squares spreads the slow shots over every prediction (3.6% off
        # the typical latency); Huber bounds their pull (0.7%).
        self.assertGreater(err[0.0], 0.02)
        self.assertLess(err[0.05], 0.25 * err[0.0])
        with self.assertRaisesRegex(ValueError, 'huber_delta: -1'):
            transfer.stack_fit(bases, measured, huber_delta=-1)

    def test_bad_calibration_config(self):
        paths, refs = _write_devices(self.create_tempdir().full_path, n=20)
        # The job's ConfigError names the field as config.FIELD.
        for field, value, message in (('calibration_delta', -0.1,
                                       r'^config\.calibration_delta: -0.1'),
                                      ('stack_ridge', -1.0, r'^config\.stack_ridge: -1.0'),
                                      ('loss', 'l3', r"^config\.loss: 'l3'; allowed: mse, huber"),
                                      ('patience', 0,
                                       r'^config\.patience: 0; allowed: an integer')):
            cfg = _config(paths, refs, 'stack_refs')
            cfg[field] = value
            with self.assertRaisesRegex(experiment_transfer.ConfigError, message):
                experiment_transfer.parse_config(cfg)

    def test_eval_rows_repeating_an_adaptation_arch_are_dropped(self):
        archs = space.sample_np(np.random.default_rng(3), 10, resolutions=(160,))
        # Rows 0-5 adapt; 6-9 and 10-12 evaluate; 10 repeats arch 2 (an
        # adaptation arch) and 11 and 12 repeat evaluation arch 7.
        rows = archs[np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 2, 7, 7])]
        keep, dropped = experiment_transfer.leak_free_eval_rows(rows, 6)
        np.testing.assert_array_equal(keep, [6, 7, 8, 9])
        self.assertEqual(dropped, {'dropped_seen_in_adaptation': 1, 'dropped_repeats': 2})
        keep, dropped = experiment_transfer.leak_free_eval_rows(archs, 6)
        np.testing.assert_array_equal(keep, [6, 7, 8, 9])
        self.assertEqual(sum(dropped.values()), 0)

    def test_eval_rows_never_read(self):
        clean = self.create_tempdir('clean').full_path
        dirty = self.create_tempdir('dirty').full_path
        strategies = ('paper_head,paper_affine,hw_zero_affine,hw_finetune,help_affine,stack_affine,'
                      'stack_refs,blend_refs,work_refs')
        out = []
        for folder, poison in ((clean, False), (dirty, True)):
            paths, refs = _write_devices(folder, poison_eval=poison)
            cfg = _config(paths, refs, strategies)
            out.append(experiment_transfer.transfer_predictions(cfg))
        a, b = out
        work = os.path.join(clean, 'work')
        summary = experiment_transfer.summarize(a, cfg, work)
        self.assertIn('mape', summary['metrics']['paper_head']['5'])
        self.assertEqual(summary['eval_rows_dropped'], {
            'dropped_seen_in_adaptation': 0,
            'dropped_repeats': 0
        })
        for name in ('metrics.json', 'pred_vs_measured.png'):
            self.assertTrue(os.path.exists(os.path.join(work, name)))
        np.testing.assert_array_equal(a['eval_rows'], np.arange(96, 120))
        for k, draws in a['shots'].items():
            self.assertTrue(np.isin(draws, a['allowed_rows']).all())
        for strat in a['pred']:
            for k in a['pred'][strat]:
                self.assertEqual(a['pred'][strat][k].shape, (2, len(a['eval_rows'])))
                np.testing.assert_array_equal(a['pred'][strat][k], b['pred'][strat][k])
        # The target runs 1.7x the first source: calibrated on the reference
        # archs (3 and 50; 110 is an evaluation row and is dropped), stack_refs
        # fixes the scale that the uncalibrated 0-shot stack misses.
        m = summary['metrics']
        self.assertLess(m['stack_refs']['0']['mape'], 0.5 * m['stack_affine']['0']['mape'])
        # Its calibration is reported per base: with only 2 reference rows the
        # weights stay equal and the offset is the target's log ratio to the
        # sources' geometric mean, log(1.7 / sqrt(1.0 * 0.9)).
        cal = summary['calibration']
        self.assertEqual(list(cal['stack_refs']['0']),
                         ['2080ti_batch64.csv', 'titan_rtx_batch64.csv', 'offset'])
        self.assertEqual(list(cal['blend_refs']['5'])[-2:], ['help', 'offset'])
        self.assertAlmostEqual(cal['stack_refs']['0']['offset'],
                               np.log(1.7 / np.sqrt(0.9)),
                               delta=0.05)
        self.assertEqual(a['calibration']['blend_refs']['by_k'][5].shape, (2, 4))
        # work_refs: the work model fit on the references in the adaptation rows
        # plus each draw's shots, nothing else of the target.
        target = csvio.read_ofa_csv(paths[2])
        for s, draw in enumerate(a['shots'][5]):
            rows = np.union1d([3, 50], draw)
            model = work_linear.fit(target.archs[rows], target.latency_ms[rows], batch=64)
            np.testing.assert_allclose(a['pred']['work_refs'][5][s],
                                       model(target.archs[a['eval_rows']]),
                                       rtol=1e-6)
        # The poisoned file really differs where it is evaluated.
        self.assertGreater(b['truth'].min(), 100 * a['truth'].max())
        # The proxy-fit baseline reads the sources' measurements of the
        # evaluation archs but never the target's.
        for name, by_k in a['baselines']['proxy_fit']['pred'].items():
            for k, p in by_k.items():
                np.testing.assert_array_equal(p, b['baselines']['proxy_fit']['pred'][name][k])

    def test_proxy_fit_baseline_on_the_same_rows(self):
        folder = self.create_tempdir().full_path
        paths, refs = _write_devices(folder)
        rng = np.random.default_rng(7)
        # A noisy target, so the proxy is not exact; the second source times
        # other archs in place of ten evaluation archs and of every fourth
        # adaptation arch, its rows shuffled (the proxy matches archs, not rows).
        target = csvio.read_ofa_csv(paths[2])
        csvio.write_ofa_csv(paths[2], target.archs,
                            target.latency_ms * np.exp(rng.normal(0.0, 0.03, len(target))))
        second = csvio.read_ofa_csv(paths[1])
        lacks = np.union1d(np.arange(100, 110), np.arange(0, 96, 4))
        others = space.sample_np(np.random.default_rng(11), len(second), resolutions=(176,))
        fields = {}
        for f in ('kernel', 'expand', 'depth', 'resolution'):
            v = np.array(getattr(second.archs, f))
            v[lacks] = np.asarray(getattr(others, f))[lacks]
            fields[f] = v
        order = rng.permutation(len(second))
        csvio.write_ofa_csv(paths[1], space.Arch(**fields)[order], second.latency_ms[order])
        cfg = _config(paths, refs, 'paper_affine,stack_refs')
        res = experiment_transfer.transfer_predictions(cfg)
        summary = experiment_transfer.summarize(res, cfg, os.path.join(folder, 'work'))
        proxy = summary['baselines']['proxy_fit']
        self.assertTrue(proxy['baseline'])
        self.assertTrue(proxy['available'])
        self.assertNotIn('proxy_fit', summary['metrics'])  # a baseline, not a strategy

        # Independently: each source's latency of each target row, by arch.
        def key(archs, i):
            return tuple(
                np.concatenate([
                    np.ravel(getattr(archs, f)[i])
                    for f in ('kernel', 'expand', 'depth', 'resolution')
                ]))

        truth = csvio.read_ofa_csv(paths[2])
        src = np.full((2, len(truth)), np.nan)
        for p, path in enumerate(paths[:2]):
            t = csvio.read_ofa_csv(path)
            by_arch = {key(t.archs, i): t.latency_ms[i] for i in range(len(t))}
            src[p] = [by_arch.get(key(truth.archs, i), np.nan) for i in range(len(truth))]
        ev = res['eval_rows']
        covered = ev[np.isfinite(src[:, ev]).all(0)]
        self.assertLen(covered, len(ev) - 10)
        self.assertEqual(proxy['eval_rows'], len(covered))
        self.assertEqual(proxy['eval_rows_total'], len(ev))
        ref_rows = np.asarray([3, 50, 110])
        ref_rows = ref_rows[ref_rows < len(res['allowed_rows'])]
        dropped = 0  # shots whose arch a source lacks: the proxy fits on the rest
        for name in ('shots', 'refs_shots'):
            for k, draws in res['shots'].items():
                mapes, fit_rows = [], []
                for s, d in enumerate(draws):
                    rows = d if name == 'shots' and k else np.union1d(ref_rows, d)
                    dropped += len(rows)
                    rows = rows[np.isfinite(src[:, rows]).all(0)]
                    dropped -= len(rows)
                    fit_rows.append(len(rows))
                    y = truth.latency_ms[rows]
                    if len(rows) > 2:  # a*lat_A + b*lat_B + c
                        x = np.stack([src[0, rows], src[1, rows], np.ones(len(rows))], 1)
                        coef = np.linalg.lstsq(x, y, rcond=None)[0]
                        pred = coef[:2] @ src[:, covered] + coef[2]
                    else:  # too few rows: a scale on the sources' mean
                        m = src[:, rows].mean(0)
                        pred = np.linalg.lstsq(m[:, None], y,
                                               rcond=None)[0][0] * src[:, covered].mean(0)
                    np.testing.assert_allclose(res['baselines']['proxy_fit']['pred'][name][k][s],
                                               pred,
                                               rtol=1e-6)
                    mapes.append(100 * np.mean(np.abs(pred / truth.latency_ms[covered] - 1)))
                self.assertAlmostEqual(proxy['metrics'][name][str(k)]['mape'],
                                       np.mean(mapes),
                                       delta=1e-6)
                self.assertEqual(proxy['metrics'][name][str(k)]['fit_rows'], np.mean(fit_rows))
        self.assertGreater(dropped, 0)
        # Every strategy against the proxy that read the same target rows.
        mask = np.isin(ev, covered)
        for strat, by_k in summary['metrics'].items():
            name = 'refs_shots' if strat.endswith('_refs') else 'shots'
            for k, m in by_k.items():
                v = m['proxy_fit']
                self.assertEqual((v['rows'], v['eval_rows']), (name, len(covered)))
                mine = [
                    100 * np.mean(np.abs(row[mask] / truth.latency_ms[covered] - 1))
                    for row in res['pred'][strat][int(k)]
                ]
                self.assertAlmostEqual(v['mape'], np.mean(mine), delta=1e-6)
                self.assertAlmostEqual(v['proxy_mape'],
                                       proxy['metrics'][name][k]['mape'],
                                       delta=1e-9)
                self.assertEqual(m['beats_proxy_fit'], v['mape'] < v['proxy_mape'])
        with open(os.path.join(folder, 'work', 'metrics.json')) as f:
            self.assertEqual(json.load(f)['baselines']['proxy_fit']['eval_rows'], len(covered))
        with open(os.path.join(folder, 'work', 'metrics.md')) as f:
            self.assertIn(
                f'*baseline: proxy fit (k shots; k=0: refs), {len(covered)} of {len(ev)} '
                'eval rows*', f.read())

        # Sources that lack every evaluation arch, no reference archs, or the
        # option off: reported as not available, with the reason, not raised.
        view = experiment_transfer.target_view(truth.latency_ms, res['allowed_rows'])
        lacking = src.copy()
        lacking[1, ev] = np.nan
        gone = experiment_transfer.proxy_baseline(view, lacking, ev, ref_rows, res['shots'])
        lacking_reason = 'none of the 24 evaluation archs was measured by every source file'
        off_reason = r'turned off \(config.proxy_fit=False\)'
        cases = [(dict(proxy_fit=gone), lacking_reason), ({}, off_reason)]
        for baselines, reason in cases:
            out = experiment_transfer.summarize(dict(res, baselines=baselines), cfg,
                                                os.path.join(folder, 'none'))
            self.assertFalse(out['baselines']['proxy_fit']['available'])
            self.assertRegex(out['baselines']['proxy_fit']['reason'], reason)
            self.assertIsNone(out['metrics']['stack_refs']['5']['beats_proxy_fit'])
            self.assertRegex(out['metrics']['stack_refs']['5']['proxy_fit']['reason'], reason)
        no_refs = experiment_transfer.proxy_baseline(view, src, ev, None, res['shots'])
        self.assertEqual(set(no_refs['pred']), {'shots'})
        self.assertEqual(set(no_refs['pred']['shots']), {5})
        self.assertIn('config.reference_index', no_refs['not_available']['shots'][0])
        del cfg['proxy_fit']  # the ConfigDict itself refuses a str for a bool field
        cfg.proxy_fit = 'yes'
        with self.assertRaisesRegex(experiment_transfer.ConfigError, r'^config\.proxy_fit: '):
            experiment_transfer.parse_config(cfg)

    def test_bad_config_exits_2(self):
        proc = subprocess.run([
            sys.executable, '-m', 'experiments.transfer',
            '--config=experiments/configs/transfer.py', '--config.sources=a.csv',
            '--config.target=b.csv', '--config.shots=0,x', '--workdir=/tmp/unused'
        ],
                              capture_output=True,
                              text=True,
                              cwd=_ROOT)
        self.assertEqual(proc.returncode, 2)
        self.assertIn('shots', proc.stderr.strip().splitlines()[-1])


if __name__ == '__main__':
    absltest.main()
