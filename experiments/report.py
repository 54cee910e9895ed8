"""The main job's report: ``report.md``, PNG plots and the data behind them as CSV.

:func:`write_report` takes the summary assembled by :mod:`experiments.jobs.main`
and writes, into one folder:

- ``report.md``: device, config, estimator comparison (accuracy and cost),
  search verification, reference counts, stage times, exact commands;
- ``pred_vs_measured.png``, ``error_distribution.png``, ``breakdown.png``,
  ``search_measured_vs_budget.png``, ``front.png``;
- ``measurements.csv`` (every measured sub-network and its split),
  ``predictions.csv`` (held-out rows, every estimator), ``search.csv``;
- ``config.json`` and ``commands.txt``.
"""

from __future__ import annotations

import csv
import os
from typing import Any, Mapping

import numpy as np

from experiments import commands as commands_lib
from experiments import plots
from ofa_jax import export as export_lib
from ofa_jax import files
from ofa_jax import space


def commands(summary: Mapping[str, Any], workdir: str) -> list[str]:
    """Commands that reproduce the run: the main job, then each stage on its own.

    Generated from the configs the stages ran with (``summary['stages']``),
    so each command reruns its stage exactly (same rows, same metrics).
    """
    out = [commands_lib.command('main', summary['config'], workdir)]
    for stage in summary.get('stages', []):
        out.append(commands_lib.command(stage['module'], stage['config'], stage['workdir']))
    return out


def _estimator_table(summary: Mapping[str, Any]) -> list[str]:
    lines = [
        '| estimator | RMSE (ms) | MAE (ms) | MAPE (%) | within 10% | Kendall tau | '
        'measurements | cost (min) |', '|---|---|---|---|---|---|---|---|'
    ]
    for est in summary['estimators'].values():
        m = est['metrics']
        lines.append(f'| {est["label"]} | {m["rmse_ms"]:.3f} | {m["mae_ms"]:.3f} | '
                     f'{m["mape"]:.2f} | {100 * m["acc10"]:.1f}% | {m["kendall_tau"]:.3f} | '
                     f'{est["measurements"]} {est["measurement_kind"]} | '
                     f'{est["cost_minutes"]:.1f} |')
    return lines


def rmse_ratios(summary: Mapping[str, Any]) -> dict[str, float]:
    """RMSE of each predictor divided by the LUT's (lower is better; target <= 0.5)."""
    lut_rmse = summary['estimators']['lut']['metrics']['rmse_ms']
    return {
        k: v['metrics']['rmse_ms'] / lut_rmse
        for k, v in summary['estimators'].items()
        if k != 'lut'
    }


def _search_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for model, search in summary['searches'].items():
        for r in search['results']:
            rows.append({
                'estimator': model,
                'budget_ms': r['budget_ms'],
                'seed': r['seed'],
                'predicted_ms': r['latency_ms'],
                'measured_ms': r.get('measured_ms', float('nan')),
                'objective': r['objective'],
                'objective_name': r['objective_name'],
                'feasible': r.get('feasible', True),
                'arch': space.format_child_arch(space.from_ofa_dict(r['arch'])),
            })
    return rows


