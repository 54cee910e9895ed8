"""Merges latency stores (shards of a campaign, hosts of a fleet) into one store.

    python -m experiments.merge_stores --config.inputs=A.sqlite,B.sqlite \
      --config.out=C.sqlite --workdir=DIR

See ``experiments/configs/merge_stores.py`` for the fields and
:mod:`experiments.jobs.merge_stores` for what it does. Prints one JSON line
(the summary: rows added, duplicates skipped per input). A protocol or
fingerprint conflict, or any other bad input: one line and exit status 2,
with the output store left unchanged.
"""

from experiments import cli
from experiments.jobs import merge_stores

if __name__ == '__main__':
    cli.launch('merge_stores',
               merge_stores.run,
               show=cli.print_json,
               interrupted='a merge commits each input store whole; run the same command '
               'again to finish it')
