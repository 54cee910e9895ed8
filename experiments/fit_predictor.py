"""Fits one latency predictor (or evaluates a LUT) on one device's data.

    python -m experiments.fit_predictor --config.data=FILE.csv \
      --config.model=mlp|additive|additive_mlp|lut|xla_cost --workdir=DIR

See ``experiments/configs/fit_predictor.py`` and
:mod:`experiments.jobs.fit_predictor`. Prints the test metrics on one line.
Bad input: one line and exit status 2.
"""

from experiments import cli
from experiments.jobs import fit_predictor


def _show(out):
    print(' '.join(f'{k}={v:.4g}' for k, v in out.items() if isinstance(v, float)))


if __name__ == '__main__':
    cli.launch('fit_predictor',
               fit_predictor.run,
               show=_show,
               interrupted='nothing was saved; run the same command again')