def budget_safety_lines(summary: Mapping[str, Any]) -> list[str]:
    """Per estimator and budget: the pick kept, measured, within budget, price in objective.

    The price is the objective of the uncorrected search's best pick (the
    point estimate as constraint, same budget and seeds) minus the kept
    pick's; the rounds say how often the closed loop tightened and searched again.
    """
    lines = []
    for model, search in summary.get('searches', {}).items():
        if not search.get('best') or search.get('coverage') is None and not search.get('rounds'):
            continue
        if not lines:
            lines = [
                '| estimator | budget (ms) | constraint | measured (ms) | within budget | '
                'rounds | objective | uncorrected objective | uncorrected measured (ms) | '
                'given up |', '|' + '---|' * 10
            ]
        plain = {r['budget_ms']: r for r in search.get('uncorrected_best', [])}
        for r in search['best']:
            u = plain.get(r['budget_ms'])
            given = '-' if u is None else f'{u["objective"] - r["objective"]:.4g}'
            u_obj = '-' if u is None else f'{u["objective"]:.4g}'
            u_ms = '-' if u is None or 'measured_ms' not in u else (
                f'{u["measured_ms"]:.2f}' + ('' if u['within_budget'] else ' (over)'))
            bound = (f'bound {search["coverage"]:g}'
                     if search.get('coverage') is not None else 'point estimate')
            lines.append(f'| {model} | {r["budget_ms"]:.2f} | {bound} | '
                         f'{r.get("measured_ms", float("nan")):.2f} | '
                         f'{"yes" if r.get("within_budget") else "NO"} | '
                         f'{r.get("source") or r.get("round", 0)} | '
                         f'{r["objective"]:.4g} | {u_obj} | {u_ms} | {given} |')
    if not lines:
        return []
    share = []
    for model, search in summary.get('searches', {}).items():
        rounds = search.get('rounds') or []
        if rounds:
            share.append(f'{model} {100 * rounds[0]["share_within_budget"]:.0f}% -> '
                         f'{100 * rounds[-1]["share_within_budget"]:.0f}%')
    return [
        '### Budget safety: the kept pick per budget', '',
        'Each search constrains the estimator\'s split-conformal upper bound (coverage below; '
        'calibrated on held-out rows), measures its picks, and where one measures over budget '
        'tightens that search and runs it again (`rounds`; a predictor checkpoint is also '
        'refitted, a LUT recalibrated, on every row the device measured before each new '
        'round); the point '
        'estimate\'s picks are '
        'measured in the same batch and kept where they measure within budget and score '
        'higher (`rounds`: point estimate), as is the best row of the store that measured '
        'within budget (`rounds`: store). "given up": objective of the '
        'uncorrected search (point estimate) minus the kept pick\'s.', '', *lines, '',
        'Searches (budget x seed) within budget, first measurement -> after the loop: ' +
        (', '.join(share) if share else '-') + '.', ''
    ]


def found_lines(summary: Mapping[str, Any]) -> list[str]:
    """The deployable folder of each search's picks, and the lines that load one."""
    rows = [(model, f)
            for model, search in summary.get('searches', {}).items()
            for f in search.get('found') or []]
    if not rows:
        return []
    lines = [
        '### Deployable picks', '',
        'Each folder holds `arch.json` (OFA\'s dict), `weights.msgpack`, `program.jaxexport` '
        '(symbolic batch) and `export.json` (measured latency and protocol).', '',
        '| estimator | budget (ms) | weights | folder |', '|---|---|---|---|'
    ]
    for model, f in rows:
        lines.append(f'| {model} | {f["budget_ms"]:.2f} | {f["weights"]} | `{f["folder"]}` |')
    folder = rows[0][1]['folder']
    if os.path.exists(os.path.join(folder, 'export.json')):
        snippet = export_lib.load_snippet(folder).rstrip('\n').split('\n')
        lines += [
            '', 'Loading one needs only JAX and Flax (`ofa_jax.export.load(folder)` is the same):',
            '', '```python', *snippet, '```'
        ]
    return lines + ['']


def _gauge_lines(camp: dict[str, Any]) -> list[str]:
    """How much the paired protocol corrected, when it was used."""
    q = camp.get('speed_quantiles')
    gauge = camp.get('gauge')
    if not q or not gauge:
        return []
    return [
        f'- paired protocol: every sample divided by a sample of the gauge network '
        f'(`{gauge["arch_key"]}`, baseline {gauge["baseline_ms"]:.2f} ms); the machine ran at '
        f'{q[0]:.2f}-{q[-1]:.2f}x the baseline speed during this run (10-90%: {q[1]:.2f}-'
        f'{q[3]:.2f}x), which the latencies are corrected for'
    ]


def _search_table(rows: list[dict[str, Any]]) -> list[str]:
    name = rows[0]['objective_name'] if rows else 'objective'
    lines = [
        f'| estimator | budget (ms) | predicted (ms) | measured (ms) | measured / budget | '
        f'{name} |', '|---|---|---|---|---|---|'
    ]
    for r in rows:
        lines.append(f'| {r["estimator"]} | {r["budget_ms"]:.2f} | {r["predicted_ms"]:.2f} | '
                     f'{r["measured_ms"]:.2f} | {r["measured_ms"] / r["budget_ms"]:.3f} | '
                     f'{r["objective"]:.4g} |')
    return lines


