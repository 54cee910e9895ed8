"""Library side of ``experiments/search.py``: search every budget x seed, write results.

``run(config, workdir)`` loads a latency estimator (a predictor checkpoint
folder, or OFA-format yaml LUTs, which also fix the resolutions searched) and
an optional accuracy source (OFA's ``acc_predictor.pth`` or our own accuracy
checkpoint; without one the objective is the labelled proxy
``'proxy:macs_millions'``), runs all budgets x seeds in one compiled, vmapped
call and writes ``workdir/search.json``::

    {"search_seconds": <wall time of the compiled call>,
     "results": [{"budget_ms", "seed", "latency_ms", "objective",
                  "objective_name", "feasible", "latency_evaluations",
                  "objective_evaluations", "arch": <OFA dict>}, ...],
     "best": [<the result of highest objective per budget, over the seeds>, ...]}

plus ``workdir/pareto.png``; with ``verify`` it also measures every found arch
on this device and reports measured latency against the budget.
Bad configuration raises :class:`ConfigError` naming the field.
"""

from __future__ import annotations

import glob
import json
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from ofa_jax import errors
from ofa_jax import space
from ofa_jax.search import constraints, evolution, objectives, sweep

ConfigError = errors.ConfigError


def parse_floats(field: str, text: Any) -> list[float]:
    """Parses positive finite numbers from ``'15,20'``, a number or a sequence."""
    try:
        if isinstance(text, str):
            values = [float(t) for t in text.replace(' ', '').split(',') if t]
        elif isinstance(text, (int, float)):
            values = [float(text)]
        else:
            values = [float(t) for t in text]
    except (TypeError, ValueError):
        raise ConfigError(f'{field}: {text!r} is not a comma separated list of numbers, '
                          'e.g. --config.budgets_ms=15,20,25') from None
    if not values or any(not np.isfinite(v) or v <= 0 for v in values):
        raise ConfigError(f'{field}: {text!r} must list positive numbers, e.g. 15,20,25')
    return values


def load_latency(path: str,
                 resolutions: str = '') -> tuple[Callable[[space.Arch], Any], tuple[int, ...], str]:
    """Latency estimator from a predictor checkpoint folder or OFA yaml LUT(s).

    Returns:
      (latency_fn, resolutions searched, description).
    """
    wanted = space.parse_resolutions(resolutions) if resolutions else None
    if not path:
        raise ConfigError('latency: empty; give a predictor checkpoint folder or a folder of '
                          'OFA {r}_lookup_table.yaml files (--config.latency=PATH)')
    if not os.path.exists(path):
        raise ConfigError(f'latency: {path} does not exist; give a predictor checkpoint folder '
                          'or a folder of OFA {r}_lookup_table.yaml files')
    if os.path.isdir(path) and os.path.exists(os.path.join(path, 'predictor.json')):
        from predictors import checkpoint
        predictor = checkpoint.load(path)
        res = wanted or evolution.OFA_FINDER_RESOLUTIONS
        return predictor, tuple(res), f'predictor checkpoint {path}'
    is_lut = (os.path.isfile(path) and path.endswith(
        ('.yaml', '.yml'))) or (os.path.isdir(path) and
                                glob.glob(os.path.join(path, '*_lookup_table.y*ml')))
    if not is_lut:
        raise ConfigError(f'latency: {path} is neither a predictor checkpoint folder '
                          '(predictor.json) nor OFA yaml lookup tables ({r}_lookup_table.yaml)')
    from predictors import lut
    try:
        table = lut.load_lut(path, resolutions=wanted)
    except KeyError as err:
        raise ConfigError(f'resolutions: {err.args[0]}; pick resolutions the LUT covers') from None
    return table.predict, tuple(table.resolutions), f'OFA LUT {path}'


