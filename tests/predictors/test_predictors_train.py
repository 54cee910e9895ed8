"""Training, ensembles and save/load of latency predictors on tiny synthetic data."""

import dataclasses
import os
import subprocess
import sys
from unittest import mock

from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ofa_jax import space
from predictors import checkpoint
from predictors import features
from predictors import fit
from predictors import models
from predictors import train as train_lib


def synthetic(n, seed=0, resolutions=(160, 192, 224)):
    """Exactly additive latencies: per (resolution, position, choice) costs + fixed terms."""
    rng = np.random.default_rng(seed)
    archs = space.sample_np(rng, n, resolutions=resolutions)
    table_rng = np.random.default_rng(123)
    costs = table_rng.uniform(0.1, 1.0, (len(resolutions), space.NUM_BLOCKS, features.NUM_CHOICES))
    fixed = table_rng.uniform(1.0, 2.0, (len(resolutions),))
    ri = np.searchsorted(resolutions, archs.resolution)
    c = np.asarray(features.choice_index(archs))
    act = np.asarray(space.active_blocks(archs.depth))
    per = costs[ri[:, None], np.arange(space.NUM_BLOCKS), c]
    lat = fixed[ri] + (per * act).sum(-1)
    return archs, lat, costs, fixed


def small_config(**kw):
    return dataclasses.replace(
        train_lib.TrainParams(max_steps=400, eval_every=50, patience=4, batch_size=64), **kw)


def reference_train(model, hp, train_data, val_data, rng):
    """``make_train``'s algorithm (Adam, MSE, cosine decay, early stopping) written out
    in Python, one jitted SGD step at a time: an independent path to compare with."""
    (x_tr, y_tr), (x_va, y_va) = train_data, val_data
    n = int(y_tr.shape[0])
    bs = min(hp.batch_size, n)
    opt = optax.adam(optax.cosine_decay_schedule(hp.learning_rate, hp.max_steps, alpha=0.01))
    mse = lambda p, x, y: jnp.mean((model.apply(p, x) - y)**2)
    take = lambda tree, idx: jax.tree_util.tree_map(lambda v: v[idx], tree)

    @jax.jit
    def step(params, opt_state, rng):
        rng, k = jax.random.split(rng)
        idx = jax.random.randint(k, (bs,), 0, n)
        loss, grads = jax.value_and_grad(mse)(params, take(x_tr, idx), y_tr[idx])
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, rng, loss

    rng, init_rng = jax.random.split(rng)
    params = model.init(init_rng, take(x_tr, slice(0, 1)))
    opt_state = opt.init(params)
    best, best_val, best_step, bad, steps = params, float(mse(params, x_va, y_va)), 0, 0, 0
    while steps < hp.max_steps and bad < hp.patience:
        for _ in range(hp.eval_every):
            params, opt_state, rng, loss = step(params, opt_state, rng)
        steps += hp.eval_every
        val = float(mse(params, x_va, y_va))
        if val < best_val:
            best, best_val, best_step, bad = params, val, steps, 0
        else:
            bad += 1
    return best, best_val, best_step, steps, float(loss)


