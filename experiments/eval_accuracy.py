"""Builds an (arch, top-1 accuracy) dataset with the masked supernet on every device.

    python -m experiments.eval_accuracy --workdir=DIR [--config.num_archs=1000 ...]

See ``experiments/configs/eval_accuracy.py`` for the fields and
:mod:`experiments.jobs.eval_accuracy` for what it does. Prints one JSON line
(the summary). Bad input: one line and exit status 2. Multi-host: the same
command on every host with ``--config.distributed=True``.
"""

from experiments import cli
from experiments.jobs import eval_accuracy

if __name__ == '__main__':
    cli.launch('eval_accuracy',
               eval_accuracy.run,
               show=cli.print_json,
               interrupted='every evaluated arch is in the store; run the same command again '
               'to resume')
