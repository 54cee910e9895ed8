"""Library side of ``experiments/transfer.py``: predictors for an unseen device.

``run(config, workdir)`` trains base predictors on the source files (one
device and batch size per file), then for each k in ``config.shots`` and each
of ``config.seeds`` draws of k rows from the target's first
``adapt_fraction`` of rows, adapts every strategy and scores the target's
remaining rows. Only :func:`target_view` touches the target's latencies, and it
hides every evaluation row; the HELP variant uses only the reference archs that
lie in the adaptation rows (9 of HELP's 10 for its 5,000-row files).

Base predictors:
* ``paper``: the 2101.00732 MLP on the first source file (their base device);
* ``hw``: a context MLP over all sources with [log batch, datasheet hardware
  features] (device names through :mod:`ofa_jax.hardware`);
* ``help``: the same with [log batch, log latencies of the reference archs];
* ``stack``: one additive predictor per source file, combined on the target
  by :func:`predictors.transfer.stack_fit` (its 0-shot value is the
  geometric mean of the sources, uncalibrated). ``stack_refs`` fits the same
  combination on the reference archs (HELP's device embedding, the same
  rows the ``help`` base reads) plus the k shots, so its 0-shot value uses
  exactly the target measurements a HELP-style 0-shot predictor uses.
* ``blend``: the stack's source predictors and the ``help`` model as one
  more base, combined the same way on the reference archs plus the k shots
  (``blend_refs``): the calibration weighs the HELP model by how well it
  fits the target's rows, next to the per-source models.
* ``work``: no source at all: :mod:`predictors.work_linear` (seven
  coefficients on each sub-network's work totals at the target's batch) fit
  on the target's reference archs plus the k shots (``work_refs``), the rows
  ``stack_refs`` reads. It is the from-scratch reference every transfer must
  beat to have used the sources.

Baseline, not a strategy (``config.proxy_fit``, on by default): the
measured-proxy fit of :mod:`predictors.proxy_fit`, ``y = a*lat_A + b*lat_B +
... + c`` fit on the sources' *measured* latencies of the same target rows the
strategies read (the same shot draws; ``shots``: the k shots, at k=0 the
reference archs; ``refs_shots``: the reference archs plus the k shots) and
applied to the sources' measurements of the evaluation archs. It reads what
no strategy reads (the sources' measurements of the evaluation archs), so a
strategy that does not beat it has learnt nothing a user with those
measurements would need. It covers the evaluation rows whose arch every
source file measured (the mean of a source's repeats); the strategies are
compared with it on exactly those rows (``beats_proxy_fit``).

Writes ``metrics.json`` (strategy -> k -> mean and std over seeds, with
``beats_proxy_fit``; the proxy fit under ``baselines``), ``metrics.md`` (the
same as a table, :func:`table_lines`), ``pred_vs_measured.png`` (best
strategy at the largest k) and the base predictors under ``checkpoint/``.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import ml_collections
import numpy as np

from experiments import config_fields as cf
from experiments import plots
from experiments.jobs import fit_predictor as fit_job
from ofa_jax import csvio
from ofa_jax import dataset
from ofa_jax import files
from ofa_jax import hardware
from ofa_jax import space
from predictors import checkpoint
from predictors import features
from predictors import fit
from predictors import metrics
from predictors import proxy_fit
from predictors import transfer
from predictors import work_linear

ConfigError = cf.ConfigError

# Which target rows the proxy-fit baseline is fit on (the same draws as the strategies).
PROXY_ROWS = {
    'shots': 'the k shots (k=0: the reference archs among the adaptation rows)',
    'refs_shots': 'the reference archs among the adaptation rows plus the k shots',
}
PROXY_LABELS = {
    'shots': 'proxy fit (k shots; k=0: refs)',
    'refs_shots': 'proxy fit (refs + k shots)',
}


def parse_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Validates the config; raises ConfigError naming the field and allowed values."""
    sources = list(cf.str_tuple('sources', config.sources))
    if not config.target:
        raise ConfigError('config.target: empty; allowed: an OFA CSV file')
    shots = list(cf.int_tuple('shots', config.shots, minimum=0))
    cf.one_int('seeds', config.seeds)
    strategies = list(cf.str_tuple('strategies', config.strategies, transfer.STRATEGIES))
    calibration_delta = cf.number('calibration_delta', config.calibration_delta, low=0.0)
    stack_ridge = cf.number('stack_ridge', config.stack_ridge, low=0.0)
    fit_job.train_params(config)
    cf.number('adapt_fraction',
              config.adapt_fraction,
              low=0.0,
              high=1.0,
              low_open=True,
              high_open=True)
    cf.width(config.width)
    cf.int_tuple('context_hidden', config.context_hidden)
    for name in ('finetune_steps', 'full_finetune_steps'):
        cf.one_int(name, config[name], minimum=0)
    for name in ('finetune_lr', 'full_finetune_lr'):
        cf.number(name, config[name], low=0.0, low_open=True)
    cf.number('anchor_weight', config.anchor_weight, low=0.0)
    use_proxy = config.get('proxy_fit', True)
    if not isinstance(use_proxy, (bool, np.bool_)):
        raise ConfigError(f'config.proxy_fit: {use_proxy!r}; allowed: True or False')
    devices = cf.file_map('devices', config.devices)
    batches = cf.file_map('batch_sizes', config.batch_sizes)
    paths = sources + [config.target]
    dev, bsz = {}, {}
    for f in paths:
        name = cf.lookup_file(devices, f)
        if name is not None and hardware.lookup(name) is None:
            raise ConfigError(f'devices: unknown device {name!r} for {f}; allowed: '
                              f'{", ".join(hardware.names())}')
        dev[f] = hardware.lookup(name) if name else None
        b = cf.lookup_file(batches, f)
        if b is None:
            m = re.search(r'batch(\d+)', os.path.basename(f))
            b = m.group(1) if m else '1'
        try:
            bsz[f] = int(b)
            if bsz[f] < 1:
                raise ValueError
        except ValueError:
            raise ConfigError(f'batch_sizes: {b!r} for {f}; allowed: an integer >= 1') from None
    if any(s.startswith('hw') for s in strategies) and any(dev[f] is None for f in paths):
        missing = [f for f in paths if dev[f] is None]
        raise ConfigError(f'devices: no device for {missing} (needed by the hw strategies); '
                          f'allowed names: {", ".join(hardware.names())}')
    refs = None
    if any(s.startswith('help') or s.endswith('_refs') for s in strategies):
        if not config.reference_index:
            raise ConfigError('reference_index: required by the help strategies, stack_refs and '
                              'blend_refs; '
                              'allowed: a JSON list of row indices (reference_arch_index.json)')
    if config.reference_index and (use_proxy or any(
            s.startswith('help') or s.endswith('_refs') for s in strategies)):
        # The proxy fit reads them too (its k=0 and refs + k shots rows).
        with open(config.reference_index) as f:
            refs = np.asarray(json.load(f), np.int64)
    return dict(sources=sources,
                target=config.target,
                shots=shots,
                strategies=strategies,
                device=dev,
                batch=bsz,
                refs=refs,
                calibration_delta=calibration_delta,
                stack_ridge=stack_ridge,
                proxy_fit=bool(use_proxy))


