"""Builds an OFA-format latency lookup table on this host's device.

See ``experiments/configs/build_lut.py``. Bad configs exit with status 2 and a
one-line message.
"""

import json
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from ofa_jax.latency import campaign
from ofa_jax.latency import lut_builder

_WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder (lut/*.yaml).')
_CONFIG = config_flags.DEFINE_config_file('config',
                                          None,
                                          'LUT build config file.',
                                          lock_config=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    if not _WORKDIR.value:
        sys.stderr.write('error: --workdir is required (output folder)\n')
        sys.exit(2)
    try:
        summary = lut_builder.run(_CONFIG.value, _WORKDIR.value)
    except campaign.ConfigError as err:
        sys.stderr.write(f'error: {err}\n')
        sys.exit(2)
    summary.pop('fingerprint', None)
    print(json.dumps(summary, default=str))


if __name__ == '__main__':
    app.run(main)
