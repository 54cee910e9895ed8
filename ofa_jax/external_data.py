"""Where the public latency data of other groups is read from.

That data (OFA's Note10 lookup tables and accuracy predictor, the 2101.00732
CSVs, HELP's GPU latencies) is never copied into the repository. Tests that
need it skip when it is absent; benchmarks print a SKIP line.

The folder is ``$OFA_JAX_EXTERNAL_DATA`` when set, else ``shared/data/external``
beside the repository checkout (``../shared/data/external`` from its root).
"""

from __future__ import annotations

import os

ENV_VAR = 'OFA_JAX_EXTERNAL_DATA'
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def root() -> str:
    """The external-data folder (it may not exist)."""
    return os.environ.get(ENV_VAR) or os.path.join(os.path.dirname(_REPO), 'shared', 'data',
                                                   'external')


def path(*parts: str) -> str:
    """A path under :func:`root` (``path('ofa_note10_lut')``)."""
    return os.path.join(root(), *parts)
