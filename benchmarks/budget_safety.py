"""How often the main job's picks measure within budget, and what that costs in objective.

Reads a main job's ``summary.json`` (run it with several seeds per budget and
an accuracy objective, e.g.::

    python -m experiments.main --workdir=W --config.seeds=5 \
      --config.accuracy=../shared/data/external/ofa_acc_predictor/acc_predictor.pth

) and prints, per estimator: the share of searches (budget x seed) whose pick
measured within budget on the first measurement (the calibrated bound alone)
and after the closed loop; and per budget, the objective of the kept pick
(best over seeds of those within budget) against the uncorrected search's
best (point estimate as constraint, same budget and seeds, not measured), in
points of predicted top-1 when the objective is an accuracy.

    python -m benchmarks.budget_safety --workdir=W [--out=benchmarks/results/budget_safety_cpu]

Writes ``OUT.md`` and ``OUT.json``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import app
from absl import flags
import numpy as np

from experiments.jobs import search as search_job
from ofa_jax import csvio
from ofa_jax import space

flags.DEFINE_string('workdir', None, 'A main job workdir (summary.json).')
flags.DEFINE_string('out', 'benchmarks/results/budget_safety_cpu', 'Output path without suffix.')
FLAGS = flags.FLAGS


def _best(rows: list[dict[str, Any]], within_only: bool) -> dict[float, dict[str, Any]]:
    best: dict[float, dict[str, Any]] = {}
    for r in rows:
        if not r['feasible'] or (within_only and not r.get('within_budget', False)):
            continue
        b = r['budget_ms']
        if b not in best or r['objective'] > best[b]['objective']:
            best[b] = r
    return best


def measured_reference(workdir: str, summary: dict[str, Any]) -> list[tuple[float, float]]:
    """(measured ms, objective) of every sub-network this job measured on the device.

    The campaign's rows (``fit_rows.csv``) and every pick any search measured:
    a model-free reference, the best objective that a measurement showed to
    fit a budget, whatever estimator found it.
    """
    rows: dict[str, tuple[float, float]] = {}
    for search in summary['searches'].values():
        for r in ((search.get('results') or []) + (search.get('point_candidates') or []) +
                  (search.get('store_candidates') or [])):
            if 'measured_ms' in r:
                key = space.arch_key(space.from_ofa_dict(r['arch']))
                rows[key] = (r['measured_ms'], r['objective'])
    path = os.path.join(workdir, 'fit_rows.csv')
    if os.path.exists(path):
        table = csvio.read_ofa_csv(path)
        objective = search_job.load_objective(summary['config']['accuracy'],
                                              float(summary['config']['width']))
        score = np.asarray(objective(table.archs), np.float64)
        for arch, ms, obj in zip(space.unstack(table.archs), table.latency_ms, score):
            rows.setdefault(space.arch_key(arch), (float(ms), float(obj)))
    return list(rows.values())


Reference = list[tuple[float, float]]
PRICE_TARGET = 0.3  # Points of top-1 the issue allows a within-budget pick to give up.


def estimator_summary(search: dict[str, Any], reference: Reference = ()) -> dict[str, Any]:
    """Shares within budget (first measurement, after the loop) and the price per budget."""
    rounds = search.get('rounds') or []
    results = search.get('results') or []
    points = search.get('point_candidates') or []
    stored = search.get('store_candidates') or []
    kept = _best(results + points + stored, within_only=True)
    plain = _best(search.get('uncorrected') or [], within_only=False)
    measured_plain = {(r['budget_ms'], r['seed']): r for r in points}
    scale = 100.0 if not str(search.get('objective_name', '')).startswith('proxy:') else 1.0
    budgets = []
    dropped = [float(np.float32(b)) for b in search.get('dropped_budgets', [])]
    # The searched budgets, and any dropped one the store still served.
    for b in sorted({r['budget_ms'] for r in results} | (set(dropped) & set(kept))):
        sel = [r for r in results if r['budget_ms'] == b]
        row = {
            'budget_ms': b,
            'searches': len(sel),
            'within': sum(bool(r.get('within_budget')) for r in sel),
            'kept_objective': kept[b]['objective'] if b in kept else None,
            'kept_measured_ms': kept[b].get('measured_ms') if b in kept else None,
            'uncorrected_objective': plain[b]['objective'] if b in plain else None,
            'kept_from': (kept[b].get('source', 'bound') if b in kept else None),
        }
        if b in plain:
            u = plain[b]
            m = u if 'measured_ms' in u else measured_plain.get((b, u['seed']))
            if m is not None and m['arch'] == u['arch']:
                row['uncorrected_measured_ms'] = m['measured_ms']
        if b in kept and b in plain:
            row['price'] = scale * (plain[b]['objective'] - kept[b]['objective'])
        if b in plain and scale == 100.0:
            row['needed_objective'] = plain[b]['objective'] - PRICE_TARGET / scale
        fit = [obj for ms, obj in reference if ms <= b]
        if fit:
            row['reference_objective'] = max(fit)
            if b in kept:
                row['vs_reference'] = scale * (row['reference_objective'] - kept[b]['objective'])
        budgets.append(row)
    unserved = [b for b in dropped if b not in kept]
    return {
        'constraint': search.get('constraint'),
        'objective_name': search.get('objective_name'),
        'searches': len(results),
        'first_share': rounds[0]['share_within_budget'] if rounds else None,
        'final_share': rounds[-1]['share_within_budget'] if rounds else None,
        'rounds': len(rounds),
        'refits': [r['refit'] for r in rounds if 'refit' in r],
        'dropped_budgets': search.get('dropped_budgets', []),
        'unserved_budgets': unserved,
        # What the job returns: per requested budget, a pick that measured within it.
        'kept_within': sum(1 for b in budgets if b['kept_objective'] is not None),
        'requested_budgets': len(budgets) + len(unserved),
        'error': search.get('error'),
        'budgets': budgets,
        'price_unit': 'points' if scale == 100.0 else 'objective units',
    }


def table(summary: dict[str, Any], workdir: str = '') -> tuple[list[str], dict[str, Any]]:
    """Markdown lines and the JSON content for a main job summary."""
    reference = measured_reference(workdir, summary) if workdir else []
    out = {m: estimator_summary(s, reference) for m, s in summary['searches'].items()}
    lines = [
        f'Main job {summary.get("date", "")}, {summary["rows"]["total"]} measured rows, budgets '
        f'{[round(b, 2) for b in summary["budgets_ms"]]} ms, '
        f'{summary["config"]["search"]["seeds"]} seeds per budget.', '',
        '| estimator | constraint | searches | within budget, first measurement | '
        'after closed loop | rounds | refits (rows, MAPE on them before -> after) | budgets '
        'whose returned pick measured within | max price vs uncorrected |',
        '|---|---|---|---|---|---|---|---|---|'
    ]
    for m, s in out.items():
        if s['error']:
            lines.append(f'| {m} | not run: {s["error"]} | | | | | | | |')
            continue
        prices = [b['price'] for b in s['budgets'] if 'price' in b]
        price = f'{max(prices):.2f} {s["price_unit"]}' if prices else 'n/a'
        refits = '; '.join(f'{r["rows"]}, {r["mape_before"]:.1f}% -> {r["mape_after"]:.1f}%'
                           for r in s['refits']) or '-'
        lines.append(f'| {m} | {s["constraint"]} | {s["searches"]} | '
                     f'{100 * s["first_share"]:.0f}% | {100 * s["final_share"]:.0f}% | '
                     f'{s["rounds"]} | {refits} | {s["kept_within"]} of {s["requested_budgets"]} | '
                     f'{price} |')
    lines += [
        '', '| estimator | budget (ms) | within / searches | kept pick (from) | kept pick '
        'measured (ms) | kept objective | uncorrected objective | uncorrected pick measured '
        f'(ms) | price | needed for a price <= {PRICE_TARGET} | best measured within budget '
        '(model-free) | kept vs it |', '|' + '---|' * 12
    ]
    for m, s in out.items():
        for b in s['budgets']:
            fmt = lambda v, p=4: '-' if v is None else f'{v:.{p}f}'  # noqa: E731
            u_ms = b.get('uncorrected_measured_ms')
            u_txt = '-' if u_ms is None else (f'{u_ms:.2f}' +
                                              (' (over)' if u_ms > b['budget_ms'] else ''))
            lines.append(f'| {m} | {b["budget_ms"]:.2f} | {b["within"]}/{b["searches"]} | '
                         f'{b["kept_from"] or "-"} | '
                         f'{fmt(b["kept_measured_ms"], 2)} | {fmt(b["kept_objective"])} | '
                         f'{fmt(b["uncorrected_objective"])} | {u_txt} | '
                         f'{fmt(b.get("price"), 2)} | {fmt(b.get("needed_objective"))} | '
                         f'{fmt(b.get("reference_objective"))} | '
                         f'{fmt(b.get("vs_reference"), 2)} |')
        if s['unserved_budgets']:
            dropped = ', '.join(f'{b:.2f}' for b in s['unserved_budgets'])
            lines.append(f'| {m} | {dropped} dropped: below its smallest sub-network under the '
                         'constraint; no pick returned |' + ' |' * 10)
    lines += [
        '', 'price: uncorrected objective minus kept objective, where the uncorrected pick (point'
        ' estimate as constraint) was not required to measure within budget; "(over)" marks '
        'one that measured over it: its objective is not to be had at that budget on this '
        'device. The model-free reference is the best objective among every sub-network this '
        'job measured on the device (campaign rows and all picks) within the budget; "kept vs'
        ' it" > 0 means a measured sub-network that fits scores higher than the kept pick; '
        f'where it is below "needed for a price <= {PRICE_TARGET}", no sub-network the device '
        'measured within the budget meets the price target. Searches (first table): each '
        'seed\'s own pick; "budgets whose returned pick measured within" counts what the job '
        "returns per budget (the best of the seeds' picks, the point estimate's picks and the"
        " store's rows that measured within it), a budget the bound dropped as below the "
        'smallest sub-network included (0 searches: served from the store when a stored row '
        'fits).'
    ]
    return lines, out


def main(argv):
    del argv
    with open(os.path.join(FLAGS.workdir, 'summary.json')) as f:
        summary = json.load(f)
    lines, out = table(summary, FLAGS.workdir)
    lines += ['', f'Command: `python -m benchmarks.budget_safety --workdir={FLAGS.workdir}`']
    print('\n'.join(lines))
    with open(FLAGS.out + '.md', 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(FLAGS.out + '.json', 'w') as f:
        json.dump(out, f, indent=1)


if __name__ == '__main__':
    flags.mark_flag_as_required('workdir')
    app.run(main)
