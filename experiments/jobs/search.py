"""The search job (``experiments/search.py``): search every budget x seed, write results.

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
on ``config.device`` through :func:`ofa_jax.latency.gauges.measure_archs` (the
one verification path; the main job uses it too) and reports measured
latency against the budget. Bad configuration raises :class:`ConfigError`
naming the field.
"""

from __future__ import annotations

import contextlib
import glob
import os
import time
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np

from experiments import config_fields as cf
from experiments import pareto_plot
from ofa_jax import accuracy_data
from ofa_jax import export as export_lib
from ofa_jax import files
from ofa_jax import ofa_weights
from ofa_jax import search as search_lib
from ofa_jax import space
from ofa_jax.latency import fingerprint as fp_lib
from ofa_jax.latency import gauges
from ofa_jax.latency import measure
from ofa_jax.latency import store as store_lib
from ofa_jax.search import constraints, objectives
from predictors import accuracy
from predictors import checkpoint
from predictors import conformal
from predictors import lut
from predictors import transfer

ConfigError = cf.ConfigError

LatencyFn = Callable[[space.Arch], Any]
UNCERTAINTY = ('auto', 'conformal', 'none')
UNREACHABLE = ('error', 'drop')


def load_latency(path: str,
                 resolutions: Any = (),
                 num_classes: int = 1000) -> tuple[LatencyFn, tuple[int, ...], str]:
    """Latency estimator from a predictor checkpoint folder or OFA yaml LUT(s).

    Returns:
      (latency_fn, resolutions searched, description).
    """
    wanted = cf.resolutions(resolutions) if cf.items(resolutions) else None
    if not path:
        raise ConfigError('config.latency: empty; give a predictor checkpoint folder or a '
                          'folder of OFA {r}_lookup_table.yaml files (--config.latency=PATH)')
    if not os.path.exists(path):
        raise ConfigError(f'config.latency: {path} does not exist; give a predictor checkpoint '
                          'folder or a folder of OFA {r}_lookup_table.yaml files')
    if os.path.isdir(path) and os.path.exists(os.path.join(path, 'predictor.json')):
        try:
            predictor = checkpoint.load(path)
        except ValueError as err:
            raise ConfigError(f'config.latency: {err}') from None
        res = wanted or search_lib.OFA_FINDER_RESOLUTIONS
        return predictor, tuple(res), f'predictor checkpoint {path}'
    is_lut = (os.path.isfile(path) and path.endswith(
        ('.yaml', '.yml'))) or (os.path.isdir(path) and
                                glob.glob(os.path.join(path, '*_lookup_table.y*ml')))
    if not is_lut:
        raise ConfigError(f'config.latency: {path} is neither a predictor checkpoint folder '
                          '(predictor.json) nor OFA yaml lookup tables ({r}_lookup_table.yaml)')
    try:
        table = lut.load_lut(path, resolutions=wanted, num_classes=int(num_classes))
    except KeyError as err:
        raise ConfigError(f'config.resolutions: {err.args[0]}; pick resolutions the LUT '
                          'covers') from None
    except ValueError as err:
        raise ConfigError(f'config.latency: {err}') from None
    return table, tuple(table.resolutions), f'OFA LUT {path}'


def load_objective(path: str, width: float) -> objectives.Objective:
    """Accuracy predictor (OFA .pth or our checkpoint), or the MACs proxy when empty."""
    if not path:
        return objectives.macs_proxy(width)
    try:
        return objectives.accuracy_objective(accuracy.load_any(path))
    except FileNotFoundError as err:
        raise ConfigError(
            f'config.accuracy: {err}; give OFA acc_predictor.pth or a folder saved '
            'by predictors.accuracy.save, or leave empty for the MACs proxy') from None
    except ValueError as err:
        raise ConfigError(f'config.accuracy: {err}') from None


