"""Onboards a new device: a latency predictor from a zoo and a few measurements.

    python -m experiments.onboard --config=experiments/configs/onboard.py \
      --config.device=cpu --config.zoo=DIR --config.shots=20 --workdir=W

Measures the zoo's reference archs and ``shots`` informative sub-networks on
the device (resumable: a rerun measures nothing new), picks an adaptation by
cross-validation on those rows and writes ``W/checkpoint``
(``predictors.checkpoint.load(W/checkpoint)(archs)``) and ``W/report.md``.
See ``experiments/configs/onboard.py`` and :mod:`experiments.jobs.onboard`.
Prints the choice on one line. Bad input: one line and exit status 2.
"""

from experiments import cli
from experiments.jobs import onboard


def _show(out):
    cv = out['chosen_cv']
    print(f'{out["device"]}: {out["chosen"]} cross-validated MAPE {cv["mape"]:.2f}% on '
          f'{out["references"]} references + {out["shots"]} shots; measured {out["measured_now"]} '
          f'now, {out["already_done"]} already; checkpoint {out["checkpoint"]}')


if __name__ == '__main__':
    cli.launch('onboard', onboard.run, show=_show)
