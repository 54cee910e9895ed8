"""Scoring speed of latency predictors: 100,000 archs in one jitted call after compile.

Prints archs/s for the paper's MLP (128-400-400-400-1 on the one-hot) and for
the additive model (table gathers + small residual MLP), median of repeated
timed calls with ``block_until_ready``, next to the issue's targets (MLP
>= 150,000/s, additive >= 2,000,000/s on a 2-core CPU). Weights are random:
speed does not depend on their values. Writes
``benchmarks/results/predictors_speed.json``.

    python benchmarks/predictors_speed.py [--n=100000] [--repeats=7]

Timings are only meaningful on a quiet machine (nothing else running). The
speed of this VM wanders by up to 30% from minute to minute, so the script
also times a plain [2048, 400] x [400, 400] float32 matmul (the MLP's main
layer at its chunk size) before and after the MLP, and reports the MLP's rate
as a fraction of the ceiling that matmul implies (FLOPs per arch below).
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ofa_jax import space  # noqa: E402
from predictors import checkpoint  # noqa: E402
from predictors import features  # noqa: E402
from predictors import fit  # noqa: E402
from predictors import models  # noqa: E402
from predictors import train as train_lib  # noqa: E402

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
    return checkpoint.Predictor(name, kwargs, fspec, train_lib.TargetNorm('scale', 0.0, 20.0),
                                params)


def time_calls(fn, archs, repeats):
    fn(archs).block_until_ready()  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(archs).block_until_ready()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.min(times))


def matmul_gflops(repeats):
    """Median GFLOP/s of a [2048, 400] x [400, 400] float32 matmul (10 per timed call)."""
    x = jax.random.normal(jax.random.key(0), (2048, 400))
    w = jax.random.normal(jax.random.key(1), (400, 400)) * 0.07

    @jax.jit
    def ten(x):
        for _ in range(10):
            x = jax.nn.relu(x @ w)
        return x

    med, _ = time_calls(ten, x, repeats)
    return 10 * 2 * 2048 * 400 * 400 / med / 1e9


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    archs = space.sample_np(rng, FLAGS.n)
    archs = jax.tree_util.tree_map(jax.numpy.asarray, archs)
    fspec = features.fit_feature_spec(space.sample_np(rng, 1000))
    rows = {}
    gflops = [matmul_gflops(FLAGS.repeats)]
    for name, kwargs in (('mlp', {}), ('additive', {})):
        pred = make_predictor(name, fspec, archs, **kwargs)
        med, best = time_calls(pred, archs, FLAGS.repeats)
        if name == 'mlp':
            gflops.append(matmul_gflops(FLAGS.repeats))
        rows[name] = {
            'seconds_median': med,
            'archs_per_s_median': FLAGS.n / med,
            'archs_per_s_best': FLAGS.n / best,
            'target_archs_per_s': TARGETS[name]
        }
    print(f'{"model":10s} {"median ms":>10s} {"archs/s (median)":>17s} {"archs/s (best)":>15s} '
          f'{"target":>10s}')
    for name, r in rows.items():
        print(f'{name:10s} {1e3 * r["seconds_median"]:10.1f} {r["archs_per_s_median"]:17,.0f} '
              f'{r["archs_per_s_best"]:15,.0f} {r["target_archs_per_s"]:10,d}')
    # The ReLU between the timed matmuls (as in the MLP) is not counted as FLOPs.
    ceiling = float(np.mean(gflops)) * 1e9 / MLP_FLOPS
    rows['mlp'].update(matmul_gflops_before_after=gflops,
                       ceiling_archs_per_s=ceiling,
                       fraction_of_ceiling=rows['mlp']['archs_per_s_median'] / ceiling)
    print(f'matmul [2048,400]x[400,400]: {gflops[0]:.0f} GFLOP/s before, {gflops[1]:.0f} after '
          f'the MLP -> ceiling {ceiling:,.0f} archs/s at {MLP_FLOPS / 1e6:.2f} MFLOP/arch; '
          f'the MLP reaches {rows["mlp"]["fraction_of_ceiling"]:.0%} of it')
    rows['n'] = FLAGS.n
    rows['load_average'] = os.getloadavg()
    rows['cpus'] = os.cpu_count()
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, 'predictors_speed.json'), 'w') as f:
        json.dump(rows, f, indent=1)


if __name__ == '__main__':
    app.run(main)
