"""Vectorized hardware-aware search over OFA sub-networks (evosax-shaped).

``evolve`` (OFA's EvolutionFinder as pure init/ask/tell in one ``lax.scan``),
``random_search`` (baseline), ``make_budget_search`` (all budgets x seeds in
one jitted, vmapped call) and ``pareto_front``. Modules: ``state`` (params,
state, result), ``operators`` (mutation, crossover), ``feasibility``,
``memory`` (hashing of scored sub-networks), ``scoring`` (chunked scoring),
``evolution`` (init/ask/tell/evolve), ``baseline``, ``sweep``, ``constraints``
(constraint combinators) and ``objectives``. The Pareto plot lives in
``experiments.pareto_plot``, so this package does not import matplotlib.
"""

from ofa_jax.search.state import (EvoParams, EvoResult, EvoState, OFA_FINDER_RESOLUTIONS,
                                  make_params)
from ofa_jax.search.evolution import ask, evolve, init, tell
from ofa_jax.search.baseline import RandomParams, random_search
from ofa_jax.search.sweep import BudgetResults, grid, make_budget_search, pareto_front

__all__ = [
    'EvoParams', 'EvoResult', 'EvoState', 'OFA_FINDER_RESOLUTIONS', 'ask', 'evolve', 'init',
    'make_params', 'tell', 'RandomParams', 'random_search', 'BudgetResults', 'grid',
    'make_budget_search', 'pareto_front'
]
