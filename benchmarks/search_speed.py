"""Search speed: a full default search (100 x 500) and 5 budgets x 3 seeds in one call.

Both the objective and the constraint are 128-400-400-400-1 Flax MLPs on OFA's
one-hot encoding (random init: an accuracy MLP in OFA's form, and a latency
MLP whose output is mapped to a positive ms range), i.e. the cost of a search
with learned accuracy and latency predictors. Timings exclude compilation
(AOT ``lower().compile()`` first), synchronise with ``block_until_ready`` and
report the median of ``--repeats`` runs. Each case runs twice: with float32
predictors, and with bfloat16 scoring (multiplies in bfloat16, float32
accumulation) inside the loop and the final parents re-ranked with the
float32 predictors (``make_budget_search(exact_objective=...,
exact_latency_fn=...)``), so returned archs meet the float32 budget. OFA's
tutorial EvolutionFinder takes 9-20 s per search on this 2-core machine
(Note10 LUT + its accuracy predictor). Targets: one search < 1 s, 15 searches in one call < 5 s.

Run (from the repository root; rerun on a quiet machine for final numbers;
``taskset -c 0`` pins to one core)::

    python -m benchmarks.search_speed [--repeats=5] [--candidate_ratio=1.25] [--prng_impl=rbg]

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

from ofa_jax import space
from ofa_jax import search
from predictors import accuracy

_REPEATS = flags.DEFINE_integer('repeats', 5, 'timed runs per case (median reported)')
_MAX_TRIES = flags.DEFINE_integer('max_tries', 4, 'EvoParams.max_tries (candidate_ratio=0)')
_CANDIDATES = flags.DEFINE_float('candidate_ratio', 1.25, 'EvoParams.candidate_ratio')
_PRNG = flags.DEFINE_string('prng_impl', 'rbg', 'EvoParams.prng_impl')
_PRECISIONS = flags.DEFINE_list('precisions', ['float32', 'bfloat16'],
                                'scoring precisions to time (predictors.accuracy.PRECISIONS)')
_OUT = flags.DEFINE_string('out', os.path.join(os.path.dirname(__file__), 'results'),
                           'output folder')


def _latency_mlp(predictor):
    """A 128-400-400-400-1 MLP mapped to 5..45 ms (random init: monotone in nothing)."""
    return lambda archs: 5.0 + 40.0 * jax.nn.sigmoid(4.0 * predictor(archs))


def _time(fn, *args, repeats: int) -> tuple[float, float, list[float], float]:
    """(median wall s, compile s, all wall s, median process CPU s) after compile.

    Process CPU time (all threads) is reported too: on a shared machine it is
    less disturbed by other processes than wall time.
    """
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    times, cpu = [], []
    for i in range(repeats):
        shifted = (args[0] + 100 * (i + 1),) + args[1:]
        t, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(compiled(*shifted))
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(times), compile_s, times, statistics.median(cpu)


def main(argv):
    del argv
    acc = accuracy.init_predictor(jax.random.key(0))
    lat_mlp = accuracy.init_predictor(jax.random.key(1))
    lat = _latency_mlp(lat_mlp)
    params = search.make_params(max_tries=_MAX_TRIES.value,
                                candidate_ratio=_CANDIDATES.value,
                                prng_impl=_PRNG.value)
    sample = space.sample(jax.random.key(2), (10000,), resolutions=params.resolutions)
    q = np.quantile(np.asarray(lat(sample)), [0.02, 0.1, 0.3, 0.6, 0.9])
    budgets = [float(round(v, 2)) for v in q]
    seeds1, budgets1 = search.grid([budgets[2]], [0])
    seeds15, budgets15 = search.grid(budgets, [0, 1, 2])

    cases = {}
    for precision in _PRECISIONS.value:
        if precision == 'float32':
            fn = search.make_budget_search(params, acc, lat, jit=False)
        else:  # Fast scoring in the loop, the final parents re-ranked exactly.
            fn = search.make_budget_search(params,
                                           acc.with_precision(precision),
                                           _latency_mlp(lat_mlp.with_precision(precision)),
                                           exact_objective=acc,
                                           exact_latency_fn=lat,
                                           jit=False)
        one = _time(fn, seeds1, budgets1, repeats=_REPEATS.value)
        many = _time(fn, seeds15, budgets15, repeats=_REPEATS.value)
        res = jax.device_get(jax.jit(fn)(seeds15, budgets15))
        # Feasibility rechecked with the exact float32 latency MLP on the returned archs.
        exact = np.asarray(lat(jax.tree_util.tree_map(jnp.asarray, res.arch)))
        ok = bool(res.feasible.all() and (exact <= res.budget + 1e-5).all())
        cases[precision] = {
            'one': one,
            'fifteen': many,
            'all_feasible': ok,
            'objective_mean_per_budget': {
                str(b): float(np.mean(res.objective[res.budget == np.float32(b)])) for b in budgets
            },
        }

    load = os.getloadavg()
    print(f'\nSearch speed, MLP accuracy + MLP latency predictors, candidate_ratio='
          f'{_CANDIDATES.value}, max_tries={_MAX_TRIES.value}, prng {_PRNG.value}, '
          f'{os.cpu_count()} CPUs, load average {load[0]:.1f}, jax {jax.__version__}')
    print(f'{"case":<58} {"wall s":>8} {"CPU s":>7} {"compile":>8} {"target":>7} {"met":>4} '
          f'{"OFA (>=9 s/search)":>18}')
    for precision, case in cases.items():
        for name, key, target, ofa in (('1 search (100 x 500)', 'one', 1.0, 9.0),
                                       ('15 searches (5 budgets x 3 seeds), one call', 'fifteen',
                                        5.0, 15 * 9.0)):
            t, c, _, cpu = case[key]
            print(f'{name + ", " + precision:<58} {t:8.3f} {cpu:7.3f} {c:8.1f} {target:7.1f} '
                  f'{"yes" if t < target else "NO":>4} {ofa:18.0f}')
        print(f'  {precision}: all 15 results feasible under the float32 latency MLP: '
              f'{case["all_feasible"]}; mean objective per budget '
              f'{[round(v, 4) for v in case["objective_mean_per_budget"].values()]}')
    print(f'budgets (ms, latency-MLP quantiles): {budgets}')
    if load[0] > 1.5:
        print('NOTE: machine busy (load average > 1.5): rerun on a quiet machine.')
    os.makedirs(_OUT.value, exist_ok=True)
    with open(os.path.join(_OUT.value, 'search_speed.json'), 'w') as f:
        json.dump(
            {
                'command': 'python -m benchmarks.search_speed ' + ' '.join(sys.argv[1:]),
                'cases': {
                    precision: {
                        'one_search_seconds': case['one'][0],
                        'one_search_runs': case['one'][2],
                        'one_search_process_cpu_seconds': case['one'][3],
                        'fifteen_searches_seconds': case['fifteen'][0],
                        'fifteen_searches_runs': case['fifteen'][2],
                        'fifteen_searches_process_cpu_seconds': case['fifteen'][3],
                        'compile_seconds': [case['one'][1], case['fifteen'][1]],
                        'all_feasible': case['all_feasible'],
                        'objective_mean_per_budget': case['objective_mean_per_budget'],
                    } for precision, case in cases.items()
                },
                'budgets_ms': budgets,
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