def _search_summary(rows: list[dict[str, Any]]) -> list[str]:
    """Per estimator: mean |measured - budget| / budget and how many went over."""
    lines = [
        '| estimator | mean abs. distance to budget | over budget | worst measured / budget |',
        '|---|---|---|---|'
    ]
    for est in dict.fromkeys(r['estimator'] for r in rows):
        sel = [r for r in rows if r['estimator'] == est and np.isfinite(r['measured_ms'])]
        if not sel:
            continue
        ratio = np.array([r['measured_ms'] / r['budget_ms'] for r in sel])
        lines.append(f'| {est} | {100 * np.mean(np.abs(ratio - 1)):.1f}% | '
                     f'{int(np.sum(ratio > 1))} of {len(sel)} | {ratio.max():.3f} |')
    return lines


def _plots(out_dir: str, summary, latency_ms, test_index, predictions, search_rows) -> None:
    plt = plots.pyplot()
    true = np.asarray(latency_ms)[test_index]
    names = list(predictions)
    labels = {k: summary['estimators'][k]['label'] for k in names}

    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4), dpi=110, squeeze=False)
    lo = min(true.min(), *(p.min() for p in predictions.values()))
    hi = max(true.max(), *(p.max() for p in predictions.values()))
    for ax, k in zip(axes[0], names):
        m = summary['estimators'][k]['metrics']
        ax.scatter(true, predictions[k], s=6, alpha=0.6)
        ax.plot([lo, hi], [lo, hi], 'k--', lw=0.8)
        ax.set_title(f'{labels[k]}\nRMSE {m["rmse_ms"]:.3f} ms, MAPE {m["mape"]:.1f}%', fontsize=9)
        ax.set_xlabel('measured latency (ms)')
        ax.set_ylabel('predicted latency (ms)')
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, 'pred_vs_measured.png'))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    errs = {k: 100 * (predictions[k] - true) / true for k in names}
    span = max(1e-6, max(np.abs(e).max() for e in errs.values()))
    bins = np.linspace(-span, span, 41)
    for k in names:
        ax.hist(errs[k], bins=bins, alpha=0.5, label=labels[k])
    ax.axvline(0, color='k', lw=0.8)
    ax.set_xlabel('relative error of the prediction (%)')
    ax.set_ylabel('held-out sub-networks')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, 'error_distribution.png'))
    plt.close(fig)

    measured = [r for r in search_rows if np.isfinite(r['measured_ms'])]
    if measured:
        fig, ax = plt.subplots(figsize=(5, 4.5), dpi=110)
        for k in dict.fromkeys(r['estimator'] for r in measured):
            sel = [r for r in measured if r['estimator'] == k]
            ax.scatter([r['budget_ms'] for r in sel], [r['measured_ms'] for r in sel],
                       s=30,
                       label=summary['estimators'][k]['label'],
                       alpha=0.8)
        b = [r['budget_ms'] for r in measured]
        ax.plot([min(b), max(b)], [min(b), max(b)], 'k--', lw=0.8, label='budget')
        ax.set_xlabel('latency budget (ms)')
        ax.set_ylabel('measured latency of the found sub-network (ms)')
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, 'search_measured_vs_budget.png'))
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=110)
        for k in dict.fromkeys(r['estimator'] for r in measured):
            sel = sorted((r for r in measured if r['estimator'] == k),
                         key=lambda r: r['measured_ms'])
            ax.plot([r['measured_ms'] for r in sel], [r['objective'] for r in sel],
                    'o-',
                    label=summary['estimators'][k]['label'])
        name = measured[0]['objective_name']
        ax.set_xlabel('measured latency (ms)')
        ax.set_ylabel(name + (' (a proxy, not accuracy)' if name.startswith('proxy:') else ''))
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, 'front.png'))
        plt.close(fig)

    breakdown = summary.get('breakdown') or {}
    if breakdown.get('mean_ms'):
        parts, means = breakdown['parts'], breakdown['mean_ms']
        fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
        height = 0.8 / len(means)
        y = np.arange(len(parts))
        for i, (k, v) in enumerate(means.items()):
            ax.barh(y + i * height, v, height, label=summary['estimators'][k]['label'])
        ax.set_yticks(y + height * (len(means) - 1) / 2, parts)
        ax.invert_yaxis()
        ax.set_xlabel('mean latency over the held-out sub-networks (ms)')
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, 'breakdown.png'))
        plt.close(fig)