def load_objective(path: str, width: float) -> objectives.Objective:
    """Accuracy predictor (OFA .pth or our checkpoint), or the MACs proxy when empty."""
    if not path:
        return objectives.macs_proxy(width)
    from predictors import accuracy
    try:
        return objectives.accuracy_objective(accuracy.load_any(path))
    except FileNotFoundError as err:
        raise ConfigError(f'accuracy: {err}; give OFA acc_predictor.pth or a folder saved by '
                          'predictors.accuracy.save, or leave empty for the MACs proxy') from None


def _one(arch: space.Arch) -> space.Arch:
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[None], arch)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs the search described by ``config``; writes search.json and pareto.png.

    Returns:
      The ``search.json`` content (plus ``compile_seconds``).
    """
    budgets = parse_floats('budgets_ms', config.budgets_ms)
    if int(config.seeds) < 1:
        raise ConfigError(f'seeds: {config.seeds} must be >= 1 (number of seeds per budget)')
    latency_fn, resolutions, latency_desc = load_latency(config.latency, config.resolutions)
    objective = load_objective(config.accuracy, config.width)

    smallest = float(np.asarray(latency_fn(_one(space.smallest(min(resolutions)))))[0])
    low = [b for b in budgets if b < smallest]
    if low:
        raise ConfigError(f'budgets_ms: {low} below the smallest sub-network\'s latency '
                          f'{smallest:.3f} ms under {latency_desc} (resolution '
                          f'{min(resolutions)}); use budgets >= {smallest:.3f}')
    extra = constraints.all_of(
        constraints.macs_at_most(config.max_macs, width=config.width) if config.max_macs else None,
        constraints.params_at_most(config.max_params, width=config.width)
        if config.max_params else None)
    try:
        params = evolution.make_params(resolutions=resolutions,
                                       population_size=int(config.population_size),
                                       num_generations=int(config.num_generations),
                                       mutate_prob=float(config.mutate_prob),
                                       parent_ratio=float(config.parent_ratio),
                                       mutation_ratio=float(config.mutation_ratio),
                                       max_tries=int(config.max_tries),
                                       candidate_ratio=float(config.get('candidate_ratio', 1.25)),
                                       prng_impl=str(config.get('prng_impl', 'threefry2x32')),
                                       objective_first=bool(config.get('objective_first', False)))
    except ValueError as err:
        raise ConfigError(str(err)) from None

    search = sweep.make_budget_search(params, objective, latency_fn, extra_constraint=extra)
    seeds, flat = sweep.grid(
        budgets, range(int(config.seed_offset),
                       int(config.seed_offset) + int(config.seeds)))
    t0 = time.perf_counter()
    compiled = search.lower(seeds, flat).compile()
    t1 = time.perf_counter()
    res = jax.block_until_ready(compiled(seeds, flat))
    t2 = time.perf_counter()
    res = jax.device_get(res)

    results = []
    for i, arch in enumerate(space.unstack(res.arch)):
        results.append({
            'budget_ms': float(res.budget[i]),
            'seed': int(res.seed[i]),
            'latency_ms': float(res.latency[i]),
            'objective': float(res.objective[i]),
            'objective_name': objective.name,
            'feasible': bool(res.feasible[i]),
            'latency_evaluations': int(res.evaluations[i, 0]),
            'objective_evaluations': int(res.evaluations[i, 1]),
            'arch': space.to_ofa_dict(arch),
        })
    if config.verify:
        _verify(results, config)

    os.makedirs(workdir, exist_ok=True)
    out = {
        'search_seconds': t2 - t1,
        'compile_seconds': t1 - t0,
        'latency': latency_desc,
        'objective_name': objective.name,
        'resolutions': list(resolutions),
        'population_size': params.population_size,
        'num_generations': params.num_generations,
        'results': results,
        'best': best_per_budget(results),
    }
    with open(os.path.join(workdir, 'search.json'), 'w') as f:
        json.dump(out, f, indent=1)
    sweep.plot_pareto(os.path.join(workdir, 'pareto.png'),
                      res,
                      objective_name=objective.name,
                      latency_name=f'predicted latency (ms), {latency_desc}')
    _print_table(out)
    return out


def best_per_budget(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per budget (ascending), the feasible result of highest objective over the seeds.

    One search costs a fraction of a second, so searching several seeds in
    the same call and keeping the best is the cheap way to a better arch.
    Budgets where no seed found a feasible arch are left out.
    """
    best: dict[float, dict[str, Any]] = {}
    for r in results:
        b = r['budget_ms']
        if r['feasible'] and (b not in best or r['objective'] > best[b]['objective']):
            best[b] = r
    return [best[b] for b in sorted(best)]