def check(config: ml_collections.ConfigDict, workdir: str = '') -> None:
    """Every check that needs neither a device nor an estimator (ConfigError naming the field).

    With ``workdir``, also that the export folders there are new or ours.
    """
    cf.float_tuple('budgets_ms', config.budgets_ms)
    cf.one_int('seeds', config.seeds)
    cf.one_int('seed_offset', config.seed_offset, minimum=0)
    cf.width(config.width)
    cf.number('max_macs', config.max_macs, low=0.0)
    cf.number('max_params', config.max_params, low=0.0)
    cf.one_int('population_size', config.population_size, minimum=2)
    cf.one_int('num_generations', config.num_generations)
    for name in ('parent_ratio', 'mutation_ratio', 'mutate_prob'):
        cf.number(name, config[name], low=0.0, high=1.0)
    cf.number('candidate_ratio', config.candidate_ratio, low=0.0)
    cf.one_int('max_tries', config.max_tries, minimum=0)
    cf.choice('uncertainty', config.uncertainty, UNCERTAINTY)
    cf.choice('unreachable', config.unreachable, UNREACHABLE)
    try:
        conformal.check_coverage(config.coverage, 'config.coverage')
    except ValueError as err:
        raise ConfigError(str(err)) from None
    cf.one_int('max_rounds', config.max_rounds, minimum=0)
    if config.export and workdir:
        for budget in cf.float_tuple('budgets_ms', config.budgets_ms):
            try:
                export_lib.check_folder(found_dir(workdir, budget), 'config.export')
            except export_lib.ExportError as err:
                raise ConfigError(str(err)) from None
        if config.calib_dataset:
            cf.one_int('calib_batches', config.calib_batches)
            cf.one_int('calib_batch_size', config.calib_batch_size)
        if config.supernet and not os.path.isfile(config.supernet):
            raise ConfigError(f'config.supernet: {config.supernet} is not a file; allowed: OFA\'s '
                              'ofa_mbv3_d234_e346_k357_w1.2 (.pth) or \'\' for random weights')
    cf.number('loop_margin', config.loop_margin, low=0.0, high=0.5)
    if config.loop_refit:
        cf.one_int('refit_steps', config.refit_steps)
        cf.one_int('refit_min_rows', config.refit_min_rows)
        cf.number('refit_lr', config.refit_lr, low=0.0, low_open=True)
        cf.number('refit_anchor', config.refit_anchor, low=0.0)
    if config.verify:
        cf.one_int('verify_batch', config.verify_batch)
        cf.dtype(config.dtype)
        cf.one_int('num_classes', config.num_classes)
        cf.choice('depthwise', config.depthwise, ('auto', 'conv', 'shifted'))
        cf.protocol(config.protocol)


def found_dir(workdir: str, budget_ms: float) -> str:
    """``workdir/found/<budget>ms``: the deployable folder of one budget's pick."""
    return os.path.join(workdir, 'found', f'{float(budget_ms):g}ms')


def export_found(best: list[dict[str, Any]], config: ml_collections.ConfigDict,
                 workdir: str) -> list[dict[str, Any]]:
    """Writes ``found/<budget>ms/`` (:func:`ofa_jax.export.export_subnet`) for each pick.

    Weights come from ``config.supernet`` (OFA's .pth) when given, else they
    are random with BatchNorm statistics of random images, and labelled so.
    The folder records the pick's measured latency and protocol when the
    search verified it.
    """
    supernet = None
    source = calibration_source(config)
    calibration: dict[int, list[np.ndarray]] = {}
    if config.supernet:
        try:
            _, supernet = ofa_weights.load_pth(config.supernet, float(config.width))
        except (OSError, ValueError) as err:
            raise ConfigError(f'config.supernet: {err}') from None
    device = cf.device(config.device)
    depthwise = cf.depthwise(config.depthwise, device)
    out = []
    for row in best:
        arch = space.from_ofa_dict(row['arch'])
        measured = {}
        if 'measured_ms' in row:
            measured = {
                'latency_ms': row['measured_ms'],
                'within_budget': row.get('within_budget'),
                'protocol': row.get('measured_protocol'),
                'device': str(device),
                'batch': int(config.verify_batch),
                'dtype': str(config.dtype),
            }
        folder = found_dir(workdir, row['budget_ms'])
        if source is not None:
            r = int(arch.resolution)
            if r not in calibration:  # Picks share resolutions: read each set once.
                calibration[r] = calibration_images(source, config, r)
            images = calibration[r]
        elif supernet is None:
            images = export_lib.random_images(int(arch.resolution))
        else:
            images = None
        meta = export_lib.export_subnet(arch,
                                        folder,
                                        width=float(config.width),
                                        num_classes=int(config.num_classes),
                                        depthwise=depthwise,
                                        dtype=str(config.dtype),
                                        supernet_variables=supernet,
                                        calibration_images=images,
                                        measured=dict(measured, budget_ms=row['budget_ms']),
                                        weights_in_program=bool(config.export_weights_in_program))
        out.append({'budget_ms': row['budget_ms'], 'folder': folder, 'weights': meta['weights']})
        row['export'] = folder
    return out


def calibration_source(config: ml_collections.ConfigDict) -> Any:
    """``config.calib_dataset``'s random-access split, or None when not set."""
    if not config.calib_dataset:
        return None
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    kwargs = {'data_dir': str(config.calib_data_dir)} if config.calib_data_dir else {}
    try:
        return tfds.data_source(str(config.calib_dataset), split=str(config.calib_split), **kwargs)
    except Exception as err:  # tfds raises many types for a missing dataset.
        raise ConfigError(f'config.calib_dataset: {config.calib_dataset!r} '
                          f'(split {config.calib_split!r}): {err}') from None


