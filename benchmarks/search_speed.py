"""Search speed: a full default search (100 x 500) and 5 budgets x 3 seeds in one call.

Objective and constraint are 128-400-400-400-1 MLPs on OFA's one-hot encoding,
i.e. the cost of a search with learned accuracy and latency predictors, in two
cases (``--predictors``):

* ``random``: random-init MLPs (an accuracy MLP in OFA's form, and a latency
  MLP mapped to 5..45 ms); needs no data, but its landscape is unlike a real
  predictor's: the population converges less, so fewer children are copies
  (which the search never scores, ``EvoParams.score_chunk``);
* ``trained``: OFA's published accuracy predictor and the paper's latency MLP
  fit on Note10-LUT latencies of 3,000 random archs (needs
  ../shared/data/external; skipped when absent).

Timings exclude compilation (AOT ``lower().compile()`` first), synchronise
with ``block_until_ready`` and report the median of ``--repeats`` runs, each
followed by one call of a fixed matmul chain whose rate (GFLOP/s,
:mod:`benchmarks.reference`) says how fast this wandering VM was meanwhile.
``--precisions=float32,bfloat16`` also times the random MLPs with bfloat16
scoring inside the loop and the final parents re-ranked in float32
(``make_budget_search(exact_objective=..., exact_latency_fn=...)``), which
pays only on CPUs with bfloat16 units (AVX512-BF16/AMX). OFA's tutorial
EvolutionFinder takes 9-20 s per search on this 2-core machine (Note10 LUT +
its accuracy predictor). Targets: one search < 1 s, 15 searches in one call < 5 s.

Run (from the repository root; rerun on a quiet machine for final numbers;
``taskset -c 0`` pins to one core)::

    python -m benchmarks.search_speed [--repeats=5] [--predictors=random,trained]

Writes benchmarks/results/search_speed.json.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import reference
from ofa_jax import external_data
from ofa_jax import space
from ofa_jax import search
from predictors import accuracy
from predictors import features
from predictors import fit as fit_lib
from predictors import lut as lut_lib
from predictors import train as train_lib

_EXTERNAL = external_data.root()

_REPEATS = flags.DEFINE_integer('repeats', 5, 'timed runs per case (median reported)')
_MAX_TRIES = flags.DEFINE_integer('max_tries', 4, 'EvoParams.max_tries (candidate_ratio=0)')
_CANDIDATES = flags.DEFINE_float('candidate_ratio', 1.25, 'EvoParams.candidate_ratio')
_PRNG = flags.DEFINE_string('prng_impl', 'threefry2x32', 'EvoParams.prng_impl')
_PRECISIONS = flags.DEFINE_list(
    'precisions', ['float32'], 'scoring precisions of the random MLPs '
    '(predictors.accuracy.PRECISIONS)')
_PREDICTORS = flags.DEFINE_list(
    'predictors', ['random', 'trained'],
    'random: random-init MLPs; trained: OFA acc predictor + a paper '
    'MLP fit on Note10 LUT latencies (needs ../shared/data/external)')
_SCORE_CHUNK = flags.DEFINE_integer('score_chunk', 12, 'EvoParams.score_chunk (0: score all)')
_MEMORY = flags.DEFINE_integer('memory_bits', 16, 'EvoParams.memory_bits (0: no memory)')
_OBJ_FIRST = flags.DEFINE_bool(
    'objective_first', True, 'EvoParams.objective_first: accuracy first, latency only where '
    'it can matter (both predictors are MLPs here, so this saves rows)')
_OUT = flags.DEFINE_string('out', os.path.join(os.path.dirname(__file__), 'results'),
                           'output folder')


def _latency_mlp(predictor):
    """A 128-400-400-400-1 MLP mapped to 5..45 ms (random init: monotone in nothing)."""
    return lambda archs: 5.0 + 40.0 * jax.nn.sigmoid(4.0 * predictor(archs))


def _time(fn, *args, repeats: int) -> tuple[float, float, list[float], float, float]:
    """(median wall s, compile s, all wall s, median process CPU s, reference GFLOP/s).

    Process CPU time (all threads) is reported too: on a shared machine it is
    less disturbed by other processes than wall time. One call of the
    reference matmul chain (:mod:`benchmarks.reference`) follows each timed
    run; its median rate says how fast the machine was meanwhile.
    """
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    x = reference.inputs()
    reference.seconds(x)  # compile
    times, cpu, ref = [], [], []
    for i in range(repeats):
        shifted = (args[0] + 100 * (i + 1),) + args[1:]
        t, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(compiled(*shifted))
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        ref.append(reference.seconds(x))
    return (statistics.median(times), compile_s, times, statistics.median(cpu),
            reference.gflops(statistics.median(ref)))


def _trained_predictors(resolutions):
    """OFA's accuracy predictor and a paper MLP trained on Note10-LUT latencies.

    The latency MLP (2101.00732's 128-400-400-400-1) is fit on 3,000 random
    archs labelled by OFA's Note10 lookup table (500 more for early stopping),
    so both predictors have the landscape of real ones. None when the public
    data is absent.
    """
    lut_dir = os.path.join(_EXTERNAL, 'ofa_note10_lut')
    pth = os.path.join(_EXTERNAL, 'ofa_acc_predictor', 'acc_predictor.pth')
    if not (os.path.isdir(lut_dir) and os.path.exists(pth)):
        print(f'SKIP trained predictors: need {lut_dir} and {pth}')
        return None
    table = lut_lib.load_lut(lut_dir, resolutions=resolutions)
    archs = space.to_numpy(space.sample(jax.random.key(3), (3500,), resolutions=resolutions))
    ms = table.predict_np(archs)
    take = lambda lo, hi: jax.tree_util.tree_map(lambda v: v[lo:hi], archs)
    cfg = train_lib.TrainParams(max_steps=4000)
    lat, _ = fit_lib.fit_predictor('mlp',
                                   take(0, 3000),
                                   ms[:3000],
                                   take(3000, None),
                                   ms[3000:],
                                   fspec=features.fit_feature_spec(take(0, 3000)),
                                   config=cfg)
    return accuracy.load_ofa_pth(pth), lat


def _case(params, objective, latency, budgets, fast=None):
    """Timings and results of one predictor pair (``fast``: bfloat16 copies)."""
    seeds1, budgets1 = search.grid([budgets[2]], [0])
    seeds15, budgets15 = search.grid(budgets, [0, 1, 2])
    if fast is None:
        fn = search.make_budget_search(params, objective, latency, jit=False)
    else:  # Fast scoring in the loop, the final parents re-ranked exactly.
        fn = search.make_budget_search(params,
                                       fast[0],
                                       fast[1],
                                       exact_objective=objective,
                                       exact_latency_fn=latency,
                                       jit=False)
    one = _time(fn, seeds1, budgets1, repeats=_REPEATS.value)
    many = _time(fn, seeds15, budgets15, repeats=_REPEATS.value)
    res = jax.device_get(jax.jit(fn)(seeds15, budgets15))
    # Feasibility rechecked with the exact float32 latency predictor on the returned archs.
    exact = np.asarray(latency(jax.tree_util.tree_map(jnp.asarray, res.arch)))
    return {
        'one': one,
        'fifteen': many,
        'budgets_ms': budgets,
        'all_feasible': bool(res.feasible.all() and (exact <= res.budget + 1e-5).all()),
        'evaluations_per_search': [float(v) for v in res.evaluations.mean(axis=0)],
        'objective_mean_per_budget': {
            str(b): float(np.mean(res.objective[res.budget == np.float32(b)])) for b in budgets
        },
    }


def _budgets(latency, resolutions):
    sample = space.sample(jax.random.key(2), (10000,), resolutions=resolutions)
    q = np.quantile(np.asarray(latency(sample)), [0.02, 0.1, 0.3, 0.6, 0.9])
    return [float(round(v, 2)) for v in q]


def main(argv):
    del argv
    # Before any work: later the benchmark's own threads count in the load.
    load = os.getloadavg()
    params = search.make_params(max_tries=_MAX_TRIES.value,
                                candidate_ratio=_CANDIDATES.value,
                                prng_impl=_PRNG.value,
                                score_chunk=_SCORE_CHUNK.value,
                                memory_bits=_MEMORY.value,
                                objective_first=_OBJ_FIRST.value)
    cases = {}
    if 'random' in _PREDICTORS.value:
        acc = accuracy.init_predictor(jax.random.key(0))
        lat_mlp = accuracy.init_predictor(jax.random.key(1))
        lat = _latency_mlp(lat_mlp)
        budgets = _budgets(lat, params.resolutions)
        for precision in _PRECISIONS.value:
            fast = None
            if precision != 'float32':
                fast = (acc.with_precision(precision),
                        _latency_mlp(lat_mlp.with_precision(precision)))
            cases[f'random MLPs, {precision}'] = _case(params, acc, lat, budgets, fast)
    if 'trained' in _PREDICTORS.value:
        trained = _trained_predictors(params.resolutions)
        if trained is not None:
            acc, lat = trained
            cases['OFA acc + Note10 MLP, float32'] = _case(params, acc, lat,
                                                           _budgets(lat, params.resolutions))

    print(f'\nSearch speed, MLP accuracy + MLP latency predictors, candidate_ratio='
          f'{_CANDIDATES.value}, max_tries={_MAX_TRIES.value}, prng {_PRNG.value}, '
          f'score_chunk={_SCORE_CHUNK.value}, memory_bits={_MEMORY.value}, '
          f'objective_first={_OBJ_FIRST.value}, '
          f'{os.cpu_count()} CPUs, load average {load[0]:.1f} at start, jax {jax.__version__}')
    print(f'{"case":<58} {"wall s":>8} {"CPU s":>7} {"compile":>8} {"target":>7} {"met":>4} '
          f'{"OFA (>=9 s/search)":>18}')
    for label, case in cases.items():
        for name, key, target, ofa in (('1 search (100 x 500)', 'one', 1.0, 9.0),
                                       ('15 searches (5 budgets x 3 seeds), one call', 'fifteen',
                                        5.0, 15 * 9.0)):
            t, c, _, cpu, _ = case[key]
            print(f'{name + ", " + label:<58} {t:8.3f} {cpu:7.3f} {c:8.1f} {target:7.1f} '
                  f'{"yes" if t < target else "NO":>4} {ofa:18.0f}')
        print(f'  {label}: all 15 results feasible under the float32 latency predictor: '
              f'{case["all_feasible"]}; budgets (ms, latency quantiles) {case["budgets_ms"]}; '
              f'mean objective per budget '
              f'{[round(v, 4) for v in case["objective_mean_per_budget"].values()]}; rows '
              f'scored per search (latency, objective) '
              f'{[round(v) for v in case["evaluations_per_search"]]} of '
              f'{params.num_candidates * params.num_generations} candidates drawn')
    refs = [case[k][4] for case in cases.values() for k in ('one', 'fifteen')]
    if refs:
        print(f'Reference float32 matmuls between the timed runs: {min(refs):.0f}-{max(refs):.0f} '
              'GFLOP/s (benchmarks.reference; the issue assumes ~140 on this machine)')
    if load[0] > 0.5:
        print('NOTE: machine busy at start (load average > 0.5): rerun on a quiet machine.')
    os.makedirs(_OUT.value, exist_ok=True)
    with open(os.path.join(_OUT.value, 'search_speed.json'), 'w') as f:
        json.dump(
            {
                'command': 'python -m benchmarks.search_speed ' + ' '.join(sys.argv[1:]),
                'cases': {
                    label: {
                        'one_search_seconds': case['one'][0],
                        'one_search_runs': case['one'][2],
                        'one_search_process_cpu_seconds': case['one'][3],
                        'fifteen_searches_seconds': case['fifteen'][0],
                        'fifteen_searches_runs': case['fifteen'][2],
                        'fifteen_searches_process_cpu_seconds': case['fifteen'][3],
                        'compile_seconds': [case['one'][1], case['fifteen'][1]],
                        'reference_matmul_gflops': [case['one'][4], case['fifteen'][4]],
                        'all_feasible': case['all_feasible'],
                        'evaluations_per_search': case['evaluations_per_search'],
                        'budgets_ms': case['budgets_ms'],
                        'objective_mean_per_budget': case['objective_mean_per_budget'],
                    } for label, case in cases.items()
                },
                'score_chunk': _SCORE_CHUNK.value,
                'memory_bits': _MEMORY.value,
                'objective_first': _OBJ_FIRST.value,
                'max_tries': _MAX_TRIES.value,
                'candidate_ratio': _CANDIDATES.value,
                'prng_impl': _PRNG.value,
                'load_average': load,
                'cpus': os.cpu_count(),
                'jax': jax.__version__,
            },
            f,
            indent=1)
    return 0


if __name__ == '__main__':
    app.run(main)