def breakdown_lines(summary) -> list[str]:
    """The "where the latency goes" table (empty without a LUT or additive predictor)."""
    b = summary.get('breakdown') or {}
    means = b.get('mean_ms') or {}
    if not means:
        return []
    names = list(means)
    lines = [
        '## Where the latency goes', '', 'Mean over the held-out sub-networks, in ms: the '
        'LUT\'s entries (each layer timed alone) and the additive predictor\'s learned terms '
        '(`Predictor.breakdown`). Only differences between block choices are pinned down by '
        'whole-network measurements: a constant can move between the fixed layers and the '
        'blocks every sub-network has, so compare stages across estimators with that in mind.', '',
        '| part | ' + ' | '.join(summary['estimators'][k]['label'] for k in names) + ' |',
        '|---|' + '---|' * len(names)
    ]
    for i, part in enumerate(b['parts']):
        lines.append(f'| {part} | ' + ' | '.join(f'{means[k][i]:.3f}' for k in names) + ' |')
    lines += [
        '| **total** | ' + ' | '.join(f'**{sum(means[k]):.3f}**' for k in names) + ' |', '',
        f'Measured mean of the same sub-networks: {b["measured_mean_ms"]:.3f} ms.', '',
        '![latency per part](breakdown.png)', ''
    ]
    return lines