class TrainParamsTest(absltest.TestCase):

    def test_defaults_and_to_dict(self):
        hp = train_lib.TrainParams()
        expected = dict(learning_rate=1e-3,
                        weight_decay=0.0,
                        batch_size=256,
                        max_steps=20000,
                        eval_every=100,
                        patience=20,
                        lr_decay=True,
                        loss='mse',
                        huber_delta=train_lib.DEFAULT_HUBER_DELTA)
        # The experiment configs build their fields from asdict: names and order matter.
        self.assertEqual(list(hp.to_dict().items()), list(expected.items()))
        self.assertEqual(dataclasses.asdict(hp), expected)
        with self.assertRaises(dataclasses.FrozenInstanceError):
            hp.learning_rate = 1.0  # pytype: disable=attribute-error
        self.assertEqual(hash(hp), hash(train_lib.TrainParams()))

    def test_values_are_normalised(self):
        hp = train_lib.TrainParams(learning_rate=1,
                                   batch_size=64.0,
                                   max_steps=np.int64(10),
                                   lr_decay=np.bool_(False))
        self.assertIs(type(hp.learning_rate), float)
        self.assertIs(type(hp.batch_size), int)
        self.assertIs(type(hp.max_steps), int)
        self.assertIs(hp.lr_decay, False)
        self.assertEqual((hp.batch_size, hp.max_steps), (64, 10))

    def test_each_bad_field_is_named(self):
        bad = [('learning_rate', 0.0, '> 0'), ('learning_rate', -1e-3, '> 0'),
               ('learning_rate', float('nan'), 'finite'), ('learning_rate', float('inf'), 'finite'),
               ('learning_rate', '1e-3', 'number'), ('weight_decay', -0.1, '>= 0'),
               ('weight_decay', float('nan'), '>= 0'), ('batch_size', 0, 'integer >= 1'),
               ('batch_size', 2.5, 'integer >= 1'), ('batch_size', True, 'integer >= 1'),
               ('max_steps', 0, 'integer >= 1'), ('max_steps', -5, 'integer >= 1'),
               ('eval_every', 0, 'integer >= 1'), ('patience', 0, 'integer >= 1'),
               ('patience', None, 'integer >= 1'), ('lr_decay', 'yes', 'True, False'),
               ('loss', 'l3', 'mse, huber, relative_l1'), ('loss', None, 'mse, huber'),
               ('huber_delta', 0.0, '> 0'), ('huber_delta', -0.05, '> 0')]
        for field, value, allowed in bad:
            with self.subTest(field=field, value=value):
                with self.assertRaises(ValueError) as ctx:
                    train_lib.TrainParams(**{field: value})
                message = str(ctx.exception)
                self.assertTrue(message.startswith(f'{field}: {value!r}; allowed: '), message)
                self.assertIn(allowed, message)
                # The same through a mapping (as from an experiment config).
                with self.assertRaisesRegex(ValueError, f'^{field}: '):
                    train_lib.TrainParams.from_mapping({field: value})

    def test_from_mapping_ignores_unknown_keys(self):
        hp = train_lib.TrainParams.from_mapping({
            'max_steps': 30,
            'loss': 'huber',
            'data': 'x.csv',  # experiment fields: not ours
            'seed': 3,
        })
        self.assertEqual(hp, train_lib.TrainParams(max_steps=30, loss='huber'))
        cfg = ml_collections.ConfigDict(dict(model='mlp', batch_size=32, lr_decay=False, members=4))
        self.assertEqual(train_lib.TrainParams.from_mapping(cfg),
                         train_lib.TrainParams(batch_size=32, lr_decay=False))
        # An old config without loss fields gets the paper's mse.
        self.assertEqual(train_lib.TrainParams.from_mapping({}), train_lib.TrainParams())
        hp = train_lib.TrainParams(patience=3)
        self.assertIs(train_lib.TrainParams.from_mapping(hp), hp)
        self.assertIs(train_lib.as_train_params(hp), hp)
        self.assertEqual(train_lib.as_train_params(None), train_lib.TrainParams())
        self.assertEqual(train_lib.TrainParams.from_mapping(hp.to_dict()), hp)

    def test_predictors_need_no_ml_collections(self):
        code = ('import sys; import predictors.train, predictors.fit, predictors.transfer; '
                'print("ml_collections" in sys.modules)')
        root = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
        out = subprocess.run([sys.executable, '-c', code],
                             capture_output=True,
                             text=True,
                             cwd=root,
                             check=True)
        self.assertEqual(out.stdout.strip(), 'False')


