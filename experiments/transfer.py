"""Adapts latency predictors trained on source devices to a target device with k shots.

    python -m experiments.transfer --config.sources=A.csv,B.csv --config.target=C.csv \
      --config.shots=0,10,20,50,100 --config.seeds=5 \
      --config.devices=A.csv:2080ti,B.csv:titan_rtx,C.csv:titan_xp --workdir=DIR

See ``experiments/configs/transfer.py`` and :mod:`experiments.jobs.transfer`.
Bad input: one line and exit status 2.
"""

from experiments import cli
from experiments.jobs import transfer


def _show(out):
    lines = transfer.table_lines(out)
    if lines:  # Strategies beside the proxy-fit baseline on the same rows.
        print('\n'.join(lines))
    for strat, by_k in out['metrics'].items():
        print(
            strat, ' '.join(
                f'k={k}: MAPE {m["mape"]:.2f}% acc10 {m["acc10"]:.3f}' for k, m in by_k.items()))
    for strat, by_k in out['calibration'].items():
        k = max(by_k, key=int)
        print(f'{strat} weights at k={k}:',
              ', '.join(f'{name} {w:.2f}' for name, w in by_k[k].items()))


if __name__ == '__main__':
    cli.launch('transfer',
               transfer.run,
               show=_show,
               interrupted='nothing was saved; run the same command again')