def calibration_images(source: Any, config: ml_collections.ConfigDict,
                       resolution: int) -> list[np.ndarray]:
    """The BatchNorm re-calibration batches at ``resolution`` (the same examples for every pick)."""
    batch = int(config.calib_batch_size)
    idx = accuracy_data.calibration_indices(len(source), int(config.calib_batches), batch, seed=0)
    return [x for x, _ in accuracy_data.batches(source, idx, resolution, batch)]


def _one(arch: space.Arch) -> space.Arch:
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[None], arch)


def load_calibration(config: ml_collections.ConfigDict,
                     latency_fn: LatencyFn) -> conformal.Calibration | None:
    """The conformal calibration the search bounds latency with, or None (point estimate).

    ``uncertainty='none'``: None. ``'conformal'``: ``config.calibration``, or
    the predictor checkpoint's own ``conformal.json``; ConfigError when
    neither exists or it has too few rows for ``config.coverage``. ``'auto'``:
    as ``'conformal'`` when a usable calibration exists, else None (with a
    printed note).
    """
    mode = cf.choice('uncertainty', config.uncertainty, UNCERTAINTY)
    try:
        coverage = conformal.check_coverage(config.coverage, 'config.coverage')
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if mode == 'none':
        return None
    cal = getattr(latency_fn, 'calibration', None)
    if config.calibration:
        try:
            cal = conformal.load(config.calibration)
        except (OSError, ValueError) as err:
            raise ConfigError(f'config.calibration: {err}') from None
    if cal is None:
        if mode == 'auto':
            return None
        raise ConfigError(f'config.calibration: none for {config.latency!r} (no conformal.json '
                          'in the checkpoint); allowed: a conformal.json written by '
                          'experiments.fit_predictor, or --config.uncertainty=none')
    try:
        cal.check_usable(coverage, 'config.coverage')
    except ValueError as err:
        if mode == 'auto':  # Too few held-out rows to bound: say so, search the estimate.
            print(f'NOTE: uncertainty=auto falls back to the point estimate: {err}')
            return None
        raise ConfigError(str(err)) from None
    return cal


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs the search described by ``config``; writes search.json and pareto.png.

    Returns:
      The ``search.json`` content (plus ``compile_seconds``).
    """
    check(config, workdir)
    budgets = list(cf.float_tuple('budgets_ms', config.budgets_ms))
    latency_fn, resolutions, latency_desc = load_latency(config.latency, config.resolutions,
                                                         config.num_classes)
    cal = load_calibration(config, latency_fn)
    coverage = float(config.coverage)
    # The search's constraint: the calibrated upper bound, or the point estimate.
    spread_fn = None
    if cal is not None and cal.normalized:
        spread_fn = getattr(latency_fn, 'log_spread', None)
        if spread_fn is None:
            raise ConfigError(f'config.calibration: normalised by an ensemble\'s spread, but '
                              f'{latency_desc} is not an ensemble predictor')
    bound_fn = cal.bound_fn(latency_fn, coverage, spread_fn) if cal is not None else latency_fn
    bound_desc = (f'{coverage:g}-coverage conformal bound of {latency_desc}'
                  if cal is not None else latency_desc)
    objective = load_objective(config.accuracy, config.width)
    closed_loop = bool(config.verify and config.closed_loop)

    smallest = float(np.asarray(bound_fn(_one(space.smallest(min(resolutions)))))[0])
    low = [b for b in budgets if b < smallest]
    requested = list(budgets)
    if low and config.unreachable == 'drop' and len(low) < len(budgets):
        print(f'NOTE: budgets {low} ms dropped from the search: below the smallest '
              f'sub-network\'s latency {smallest:.3f} ms under {bound_desc}' +
              ('; a sub-network already measured within one is still returned'
               if config.verify and config.verify_store and config.store_candidates else ''))
        budgets = [b for b in budgets if b >= smallest]
    elif low:
        raise ConfigError(f'config.budgets_ms: {low} below the smallest sub-network\'s latency '
                          f'{smallest:.3f} ms under {bound_desc} (resolution '
                          f'{min(resolutions)}); use budgets >= {smallest:.3f}')
    extra = constraints.all_of(
        constraints.macs_at_most(config.max_macs, width=config.width) if config.max_macs else None,
        constraints.params_at_most(config.max_params, width=config.width)
        if config.max_params else None)
    try:
        params = search_lib.make_params(resolutions=resolutions,
                                        population_size=int(config.population_size),
                                        num_generations=int(config.num_generations),
                                        mutate_prob=float(config.mutate_prob),
                                        parent_ratio=float(config.parent_ratio),
                                        mutation_ratio=float(config.mutation_ratio),
                                        max_tries=int(config.max_tries),
                                        candidate_ratio=float(config.candidate_ratio),
                                        prng_impl=str(config.prng_impl),
                                        objective_first=bool(config.objective_first))
    except ValueError as err:
        raise ConfigError(f'config.{err}') from None

    seeds, flat = search_lib.grid(
        budgets, range(int(config.seed_offset),
                       int(config.seed_offset) + int(config.seeds)))

    def compile_search(lat_fn: LatencyFn, calibration: conformal.Calibration | None = cal) -> Any:
        """The budgets x seeds search under ``lat_fn``'s bound, compiled once."""
        constraint = (calibration.bound_fn(lat_fn, coverage, spread_fn)
                      if calibration is not None else lat_fn)
        search = search_lib.make_budget_search(params,
                                               objective,
                                               constraint,
                                               extra_constraint=extra)
        return search.lower(seeds, flat).compile()

    t0 = time.perf_counter()
    compiled = compile_search(latency_fn)
    t1 = time.perf_counter()
    res = jax.block_until_ready(compiled(seeds, flat))
    t2 = time.perf_counter()
    res = jax.device_get(res)
    results = _rows(res, objective.name, latency_fn, bound=cal is not None)
    for row in results:
        row['round'] = 0
    uncorrected = None
    if cal is not None and config.compare_uncorrected:
        # The same search on the point estimate: what the bound costs in objective.
        plain = search_lib.make_budget_search(params, objective, latency_fn, extra_constraint=extra)
        uncorrected = _rows(jax.device_get(jax.jit(plain)(seeds, flat)),
                            objective.name,
                            latency_fn,
                            bound=False)
    rounds = []
    candidates: list[dict[str, Any]] = []
    if config.verify:
        # The point estimate's picks are candidates too: often one of them
        # measures within budget and scores higher than the bound's. Measured
        # in the same batch, each distinct arch once.
        if closed_loop and uncorrected is not None and config.measure_point_picks:
            candidates = _distinct_new(uncorrected, results)
        archs = [space.from_ofa_dict(r['arch']) for r in results + candidates]
        for row, ms in zip(results + candidates, measure_rows(archs, config)):
            _mark_measured(row, ms, config)
        measured = {}
        for row in candidates:
            row.update(round=0, source='point estimate')
            measured[(row['budget_ms'], row['seed'])] = row
        for row in uncorrected or []:  # What the point estimate's picks measured.
            m = measured.get((row['budget_ms'], row['seed']))
            if m is not None and m['arch'] == row['arch']:
                for k in ('measured_ms', 'measured_over_budget', 'within_budget'):
                    row[k] = m[k]
        rounds.append(_round_summary(0, results, flat))
    stored: list[dict[str, Any]] = []
    if config.verify and config.verify_store and config.store_candidates:
        # Every requested budget: one the bound put below the smallest
        # sub-network may still hold a row that measured within it.
        stored = store_candidates(config, requested, objective, latency_fn, resolutions, extra)

    def refit(rows: list[dict[str, Any]]) -> tuple[Any, LatencyFn, dict[str, Any]] | None:
        archs, ms = refit_rows(rows, config)
        if isinstance(latency_fn, lut.LookupTable):
            # Only the rows at resolutions the table covers have a sum to map.
            archs, ms = lut_rows(latency_fn, archs, ms)
        if len(ms) < int(config.refit_min_rows):
            print(f'NOTE: no refit: {len(ms)} measured rows, fewer than '
                  f'config.refit_min_rows={config.refit_min_rows}; the constraint is tightened')
            return None
        if isinstance(latency_fn, lut.LookupTable):
            tuned, oof, info = refit_lut(latency_fn, archs, ms)
            bound_cal = cal
            if cal is not None:
                # The table's calibration measured the raw sums' misses (17% on
                # q25's rows): kept, it put the recalibrated table's picks at
                # 80% of the budget. Recalibrated from these rows'
                # cross-validated predictions instead.
                bound_cal = conformal.fit(oof,
                                          ms,
                                          estimator=f'{latency_desc}, recalibrated',
                                          rows=f'{LUT_REFIT_FOLDS}-fold cross-validated '
                                          'predictions of the rows it was recalibrated on')
                try:
                    bound_cal.check_usable(coverage)
                    info['bound_over_estimate'] = float(bound_cal.factors(coverage).max())
                except ValueError:  # Too few rows for this coverage: the table's bound.
                    bound_cal = cal
            os.makedirs(workdir, exist_ok=True)
            info['recalibration'] = os.path.join(workdir, 'refitted_lut.json')
            files.write_json(
                info['recalibration'], {
                    'lut': str(config.latency),
                    'form': 'exp(offset) * lut_ms ** scale',
                    'scale': tuned.scale,
                    'offset': tuned.offset,
                    'rows': int(len(ms))
                })
            return compile_search(tuned, bound_cal), tuned, info
        tuned, info = refit_predictor(latency_fn, archs, ms, config)
        # Kept: a user can search with it again (it knows this device better).
        # Without the calibration: its held-out rows are now training rows.
        info['checkpoint'] = checkpoint.save(
            tuned.replace(calibration=None,
                          meta=dict(tuned.meta,
                                    refit={
                                        'from': str(config.latency),
                                        'rows': int(len(ms))
                                    })), os.path.join(workdir, 'refitted_predictor'))
        return compile_search(tuned), tuned, info

    if closed_loop:
        results, more = _close_loop(compiled,
                                    seeds,
                                    flat,
                                    results,
                                    objective.name,
                                    latency_fn,
                                    cal is not None,
                                    config,
                                    refit=refit if refits(config, latency_fn) else None,
                                    measured_rows=candidates + stored)
        rounds += more

    os.makedirs(workdir, exist_ok=True)
    out = {
        'search_seconds': t2 - t1,
        'compile_seconds': t1 - t0,
        'latency': latency_desc,
        'constraint': bound_desc,
        'coverage': coverage if cal is not None else None,
        'calibration_rows': cal.num_rows if cal is not None else 0,
        'closed_loop': closed_loop,
        'rounds': rounds,
        'smallest_ms': smallest,
        'dropped_budgets': low,  # non-empty only with unreachable='drop'
        'objective_name': objective.name,
        'resolutions': list(resolutions),
        'population_size': params.population_size,
        'num_generations': params.num_generations,
        'results': results,
        'point_candidates': candidates,
        # A point-estimate pick counts only where it measured within budget.
        'store_candidates': stored,
        'best': best_per_budget(results + [c for c in candidates if c['within_budget']] + stored),
    }
    if config.export:
        out['found'] = export_found(out['best'], config, workdir)
    if uncorrected is not None:
        out['uncorrected'] = uncorrected
        out['uncorrected_best'] = best_per_budget(uncorrected, require_within=False)
    if cal is None and config.uncertainty == 'auto':
        print(f'NOTE: no calibration for {config.latency}; searching on the point estimate, '
              'whose picks tend to measure over budget (see docs/search.md).')
    files.write_json(os.path.join(workdir, 'search.json'), out)
    pareto_plot.plot_pareto(os.path.join(workdir, 'pareto.png'),
                            res,
                            objective_name=objective.name,
                            latency_name=f'latency constraint (ms): {bound_desc}')
    _print_table(out)
    return out


