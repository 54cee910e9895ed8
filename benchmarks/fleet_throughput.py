"""Archs per minute of a 2-actor local Ray fleet against one process, and the fleet's overhead.

    python -m benchmarks.fleet_throughput [--archs=6] [--actors=2]

Both measure the same tiny campaign (``--archs`` sub-networks at resolution
128, a 10-class head, 3 timed runs, paired protocol) into stores of their
own: first one process (``experiments.measure_latency``, as a subprocess),
then a fleet of ``--actors`` CPU actors on a local Ray instance
(``--config.cluster=local``). Reported:

* ``per_minute``: archs measured per minute once measuring has started
  (after the gauge, and for the fleet after the actors have started);
  ``wall_s``: the whole command, start-up included;
* ``dispatch_ms``: median round trip of an empty call to an actor;
* ``return_ms``: mean time from an actor finishing an arch to the driver
  having committed its row (result transfer + commit);
* ``overhead_ms_per_arch``: dispatch + return, what the fleet adds per arch
  (with ``PREFETCH`` archs queued per actor it overlaps with measuring).

Writes ``benchmarks/results/fleet_throughput_cpu.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from ofa_jax import files

_ARCHS = flags.DEFINE_integer('archs', 6, 'Sub-networks in the campaign.')
_ACTORS = flags.DEFINE_integer('actors', 2, 'Actors of the fleet.')
_OUT = flags.DEFINE_string('out', 'benchmarks/results/fleet_throughput_cpu.json', 'Result file.')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def campaign_args(store: str, workdir: str, num_archs: int) -> list[str]:
    """The campaign's command line (tiny networks, deterministic arch list)."""
    return [
        sys.executable, '-m', 'experiments.measure_latency', f'--config.num_archs={num_archs}',
        '--config.resolutions=128', '--config.batch_sizes=1', '--config.seed=0',
        f'--config.store={store}', f'--workdir={workdir}', '--config.num_classes=10',
        '--config.protocol.warmup=1', '--config.protocol.repeats=3', '--config.protocol.min_time=0',
        '--config.protocol.number=1', '--config.drift.interval=0', '--config.microbenchmarks=False',
        '--config.progress=False'
    ]


def _run(args: list[str]) -> tuple[dict, float]:
    t0 = time.monotonic()
    proc = subprocess.run(args,
                          cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu'),
                          capture_output=True,
                          text=True,
                          check=False)
    wall = time.monotonic() - t0
    if proc.returncode:
        raise SystemExit(f'campaign failed ({proc.returncode}): {proc.stderr[-2000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def _dispatch_ms() -> float:
    """Median round trip of an empty actor call on a fresh local Ray instance."""
    import ray  # pylint: disable=g-import-not-at-top
    from experiments import fleet  # pylint: disable=g-import-not-at-top
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        handle = ray.remote(num_cpus=1)(_Echo).remote()
        ray.get(handle.ping.remote(0.0))
        return fleet.round_trip_ms(handle, n=50)
    finally:
        ray.shutdown()


class _Echo:
    """The smallest actor: what an empty call costs."""

    def ping(self, sent_at: float) -> float:
        return sent_at


def main(argv: list[str]) -> None:
    del argv
    n = _ARCHS.value
    with tempfile.TemporaryDirectory() as tmp:
        one, one_wall = _run(campaign_args(os.path.join(tmp, 'one.sqlite'), tmp + '/one', n))
        print(f'one process: {one["measured"]} archs, {one["per_minute"]:.2f}/min '
              f'(wall {one_wall:.0f} s)')
        fleet_summary, fleet_wall = _run(
            campaign_args(os.path.join(tmp, 'fleet.sqlite'), tmp + '/fleet', n) +
            ['--config.cluster=local', f'--config.fleet_size={_ACTORS.value}'])
        print(f'fleet of {_ACTORS.value}: {fleet_summary["measured"]} archs, '
              f'{fleet_summary["per_minute"]:.2f}/min (wall {fleet_wall:.0f} s)')
    dispatch = _dispatch_ms()
    ret = fleet_summary['return_ms_mean'] or 0.0
    result = {
        'note': ('2-core VM shared with another engineer; tiny campaign (r128, 10 classes, '
                 '3 timed runs, paired protocol), CPU actors pinned to a core each'),
        'archs': n,
        'actors': _ACTORS.value,
        'one_process': {
            'per_minute': one['per_minute'],
            'wall_s': one_wall,
            'compile_s_mean': one['compile_s_mean'],
            'measured': one['measured'],
        },
        'fleet': {
            'per_minute': fleet_summary['per_minute'],
            'wall_s': fleet_wall,
            'compile_s_mean': fleet_summary['compile_s_mean'],
            'measured': fleet_summary['measured'],
            'actors': [{
                k: a[k] for k in ('name', 'core', 'rows')
            } for a in fleet_summary['actors']],
        },
        'speedup_per_minute':
            (fleet_summary['per_minute'] / one['per_minute'] if one['per_minute'] else None),
        'dispatch_ms': dispatch,
        'return_ms': ret,
        'overhead_ms_per_arch': dispatch + ret,
    }
    print(f'speed-up {result["speedup_per_minute"]:.2f}x; overhead per arch '
          f'{result["overhead_ms_per_arch"]:.1f} ms (dispatch {dispatch:.1f} ms, return '
          f'{ret:.1f} ms)')
    files.write_json(_OUT.value, result)


if __name__ == '__main__':
    app.run(main)