def _verify(results: list[dict[str, Any]], config: ml_collections.ConfigDict) -> None:
    """Measures every found arch on this device (ofa_jax.latency.measure).

    With ``config.verify_store`` the measurement uses the paired protocol with
    that store's gauge baseline, i.e. the scale of the measurements a
    predictor from that store was trained on; otherwise it is a plain
    (unpaired) measurement.
    """
    from ofa_jax import depthwise as dw
    from ofa_jax.latency import campaign
    from ofa_jax.latency import fingerprint as fp_lib
    from ofa_jax.latency import measure
    from ofa_jax.latency import store as store_lib
    batch = int(config.verify_batch)
    protocol, gauge = measure.Protocol(), None
    if config.get('verify_store', ''):
        try:
            store = store_lib.LatencyStore(config.verify_store)
        except store_lib.StoreError as err:
            raise ConfigError(f'config.verify_store: {err}') from None
        device = fp_lib.resolve_device(None)
        fp = fp_lib.fingerprint(device, microbenchmarks=False)
        with store:
            store.add_device(fp)
            gauge = campaign.open_gauge(store,
                                        fp['fingerprint_id'],
                                        batch=batch,
                                        dtype='float32',
                                        device=device,
                                        width=float(config.width),
                                        num_classes=1000,
                                        depthwise=dw.default_depthwise(device.platform))
        protocol = measure.Protocol(paired=True)
    for row in results:
        arch = space.from_ofa_dict(row['arch'])
        m = measure.measure_latency(arch,
                                    batch=batch,
                                    protocol=protocol,
                                    width=config.width,
                                    gauge=gauge)
        row['measured_ms'] = float(m.latency_ms)
        row['measured_over_budget'] = float(m.latency_ms) / row['budget_ms']
        row['measured_protocol'] = 'paired' if gauge is not None else 'plain'


def _print_table(out: dict[str, Any]) -> None:
    name = out['objective_name']
    if name.startswith(objectives.PROXY_PREFIX):
        print(f'NOTE: no accuracy source given; objective is the proxy {name!r}, not accuracy.')
    verify = any('measured_ms' in r for r in out['results'])
    head = f'{"budget_ms":>9} {"seed":>4} {"pred_ms":>8} {name:>20} {"ok":>3}'
    print(head + (f' {"measured_ms":>11}' if verify else '') + '  arch')
    for r in out['results']:
        a = r['arch']
        line = (f'{r["budget_ms"]:9.2f} {r["seed"]:4d} {r["latency_ms"]:8.3f} '
                f'{r["objective"]:20.4f} {"yes" if r["feasible"] else "NO":>3}')
        if verify:
            line += f' {r.get("measured_ms", float("nan")):11.3f}'
        print(line + f'  r={a["r"][0]} d={"".join(map(str, a["d"]))} '
              f'k={"".join(map(str, a["ks"]))} e={"".join(map(str, a["e"]))}')
    seeds = len({r['seed'] for r in out['results']})
    if seeds > 1:
        print(f'best of {seeds} seeds per budget: ' +
              ', '.join(f'{r["budget_ms"]:.2f} ms: {r["objective"]:.4f} (seed {r["seed"]})'
                        for r in out['best']))
    print(f'search_seconds={out["search_seconds"]:.3f} (compile {out["compile_seconds"]:.1f} s, '
          f'{len(out["results"])} searches in one call)')