def _rows(res: Any, objective_name: str, latency_fn: LatencyFn, *,
          bound: bool) -> list[dict[str, Any]]:
    """One JSON row per search of a ``BudgetResults`` (host arrays)."""
    archs = res.arch
    point = np.asarray(latency_fn(archs), np.float64) if bound else np.asarray(res.latency)
    rows = []
    for i, arch in enumerate(space.unstack(archs)):
        row = {
            'budget_ms': float(res.budget[i]),
            'seed': int(res.seed[i]),
            'latency_ms': float(point[i]),
            'objective': float(res.objective[i]),
            'objective_name': objective_name,
            'feasible': bool(res.feasible[i]),
            'latency_evaluations': int(res.evaluations[i, 0]),
            'objective_evaluations': int(res.evaluations[i, 1]),
            'arch': space.to_ofa_dict(arch),
        }
        if bound:
            row['bound_ms'] = float(res.latency[i])
        rows.append(row)
    return rows


def _verify_net(config: ml_collections.ConfigDict) -> tuple[Any, dict[str, Any]]:
    """The verification's device and network key fields (batch, dtype, width, ...)."""
    device = cf.device(config.device)
    return device, dict(batch=cf.one_int('verify_batch', config.verify_batch),
                        dtype=cf.dtype(config.dtype),
                        width=cf.width(config.width),
                        num_classes=int(config.num_classes),
                        depthwise=cf.depthwise(config.depthwise, device))


