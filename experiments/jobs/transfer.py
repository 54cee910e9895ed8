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

Writes ``metrics.json`` (strategy -> k -> mean and std over seeds),
``pred_vs_measured.png`` (best strategy at the largest k) and the base
predictors under ``checkpoint/``.
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
from predictors import transfer

ConfigError = cf.ConfigError


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
                stack_ridge=stack_ridge)


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


def transfer_predictions(config: ml_collections.ConfigDict,
                         workdir: str | None = None) -> dict[str, Any]:
    """Trains, adapts and predicts; returns predictions on the evaluation rows.

    Returns:
      dict with ``pred`` (strategy -> k -> float[S, n_eval]), ``calibration``
      (for the stack and blend strategies: ``bases``, the base names, and
      ``by_k``, k -> float[S, bases + 1], each draw's weights then offset),
      ``eval_rows``,
      ``allowed_rows``, ``shots`` (k -> int[S, k] row indices) and ``timing``.
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
    return dict(pred=pred,
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


def summarize(res: dict[str, Any], config: ml_collections.ConfigDict,
              workdir: str) -> dict[str, Any]:
    """Metrics (mean and std over seeds) of :func:`transfer_predictions`; writes files."""
    os.makedirs(workdir, exist_ok=True)
    truth = res['truth']
    out: dict[str, Any] = {
        'sources': list(cf.str_tuple('sources', config.sources)),
        'target': str(config.target),
        'eval_rows': int(len(res['eval_rows'])),
        'eval_rows_dropped': res.get('eval_hygiene', {}),
        'seeds': int(config.seeds),
        'timing': res['timing'],
        'metrics': {},
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
            per = [metrics.all_metrics(row, truth) for row in p]
            entry = {}
            for name in metrics.METRIC_NAMES:
                vals = np.array([m[name] for m in per])
                entry[name] = float(vals.mean())
                entry[name + '_std'] = float(vals.std())
            out['metrics'][strat][str(k)] = entry
            if k == max(by_k) and (best is None or entry['mape'] < best[2]):
                best = (strat, k, entry['mape'], p[0])
    files.write_json(os.path.join(workdir, 'metrics.json'), out)
    if best is not None:
        plots.pred_vs_measured(
            os.path.join(workdir, 'pred_vs_measured.png'), best[3], truth,
            f'{best[0]}, k={best[1]} on {os.path.basename(str(config.target))}: '
            f'MAPE {best[2]:.2f}%')
    return out