def target_view(latency_ms: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The target's latencies with every row outside ``allowed`` set to NaN.

    Adaptation code only ever sees this view, so it cannot read evaluation
    rows (a NaN would poison any fit that did).
    """
    view = np.full_like(np.asarray(latency_ms, np.float64), np.nan)
    view[allowed] = np.asarray(latency_ms, np.float64)[allowed]
    return view


def _ctx(fspec, batch, hw_spec=None, refs_ms=None):
    return features.context_vector(fspec,
                                   batch_size=batch,
                                   hw=None if hw_spec is None else hardware.raw_features(hw_spec),
                                   refs=refs_ms)


def _train_context_model(kind, tables, parsed, config, tcfg, width):
    """Context MLP over every source row; kind 'hw' or 'help'."""
    sources = parsed['sources']
    refs = parsed['refs']
    batches = [parsed['batch'][f] for f in sources]
    kw = {'batch_sizes': batches}
    if kind == 'hw':
        kw['hw_features'] = [hardware.raw_features(parsed['device'][f]) for f in sources]
    else:
        kw['ref_latencies'] = [tables[f].latency_ms[refs] for f in sources]
    archs = _concat([tables[f].archs for f in sources])
    fspec = features.fit_feature_spec(archs, width=width, **kw)
    tr_a, tr_y, tr_c, va_a, va_y, va_c = [], [], [], [], [], []
    for f in sources:
        t = tables[f]
        c = _ctx(fspec, parsed['batch'][f], parsed['device'][f] if kind == 'hw' else None,
                 t.latency_ms[refs] if kind == 'help' else None)
        cut = int(0.9 * len(t))
        tr_a.append(t.archs[:cut])
        tr_y.append(t.latency_ms[:cut])
        tr_c.append(transfer.context_rows(c, cut))
        va_a.append(t.archs[cut:])
        va_y.append(t.latency_ms[cut:])
        va_c.append(transfer.context_rows(c, len(t) - cut))
    hidden = cf.int_tuple('context_hidden', config.context_hidden)
    pred, _ = fit.fit_predictor('context_mlp',
                                _concat(tr_a),
                                np.concatenate(tr_y),
                                _concat(va_a),
                                np.concatenate(va_y),
                                fspec=fspec,
                                config=tcfg,
                                train_context=np.concatenate(tr_c),
                                val_context=np.concatenate(va_c),
                                seed=int(config.seed),
                                model_kwargs={'hidden': hidden},
                                meta={
                                    'kind': kind,
                                    'sources': sources
                                })
    return pred


def fit_file_model(table: csvio.LatencyTable,
                   train: slice,
                   val: slice,
                   *,
                   config: ml_collections.ConfigDict,
                   width: float,
                   seed: int = 0,
                   meta: dict[str, Any] | None = None) -> checkpoint.Predictor:
    """The additive predictor of one file's ``train`` rows, early-stopped on its ``val`` rows."""
    pred, _ = fit.fit_predictor('additive',
                                table.archs[train],
                                table.latency_ms[train],
                                table.archs[val],
                                table.latency_ms[val],
                                fspec=features.fit_feature_spec(table.archs[train], width=width),
                                config=config,
                                seed=seed,
                                meta=meta)
    return pred


def _concat(archs_list):
    return space.Arch(*[
        np.concatenate([getattr(a, f)
                        for a in archs_list])
        for f in ('kernel', 'expand', 'depth', 'resolution')
    ])


def leak_free_eval_rows(archs: space.Arch, cut: int) -> tuple[np.ndarray, dict[str, int]]:
    """Evaluation rows past ``cut`` that repeat no arch of the adaptation rows, nor each other.

    Shots are drawn from rows ``[0, cut)``; an evaluation row timing an arch
    of those rows (or one already evaluated) would score memory. Returns the
    kept row indices and the counts dropped (``dropped_seen_in_adaptation``,
    ``dropped_repeats``).
    """
    ids = dataset.arch_groups(archs).ids
    later = ids[cut:]
    in_adapt = np.isin(later, ids[:cut])
    _, first = np.unique(later, return_index=True)
    is_first = np.zeros(later.shape, bool)
    is_first[first] = True
    keep = np.flatnonzero(~in_adapt & is_first) + cut
    return keep.astype(np.int64), {
        'dropped_seen_in_adaptation': int(in_adapt.sum()),
        'dropped_repeats': int((~in_adapt & ~is_first).sum())
    }


def source_latencies(target_archs: space.Arch, sources: list[csvio.LatencyTable]) -> np.ndarray:
    """float64[P, n]: each source's measured latency of each target row's arch.

    Archs are matched by canonical arch (:func:`ofa_jax.dataset.arch_groups`),
    not by row; a source that timed an arch more than once gives the mean of its
    repeats, and one that never timed it gives NaN.
    """
    n = int(np.asarray(target_archs.resolution).shape[0])
    out = np.full((len(sources), n), np.nan)
    for p, table in enumerate(sources):
        ids = dataset.arch_groups(_concat([target_archs, table.archs])).ids
        groups = int(ids.max()) + 1 if ids.size else 0
        count = np.bincount(ids[n:], minlength=groups)
        total = np.bincount(ids[n:],
                            weights=np.asarray(table.latency_ms, np.float64),
                            minlength=groups)
        seen = count[ids[:n]] > 0
        out[p, seen] = total[ids[:n]][seen] / count[ids[:n]][seen]
    return out


def proxy_rows_for(strategy: str) -> str:
    """Which proxy fit (a key of :data:`PROXY_ROWS`) reads the target rows ``strategy`` reads."""
    return 'refs_shots' if strategy.endswith('_refs') else 'shots'


def proxy_baseline(view: np.ndarray, sources_ms: np.ndarray, eval_rows: np.ndarray,
                   refs: np.ndarray | None, shots: dict[int, np.ndarray]) -> dict[str, Any]:
    """The measured-proxy baseline on the strategies' shot draws and evaluation rows.

    Args:
      view: float[n], the target's latencies, NaN outside the adaptation rows
        (:func:`target_view`); only rows the strategies may read are fit on.
      sources_ms: float[P, n], the sources' measured latencies of the target's
        archs (:func:`source_latencies`), NaN where a source lacks the arch.
      eval_rows: the strategies' evaluation rows.
      refs: the reference rows among the adaptation rows, or None.
      shots: k -> int[S, k], the strategies' shot draws.

    Returns:
      dict with ``eval_mask`` (bool[len(eval_rows)], the evaluation rows whose
      arch every source measured: the rows the proxy and, against it, the
      strategies are scored on), ``available`` and ``reason`` (why not, or
      None), and per key of :data:`PROXY_ROWS` and k: ``pred``
      (float[S, eval_mask.sum()]), ``fit_rows`` (int[S], the rows fit on),
      ``fit_rows_dropped`` (int[S], fit rows whose arch some source lacks),
      ``method`` (per draw, :data:`predictors.proxy_fit.METHODS`) and
      ``not_available`` (the reason, for the cells that could not be fit).
    """
    covered = np.all(np.isfinite(sources_ms), axis=0)
    mask = covered[eval_rows]
    ev = eval_rows[mask]
    out: dict[str, Any] = dict(eval_mask=mask,
                               available=True,
                               reason=None,
                               pred={},
                               fit_rows={},
                               fit_rows_dropped={},
                               method={},
                               not_available={})
    if not ev.size:
        return dict(out,
                    available=False,
                    reason=f'none of the {len(eval_rows)} evaluation archs was measured by '
                    f'every source file')
    for name in PROXY_ROWS:
        for k, draws in shots.items():
            with_refs = name == 'refs_shots' or k == 0
            if with_refs and refs is None:
                out['not_available'].setdefault(
                    name, {})[k] = ('no reference archs (config.reference_index is empty)')
                continue
            cell: dict[str, list] = {
                'pred': [],
                'fit_rows': [],
                'fit_rows_dropped': [],
                'method': []
            }
            for d in draws:
                rows = np.union1d(refs, d) if with_refs else np.asarray(d)
                keep = rows[covered[rows]]
                if not keep.size:
                    reason = (f'none of the {rows.size} fit rows (k={k}) was measured by every '
                              'source file' if rows.size else
                              f'no target row to fit on (k={k}, no reference arch among the '
                              'adaptation rows)')
                    out['not_available'].setdefault(name, {})[k] = reason
                    break
                assert np.all(np.isfinite(view[keep])), 'a proxy fit row outside the allowed rows'
                fit = proxy_fit.proxy_fit(sources_ms[:, keep], view[keep])
                cell['pred'].append(proxy_fit.proxy_apply(fit, sources_ms[:, ev]))
                cell['fit_rows'].append(int(keep.size))
                cell['fit_rows_dropped'].append(int(rows.size - keep.size))
                cell['method'].append(fit.method)
            else:
                for key, v in cell.items():
                    out[key].setdefault(name, {})[k] = (np.stack(v) if key == 'pred' else
                                                        np.asarray(v) if key != 'method' else v)
    if not any(out['pred'].values()):
        out.update(available=False,
                   reason='; '.join(
                       sorted({r for c in out['not_available'].values() for r in c.values()})))
    return out


def transfer_predictions(config: ml_collections.ConfigDict,
                         workdir: str | None = None) -> dict[str, Any]:
    """Trains, adapts and predicts; returns predictions on the evaluation rows.

    Returns:
      dict with ``pred`` (strategy -> k -> float[S, n_eval]), ``calibration``
      (for the stack and blend strategies: ``bases``, the base names, and
      ``by_k``, k -> float[S, bases + 1], each draw's weights then offset),
      ``eval_rows``,
      ``allowed_rows``, ``shots`` (k -> int[S, k] row indices), ``timing`` and
      ``baselines`` (``proxy_fit``: what :func:`proxy_baseline` returns, on the
      same draws and evaluation rows; empty with ``config.proxy_fit=False``).
    """
    parsed = parse_config(config)
    width = float(config.width)
    max_rows = int(config.max_rows) or None
    tables = {
        f: csvio.read_ofa_csv(f, max_rows=max_rows) for f in parsed['sources'] + [parsed['target']]
    }
    target = tables[parsed['target']]
    n = len(target)
    cut = int(float(config.adapt_fraction) * n)
    allowed = np.arange(cut)
    eval_rows, hygiene = leak_free_eval_rows(target.archs, cut)
    refs = parsed['refs']
    if refs is not None:
        if refs.max() >= min(len(t) for t in tables.values()):
            raise ConfigError(f'reference_index: index {int(refs.max())} beyond the rows read')
        # Reference archs inside the evaluation rows are dropped, so the target's
        # evaluation latencies are never read, not even as a device embedding.
        parsed['refs'] = refs = refs[refs < cut]
    view = target_view(target.latency_ms, allowed)
    tcfg = fit_job.train_params(config)
    timing = {}
    bases = {}
    strategies = parsed['strategies']
    t0 = time.perf_counter()
    if any(s.startswith('paper') for s in strategies):
        first = tables[parsed['sources'][0]]
        c = int(0.85 * len(first))
        fspec = features.fit_feature_spec(first.archs[:c], width=width)
        bases['paper'], _ = fit.fit_predictor('mlp',
                                              first.archs[:c],
                                              first.latency_ms[:c],
                                              first.archs[c:],
                                              first.latency_ms[c:],
                                              fspec=fspec,
                                              config=tcfg,
                                              seed=int(config.seed))
        timing['paper_train_s'] = time.perf_counter() - t0
    if any(s.startswith(('stack', 'blend')) for s in strategies):
        t0 = time.perf_counter()
        # Each source: first 90% of its rows to train, last 10% to early-stop.
        bases['stack'] = [
            fit_file_model(tables[f],
                           slice(0, int(0.9 * len(tables[f]))),
                           slice(int(0.9 * len(tables[f])), None),
                           config=tcfg,
                           width=width,
                           seed=int(config.seed),
                           meta={
                               'kind': 'stack',
                               'source': f
                           }) for f in parsed['sources']
        ]
        timing['stack_train_s'] = time.perf_counter() - t0
    tgt_batch = parsed['batch'][parsed['target']]
    for kind in ('hw', 'help'):
        if any(
                s.startswith(kind) or (kind == 'help' and s.startswith('blend'))
                for s in strategies):
            t0 = time.perf_counter()
            base = _train_context_model(kind, tables, parsed, config, tcfg, width)
            # Zero-shot: the target's own context (datasheet values or reference latencies).
            ctx = _ctx(base.fspec, tgt_batch,
                       parsed['device'][parsed['target']] if kind == 'hw' else None,
                       view[refs] if kind == 'help' else None)
            bases[kind] = transfer.with_context(base, ctx)
            timing[f'{kind}_train_s'] = time.perf_counter() - t0
    if workdir:
        for name, p in bases.items():
            for i, one in enumerate(p if isinstance(p, list) else [p]):
                checkpoint.save(
                    one,
                    os.path.join(workdir, 'checkpoint',
                                 f'{name}_{i}' if isinstance(p, list) else name))

    def base_predict(base, archs):
        if isinstance(base, list):  # [S, n]: one row per source predictor.
            return transfer.predict_many(base, archs)
        return np.asarray(base(archs), np.float64)

    eval_archs = target.archs[eval_rows]
    base_eval = {k: base_predict(p, eval_archs) for k, p in bases.items()}
    base_allowed = {k: base_predict(p, target.archs[allowed]) for k, p in bases.items()}
    if any(s.startswith('blend') for s in strategies):
        # The stacked sources plus the HELP-conditioned model as one more base.
        for preds in (base_eval, base_allowed):
            preds['blend'] = np.concatenate([preds['stack'], preds['help'][None]])
    pred: dict[str, dict[int, np.ndarray]] = {s: {} for s in strategies}
    # Stack/blend calibrations: per strategy and k, float[S, bases + 1] (weights, offset).
    calibration: dict[str, dict[int, np.ndarray]] = {}
    base_names = {'stack': [os.path.basename(f) for f in parsed['sources']]}
    base_names['blend'] = base_names['stack'] + ['help']
    shots_used = {}
    work_x = None
    if 'work_refs' in strategies:
        work_x = work_linear.work_features(target.archs, tgt_batch, width)
    t0 = time.perf_counter()
    for k in parsed['shots']:
        draws = np.stack([
            transfer.draw_shots(np.random.default_rng(1000 * s + k), allowed, k)
            for s in range(int(config.seeds))
        ])
        shots_used[k] = draws
        ys = view[draws]
        assert np.all(np.isfinite(ys)), 'a shot outside the allowed rows'
        for strat in strategies:
            kind, how = strat.split('_', 1)
            base = bases.get(kind)
            if kind == 'work':
                out = []
                for s in range(draws.shape[0]):
                    rows = np.union1d(refs, draws[s])
                    model = work_linear.fit(target.archs[rows],
                                            view[rows],
                                            batch=tgt_batch,
                                            width=width,
                                            x=work_x[rows])
                    out.append(model.from_features(work_x[eval_rows]))
                pred[strat][k] = np.stack(out)
                continue
            if how in ('affine', 'zero_affine', 'refs'):
                out = []
                for s in range(draws.shape[0]):
                    # The *_refs strategies also calibrate on the reference archs.
                    rows = np.union1d(refs, draws[s]) if how == 'refs' else draws[s]
                    pos = np.searchsorted(allowed, rows)
                    if kind in ('stack', 'blend'):
                        w, b = transfer.stack_fit(base_allowed[kind][:, pos],
                                                  view[rows],
                                                  ridge=parsed['stack_ridge'],
                                                  huber_delta=parsed['calibration_delta'])
                        out.append(transfer.stack_apply(base_eval[kind], w, b))
                        calibration.setdefault(strat, {}).setdefault(k, []).append([*w, b])
                        continue
                    a, b = transfer.affine_fit(base_allowed[kind][pos],
                                               view[rows],
                                               huber_delta=parsed['calibration_delta'])
                    out.append(np.asarray(transfer.affine_apply(base_eval[kind], a, b)))
                pred[strat][k] = np.stack(out)
                continue
            if k == 0:
                pred[strat][k] = np.repeat(base_eval[kind][None], draws.shape[0], axis=0)
                continue
            shot_archs = target.archs[draws]
            mode = 'head' if how == 'head' else 'full'
            full = mode == 'full'
            adapted = transfer.finetune(
                base,
                shot_archs,
                ys,
                mode=mode,
                steps=int(config.full_finetune_steps if full else config.finetune_steps),
                learning_rate=float(config.full_finetune_lr if full else config.finetune_lr),
                anchor_weight=float(config.anchor_weight) if full else 0.0)
            pred[strat][k] = transfer.predict_many(adapted, eval_archs)
    timing['adapt_s'] = time.perf_counter() - t0
    baselines = {}
    if parsed['proxy_fit']:
        sources_ms = source_latencies(target.archs, [tables[f] for f in parsed['sources']])
        baselines['proxy_fit'] = proxy_baseline(view, sources_ms, eval_rows, refs, shots_used)
    return dict(pred=pred,
                baselines=baselines,
                calibration={
                    strat: {
                        'bases': base_names[strat.split('_', 1)[0]],
                        'by_k': {
                            k: np.asarray(v) for k, v in by_k.items()
                        }
                    } for strat, by_k in calibration.items()
                },
                eval_rows=eval_rows,
                eval_hygiene=hygiene,
                allowed_rows=allowed,
                shots=shots_used,
                timing=timing,
                truth=target.latency_ms[eval_rows])


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs the transfer experiment; writes ``metrics.json`` and a plot to ``workdir``."""
    os.makedirs(workdir, exist_ok=True)
    return summarize(transfer_predictions(config, workdir), config, workdir)


def _mean_std(per: list[dict[str, float]]) -> dict[str, float]:
    entry = {}
    for name in metrics.METRIC_NAMES:
        vals = np.array([m[name] for m in per])
        entry[name] = float(vals.mean())
        entry[name + '_std'] = float(vals.std())
    return entry


def _proxy_summary(proxy: dict[str, Any] | None, truth: np.ndarray) -> dict[str, Any]:
    """The ``baselines['proxy_fit']`` entry of ``metrics.json``."""
    out: dict[str, Any] = {
        'baseline': True,  # not a strategy: it reads the sources' measurements of the eval archs
        'description': ("measured-proxy baseline (predictors.proxy_fit): the target's latency "
                        "fit as a*lat_A + b*lat_B + ... + c on the source files' measured "
                        'latencies of the same target rows and draws as the strategies, applied '
                        "to the sources' measurements of the evaluation archs"),
        'rows': dict(PROXY_ROWS),
    }
    if proxy is None:
        return dict(out,
                    available=False,
                    reason='turned off (config.proxy_fit=False)',
                    eval_rows=0,
                    eval_rows_total=int(len(truth)))
    mask = proxy['eval_mask']
    out.update(available=bool(proxy['available']),
               reason=proxy['reason'],
               eval_rows=int(mask.sum()),
               eval_rows_total=int(mask.size),
               metrics={},
               not_available={
                   name: {
                       str(k): r for k, r in by_k.items()
                   } for name, by_k in proxy['not_available'].items()
               })
    for name, by_k in proxy['pred'].items():
        out['metrics'][name] = {}
        for k, p in by_k.items():
            entry = _mean_std([metrics.all_metrics(row, truth[mask]) for row in p])
            entry['fit_rows'] = float(np.mean(proxy['fit_rows'][name][k]))
            entry['fit_rows_dropped'] = float(np.mean(proxy['fit_rows_dropped'][name][k]))
            entry['method'] = sorted(set(proxy['method'][name][k]))
            out['metrics'][name][str(k)] = entry
    return out


def _versus_proxy(strat: str, k: int, p: np.ndarray, proxy: dict[str, Any] | None,
                  truth: np.ndarray) -> dict[str, Any]:
    """``strat`` at ``k`` against the proxy fit on the same rows and draws."""
    name = proxy_rows_for(strat)
    if proxy is None:
        return {'rows': name, 'available': False, 'reason': 'turned off (config.proxy_fit=False)'}
    pp = proxy['pred'].get(name, {}).get(k)
    if pp is None:
        reason = proxy['not_available'].get(name, {}).get(k) or proxy['reason']
        return {'rows': name, 'available': False, 'reason': reason}
    mask = proxy['eval_mask']
    mine = np.array([metrics.mape(row[mask], truth[mask]) for row in p])
    theirs = np.array([metrics.mape(row, truth[mask]) for row in pp])
    return {
        'rows': name,
        'available': True,
        'eval_rows': int(mask.sum()),
        'mape': float(mine.mean()),  # the strategy's, on the proxy's evaluation rows
        'proxy_mape': float(theirs.mean()),
        'draws_won': int((mine < theirs).sum()),
        'draws': int(mine.size),
    }


def summarize(res: dict[str, Any], config: ml_collections.ConfigDict,
              workdir: str) -> dict[str, Any]:
    """Metrics (mean and std over seeds) of :func:`transfer_predictions`; writes files.

    Each strategy's entry per k also holds ``beats_proxy_fit`` (True where its
    MAPE, mean over draws, is below the proxy fit's on the same evaluation rows
    and draws; None where the proxy fit is not available) and ``proxy_fit``
    (the comparison, or why it is not available); ``baselines['proxy_fit']``
    holds the baseline's own metrics.
    """
    os.makedirs(workdir, exist_ok=True)
    truth = res['truth']
    proxy = res.get('baselines', {}).get('proxy_fit')
    out: dict[str, Any] = {
        'sources': list(cf.str_tuple('sources', config.sources)),
        'target': str(config.target),
        'eval_rows': int(len(res['eval_rows'])),
        'eval_rows_dropped': res.get('eval_hygiene', {}),
        'seeds': int(config.seeds),
        'timing': res['timing'],
        'metrics': {},
        # Not strategies: references a strategy must beat on the same rows.
        'baselines': {
            'proxy_fit': _proxy_summary(proxy, truth)
        },
        # Which sources the target resembles: mean calibration weights over draws.
        'calibration': {
            strat: {
                str(k): dict(zip(c['bases'] + ['offset'],
                                 np.mean(v, axis=0).tolist())) for k, v in c['by_k'].items()
            } for strat, c in res.get('calibration', {}).items()
        }
    }
    best = None
    for strat, by_k in res['pred'].items():
        out['metrics'][strat] = {}
        for k, p in by_k.items():
            entry: dict[str, Any] = _mean_std([metrics.all_metrics(row, truth) for row in p])
            versus = _versus_proxy(strat, k, p, proxy, truth)
            entry['beats_proxy_fit'] = (bool(
                versus['mape'] < versus['proxy_mape']) if versus['available'] else None)
            entry['proxy_fit'] = versus
            out['metrics'][strat][str(k)] = entry
            if k == max(by_k) and (best is None or entry['mape'] < best[2]):
                best = (strat, k, entry['mape'], p[0])
    files.write_json(os.path.join(workdir, 'metrics.json'), out)
    files.write_text(os.path.join(workdir, 'metrics.md'), '\n'.join(table_lines(out)) + '\n')
    if best is not None:
        plots.pred_vs_measured(
            os.path.join(workdir, 'pred_vs_measured.png'), best[3], truth,
            f'{best[0]}, k={best[1]} on {os.path.basename(str(config.target))}: '
            f'MAPE {best[2]:.2f}%')
    return out


def table_lines(out: dict[str, Any]) -> list[str]:
    """Markdown lines of :func:`summarize`'s result: strategies, then the proxy-fit baseline."""
    shots = list(dict.fromkeys(k for by_k in out['metrics'].values() for k in by_k))
    proxy = out['baselines']['proxy_fit']
    lines = [
        '| row | ' + ' | '.join(f'k={k}: MAPE % / acc10 | proxy fit, same rows | beats it '
                                '(draws won)'
                                for k in shots) + ' |', '|' + '---|' * (1 + 3 * len(shots))
    ]
    for strat, by_k in out['metrics'].items():
        cells = []
        for k in shots:
            m = by_k.get(k)
            if m is None:
                cells.append('- | - | -')
                continue
            v = m['proxy_fit']
            if not v['available']:
                cells.append(f'{m["mape"]:.2f} / {m["acc10"]:.3f} | n/a | n/a')
                continue
            on = '' if v['eval_rows'] == out['eval_rows'] else f' ({v["mape"]:.2f} on its rows)'
            cells.append(f'{m["mape"]:.2f} / {m["acc10"]:.3f}{on} | {v["proxy_mape"]:.2f} | '
                         f'{"**yes**" if m["beats_proxy_fit"] else "no"} '
                         f'({v["draws_won"]}/{v["draws"]})')
        lines.append(f'| {strat} | ' + ' | '.join(cells) + ' |')
    for name, label in PROXY_LABELS.items():
        by_k = proxy.get('metrics', {}).get(name, {})
        cells = [
            f'{by_k[k]["mape"]:.2f} / {by_k[k]["acc10"]:.3f} | - | -'
            if k in by_k else 'n/a | - | -' for k in shots
        ]
        lines.append(f'| *baseline: {label}, {proxy["eval_rows"]} of '
                     f'{proxy["eval_rows_total"]} eval rows* | ' + ' | '.join(cells) + ' |')
    notes = []
    if not proxy['available']:
        notes.append(f'Proxy fit not available: {proxy["reason"]}.')
    for name, by_k in proxy.get('not_available', {}).items():
        for k, reason in by_k.items():
            notes.append(f'{PROXY_LABELS[name]} at k={k}: not available ({reason}).')
    return lines + ([''] + notes if notes else [])
