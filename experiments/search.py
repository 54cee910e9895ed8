"""Searches OFA sub-networks for several latency budgets and seeds in one call.

    python -m experiments.search --config.latency=PATH --config.budgets_ms=15,20,25 \
      --config.seeds=1 [--config.accuracy=ACC] [--config.verify=true] --workdir=DIR

Writes DIR/search.json and DIR/pareto.png and prints a table (see
``experiments/configs/search.py`` and :mod:`experiments.jobs.search`). Bad
input: one line naming the field and exit status 2.
"""

from experiments import cli
from experiments.jobs import search

if __name__ == '__main__':
    cli.launch('search',
               search.run,
               interrupted='verified rows are in the verify store; run the same command again')
