"""Measures the latency of random OFA sub-networks on this host's device into a store.

    python -m experiments.measure_latency --workdir=DIR [--config.num_archs=100 ...]

See ``experiments/configs/measure_latency.py`` for the fields and
:mod:`experiments.jobs.measure_latency` for what it does. Prints one JSON
line (the campaign summary). Bad input: one line and exit status 2.
"""

from experiments import cli
from experiments.jobs import measure_latency

if __name__ == '__main__':
    cli.launch('measure_latency',
               measure_latency.run,
               show=lambda summary: cli.print_json(summary, drop=('drift_history',)),
               interrupted='every finished row is in the store; run the same command again '
               'to resume')
