"""What no predictor can beat: two measurements of the same sub-networks, scored on each other.

Reads two OFA CSV files of the same device (e.g. the ``latency.csv`` of an
onboarding and of a rerun of it into a fresh store, minutes apart) and scores
the second file's latency of every common arch as if it were a prediction of
the first's: MAPE, RMSE and share within 10%. A predictor scored against the
first measurement cannot be expected to do better than the device repeats
itself. The machine's speed may have moved between the two (a loaded host,
another boost state), so a second line rescales the second measurement by
one factor, the median ratio of the two on the rows it is fitted on (the
adaptation rows with ``--onboard_json``, else all): what is left is the noise
of each row, which no factor a predictor learns can remove.
``--onboard_json`` (an onboarding's ``onboard.json``) splits the common archs
into the rows the adaptation read and the held-out ones, the rows its
evaluation table scores.

    python -m benchmarks.repeat_floor --a=runs/onboard_cpu/latency.csv \\
      --b=runs/onboard_cpu_repeat/latency.csv --onboard_json=runs/onboard_cpu/onboard.json

Prints a table; ``--out=PATH.json`` also writes it.
"""

import json
import os

from absl import app
from absl import flags
import numpy as np

from ofa_jax import csvio
from ofa_jax import space
from predictors import metrics

flags.DEFINE_string('a', None, 'First measurement (OFA CSV): the one predictors are scored on.')
flags.DEFINE_string('b', None, 'Second measurement of the same archs (OFA CSV).')
flags.DEFINE_string('onboard_json', '', 'onboard.json: split into adaptation and held-out rows.')
flags.DEFINE_string('out', '', 'Optional JSON output path.')
FLAGS = flags.FLAGS


def by_key(path: str) -> dict[str, float]:
    """Arch key -> latency (ms) of an OFA CSV; a repeated arch keeps its mean."""
    table = csvio.read_ofa_csv(path)
    rows: dict[str, list[float]] = {}
    for arch, ms in zip(space.unstack(table.archs), table.latency_ms):
        rows.setdefault(space.arch_key(arch), []).append(float(ms))
    return {k: float(np.mean(v)) for k, v in rows.items()}


def floor(a: dict[str, float],
          b: dict[str, float],
          keys: list[str],
          scale: float = 1.0) -> dict[str, float]:
    """``scale * b`` scored as a prediction of ``a`` on ``keys``."""
    first = np.array([a[k] for k in keys])
    second = scale * np.array([b[k] for k in keys])
    return dict(metrics.all_metrics(second, first), rows=len(keys))


def main(argv):
    del argv
    for name in ('a', 'b'):
        if not os.path.exists(FLAGS[name].value or ''):
            raise app.UsageError(f'--{name}: {FLAGS[name].value!r} does not exist')
    a, b = by_key(FLAGS.a), by_key(FLAGS.b)
    common = sorted(set(a) & set(b))
    if not common:
        raise app.UsageError('--a, --b: no arch in common')
    groups = {'all common rows': common}
    if FLAGS.onboard_json:
        with open(FLAGS.onboard_json) as f:
            adapt = set(json.load(f)['adapt_keys'])
        groups['adaptation rows'] = [k for k in common if k in adapt]
        groups['held-out rows'] = [k for k in common if k not in adapt]
    fit_on = groups.get('adaptation rows') or common
    scale = float(np.median([a[k] / b[k] for k in fit_on]))
    out = {
        'as measured': {
            name: floor(a, b, keys) for name, keys in groups.items() if keys
        },
        'rescaled': {
            name: floor(a, b, keys, scale) for name, keys in groups.items() if keys
        },
    }
    print(f'{FLAGS.b} as a prediction of {FLAGS.a} (rescaled: times {scale:.4f}, the median '
          f'ratio on the {len(fit_on)} {"adaptation" if FLAGS.onboard_json else "common"} rows):')
    print('| second measurement | rows | n | MAPE % | RMSE ms | within 10% |')
    print('|---|---|---|---|---|---|')
    for how, by in out.items():
        for name, m in by.items():
            print(f'| {how} | {name} | {m["rows"]} | {m["mape"]:.2f} | {m["rmse_ms"]:.3f} | '
                  f'{100 * m["acc10"]:.0f}% |')
    if FLAGS.out:
        with open(FLAGS.out, 'w') as f:
            json.dump({'a': FLAGS.a, 'b': FLAGS.b, 'scale': scale, 'floor': out}, f, indent=1)


if __name__ == '__main__':
    flags.mark_flag_as_required('a')
    flags.mark_flag_as_required('b')
    app.run(main)
