"""The main job: measure, build the LUT, fit predictors, compare, search, verify, report.

    python -m experiments.main --workdir=runs/main

Runs on this host's default JAX device with the embedded defaults of
``experiments/configs/main.py`` (about 15 minutes on 2 CPU cores). First it
builds a random sub-network, extracts it from a random supernet and prints the
sizes of the largest and smallest sub-networks (:mod:`ofa_jax.summary`), then
runs :func:`ofa_jax.pipeline.run`. Rerunning the same command resumes: finished
measurements and LUT layers are reused. A bad config value ends with one line
that says what to change and exit status 2.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ofa_jax import errors
from ofa_jax import pipeline
from ofa_jax import report

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), 'configs', 'main.py')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder (store, stages, report/).')
_CONFIG = config_flags.DEFINE_config_file('config',
                                          _DEFAULT_CONFIG,
                                          'Main-job config file.',
                                          lock_config=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    if not _WORKDIR.value:
        sys.stderr.write('error: --workdir is required (output folder, e.g. runs/main)\n')
        sys.exit(2)
    config = _CONFIG.value
    logging.set_verbosity(logging.WARNING)  # JAX logs every backend it fails to find.
    try:
        result = pipeline.run(config, _WORKDIR.value)
    except errors.ConfigError as err:
        sys.stderr.write(f'error: {err}\n')
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write('\ninterrupted: every finished measurement is in the store; run the same '
                         'command again to resume\n')
        sys.exit(130)
    report.print_summary(result)
    print(f'report: {os.path.join(_WORKDIR.value, "report", "report.md")}')


if __name__ == '__main__':
    app.run(main)
