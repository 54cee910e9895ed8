"""Builds a predictor zoo: one base latency predictor per (device, batch size).

    python -m experiments.build_zoo --config=experiments/configs/build_zoo.py \
      --config.sources=A.csv,B.csv,runs/main/latency.sqlite --workdir=DIR

See ``experiments/configs/build_zoo.py``, :mod:`experiments.jobs.build_zoo` and
:mod:`predictors.zoo` (``zoo.load(DIR)``). Prints one JSON line (the summary).
Bad input: one line and exit status 2.
"""

from experiments import cli
from experiments.jobs import build_zoo

if __name__ == '__main__':
    cli.launch('build_zoo',
               build_zoo.run,
               show=cli.print_json,
               interrupted='finished members are in the workdir; zoo.json is written last, so '
               'run the same command again')
