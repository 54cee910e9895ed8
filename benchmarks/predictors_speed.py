"""Scoring speed of latency predictors: 100,000 archs in one jitted call after compile.

Prints archs/s for the paper's MLP (128-400-400-400-1 on the one-hot) and for
the additive model (table gathers + small residual MLP), median of repeated
timed calls with ``block_until_ready``, next to the issue's targets (MLP
>= 150,000/s, additive >= 2,000,000/s on a 2-core CPU). Weights are random
(all nonzero): speed does not depend on their values. Writes
``benchmarks/results/predictors_speed.json``.

    python -m benchmarks.predictors_speed [--n=100000] [--repeats=7]

Each model is timed on two paths, interleaved: ``predictor(archs)`` (jit,
weights passed as arguments, one program shared by predictors that differ
only in weights) and ``predictor.compiled(n)`` (compiled ahead of time with
the weights frozen in as constants and, on CPU, XLA's YNNPACK dot fusion:
:func:`predictors.checkpoint.compile_scorer`); both give the same
predictions (checked before timing).

Timings are only meaningful on a quiet machine (nothing else running). The
speed of this VM wanders by up to 30% from minute to minute, so the MLP's
calls are interleaved with calls of a plain chain of [2048, 400] x [400, 400]
float32 matmuls (its main layer at its chunk size), and both rates are
reported in GFLOP/s: their ratio says how close the MLP runs to this
machine's matmul rate at that moment.
"""

import json
import os
import time

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import reference
from ofa_jax import space
from predictors import checkpoint
from predictors import features
from predictors import fit
from predictors import models
from predictors import train as train_lib

flags.DEFINE_integer('n', 100_000, 'Archs per call.')
flags.DEFINE_integer('repeats', 7, 'Timed calls.')
flags.DEFINE_string('out', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results'),
                    'Output folder.')
FLAGS = flags.FLAGS
TARGETS = {'mlp': 150_000, 'additive': 2_000_000}
# Multiply-adds x 2 of the paper's MLP per arch: 128x400 + 2 x 400x400 + 400x1.
MLP_FLOPS = 2 * (128 * 400 + 2 * 400 * 400 + 400)


def make_predictor(name, fspec, archs, **kwargs):
    model = models.build_model(name, fspec=fspec, **kwargs)
    params = model.init(jax.random.PRNGKey(0), fit.make_inputs(archs[:2], fspec))
    # Every weight random and nonzero, like a trained model's: zero-initialised
    # tables, heads and biases would let XLA fold work away once the weights
    # are compile-time constants (the compiled path).
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree_util.tree_unflatten(
        tree, [0.05 * jax.random.normal(k, v.shape, v.dtype) for k, v in zip(keys, leaves)])
    return checkpoint.Predictor(name, kwargs, fspec, train_lib.TargetNorm('scale', 0.0, 20.0),
                                params)


def time_calls(fns, args, repeats):
    """(median s, best s) of each ``fns[i](args[i])``, calls interleaved after compile.

    Interleaving puts every function through the same phases of a machine
    whose speed wanders.
    """
    for fn, a in zip(fns, args):
        jax.block_until_ready(fn(a))  # compile
    times = [[] for _ in fns]
    for _ in range(repeats):
        for t, fn, a in zip(times, fns, args):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(a))
            t.append(time.perf_counter() - t0)
    return [(float(np.median(t)), float(np.min(t))) for t in times]


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    archs = space.sample_np(rng, FLAGS.n)
    archs = jax.tree_util.tree_map(jax.numpy.asarray, archs)
    fspec = features.fit_feature_spec(space.sample_np(rng, 1000))
    x = reference.inputs()
    rows = {}
    for name in ('mlp', 'additive'):
        pred = make_predictor(name, fspec, archs)
        scorer = pred.compiled(FLAGS.n)
        np.testing.assert_allclose(np.asarray(scorer(archs)),
                                   np.asarray(pred(archs)),
                                   rtol=1e-4,
                                   atol=1e-3)
        fns, args = [pred, scorer], [archs, archs]
        if name == 'mlp':
            fns, args = fns + [reference.matmuls], args + [x]
        timed = time_calls(fns, args, FLAGS.repeats)
        rows[name] = {}
        for path, (med, best) in zip(('jit', 'compiled'), timed):
            rows[name][path] = {
                'seconds_median': med,
                'archs_per_s_median': FLAGS.n / med,
                'archs_per_s_best': FLAGS.n / best,
                'target_archs_per_s': TARGETS[name]
            }
            if name == 'mlp':
                rows[name][path]['gflops'] = FLAGS.n / med * MLP_FLOPS / 1e9
        rows[name]['compiled']['compiler_options'] = scorer.compiler_options
        rows[name]['compiled']['note'] = scorer.note
        if name == 'mlp':
            rows[name]['reference_matmul_gflops'] = reference.gflops(timed[2][0])
    print('jit: predictor(archs), weights as arguments; compiled: predictor.compiled(n), weights '
          'frozen in, XLA options ' + (str(scorer.compiler_options) or 'none') +
          (f' ({scorer.note})' if scorer.note else ''))
    print(f'{"model":10s} {"path":9s} {"median ms":>10s} {"archs/s (median)":>17s} '
          f'{"archs/s (best)":>15s} {"target":>10s}')
    for name in ('mlp', 'additive'):
        for path in ('jit', 'compiled'):
            r = rows[name][path]
            print(f'{name:10s} {path:9s} {1e3 * r["seconds_median"]:10.1f} '
                  f'{r["archs_per_s_median"]:17,.0f} {r["archs_per_s_best"]:15,.0f} '
                  f'{r["target_archs_per_s"]:10,d}')
    mlp = rows['mlp']
    ref = mlp['reference_matmul_gflops']
    for path in ('jit', 'compiled'):
        mlp[path]['over_reference'] = mlp[path]['gflops'] / ref
    print(f'MLP {mlp["jit"]["gflops"]:.0f} (jit) / {mlp["compiled"]["gflops"]:.0f} (compiled) '
          f'GFLOP/s ({MLP_FLOPS / 1e6:.2f} MFLOP/arch); reference [2048,400]x[400,400] matmuls '
          f'interleaved with them: {ref:.0f} GFLOP/s (ratios {mlp["jit"]["over_reference"]:.2f} / '
          f'{mlp["compiled"]["over_reference"]:.2f}; the target needs '
          f'{TARGETS["mlp"] * MLP_FLOPS / 1e9:.0f} GFLOP/s)')
    rows['n'] = FLAGS.n
    rows['load_average'] = os.getloadavg()
    rows['cpus'] = os.cpu_count()
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, 'predictors_speed.json'), 'w') as f:
        json.dump(rows, f, indent=1)


if __name__ == '__main__':
    app.run(main)
