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


def estimator_summary(search: dict[str, Any]) -> dict[str, Any]:
    """Shares within budget (first measurement, after the loop) and the price per budget."""
    rounds = search.get('rounds') or []
    results = search.get('results') or []
    kept = _best(results, within_only=True)
    plain = _best(search.get('uncorrected') or [], within_only=False)
    scale = 100.0 if not str(search.get('objective_name', '')).startswith('proxy:') else 1.0
    budgets = []
    for b in sorted({r['budget_ms'] for r in results}):
        sel = [r for r in results if r['budget_ms'] == b]
        row = {
            'budget_ms': b,
            'searches': len(sel),
            'within': sum(bool(r.get('within_budget')) for r in sel),
            'kept_objective': kept[b]['objective'] if b in kept else None,
            'kept_measured_ms': kept[b].get('measured_ms') if b in kept else None,
            'uncorrected_objective': plain[b]['objective'] if b in plain else None,
        }
        if b in kept and b in plain:
            row['price'] = scale * (plain[b]['objective'] - kept[b]['objective'])
        budgets.append(row)
    return {
        'constraint': search.get('constraint'),
        'objective_name': search.get('objective_name'),
        'searches': len(results),
        'first_share': rounds[0]['share_within_budget'] if rounds else None,
        'final_share': rounds[-1]['share_within_budget'] if rounds else None,
        'rounds': len(rounds),
        'dropped_budgets': search.get('dropped_budgets', []),
        'error': search.get('error'),
        'budgets': budgets,
        'price_unit': 'points' if scale == 100.0 else 'objective units',
    }


def table(summary: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Markdown lines and the JSON content for a main job summary."""
    out = {m: estimator_summary(s) for m, s in summary['searches'].items()}
    lines = [
        f'Main job {summary.get("date", "")}, {summary["rows"]["total"]} measured rows, budgets '
        f'{[round(b, 2) for b in summary["budgets_ms"]]} ms, '
        f'{summary["config"]["search"]["seeds"]} seeds per budget.', '',
        '| estimator | constraint | searches | within budget, first measurement | '
        'after closed loop | rounds | max price vs uncorrected |', '|---|---|---|---|---|---|---|'
    ]
    for m, s in out.items():
        if s['error']:
            lines.append(f'| {m} | not run: {s["error"]} | | | | | |')
            continue
        prices = [b['price'] for b in s['budgets'] if 'price' in b]
        price = f'{max(prices):.2f} {s["price_unit"]}' if prices else 'n/a'
        lines.append(f'| {m} | {s["constraint"]} | {s["searches"]} | '
                     f'{100 * s["first_share"]:.0f}% | {100 * s["final_share"]:.0f}% | '
                     f'{s["rounds"]} | {price} |')
    lines += [
        '', '| estimator | budget (ms) | within / searches | kept pick measured (ms) | '
        'kept objective | uncorrected objective | price |', '|---|---|---|---|---|---|---|'
    ]
    for m, s in out.items():
        for b in s['budgets']:
            fmt = lambda v, p=4: '-' if v is None else f'{v:.{p}f}'  # noqa: E731
            lines.append(f'| {m} | {b["budget_ms"]:.2f} | {b["within"]}/{b["searches"]} | '
                         f'{fmt(b["kept_measured_ms"], 2)} | {fmt(b["kept_objective"])} | '
                         f'{fmt(b["uncorrected_objective"])} | {fmt(b.get("price"), 2)} |')
        if s['dropped_budgets']:
            lines.append(f'| {m} | {s["dropped_budgets"]} dropped: below its smallest '
                         'sub-network | | | | | |')
    return lines, out


def main(argv):
    del argv
    with open(os.path.join(FLAGS.workdir, 'summary.json')) as f:
        summary = json.load(f)
    lines, out = table(summary)
    lines += ['', f'Command: `python -m benchmarks.budget_safety --workdir={FLAGS.workdir}`']
    print('\n'.join(lines))
    with open(FLAGS.out + '.md', 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(FLAGS.out + '.json', 'w') as f:
        json.dump(out, f, indent=1)


if __name__ == '__main__':
    flags.mark_flag_as_required('workdir')
    app.run(main)
