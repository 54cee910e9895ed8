"""Builds an OFA-format latency lookup table on this host's device.

    python -m experiments.build_lut --workdir=DIR [--config.resolutions=128,160 ...]

See ``experiments/configs/build_lut.py`` and :mod:`experiments.jobs.build_lut`.
Prints one JSON line (the build summary). Bad input: one line and exit status 2.
"""

from experiments import cli
from experiments.jobs import build_lut

if __name__ == '__main__':
    cli.launch('build_lut',
               build_lut.run,
               show=lambda summary: cli.print_json(summary, drop=('fingerprint',)),
               interrupted='every timed layer is in the layer cache; run the same command '
               'again to resume')
