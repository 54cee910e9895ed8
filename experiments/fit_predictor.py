"""Fits one latency predictor (or evaluates a LUT) on one device's data.

    python -m experiments.fit_predictor --config=experiments/configs/fit_predictor.py \
      --config.data=FILE.csv --config.model=mlp|additive|additive_mlp|lut|xla_cost --workdir=DIR
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from predictors import experiment_fit

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Output folder.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    del argv
    try:
        out = experiment_fit.run(FLAGS.config, FLAGS.workdir)
    except experiment_fit.ConfigError as err:
        print(f'error: {err}', file=sys.stderr)
        sys.exit(2)
    print(' '.join(f'{k}={v:.4g}' for k, v in out.items() if isinstance(v, float)))


if __name__ == '__main__':
    app.run(main)