@contextlib.contextmanager
def _verify_store(config: ml_collections.ConfigDict) -> Iterator[store_lib.LatencyStore]:
    """``config.verify_store`` open, under this job's writer lease."""
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(cf.open_store(config.verify_store, 'verify_store'))
        try:
            stack.enter_context(store.writer_lease('search verify'))
        except store_lib.StoreError as err:
            raise ConfigError(f'config.verify_store: {err}') from None
        yield store


def store_candidates(config: ml_collections.ConfigDict, budgets: list[float],
                     objective: objectives.Objective, latency_fn: LatencyFn,
                     resolutions: tuple[int, ...], extra: Any) -> list[dict[str, Any]]:
    """Per budget, the best sub-network already measured in ``verify_store`` within it.

    Rows of this device under the verification's key (batch, dtype, protocol,
    width, classes, depthwise) are measurements like the picks'; the one of
    highest objective within a budget (at the search's resolutions and extra
    constraints) is a candidate with ``source: 'store'``, so a budget never
    keeps a pick worse than a sub-network the device already showed to fit.
    """
    device, net = _verify_net(config)
    with _verify_store(config) as store:
        fid = store.add_device(fp_lib.fingerprint(device, microbenchmarks=False))
        rows = gauges.stored_latencies(store, fid, protocol=cf.protocol(config.protocol), **net)
    if not rows:
        return []
    keys = [k for k in rows if int(np.asarray(space.from_key(k).resolution)) in resolutions]
    if not keys:
        return []
    archs = space.stack([space.from_key(k) for k in keys])
    ok = np.ones(len(keys), bool) if extra is None else np.asarray(extra(archs), bool)
    score = np.asarray(objective(archs), np.float64)
    point = np.asarray(latency_fn(archs), np.float64)
    ms = np.array([rows[k] for k in keys])
    out = []
    for b in budgets:
        b = float(np.float32(b))  # As the searches' rows hold it (float32), so budgets match.
        fit = np.flatnonzero(ok & (ms <= b))
        if not len(fit):
            continue
        i = int(fit[np.argmax(score[fit])])
        row = {
            'budget_ms': float(b),
            'seed': -1,
            'latency_ms': float(point[i]),
            'objective': float(score[i]),
            'objective_name': objective.name,
            'feasible': True,
            'arch': space.to_ofa_dict(space.from_key(keys[i])),
            'round': 0,
            'source': 'store',
        }
        _mark_measured(row, float(ms[i]), config)
        out.append(row)
    return out


