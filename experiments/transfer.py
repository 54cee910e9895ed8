"""Adapts latency predictors trained on source devices to a target device with k shots.

    python -m experiments.transfer --config=experiments/configs/transfer.py \
      --config.sources=A.csv,B.csv --config.target=C.csv --config.shots=0,10,20,50,100 \
      --config.seeds=5 --config.devices=A.csv:2080ti,B.csv:titan_rtx,C.csv:titan_xp \
      --workdir=DIR
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from predictors import experiment_transfer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Output folder.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    del argv
    try:
        out = experiment_transfer.run(FLAGS.config, FLAGS.workdir)
    except experiment_transfer.ConfigError as err:
        print(f'error: {err}', file=sys.stderr)
        sys.exit(2)
    for strat, by_k in out['metrics'].items():
        print(
            strat, ' '.join(
                f'k={k}: MAPE {m["mape"]:.2f}% acc10 {m["acc10"]:.3f}' for k, m in by_k.items()))
    for strat, by_k in out['calibration'].items():
        k = max(by_k, key=int)
        print(f'{strat} weights at k={k}:',
              ', '.join(f'{name} {w:.2f}' for name, w in by_k[k].items()))


if __name__ == '__main__':
    app.run(main)
