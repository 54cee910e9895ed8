"""Vectorized hardware-aware search over OFA sub-networks (evosax-shaped).

``evolve`` (OFA's EvolutionFinder as pure init/ask/tell in one ``lax.scan``),
``random_search`` (baseline), ``make_budget_search`` (all budgets x seeds in
one jitted, vmapped call), constraint combinators and Pareto helpers.
"""

from ofa_jax.search.evolution import (EvoParams, EvoResult, EvoState, OFA_FINDER_RESOLUTIONS, ask,
                                      evolve, init, make_params, tell)
from ofa_jax.search.baseline import RandomParams, random_search
from ofa_jax.search.sweep import BudgetResults, grid, make_budget_search, pareto_front, plot_pareto

__all__ = [
    'EvoParams', 'EvoResult', 'EvoState', 'OFA_FINDER_RESOLUTIONS', 'ask', 'evolve', 'init',
    'make_params', 'tell', 'RandomParams', 'random_search', 'BudgetResults', 'grid',
    'make_budget_search', 'pareto_front', 'plot_pareto'
]
