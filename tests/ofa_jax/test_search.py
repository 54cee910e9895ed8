"""Tests for ofa_jax.search: feasibility, compile-once, quality vs random search."""

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import encoding, space
from ofa_jax import search
from ofa_jax.search import evolution
from ofa_jax.search import feasibility
from ofa_jax.search import memory
from ofa_jax.search import operators
from ofa_jax.search import scoring
from ofa_jax.search.state import FeasibleDraw

_RNG = np.random.default_rng(0)
# Synthetic additive estimators on OFA's one-hot encoding: every active block
# and the resolution bucket add a positive latency; the objective is a fixed
# random linear score, so bigger is not always better.
# Latency weights grow with kernel, expand and resolution (monotone, like a LUT),
# so the smallest sub-network is the fastest.
_W_LAT = jnp.asarray(
    np.concatenate([
        np.sort(_RNG.uniform(0.1, 1.0, (40, 3)), axis=1).reshape(-1),
        np.sort(_RNG.uniform(0.0, 3.0, 8))
    ]), jnp.float32)
_W_OBJ = jnp.asarray(_RNG.normal(0.0, 1.0, encoding.ONEHOT_DIM), jnp.float32)


def latency(archs):
    return encoding.onehot128(archs) @ _W_LAT


def objective(archs):
    return encoding.onehot128(archs) @ _W_OBJ


def _one(arch):
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], arch)


RES = (160, 176, 192, 208, 224)
SMALLEST = float(latency(_one(space.smallest(160)))[0])
LARGEST = float(latency(_one(space.largest(224)))[0])
SMALL_PARAMS = search.make_params(population_size=32, num_generations=30, resolutions=RES)


def _jit_once(fn):
    return jax.jit(chex.assert_max_traces(fn, n=1))


_SEARCH = {}


