"""The main job: measure, build the LUT, fit predictors, compare, search, verify, report.

    python -m experiments.main --workdir=runs/main

Runs on this host's default JAX device with the embedded defaults of
``experiments/configs/main.py`` (about 12 minutes on 2 CPU cores). First it
builds a random sub-network, extracts it from a random supernet and prints the
sizes of the largest and smallest sub-networks (:mod:`ofa_jax.summary`), then
runs :func:`experiments.jobs.main.run`. Rerunning the same command resumes:
finished measurements and LUT layers are reused. Bad input ends with one line
that says what to change and exit status 2.
"""

import os

from experiments import cli
from experiments import report
from experiments.jobs import main as main_job


def _show(summary):
    report.print_summary(summary)
    print(f'report: {os.path.join(summary["workdir"], "report", "report.md")}')


if __name__ == '__main__':
    cli.launch('main',
               main_job.run,
               show=_show,
               interrupted='every finished measurement is in the store; run the same command '
               'again to resume')
