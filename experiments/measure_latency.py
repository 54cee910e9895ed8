"""Measures the latency of random OFA sub-networks on this host's device into a store.

See ``experiments/configs/measure_latency.py`` for the fields and a launch
command. Bad configs exit with status 2 and a one-line message.
"""

import json
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from ofa_jax.latency import campaign

_WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder (latency.csv, campaign.json).')
_CONFIG = config_flags.DEFINE_config_file('config', None, 'Campaign config file.', lock_config=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    if not _WORKDIR.value:
        sys.stderr.write('error: --workdir is required (output folder)\n')
        sys.exit(2)
    try:
        summary = campaign.run(_CONFIG.value, _WORKDIR.value)
    except campaign.ConfigError as err:
        sys.stderr.write(f'error: {err}\n')
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write('\ninterrupted: every finished row is in the store; run the same '
                         'command again to resume\n')
        sys.exit(130)
    summary.pop('drift_history', None)
    print(json.dumps(summary, default=str))


if __name__ == '__main__':
    app.run(main)