def _searches():
    """One compiled evolution and one random search shared by the tests (B=12)."""
    if not _SEARCH:
        _SEARCH['evo'] = _jit_once(
            search.make_budget_search(SMALL_PARAMS, objective, latency, jit=False))
        n_rand = 10 * SMALL_PARAMS.num_evaluations
        rnd = search.RandomParams(num_evaluations=n_rand, batch_size=n_rand // 8, resolutions=RES)
        _SEARCH['rnd'] = jax.jit(search.make_budget_search(rnd, objective, latency, jit=False))
    return _SEARCH['evo'], _SEARCH['rnd']


class OperatorsTest(absltest.TestCase):

    def test_mutate_and_crossover_keep_values_valid(self):

        @jax.jit
        def ops(key):
            k0, k1, k2 = jax.random.split(key, 3)
            g = operators.random_genomes(k0, 64, RES)
            m = operators.mutate(k1, g, 0.5, RES)
            return g, m, operators.crossover(k2, g, m), operators.mutate(k1, g, 0.0, RES)

        g, m, c, same = ops(jax.random.key(0))
        for a in (g, m, c):
            space.validate(space.to_numpy(a))
            self.assertTrue(np.isin(np.asarray(a.resolution), RES).all())
        changed = np.asarray(jnp.any(m.kernel != g.kernel, axis=-1)).mean()
        self.assertGreater(changed, 0.5)
        chex.assert_trees_all_equal(g, same)
        take = (np.asarray(c.kernel) == np.asarray(g.kernel)) | (np.asarray(c.kernel) == np.asarray(
            m.kernel))
        self.assertTrue(take.all())

    def test_bad_params_name_the_field(self):
        with self.assertRaisesRegex(ValueError, 'parent_ratio'):
            search.make_params(parent_ratio=0.0)
        with self.assertRaisesRegex(ValueError, 'resolution'):
            search.make_params(resolutions=(161,))
        with self.assertRaisesRegex(ValueError, '^objective_first: value True'):
            search.make_params(objective_first=True, candidate_ratio=0)


class EvolveTest(parameterized.TestCase):

    @parameterized.named_parameters(('candidates', 1.5), ('redraw', 0.0))
    def test_ask_tell_shapes_and_feasibility(self, ratio):
        import dataclasses
        # Without the memory, so that ok is exactly "new in this generation".
        params = dataclasses.replace(SMALL_PARAMS, candidate_ratio=ratio, memory_bits=0)
        budget = SMALLEST + 0.3 * (LARGEST - SMALLEST)
        cons = lambda a: latency(a) <= budget

        @jax.jit
        def one_generation(key):
            k0, k1 = jax.random.split(key)
            state = evolution.init(k0, params, objective, cons)
            children, ok, state = evolution.ask(k1, state, params, cons)
            fit = objective(space.canonicalize(children))
            return (state, children, ok, evolution.tell(children, fit, ok, state, params),
                    evolution.tell(children, fit, ok, state, params, distinct=True))

        state, children, ok, new, trusted = one_generation(jax.random.key(0))
        # ask's flags mark distinct new sub-networks: tell's copy check changes nothing.
        chex.assert_trees_all_equal(new, trusted)
        self.assertEqual(state.parents.kernel.shape, (params.num_parents, 20))
        self.assertTrue(bool(state.feasible.all()))
        self.assertEqual(children.depth.shape, (32, 5))
        # Every child is feasible: a new sub-network or a copy of a parent.
        self.assertTrue(bool(cons(space.canonicalize(children)).all()))
        self.assertGreaterEqual(float(new.fitness[0]), float(state.fitness[0]))
        self.assertTrue(bool(jnp.all(new.fitness[:-1] >= new.fitness[1:])))
        self.assertEqual(int(new.generation), 1)
        # ok flags exactly the children that are neither a parent nor an
        # earlier child, and most children are such new sub-networks.
        seen = {
            space.arch_key(a)
            for a in space.unstack(space.to_numpy(space.canonicalize(state.parents)))
        }
        fresh = []
        for a in space.unstack(space.to_numpy(space.canonicalize(children))):
            fresh.append(space.arch_key(a) not in seen)
            seen.add(space.arch_key(a))
        np.testing.assert_array_equal(np.asarray(ok), fresh)
        self.assertGreater(np.mean(fresh), 0.5)

    def test_score_where_scores_only_masked_rows_in_chunks(self):
        archs = space.sample(jax.random.key(5), (40,), resolutions=RES)
        mask = jnp.asarray(np.arange(40) % 7 == 3)  # 6 rows
        rows_seen = []

        def fn(a):
            jax.debug.callback(lambda r: rows_seen.append(np.asarray(r).copy()), a.resolution)
            return objective(a)

        got = jax.jit(lambda a, m: scoring.score_where(fn, a, m, 4, jnp.nan))(archs, mask)
        want = np.where(mask, np.asarray(objective(archs)), np.nan)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
        # Two chunks of 4 cover the 6 masked rows; the loop stops there.
        self.assertLen(rows_seen, 2)
        self.assertEqual([len(r) for r in rows_seen], [4, 4])

    def test_true_first_is_a_stable_partition(self):
        mask = np.array([0, 1, 1, 0, 1, 0, 0, 1], bool)
        got = np.asarray(scoring.true_first(jnp.asarray(mask)))
        np.testing.assert_array_equal(got, np.argsort(~mask, kind='stable'))

    def test_check_where_scored_constraint_matches_plain(self):
        archs = space.sample(jax.random.key(8), (40,), resolutions=RES)
        mask = jnp.asarray(np.arange(40) % 3 == 1)
        budget = float(np.median(np.asarray(latency(archs))))
        plain = lambda a: latency(a) <= budget
        split = scoring.ScoredConstraint(score=latency, accept=lambda ms, _: ms <= budget)
        want = np.asarray(plain(space.canonicalize(archs))) & np.asarray(mask)
        for cons in (plain, split):
            got = jax.jit(lambda a, m: scoring.check_where(cons, a, m, 4))(archs, mask)
            np.testing.assert_array_equal(np.asarray(got), want)

    def test_initial_population_and_resampling_report_rows(self):
        import dataclasses
        params = dataclasses.replace(SMALL_PARAMS, init_rounds=5)
        n = params.population_size
        for budget, feasible in ((SMALLEST + 0.01, True), (SMALLEST - 1.0, False)):
            draw = jax.jit(
                lambda k, b: feasibility.initial_population(k, params, lambda a: latency(a) <= b))(
                    jax.random.key(0), budget)
            self.assertIsInstance(draw, FeasibleDraw)
            self.assertEqual(bool(draw.feasible.all()), feasible)
            rows = int(draw.constraint_rows)
            self.assertEqual(rows % n, 0)
            self.assertBetween(rows // n, 1, 5)
            if not feasible:  # All rounds run, the last one the smallest sub-network.
                self.assertEqual(rows, 5 * n)
                chex.assert_trees_all_equal(space.canonicalize(draw.genomes),
                                            space.canonicalize(operators.smallest_genomes(n, RES)))
        # Nothing is feasible: every slot falls back, after max_tries draws.
        fallback = operators.smallest_genomes(8, RES)
        propose = lambda k, slots: operators.random_genomes(k, slots.shape[0], RES)
        out = feasibility.resample_until_feasible(jax.random.key(1), propose, 8, fallback,
                                                  jnp.ones(8, bool), lambda a: latency(a) < 0, 3, 2)
        chex.assert_trees_all_equal(out.genomes, fallback)
        self.assertTrue(bool(out.feasible.all()))
        self.assertEqual(int(out.constraint_rows), 8 + 2 * 2)

    def test_refine_reranks_final_parents(self):
        parents = space.sample(jax.random.key(9), (6,), resolutions=RES)
        fit = jnp.sort(objective(parents))[::-1]
        state = search.EvoState(parents=parents,
                                fitness=fit,
                                feasible=jnp.ones(6, bool),
                                generation=jnp.int32(1),
                                memory=memory.empty_memory(0),
                                evaluations=jnp.zeros(2, jnp.int32))
        res = search.EvoResult(arch=parents[0],
                               objective=fit[0],
                               feasible=jnp.bool_(True),
                               history=fit[:1],
                               evaluations=jnp.zeros(2, jnp.int32),
                               state=state)
        lat = np.asarray(latency(parents))
        budget = float(np.sort(lat)[2])  # Three parents pass.
        got = evolution.refine(res, objective, lambda a: latency(a) <= budget)
        obj = np.asarray(objective(parents))
        best = int(np.argmax(np.where(lat <= budget, obj, -np.inf)))
        self.assertTrue(bool(got.feasible))
        self.assertAlmostEqual(float(got.objective), float(obj[best]), places=5)
        chex.assert_trees_all_equal(got.arch, space.canonicalize(parents)[best])
        none = evolution.refine(res, objective, lambda a: latency(a) < 0)
        self.assertFalse(bool(none.feasible))
        with self.assertRaisesRegex(ValueError, 'random search'):
            evolution.refine(res.replace(state=None), objective, lambda a: latency(a) < 0)

    def test_shared_score_where_packs_all_searches_rows(self):
        archs = space.sample(jax.random.key(6), (3, 40), resolutions=RES)
        # Rows to score per search: 6, 1, 0.
        mask = jnp.asarray(
            np.stack([np.arange(40) % 7 == 3,
                      np.arange(40) == 5,
                      np.zeros(40, bool)]))
        calls = []

        def fn(a):
            jax.debug.callback(lambda r: calls.append(len(r)), a.resolution)
            return objective(a)

        want = np.where(mask, np.asarray(jax.vmap(objective)(archs)), np.nan)
        for wrap, rows_scored in ((lambda f: f, 24), (scoring.Shared, 12)):
            del calls[:]
            got = jax.jit(jax.vmap(lambda a, m: scoring.score_where(wrap(fn), a, m, 4, jnp.nan)))(
                archs, mask)
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
            # Unshared: the vmapped loop runs as long as the busiest search
            # needs (2 chunks of 4 rows, for all 3 searches); shared: the 7
            # rows of all searches fit one chunk of 3 x 4.
            self.assertEqual(sum(calls), rows_scored)

    def test_skipping_copies_changes_no_result(self):
        import dataclasses
        budget = SMALLEST + 0.3 * (LARGEST - SMALLEST)
        seeds, budgets = search.grid([budget], [0, 1, 2])
        out = []
        for chunk in (0, 8):
            params = dataclasses.replace(SMALL_PARAMS, score_chunk=chunk)
            out.append(
                jax.device_get(
                    search.make_budget_search(params, objective, latency)(seeds, budgets)))
        chex.assert_trees_all_close(out[0].arch, out[1].arch)
        np.testing.assert_allclose(out[0].history, out[1].history, rtol=1e-6)

    @parameterized.named_parameters(('candidates', 1.25), ('redraw', 0.0))
    def test_memory_changes_no_result_and_saves_rows(self, ratio):
        import dataclasses
        budgets = SMALLEST + np.array([0.1, 0.4]) * (LARGEST - SMALLEST)
        seeds, flat = search.grid(budgets, [0, 1])
        out = []
        for bits in (0, 12):
            params = dataclasses.replace(SMALL_PARAMS, candidate_ratio=ratio, memory_bits=bits)
            out.append(
                jax.device_get(search.make_budget_search(params, objective, latency)(seeds, flat)))
        chex.assert_trees_all_equal(out[0].arch, out[1].arch)
        np.testing.assert_array_equal(out[0].history, out[1].history)
        np.testing.assert_array_equal(out[0].objective, out[1].objective)
        # The memory spares objective rows in both modes, constraint rows
        # only with candidate_ratio (redraws are not remembered).
        no_mem, mem = out[0].evaluations, out[1].evaluations
        self.assertTrue((mem[:, 1] < no_mem[:, 1]).all(), (no_mem, mem))
        if ratio:
            self.assertTrue((mem[:, 0] < no_mem[:, 0]).all(), (no_mem, mem))
        else:
            np.testing.assert_array_equal(mem[:, 0], no_mem[:, 0])

    def test_objective_first_changes_no_result(self):
        import dataclasses
        budgets = SMALLEST + np.array([0.05, 0.3, 0.9]) * (LARGEST - SMALLEST)
        seeds, flat = search.grid(budgets, [0, 1])
        out = {}
        for first in (False, True):
            for bits in (0, 12):
                params = dataclasses.replace(SMALL_PARAMS, objective_first=first, memory_bits=bits)
                out[first, bits] = jax.device_get(
                    search.make_budget_search(params, objective, latency)(seeds, flat))
        for bits in (0, 12):
            ref, got = out[False, bits], out[True, bits]
            chex.assert_trees_all_equal(ref.arch, got.arch)
            np.testing.assert_array_equal(ref.history, got.history)
            # Fewer constraint rows (only candidates that beat the worst
            # parent), more objective rows (every new candidate).
            self.assertTrue((got.evaluations[:, 0] < ref.evaluations[:, 0]).all())
            self.assertTrue((got.evaluations[:, 1] > ref.evaluations[:, 1]).all())
        # The memory also spares rows here.
        self.assertTrue((out[True, 12].evaluations < out[True, 0].evaluations).all())

    def test_memory_recalls_what_it_stored(self):
        archs = space.sample(jax.random.key(7), (64,), resolutions=RES)
        bits = 10
        slot, tag = memory.memory_keys(archs, bits)
        self.assertLen(np.unique(np.asarray(tag)), 64)
        table = memory.empty_memory(bits)
        np.testing.assert_array_equal(memory.recall(table, slot, tag), 0)
        status = jnp.where(jnp.arange(64) % 2 == 0, memory.TOLD, memory.INFEASIBLE)
        write = jnp.arange(64) < 48
        table = memory.remember(table, slot, tag, status, write)
        got = np.asarray(memory.recall(table, slot, tag))
        np.testing.assert_array_equal(got[48:], memory.UNSEEN)
        # Direct-mapped: of rows sharing a slot one is recalled, the others are unseen.
        slots = np.asarray(slot)[:48]
        for s_ in np.unique(slots):
            rows = np.flatnonzero(slots == s_)
            recalled = rows[got[rows] != memory.UNSEEN]
            self.assertLen(recalled, 1)
            self.assertEqual(got[recalled[0]], int(status[recalled[0]]))
        self.assertGreater(len(np.unique(slots)), 40)
        # Genomes of one sub-network (they differ only past a stage's depth) share a key.
        one = archs[:1].replace(depth=archs.depth[:1].at[0, 0].set(2))
        twins = [one.replace(kernel=one.kernel.at[0, 3].set(k)) for k in (3, 7)]
        keys = [tuple(int(v[0]) for v in memory.memory_keys(t, bits)) for t in twins]
        self.assertEqual(keys[0], keys[1])
        # Keys that share a slot in one call: the result is the larger entry,
        # whatever the order of the rows.
        same = jnp.zeros((2,), jnp.int32)
        tags = jnp.asarray([8, 4], jnp.uint32)
        for perm in (np.array([0, 1]), np.array([1, 0])):
            m = memory.remember(memory.empty_memory(4), same[perm], tags[perm],
                                jnp.asarray([3, 1])[perm], jnp.ones(2, bool))
            self.assertEqual(int(m[0]), 8 | 3)

    def test_feasible_all_budgets_impossible_flagged_compiles_once(self):
        evo, _ = _searches()
        fracs = np.array([0.0, 0.05, 0.2, 0.5, 1.0])
        budgets = SMALLEST + 0.01 + fracs * (LARGEST - SMALLEST)
        budgets = np.concatenate([budgets, [SMALLEST - 1.0]])
        seeds, flat = search.grid(budgets, [0, 1])
        res = jax.device_get(evo(seeds, flat))
        ok = flat >= SMALLEST
        np.testing.assert_array_equal(res.feasible, ok)
        self.assertTrue((res.latency[ok] <= flat[ok]).all())
        # Recheck with the estimator on the returned archs, not the reported latency.
        recheck = np.asarray(latency(jax.tree_util.tree_map(jnp.asarray, res.arch)))
        self.assertTrue((recheck[ok] <= flat[ok] + 1e-5).all())
        # A looser budget never ends worse than the tightest one (same seed).
        self.assertGreater(res.objective[4], res.objective[0] - 1e-6)
        # New budget and seed values: no retrace (assert_max_traces), no recompile.
        evo(seeds + 7, flat * 0.97)
        evo(seeds[::-1], flat[::-1])
        self.assertEqual(evo._cache_size(), 1)

    def test_beats_random_search_with_10x_evaluations(self):
        evo, rnd = _searches()
        budget = SMALLEST + 0.25 * (LARGEST - SMALLEST)
        seeds, budgets = search.grid([budget], np.arange(12))
        e = jax.device_get(evo(seeds, budgets))
        r = jax.device_get(rnd(seeds, budgets))
        self.assertTrue(e.feasible.all() and r.feasible.all())
        self.assertTrue((r.latency <= budgets).all() and (e.latency <= budgets).all())
        self.assertGreaterEqual(e.objective.mean(), r.objective.mean())
        self.assertGreaterEqual(np.median(e.objective), r.objective.max() - 1e-6)


class ParetoTest(absltest.TestCase):

    def test_front(self):
        lat = np.array([1.0, 2.0, 2.0, 3.0, 4.0])
        obj = np.array([0.5, 0.4, 0.7, 0.6, 0.9])
        np.testing.assert_array_equal(search.pareto_front(lat, obj), [1, 0, 1, 0, 1])

    def test_library_does_not_import_matplotlib(self):
        import subprocess
        import sys
        code = 'import sys, ofa_jax.search; assert "matplotlib" not in sys.modules'
        subprocess.run([sys.executable, '-c', code], check=True)


class ConstraintsTest(absltest.TestCase):

    def test_combinators(self):
        from ofa_jax import counts
        from ofa_jax.search import constraints
        archs = space.sample(jax.random.key(3), (64,), resolutions=RES)
        lat = np.asarray(latency(archs))
        macs = np.asarray(counts.count_macs(space.to_numpy(archs)), np.float64)
        params = np.asarray(counts.count_params(space.to_numpy(archs)), np.float64)
        b1, b2 = np.median(lat), np.median(2 * lat)
        m = np.median(macs)
        p = np.quantile(params, 0.7)
        cons = constraints.all_of(
            constraints.devices_at_most([latency, lambda a: 2 * latency(a)], [b1, 1.1 * b2]),
            constraints.macs_at_most(m), constraints.params_at_most(p), None)
        want = (lat <= b1) & (2 * lat <= 1.1 * b2) & (macs <= m) & (params <= p)
        np.testing.assert_array_equal(np.asarray(jax.jit(cons)(archs)), want)
        cond = constraints.conditioned_latency_at_most(lambda a, c: c[0] * latency(a),
                                                       np.array([[1.0], [2.0]]), [b1, 1.1 * b2])
        np.testing.assert_array_equal(np.asarray(jax.jit(cond)(archs)),
                                      (lat <= b1) & (2 * lat <= 1.1 * b2))
        with self.assertRaisesRegex(ValueError, 'budgets_ms'):
            constraints.devices_at_most([latency], [1.0, 2.0])

    def test_proxy_objective_is_labelled(self):
        from ofa_jax.search import objectives
        proxy = objectives.macs_proxy()
        self.assertTrue(proxy.is_proxy)
        self.assertEqual(proxy.name, 'proxy:macs_millions')
        self.assertFalse(objectives.accuracy_objective(objective).is_proxy)
        big = proxy(_one(space.largest(224)))
        self.assertGreater(float(big[0]), 800.0)  # w1.2 largest: 843M MACs at 224


if __name__ == '__main__':
    absltest.main()