class TrainTest(absltest.TestCase):

    def _mlp_problem(self):
        archs, lat, _, _ = synthetic(160, seed=7)
        fspec = features.fit_feature_spec(archs[:120])
        model = models.build_model('mlp', fspec=fspec, hidden=(16,))
        norm = train_lib.fit_target_norm('standardize', lat[:120])
        train_data = (fit.make_inputs(archs[:120], fspec), norm.encode(lat[:120]))
        val_data = (fit.make_inputs(archs[120:], fspec), norm.encode(lat[120:]))
        return model, train_data, val_data

    def test_loop_matches_a_step_by_step_reference(self):
        model, train_data, val_data = self._mlp_problem()
        # A high rate overfits 120 rows: early stopping ends the run before max_steps.
        hp = small_config(learning_rate=3e-2, max_steps=300, eval_every=10, patience=3)
        got = jax.jit(train_lib.make_train(model, hp, train_data, val_data))(jax.random.PRNGKey(5))
        best, best_val, best_step, steps, last = reference_train(model, hp, train_data, val_data,
                                                                 jax.random.PRNGKey(5))
        self.assertEqual((int(got.steps), int(got.best_step)), (steps, best_step))
        self.assertLess(steps, hp.max_steps)
        self.assertGreater(best_step, 0)
        self.assertAlmostEqual(float(got.best_val), best_val, delta=1e-5 * abs(best_val))
        self.assertAlmostEqual(float(got.final_train_loss), last, delta=1e-4 * abs(last))
        chex.assert_trees_all_close(got.params, best, rtol=1e-4, atol=1e-6)

    def test_runs_are_bit_identical_and_carry_is_named(self):
        model, train_data, val_data = self._mlp_problem()
        hp = small_config(max_steps=60, eval_every=20, weight_decay=1e-4, loss='huber')
        carries = []
        real_while_loop = jax.lax.while_loop

        def spy(cond, body, init):
            carries.append(init)
            return real_while_loop(cond, body, init)

        with mock.patch.object(jax.lax, 'while_loop', spy):
            first = jax.jit(train_lib.make_train(model, hp, train_data,
                                                 val_data))(jax.random.PRNGKey(1))
        self.assertLen(carries, 1)
        self.assertIsInstance(carries[0], train_lib.TrainCarry)
        self.assertEqual(train_lib.TrainCarry._fields,
                         ('step', 'params', 'opt_state', 'rng', 'best_params', 'bad_evals',
                          'best_val', 'best_step', 'last_loss'))
        # The same settings as a dict or a ConfigDict (with foreign keys): the same bits.
        as_dict = {**hp.to_dict(), 'model': 'mlp'}
        for config in (hp, as_dict, ml_collections.ConfigDict(as_dict)):
            again = jax.jit(train_lib.make_train(model, config, train_data,
                                                 val_data))(jax.random.PRNGKey(1))
            chex.assert_trees_all_equal(again, first)
        other = jax.jit(train_lib.make_train(model, hp, train_data,
                                             val_data))(jax.random.PRNGKey(2))
        self.assertFalse(
            np.array_equal(other.params['params']['head']['kernel'],
                           first.params['params']['head']['kernel']))

    def test_additive_recovers_costs(self):
        archs, lat, costs, _ = synthetic(600, resolutions=(176, 224))
        fspec = features.fit_feature_spec(archs[:500], width=1.2)
        self.assertEqual(fspec.knots, (176, 224))
        pred, result = fit.fit_predictor('additive',
                                         archs[:500],
                                         lat[:500],
                                         archs[500:],
                                         lat[500:],
                                         fspec=fspec,
                                         config=small_config(max_steps=20, eval_every=10))
        err = np.asarray(pred(archs[500:])) - lat[500:]
        self.assertLess(np.sqrt(np.mean(err**2)), 1e-3)
        # Learned table (times the target scale) matches the true costs where identifiable:
        # compare block-cost differences between choices at one position.
        table = np.asarray(pred.params['params']['block_table']).reshape(costs.shape)
        learned = table * pred.norm.std
        diff_true = costs[:, 5, :] - costs[:, 5, :1]
        diff_learned = learned[:, 5, :] - learned[:, 5, :1]
        np.testing.assert_allclose(diff_learned, diff_true, atol=1e-2)
        self.assertEqual(result.best_val.shape, (1,))

    def test_a_solve_on_a_handful_of_rows_prices_no_sub_network_at_or_below_zero(self):
        # Fewer rows than the MAC prior's columns (5 stage scales + 3 fixed
        # terms): an unconstrained prior interpolates with negative scales and
        # about one draw in seven then prices some unseen sub-network <= 0.
        unseen, _, _, _ = synthetic(300, seed=99)
        for seed in range(40):
            archs, lat, _, _ = synthetic(6, seed=seed)
            fspec = features.fit_feature_spec(archs, width=1.2)
            sol = train_lib.additive_lstsq_init(archs, lat, fspec)
            a = train_lib.additive_design(unseen, fspec)
            pred = a @ np.concatenate([sol['block_table'].reshape(-1), sol['fixed']])
            self.assertGreater(pred.min(), 0.0, f'draw {seed}')

    def test_breakdown_adds_up_and_prices_a_block_change(self):
        archs, lat, costs, _ = synthetic(600, resolutions=(176, 224))
        fspec = features.fit_feature_spec(archs[:500], width=1.2)
        cfg = small_config(max_steps=20, eval_every=10)
        pred, _ = fit.fit_predictor('additive', archs[:500], lat[:500], fspec=fspec, config=cfg)
        pred = pred.replace(offset_ms=0.25)
        test = archs[500:]
        parts = pred.breakdown(test)
        total = parts['fixed_ms'] + parts['blocks_ms'].sum(-1) + parts['residual_ms']
        np.testing.assert_allclose(total, np.asarray(pred(test)), rtol=1e-5)
        inactive = ~np.asarray(space.active_blocks(test.depth))
        self.assertTrue(inactive.any())
        np.testing.assert_array_equal(parts['blocks_ms'][inactive], 0.0)
        # Change one active block's (kernel, expand): only that block's cost
        # moves, by the true cost difference.
        a = test[:1]
        b = a.replace(kernel=np.array(a.kernel), expand=np.array(a.expand))
        b.kernel[0, 1] = 7 if a.kernel[0, 1] != 7 else 3
        b.expand[0, 1] = 6 if a.expand[0, 1] != 6 else 3
        pa, pb = pred.breakdown(a)['blocks_ms'][0], pred.breakdown(b)['blocks_ms'][0]
        ri = [176, 224].index(int(a.resolution[0]))
        ca, cb = (int(np.asarray(features.choice_index(x))[0, 1]) for x in (a, b))
        self.assertAlmostEqual(pb[1] - pa[1], costs[ri, 1, cb] - costs[ri, 1, ca], delta=1e-2)
        np.testing.assert_allclose(np.delete(pb, 1), np.delete(pa, 1), atol=1e-6)
        # An ensemble gives its members' mean, still adding up.
        two, _ = fit.fit_predictor('additive',
                                   archs[:500],
                                   lat[:500],
                                   fspec=fspec,
                                   config=cfg,
                                   num_members=2)
        p2 = two.breakdown(test)
        np.testing.assert_allclose(p2['fixed_ms'] + p2['blocks_ms'].sum(-1) + p2['residual_ms'],
                                   np.asarray(two(test)),
                                   rtol=1e-5)
        mlp, _ = fit.fit_predictor('mlp', archs[:100], lat[:100], fspec=fspec, config=cfg)
        with self.assertRaisesRegex(ValueError, "^breakdown: model 'mlp'"):
            mlp.breakdown(test)

    def test_training_reduces_loss(self):
        archs, lat, _, _ = synthetic(300, seed=1)
        fspec = features.fit_feature_spec(archs[:250])
        model = models.build_model('additive', fspec=fspec, residual_hidden=0)
        norm = train_lib.fit_target_norm('scale', lat[:250])
        x = fit.make_inputs(archs[:250], fspec)
        tr = train_lib.make_train(model, small_config(learning_rate=3e-2, lr_decay=False),
                                  (x, norm.encode(lat[:250])))
        res = jax.jit(tr)(jax.random.PRNGKey(0))
        self.assertLess(float(res.final_train_loss), 0.05 * float(res.first_train_loss))

    def test_robust_losses_ignore_outlier_rows(self):
        # One resolution: 181 parameters, well determined by 1,000 rows. 15% of
        # the rows ran 1.5x slow (as a measurement that caught a clock dip).
        archs, clean, _, _ = synthetic(1400, seed=3, resolutions=(224,))
        slow = np.random.default_rng(0).random(1400) < 0.15
        measured = np.where(slow, 1.5 * clean, clean)
        fspec = features.fit_feature_spec(archs[:1000])
        mape = {}
        for loss in train_lib.LOSSES:
            pred, _ = fit.fit_predictor('additive',
                                        archs[:1000],
                                        measured[:1000],
                                        archs[1000:1200],
                                        measured[1000:1200],
                                        fspec=fspec,
                                        config=small_config(loss=loss,
                                                            huber_delta=0.02,
                                                            max_steps=200))
            p = np.asarray(pred(archs[1200:]))
            mape[loss] = 100 * np.mean(np.abs(p - clean[1200:]) / clean[1200:])
        # The squared loss follows the slow rows (~9% off the typical latency);
        # Huber and relative L1 land within ~0.5% of it.
        self.assertGreater(mape['mse'], 3.0)
        self.assertLess(mape['huber'], 0.25 * mape['mse'])
        self.assertLess(mape['relative_l1'], 0.25 * mape['mse'])

    def test_loss_function_values_and_errors(self):
        pred, y = jnp.array([1.0, 2.0, 5.0]), jnp.array([1.5, 2.0, 4.0])
        self.assertAlmostEqual(float(train_lib.loss_function('mse')(pred, y)), (0.25 + 1.0) / 3)
        # Huber(delta=0.5): 0.5 * 0.5^2 (squared branch), 0, 0.5 * (1 - 0.25) (linear).
        self.assertAlmostEqual(float(train_lib.loss_function('huber', 0.5)(pred, y)),
                               (0.125 + 0.375) / 3,
                               places=6)
        self.assertAlmostEqual(float(train_lib.loss_function('relative_l1')(pred, y)),
                               (0.5 / 1.5 + 1.0 / 4.0) / 3,
                               places=6)
        with self.assertRaisesRegex(ValueError, "^loss: 'l3'; allowed: mse, huber"):
            train_lib.loss_function('l3')
        with self.assertRaisesRegex(ValueError, 'huber_delta: 0.0; allowed: > 0'):
            train_lib.loss_function('huber', 0.0)
        archs, lat, _, _ = synthetic(20, seed=4)
        with self.assertRaisesRegex(ValueError, "relative_l1.*'mlp' trains on 'standardize'"):
            fit.fit_predictor('mlp',
                              archs,
                              lat,
                              fspec=features.fit_feature_spec(archs),
                              config=small_config(loss='relative_l1'))

    def test_mlp_ensemble_members_distinct(self):
        archs, lat, _, _ = synthetic(200, seed=2)
        fspec = features.fit_feature_spec(archs[:150])
        pred, result = fit.fit_predictor('mlp',
                                         archs[:150],
                                         lat[:150],
                                         archs[150:],
                                         lat[150:],
                                         fspec=fspec,
                                         config=small_config(max_steps=60, eval_every=20),
                                         num_members=3,
                                         model_kwargs={'hidden': (16, 16)})
        self.assertEqual(pred.num_members, 3)
        per = np.asarray(pred.members_ms(archs[150:]))
        self.assertEqual(per.shape, (3, 50))
        self.assertGreater(np.abs(per[0] - per[1]).max(), 1e-4)
        self.assertGreater(np.abs(per[1] - per[2]).max(), 1e-4)
        np.testing.assert_allclose(np.asarray(pred(archs[150:])), per.mean(0), rtol=1e-5)
        self.assertEqual(result.steps.shape, (3,))