def _distinct_new(rows: list[dict[str, Any]], taken: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of the feasible ``rows`` whose (budget, arch) is not in ``taken`` nor seen before."""
    seen = {(r['budget_ms'], space.arch_key(space.from_ofa_dict(r['arch']))) for r in taken}
    out = []
    for r in rows:
        key = (r['budget_ms'], space.arch_key(space.from_ofa_dict(r['arch'])))
        if r['feasible'] and key not in seen:
            seen.add(key)
            out.append(dict(r))
    return out


def _round_summary(k: int, results: list[dict[str, Any]], budgets: np.ndarray) -> dict[str, Any]:
    within = [r.get('within_budget', False) for r in results]
    return {
        'round': k,
        'searches': len(results),
        'within_budget': int(sum(within)),
        'share_within_budget': float(np.mean(within)) if within else 0.0,
        'effective_budgets_ms': [float(b) for b in budgets],
    }


def refits(config: ml_collections.ConfigDict, latency_fn: LatencyFn) -> bool:
    """Whether the closed loop refits ``latency_fn`` on what it measured (``config.loop_refit``).

    A single-member predictor checkpoint is fine-tuned (:func:`refit_predictor`),
    a LUT recalibrated (:func:`refit_lut`); an ensemble keeps its estimates and
    the loop only tightens its constraint.
    """
    if not config.loop_refit:
        return False
    if isinstance(latency_fn, lut.LookupTable):
        return True
    return isinstance(latency_fn, checkpoint.Predictor) and not latency_fn.ensemble


def refit_rows(rows: list[dict[str, Any]],
               config: ml_collections.ConfigDict) -> tuple[space.Arch, np.ndarray]:
    """The rows a refit learns from: this device's store rows and every measured row given.

    With ``verify_store`` that is every sub-network the device measured under
    the verification's key (the rows the predictor was fitted on among them,
    so a refit does not forget them); a row measured twice keeps its latest value.
    """
    ms: dict[str, float] = {}
    if config.verify_store:
        device, net = _verify_net(config)
        with _verify_store(config) as store:
            fid = store.add_device(fp_lib.fingerprint(device, microbenchmarks=False))
            ms.update(
                gauges.stored_latencies(store, fid, protocol=cf.protocol(config.protocol), **net))
    for r in rows:
        if 'measured_ms' in r:
            ms[space.arch_key(space.from_ofa_dict(r['arch']))] = float(r['measured_ms'])
    keys = sorted(ms)
    return space.stack([space.from_key(k) for k in keys]), np.array([ms[k] for k in keys])


def refit_predictor(predictor: checkpoint.Predictor, archs: space.Arch, ms: np.ndarray,
                    config: ml_collections.ConfigDict) -> tuple[checkpoint.Predictor, dict]:
    """``predictor`` fine-tuned (every layer, Adam, anchored to its weights) on measured rows.

    The rows are :func:`refit_rows`'. The calibration stays the predictor's
    (the loop's constraint keeps its factor; the measurements check it).
    """
    before = np.asarray(predictor(archs), np.float64)
    tuned = transfer.finetune(predictor,
                              jax.tree_util.tree_map(lambda v: np.asarray(v)[None], archs),
                              ms[None],
                              mode='full',
                              steps=int(config.refit_steps),
                              learning_rate=float(config.refit_lr),
                              anchor_weight=float(config.refit_anchor))[0]
    after = np.asarray(tuned(archs), np.float64)

    def mape(p):
        return float(np.mean(np.abs(p / ms - 1.0)) * 100.0)

    return tuned, {'rows': int(len(ms)), 'mape_before': mape(before), 'mape_after': mape(after)}


def lut_rows(table: lut.LookupTable, archs: space.Arch,
             ms: np.ndarray) -> tuple[space.Arch, np.ndarray]:
    """The rows at resolutions ``table`` covers (a store may hold others)."""
    keep = np.isin(np.asarray(archs.resolution), table.resolutions)
    return jax.tree_util.tree_map(lambda v: np.asarray(v)[keep],
                                  archs), np.asarray(ms, np.float64)[keep]


LUT_REFIT_FOLDS = 5


def refit_lut(table: lut.LookupTable, archs: space.Arch,
              ms: np.ndarray) -> tuple[lut.Recalibrated, np.ndarray, dict]:
    """``table`` recalibrated on measured rows: ``exp(b) * sum ** a``, log-space least squares.

    The rows are :func:`refit_rows`' at the table's resolutions
    (:func:`lut_rows`). The table's entries are kept: where a fine-tune would
    relearn a predictor's weights, the LUT's two numbers take out the share
    by which its sums miss whole-network latency on this device
    (onboarding's ``lut_affine``), and its picks then start near the budget.

    Returns:
      (the recalibrated table, float64[n] each row's prediction by the same
      fit without its fold (:data:`LUT_REFIT_FOLDS` interleaved folds), for a
      conformal bound, and the refit's summary).
    """
    raw = table.predict_np(archs)  # The sums, looked up once.

    def fitted(rows):  # On ``rows``, the recalibration and its predictions of every row.
        a, b = transfer.affine_fit(raw[rows], ms[rows])
        return float(a), float(b), np.exp(a * np.log(raw) + b)

    a, b, after = fitted(np.ones(len(ms), bool))
    fold = np.arange(len(ms)) % LUT_REFIT_FOLDS
    oof = np.empty(len(ms))
    for f in range(LUT_REFIT_FOLDS):
        oof[fold == f] = fitted(fold != f)[2][fold == f]

    def mape(p):
        return float(np.mean(np.abs(p / ms - 1.0)) * 100.0)

    return lut.Recalibrated(table, a, b), oof, {
        'rows': int(len(ms)),
        'mape_before': mape(raw),
        'mape_after': mape(after),
        'mape_cross_validated': mape(oof),
        'scale': a,
        'offset': b
    }


def _close_loop(
    compiled: Any,
    seeds: np.ndarray,
    budgets: np.ndarray,
    results: list[dict[str, Any]],
    objective_name: str,
    latency_fn: LatencyFn,
    bound: bool,
    config: ml_collections.ConfigDict,
    refit: Callable[[list[dict[str, Any]]], tuple[Any, LatencyFn, dict]] | None = None,
    measured_rows: list[dict[str, Any]] = ()
) -> tuple[list[dict[str, Any]], list]:
    """Searches each over-budget search again, up to ``config.max_rounds`` rounds.

    Round k > 0 searches every (budget, seed) again and measures only the new
    picks of the searches still open (one batch). A search keeps the first
    pick that measured within budget; after the last round one that never did
    keeps its last pick with ``within_budget: false``. Between rounds:

    * with ``refit`` (a predictor or a LUT, ``config.loop_refit``), the estimator is
      refitted on every row measured so far (the store's and this loop's) and
      the search recompiled: an estimate wrong in one region (an MLP that
      rates large sub-networks faster than small ones) learns what its picks
      there measured, which no scaling of the constraint corrects. Not with
      fewer than ``config.refit_min_rows`` rows: fine-tuned on a handful of
      picks, a predictor learns those archs and none of the device's bias,
      and the next picks are underrated as much;
    * each open search's constraint is scaled by ``budget / measured`` (times
      ``1 - config.loop_margin``): the pick's constraint was active, so
      ``measured / constraint`` is how far the estimate underrates the
      sub-networks a search under it picks. A refit does not remove that: it
      learns the picks it saw, and the next search picks others it underrates
      (q22's additive predictor: refitted to 0.2% on its rows, its next picks
      at 99% of the budget measured 2-5% over it, round after round);
    * a constraint under which a search found nothing feasible (the bound of
      every sub-network above it) is not tightened further: the next round
      tries halfway (geometrically) between it and the last constraint that
      gave a pick.

    Args:
      measured_rows: rows measured besides ``results`` (the point estimate's
        picks, store candidates), for the refit.
    """
    effective = np.asarray(budgets, np.float32).copy()
    picked_at = effective.copy()  # The constraint under which each search's pick was found.
    infeasible_at = np.zeros_like(effective)  # The highest constraint that found nothing.
    final = list(results)
    history = [r for r in list(results) + list(measured_rows) if 'measured_ms' in r]
    refitted_on = -1  # len(history) at the last refit.
    summaries = []
    for k in range(1, int(config.max_rounds) + 1):
        open_ = [i for i, r in enumerate(final) if not r['within_budget']]
        if not open_:
            break
        info = None
        # A round that measured nothing new (every open search infeasible) leaves
        # the rows, and so the refit, as they were: no second fine-tune and compile.
        grew = len(history) != refitted_on
        refitted = refit(history) if refit is not None and grew else None
        refitted_on = len(history)
        if refitted is not None:
            compiled, latency_fn, info = refitted
            infeasible_at[:] = 0.0  # A new estimate: what was infeasible may not be now.
        for i in open_:
            e = picked_at[i] * min(1.0, final[i]['budget_ms'] /
                                   final[i]['measured_ms']) * (1.0 - float(config.loop_margin))
            if e <= infeasible_at[i] * (1.0 + 1e-6):  # float32 budgets
                e = float(np.sqrt(infeasible_at[i] * picked_at[i]))
            effective[i] = e
        res = jax.device_get(compiled(seeds, effective))
        rows = _rows(res, objective_name, latency_fn, bound=bound)
        picks = [i for i in open_ if rows[i]['feasible']]
        for i in open_:
            if not rows[i]['feasible']:
                infeasible_at[i] = max(infeasible_at[i], effective[i])
        measured = measure_rows([space.from_ofa_dict(rows[i]['arch']) for i in picks],
                                config) if picks else []
        for i, ms in zip(picks, measured):
            row = dict(rows[i],
                       budget_ms=final[i]['budget_ms'],
                       round=k,
                       effective_budget_ms=float(effective[i]))
            _mark_measured(row, ms, config)
            final[i] = row
            picked_at[i] = effective[i]
            history.append(row)
        summary = _round_summary(k, final, effective)
        summary['infeasible'] = len(open_) - len(picks)
        if info is not None:
            summary['refit'] = info
        summaries.append(summary)
    return final, summaries


def best_per_budget(results: list[dict[str, Any]],
                    require_within: bool = True) -> list[dict[str, Any]]:
    """Per budget (ascending), the feasible result of highest objective over the seeds.

    One search costs a fraction of a second, so searching several seeds in
    the same call and keeping the best is the cheap way to a better arch.
    Where results were measured (``within_budget``) and ``require_within``,
    only those that measured within budget count; a budget where none did
    falls back to the best feasible one (its ``within_budget`` says so).
    Budgets where no seed found a feasible arch are left out.
    """
    best: dict[float, dict[str, Any]] = {}

    def rank(r):
        return (bool(r.get('within_budget', True)) if require_within else True, r['objective'])

    for r in results:
        b = r['budget_ms']
        if r['feasible'] and (b not in best or rank(r) > rank(best[b])):
            best[b] = r
    return [best[b] for b in sorted(best)]


def measure_rows(archs: list[space.Arch], config: ml_collections.ConfigDict) -> list[float]:
    """Measures ``archs`` on ``config.device`` (ms), the job's one verification path.

    Through :func:`ofa_jax.latency.gauges.measure_archs`: with
    ``config.verify_store`` its rows are reused and new ones added, and a
    paired protocol uses its gauge baseline, the scale of the predictors
    trained on it; without a store a paired protocol times a fresh baseline.
    """
    protocol = cf.protocol(config.protocol)
    device, net = _verify_net(config)
    if not archs:
        return []
    if config.verify_store:
        with _verify_store(config) as store:
            fid, gauge = gauges.device_gauge(store, device, **net)
            return [
                float(v) for v in gauges.measure_archs(
                    archs,
                    device=device,
                    protocol=protocol,
                    store=store,
                    device_id=fid,
                    gauge=gauge if protocol.paired else None,
                    provenance={'source': f'search verify {config.latency}'},
                    progress=bool(config.progress),
                    **net)
            ]
    gauge = None
    if protocol.paired:
        gauge = measure.Gauge.build(net['batch'],
                                    net['dtype'],
                                    device,
                                    width=net['width'],
                                    num_classes=net['num_classes'],
                                    depthwise=net['depthwise'])
    return [
        float(v) for v in gauges.measure_archs(archs,
                                               device=device,
                                               protocol=protocol,
                                               gauge=gauge,
                                               progress=bool(config.progress),
                                               **net)
    ]


def _mark_measured(row: dict[str, Any], ms: float, config: ml_collections.ConfigDict) -> None:
    row['measured_ms'] = float(ms)
    row['measured_over_budget'] = float(ms) / row['budget_ms']
    row['within_budget'] = bool(ms <= row['budget_ms'])
    row['measured_protocol'] = cf.protocol(config.protocol).name


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