def _write_csv(path: str, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_report(out_dir: str, summary: Mapping[str, Any], *, workdir: str, archs: space.Arch,
                 latency_ms: np.ndarray, test_index: np.ndarray,
                 predictions: Mapping[str, np.ndarray]) -> str:
    """Writes the report folder; returns the path of ``report.md``.

    Args:
      out_dir: the report folder (created).
      summary: what :func:`experiments.jobs.main.run` assembled.
      workdir: the main job's workdir (for its command line).
      archs, latency_ms: the measured sub-networks in split order.
      test_index: the held-out rows.
      predictions: estimator -> predictions on the held-out rows.
    """
    os.makedirs(out_dir, exist_ok=True)
    n = len(latency_ms)
    split = np.full(n, 'train', dtype=object)
    r = summary['rows']
    split[r['train']:r['train'] + r['val']] = 'val'
    split[r['train'] + r['val']:] = 'test'
    host = space.unstack(archs)
    _write_csv(os.path.join(out_dir, 'measurements.csv'), ['child_arch', 'latency', 'split'], [
        [space.format_child_arch(a), repr(float(v)), s] for a, v, s in zip(host, latency_ms, split)
    ])
    names = list(predictions)
    _write_csv(os.path.join(out_dir, 'predictions.csv'),
               ['child_arch', 'latency'] + [f'pred_{k}' for k in names],
               [[space.format_child_arch(host[i]),
                 repr(float(latency_ms[i]))] + [repr(float(predictions[k][j]))
                                                for k in names]
                for j, i in enumerate(test_index)])
    search_rows = _search_rows(summary)
    if search_rows:
        _write_csv(os.path.join(out_dir, 'search.csv'), list(search_rows[0]),
                   [list(row.values()) for row in search_rows])
    _plots(out_dir, summary, latency_ms, test_index, predictions, search_rows)
    files.write_json(os.path.join(out_dir, 'config.json'), summary['config'])
    cmds = commands(summary, workdir)
    files.write_text(os.path.join(out_dir, 'commands.txt'), '\n'.join(cmds) + '\n')

    fp = summary.get('fingerprint') or {}
    ratios = rmse_ratios(summary)
    # The best *predictor*: an estimator that cannot be searched (xla_cost) is a yardstick.
    searchable = [k for k in ratios if summary['estimators'][k]['latency_path'] is not None]
    best = min(searchable or ratios, key=ratios.get)
    camp = summary['campaign']
    md = [
        '# ofa-jax main job report',
        '',
        f'- date: {summary["date"]}',
        f'- device: {fp.get("platform", "?")} / {fp.get("device_kind", "?")}, CPU '
        f'{fp.get("cpu_model", "?")}, {len(fp.get("affinity") or [])} cores in affinity, '
        f'jax {fp.get("jax_version", "?")}',
        f'- device fingerprint id: `{summary["device_id"]}`; store: `{summary["store"]}`',
        f'- measured sub-networks: {r["total"]} (train {r["train"]}, validation {r["val"]}, '
        f'held-out test {r["test"]}); this run measured {camp.get("measured", 0)} '
        f'({camp.get("already_done", 0)} reused from the store), '
        f'{camp.get("per_minute", 0):.1f} per minute',
        f'- lookup table: {summary["lut"]["layers"]} layers timed alone '
        f'({summary["lut"]["timed_now"]} in this run)',
        *_gauge_lines(camp),
        '',
        '## Estimators on the same held-out measured sub-networks',
        '',
        *_estimator_table(summary),
        '',
        f'Best predictor vs LUT RMSE ratio: **{ratios[best]:.3f}** ({best}; target <= 0.5). '
        'All ratios: ' + ', '.join(f'{k} {v:.3f}' for k, v in ratios.items()) + '.',
        '',
        'Cost: the LUT needs every layer configuration timed alone; the predictors need the '
        'whole sub-networks of their train and validation rows (time = lower + compile + '
        'timing of those rows, plus training). XLA\'s cost analysis is fitted on the train '
        'rows (latency = t0 + a x GFLOP + b x GB, a, b >= 0: predictors.xla_cost); scoring an '
        'arch needs its compile, so it is a yardstick and is not searched.' +
        (' The onboarded predictor costs the whole sub-networks it adapted on (the zoo\'s '
         'reference archs and its shots) plus its adaptation (the cross-validated choice and the '
         'final fit); the zoo\'s own training on other devices is not counted.'
         if 'onboard' in summary['estimators'] else ''),
        '',
        '![predicted vs measured](pred_vs_measured.png)',
        '',
        '![error distribution](error_distribution.png)',
        '',
        *breakdown_lines(summary),
        '## Search at three budgets, found sub-networks measured',
        '',
        *_search_table(search_rows),
        '',
        *_search_summary(search_rows),
        '',
        *budget_safety_lines(summary),
        *found_lines(summary),
        *[
            f'- search with {k} not run: {v["error"]}' for k, v in summary['searches'].items()
            if v.get('error')
        ],
        *[
            f'- search with {k} skipped budgets {v["dropped_budgets"]} ms: below its smallest '
            f'sub-network, {v["smallest_ms"]:.2f} ms'
            for k, v in summary['searches'].items()
            if v.get('dropped_budgets')
        ],
        '',
        '![measured latency vs budget](search_measured_vs_budget.png)',
        '',
        '![objective vs measured latency](front.png)',
        '',
    ]
    if search_rows and search_rows[0]['objective_name'].startswith('proxy:'):
        md += [
            f'The objective is the proxy `{search_rows[0]["objective_name"]}` (no accuracy '
            'source was given): it is not accuracy.', ''
        ]
    md += [
        '## Largest and smallest sub-networks', '', '| network | params | MACs at 224 | '
        'MACs at 128 |', '|---|---|---|---|'
    ]
    for c in summary['reference_counts']:
        md.append(f'| w{c["width"]} {c["arch"]} | {c["params"]:,} | {c["macs_224"] / 1e6:.1f}M | '
                  f'{c["macs_128"] / 1e6:.1f}M |')
    md += ['', '## Stage times (s)', '', '| stage | seconds |', '|---|---|']
    md += [f'| {k} | {v:.1f} |' for k, v in summary['stages_s'].items()]
    md += ['', '## Commands', '', 'The main job, then each stage on its own:', '', '```']
    md += cmds + [
        '```', '', 'Each stage command is generated from the config that stage ran with, '
        'so it reruns the stage exactly: the fits read the campaign\'s '
        f'{summary["rows"]["total"]} seeded random sub-networks from `fit_rows.csv` (the '
        'store also holds the gauge network and the verified search results, which are not '
        'a random sample).', '', 'Data: `measurements.csv`, `predictions.csv`, `search.csv`; '
        'config: `config.json`.', ''
    ]
    path = os.path.join(out_dir, 'report.md')
    files.write_text(path, '\n'.join(md))
    return path


def print_summary(summary: Mapping[str, Any]) -> None:
    """The few lines printed at the end of the main job."""
    print('\nestimator                         RMSE ms  MAPE %  within10  tau    cost')
    for est in summary['estimators'].values():
        m = est['metrics']
        print(f'{est["label"]:<32} {m["rmse_ms"]:8.3f} {m["mape"]:7.2f} {100 * m["acc10"]:8.1f}% '
              f'{m["kendall_tau"]:6.3f} {est["measurements"]} {est["measurement_kind"]}, '
              f'{est["cost_minutes"]:.1f} min')
    ratios = rmse_ratios(summary)
    print('predictor / LUT RMSE: ' + ', '.join(f'{k} {v:.3f}' for k, v in ratios.items()))
    for row in _search_summary(_search_rows(summary))[2:]:
        print('search ' + row.strip('|').replace(' | ', ': ', 1).replace(' | ', ', '))
    print(f'total {summary["stages_s"]["total"] / 60:.1f} min')
