"""SIGKILL a latency campaign at random instants: nothing measured is lost, nothing doubled.

    python -m benchmarks.kill_campaign [--kills=10] [--archs=80] [--seed=0]

One store, one campaign of ``--archs`` sub-networks (tiny: resolution 128, a
10-class head, 3 timed runs). The campaign is started ``--kills`` times and
killed with SIGKILL after a delay drawn uniformly from [--low, --high] s
(seeded; the default 1-45 s spans start-up, compiles, timing and the final
export on this CPU),
then run once more to the end. After every kill the benchmark checks, with
SQLite's own ``integrity_check`` on a read-only connection:

* lost: rows the killed process reported as measured (its progress line is
  printed after the row's commit) that are not in the store (must be 0);
* doubled: archs stored twice (must be 0);
* the store opens and ``latency.csv``/``campaign.json``, if present, parse.

It prints one line per kill and writes ``benchmarks/results/kill_campaign.json``.
Exit status 1 when any check fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from ofa_jax import csvio
from ofa_jax import files

_KILLS = flags.DEFINE_integer('kills', 10, 'SIGKILLs, each at a random instant.')
_ARCHS = flags.DEFINE_integer(
    'archs', 80, 'Sub-networks in the campaign: enough that every kill lands before its end.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the kill delays.')
_LOW = flags.DEFINE_float('low', 1.0, 'Shortest delay before a kill (s).')
_HIGH = flags.DEFINE_float('high', 45.0, 'Longest delay before a kill (s).')
_OUT = flags.DEFINE_string('out', 'benchmarks/results/kill_campaign.json', 'Result file.')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DONE_RE = re.compile(r'\]\s+(\d+)/(\d+)')


def campaign_args(store: str, workdir: str, num_archs: int) -> list[str]:
    """The command line of the campaign under test (tiny, deterministic arch list)."""
    return [
        sys.executable, '-m', 'experiments.measure_latency', f'--config.num_archs={num_archs}',
        '--config.resolutions=128', '--config.batch_sizes=1', '--config.seed=0',
        f'--config.store={store}', f'--workdir={workdir}', '--config.num_classes=10',
        '--config.protocol.warmup=1', '--config.protocol.repeats=3', '--config.protocol.min_time=0',
        '--config.protocol.number=1', '--config.drift.interval=0', '--config.microbenchmarks=False',
        '--config.progress=True'
    ]


def stored_keys(store: str) -> tuple[list[str], str]:
    """(arch keys of the measurement rows, integrity_check's answer), read-only."""
    if not os.path.exists(store):
        return [], 'absent'
    con = sqlite3.connect(f'file:{store}?mode=ro', uri=True, timeout=30)
    try:
        ok = con.execute('PRAGMA integrity_check').fetchone()[0]
        try:
            keys = [r[0] for r in con.execute('SELECT arch_key FROM measurements')]
        except sqlite3.OperationalError:  # Killed before the schema was written.
            keys = []
        return keys, ok
    finally:
        con.close()


def reported_done(stderr_text: str) -> int:
    """Rows the campaign said it had stored (the last progress count)."""
    counts = [int(m.group(1)) for m in _DONE_RE.finditer(stderr_text)]
    return max(counts) if counts else 0


def outputs_parse(workdir: str) -> bool:
    """The campaign's output files, where present, are whole."""
    try:
        if os.path.exists(os.path.join(workdir, 'campaign.json')):
            with open(os.path.join(workdir, 'campaign.json')) as f:
                json.load(f)
        if os.path.exists(os.path.join(workdir, 'latency.csv')):
            csvio.read_ofa_csv(os.path.join(workdir, 'latency.csv'))
    except (ValueError, OSError):
        return False
    return True


def run_once(args: list[str], env: dict[str, str], delay_s: float | None,
             log_path: str) -> tuple[int | None, str]:
    """Runs the campaign, SIGKILLed after ``delay_s`` (None: to the end); (rc, stderr)."""
    with open(log_path, 'w') as err:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            proc.wait(timeout=delay_s if delay_s is not None else 900)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    with open(log_path, errors='replace') as f:
        return proc.returncode, f.read()


def main(argv):
    del argv
    rng = np.random.default_rng(_SEED.value)
    delays = rng.uniform(_LOW.value, _HIGH.value, size=_KILLS.value)
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
    outcomes, failed = [], False
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, 'lat.sqlite')
        work = os.path.join(tmp, 'work')
        args = campaign_args(store, work, _ARCHS.value)
        print(f'{"kill":>4} {"after_s":>7} {"rc":>4} {"before":>6} {"reported":>8} '
              f'{"stored":>6} {"lost":>4} {"doubled":>7} {"integrity":>9} {"files":>5}')
        for i, delay in enumerate([*delays, None]):
            before, _ = stored_keys(store)
            t0 = time.monotonic()
            rc, err = run_once(args, env, None if delay is None else float(delay),
                               os.path.join(tmp, f'run{i}.log'))
            keys, integrity = stored_keys(store)
            reported = len(before) + reported_done(err)
            row = {
                'kill': i + 1 if delay is not None else 'final',
                'after_s': None if delay is None else round(float(delay), 2),
                'ran_s': round(time.monotonic() - t0, 2),
                'returncode': rc,
                'killed': rc == -signal.SIGKILL,
                'rows_before': len(before),
                'reported': reported,
                'stored': len(keys),
                'lost': max(0, reported - len(keys)),
                'doubled': len(keys) - len(set(keys)),
                'integrity': integrity if keys or integrity != 'absent' else 'absent',
                'files_parse': outputs_parse(work),
            }
            ok = (row['lost'] == 0 and row['doubled'] == 0 and integrity in ('ok', 'absent') and
                  row['files_parse'] and len(keys) >= len(before))
            if delay is None:
                ok = ok and rc == 0 and len(set(keys)) == _ARCHS.value
            failed |= not ok
            row['ok'] = ok
            outcomes.append(row)
            print(f'{row["kill"]!s:>4} {row["after_s"]!s:>7} {rc!s:>4} {len(before):>6} '
                  f'{reported:>8} {len(keys):>6} {row["lost"]:>4} {row["doubled"]:>7} '
                  f'{integrity:>9} {str(row["files_parse"]):>5}' + ('' if ok else '  FAILED'))
            if delay is None and rc != 0:
                print(err[-2000:])
    final = outcomes[-1]
    landed = sum(bool(o['killed']) for o in outcomes)
    print(f'{landed} of {_KILLS.value} kills landed before the campaign ended')
    print(f'final: {final["stored"]} rows, {final["stored"] - final["doubled"]} distinct of '
          f'{_ARCHS.value} planned; {"all checks passed" if not failed else "CHECKS FAILED"}')
    files.write_json(
        os.path.join(ROOT, _OUT.value), {
            'command':
                'python -m benchmarks.kill_campaign ' +
                f'--kills={_KILLS.value} --archs={_ARCHS.value} --seed={_SEED.value}',
            'outcomes':
                outcomes,
            'kills_landed':
                landed,
            'passed':
                not failed,
        })
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    app.run(main)