class CheckpointTest(absltest.TestCase):

    def _roundtrip(self, pred, archs):
        path = os.path.join(self.create_tempdir().full_path, 'ckpt')
        checkpoint.save(pred, path)
        loaded = checkpoint.load(path)
        np.testing.assert_array_equal(np.asarray(pred(archs)), np.asarray(loaded(archs)))
        self.assertEqual(loaded.fspec, pred.fspec)
        self.assertEqual(loaded.norm, pred.norm)
        return loaded

    def test_roundtrip_additive_and_ensemble(self):
        archs, lat, _, _ = synthetic(120, seed=3)
        fspec = features.fit_feature_spec(archs[:100])
        pred, _ = fit.fit_predictor('additive',
                                    archs[:100],
                                    lat[:100],
                                    fspec=fspec,
                                    config=small_config(max_steps=50),
                                    num_members=2,
                                    meta={'device': 'rtx_2080_ti'})
        loaded = self._roundtrip(pred, archs[100:])
        self.assertEqual(loaded.meta['device'], 'rtx_2080_ti')

    def test_unknown_format_is_refused(self):
        import json
        archs, lat, _, _ = synthetic(60, seed=5)
        pred, _ = fit.fit_predictor('additive',
                                    archs,
                                    lat,
                                    fspec=features.fit_feature_spec(archs),
                                    config=small_config(max_steps=5))
        path = checkpoint.save(pred, os.path.join(self.create_tempdir().full_path, 'ckpt'))
        meta_path = os.path.join(path, checkpoint.META_FILE)
        with open(meta_path) as f:
            meta = json.load(f)
        self.assertEqual(meta['format'], checkpoint.FORMAT)
        meta['format'] = 'ofa_jax.predictor/2'
        with open(meta_path, 'w') as f:
            json.dump(meta, f)
        with self.assertRaisesRegex(ValueError, "format 'ofa_jax.predictor/2'"):
            checkpoint.load(path)

    def test_roundtrip_context_model(self):
        archs, lat, _, _ = synthetic(100, seed=4)
        fspec = features.fit_feature_spec(archs,
                                          batch_sizes=[1, 64],
                                          hw_features=[[8.0, 2.0, 6.0, 2.5], [8.5, 3.0, 6.5, 2.8]])
        ctx = features.context_vector(fspec, batch_size=64, hw=[8.5, 3.0, 6.5, 2.8])
        pred, _ = fit.fit_predictor('context_mlp',
                                    archs,
                                    lat,
                                    fspec=fspec,
                                    config=small_config(max_steps=20, eval_every=10),
                                    train_context=np.tile(ctx, (100, 1)),
                                    model_kwargs={'hidden': (8,)})
        loaded = self._roundtrip(pred, archs[:10])
        np.testing.assert_array_equal(loaded.context, ctx)

    def test_one_compile_per_batch_size(self):
        archs, lat, _, _ = synthetic(64, seed=5)
        fspec = features.fit_feature_spec(archs)
        model = models.build_model('additive', fspec=fspec)
        params = model.init(jax.random.PRNGKey(0), fit.make_inputs(archs[:1], fspec))
        pred = checkpoint.Predictor('additive', {}, fspec, train_lib.TargetNorm('scale', 0, 1.0),
                                    params)
        checkpoint._score_one.clear_cache()  # pylint: disable=protected-access
        for i in range(3):
            out = pred(archs[i * 16:(i + 1) * 16])
            chex.assert_shape(out, (16,))
        self.assertEqual(checkpoint._score_one._cache_size(), 1)  # pylint: disable=protected-access
        jnp.asarray(out).block_until_ready()

    def test_compiled_scorer_matches_and_checks_batch(self):
        archs, lat, _, _ = synthetic(120, seed=6)
        fspec = features.fit_feature_spec(archs[:100])
        cfg = small_config(max_steps=30, eval_every=10)
        mlp, _ = fit.fit_predictor('mlp',
                                   archs[:100],
                                   lat[:100],
                                   fspec=fspec,
                                   config=cfg,
                                   model_kwargs={'hidden': (16, 16)})
        ens, _ = fit.fit_predictor('additive',
                                   archs[:100],
                                   lat[:100],
                                   fspec=fspec,
                                   config=cfg,
                                   num_members=2)
        test = archs[100:]
        for pred in (mlp, ens.replace(offset_ms=0.25)):
            scorer = pred.compiled(20)
            # This suite runs on the CPU, where the dot fusion is on by default.
            self.assertEqual(scorer.compiler_options, checkpoint.CPU_DOT_FUSION)
            np.testing.assert_allclose(np.asarray(scorer(test)),
                                       np.asarray(pred(test)),
                                       rtol=1e-5,
                                       atol=1e-6)
        with self.assertRaisesRegex(ValueError, r'shape \(5,\).*exactly \(20,\)'):
            scorer(archs[:5])
        self.assertEqual(checkpoint.compile_scorer(mlp, 20, fuse_dots=False).compiler_options, {})
        with self.assertRaisesRegex(ValueError, 'batch_size=0'):
            mlp.compiled(0)
        # An XLA that refuses the option still gives a scorer, and says why.
        with mock.patch.dict(checkpoint.CPU_DOT_FUSION,
                             {'xla_cpu_experimental_ynn_fusion_type': 'NO_SUCH_TYPE'}):
            plain = mlp.compiled(20)
        self.assertEqual(plain.compiler_options, {})
        self.assertIn('NO_SUCH_TYPE', plain.note)
        np.testing.assert_allclose(np.asarray(plain(test)), np.asarray(mlp(test)), rtol=1e-5)


if __name__ == '__main__':
    absltest.main()
