"""Pareto plot of a latency-budget sweep: found archs, their front and the budgets.

Kept out of the core library (``ofa_jax`` does not import matplotlib): draws a
:class:`ofa_jax.search.BudgetResults` with the front from
:func:`ofa_jax.search.pareto_front`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ofa_jax.search import BudgetResults, pareto_front


def plot_pareto(path: str,
                results: BudgetResults,
                *,
                objective_name: str,
                latency_name: str = 'latency (ms)',
                reference: Optional[dict[float, float]] = None,
                reference_name: str = 'reference') -> None:
    """Writes a PNG: found archs (objective vs latency), the front, the budgets.

    Args:
      path: output PNG path.
      results: a :class:`BudgetResults` (host or device arrays).
      objective_name: y-axis label (e.g. 'predicted top-1' or 'proxy:macs').
      latency_name: x-axis label.
      reference: optional {budget: objective} drawn as crosses (e.g. OFA's).
      reference_name: legend label of ``reference``.
    """
    # Imported here, so that importing this module stays cheap; Agg needs no display.
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    lat = np.asarray(results.latency)
    obj = np.asarray(results.objective)
    ok = np.asarray(results.feasible)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(lat[ok], obj[ok], s=18, label='found (feasible)')
    if ok.any():
        front = pareto_front(lat[ok], obj[ok])
        order = np.argsort(lat[ok][front])
        ax.plot(lat[ok][front][order], obj[ok][front][order], 'k-', lw=1, label='Pareto front')
    for b in np.unique(np.asarray(results.budget)):
        ax.axvline(float(b), color='0.85', lw=0.8, zorder=0)
    if reference:
        ax.scatter(list(reference),
                   list(reference.values()),
                   marker='x',
                   color='r',
                   label=reference_name)
    ax.set_xlabel(latency_name)
    ax.set_ylabel(objective_name)
    ax.legend(loc='lower right', fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
