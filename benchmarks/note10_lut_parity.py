"""Reproduces the Note10 column of the 2101.00732 authors' OFA dataset from OFA's LUT.

``ofanas_ofa_w1.0/note10_lookuptable_ofa.csv`` holds 10,000 archs whose
``latency`` is the sum of OFA's published Note10 lookup tables (width 1.2,
one yaml per resolution). This script loads those tables with
:mod:`predictors.lut`, predicts every row three ways (host per-arch key walk,
dense numpy, jitted dense float32) and prints the max abs difference.

Run::

    python -m benchmarks.note10_lut_parity [--data_dir=/work/shared/data/external]
"""

import os
import time

from absl import app
from absl import flags
import jax
import numpy as np

from ofa_jax import csvio
from ofa_jax import external_data
from ofa_jax import space
from predictors import lut

_DATA = flags.DEFINE_string(
    'data_dir', external_data.root(), 'Folder holding ofa_note10_lut/ and ofanas_ofa_w1.0/ '
    '(default: $OFA_JAX_EXTERNAL_DATA or ../shared/data/external).')


def main(argv):
    del argv
    lut_dir = os.path.join(_DATA.value, 'ofa_note10_lut')
    csv_path = os.path.join(_DATA.value, 'ofanas_ofa_w1.0', 'note10_lookuptable_ofa.csv')
    if not (os.path.isdir(lut_dir) and os.path.exists(csv_path)):
        print(f'data not found under {_DATA.value}; nothing to do')
        return
    table = lut.load_lut(lut_dir, width=1.2)
    rows = csvio.read_ofa_csv(csv_path)
    want = rows.latency_ms
    t0 = time.perf_counter()
    host = np.array([table.predict_arch(a) for a in space.unstack(rows.archs)])
    t_host = time.perf_counter() - t0
    t0 = time.perf_counter()
    dense = table.predict_np(rows.archs)
    t_dense = time.perf_counter() - t0
    predict = jax.jit(table.predict)
    archs = jax.tree_util.tree_map(jax.numpy.asarray, rows.archs)
    predict(archs).block_until_ready()
    t0 = time.perf_counter()
    jitted = np.asarray(predict(archs).block_until_ready(), np.float64)
    t_jit = time.perf_counter() - t0
    print(f'rows: {len(rows)}  resolutions: {sorted(set(rows.archs.resolution.tolist()))}')
    print(f'{"path":<22}{"max |diff| ms":>16}{"max rel diff":>16}{"time s":>10}')
    for name, pred, t in (('host key walk (f64)', host, t_host),
                          ('dense numpy (f64)', dense, t_dense), ('jit dense (f32)', jitted,
                                                                  t_jit)):
        diff = np.abs(pred - want)
        print(f'{name:<22}{diff.max():>16.3g}{(diff / want).max():>16.3g}{t:>10.4f}')


if __name__ == '__main__':
    app.run(main)
