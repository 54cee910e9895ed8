"""Main job (issue-2 version): a random OFA sub-network, extracted and sized.

    python -m experiments.main --workdir=runs/main

Prints the random sub-network's params, MACs and output shape, and the params
of the largest and smallest sub-networks of each width with MACs at 224 and
128; writes ``WORKDIR/summary.json``. All logic is in
:func:`ofa_jax.summary.run`.
"""

import sys

from absl import app
from absl import flags

from ofa_jax import summary

_WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder (summary.json).')
_WIDTH = flags.DEFINE_float('width', 1.2, 'Supernet width multiplier: 1.0 or 1.2.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the architecture, weights and input.')
_DEPTHWISE = flags.DEFINE_string('depthwise', 'auto', "'auto', 'conv' or 'shifted'.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    try:
        summary.run(_WORKDIR.value,
                    width=_WIDTH.value,
                    seed=_SEED.value,
                    depthwise=_DEPTHWISE.value)
    except ValueError as err:
        sys.stderr.write(f'error: {err}\n')
        sys.exit(2)


if __name__ == '__main__':
    app.run(main)
