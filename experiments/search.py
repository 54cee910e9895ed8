"""Searches OFA sub-networks for several latency budgets and seeds in one call.

    python -m experiments.search --config=experiments/configs/search.py \
      --config.latency=PATH --config.budgets_ms=15,20,25 --config.seeds=1 \
      [--config.accuracy=ACC] [--config.verify=true] --workdir=DIR

Writes DIR/search.json and DIR/pareto.png and prints a table. A bad config
prints one line naming the field and exits with status 2.
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from ofa_jax.search import experiment

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Output folder.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    del argv
    try:
        experiment.run(FLAGS.config, FLAGS.workdir)
    except experiment.ConfigError as err:
        print(f'error: {err}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    app.run(main)
