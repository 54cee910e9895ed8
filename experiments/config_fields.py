"""Parsing and validation of config fields, shared by every experiment.

One error class, so a launcher catches one thing, and one parser per kind
of field, so a message always names the field, the bad value and what is
allowed. Lists are tuples in the configs; ml_collections turns
``--config.resolutions=128,160`` into ``(128, 160)``, while a tuple of
strings given as ``--config.predictors=mlp,additive`` arrives as
``('mlp,additive',)``: the parsers accept both, a plain comma string (for
notebooks) and a sequence.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

import numpy as np

from ofa_jax import depthwise as dw
from ofa_jax import space
from ofa_jax.latency import fingerprint as fp_lib
from ofa_jax.latency import measure
from ofa_jax.latency import store as store_lib


class ConfigError(ValueError):
    """A config field has a bad value; the message names it and says what to use."""


def items(value: Any) -> list[Any]:
    """Elements of a comma string, a number or a sequence (strings split on commas)."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    elif not isinstance(value, (list, tuple)):
        value = [value]
    out: list[Any] = []
    for v in value:
        if isinstance(v, str):
            out.extend(p.strip() for p in v.replace(' ', ',').split(',') if p.strip())
        else:
            out.append(v)
    return out


def int_tuple(name: str,
              value: Any,
              allowed: Sequence[int] | None = None,
              *,
              minimum: int = 1,
              allow_empty: bool = False) -> tuple[int, ...]:
    """Distinct ints from ``(128, 160)``, ``'128,160'``, ``'128-224'`` (step 4 for
    resolutions, else 1) or ``128``, in the order given.

    Raises:
      ConfigError: naming ``config.NAME``, the bad value and the allowed values.
    """
    out: list[int] = []
    try:
        for p in items(value):
            if isinstance(p, str) and '-' in p.strip('-'):  # 'A-B': A to B.
                lo, hi = (int(v) for v in p.split('-'))
                out.extend(range(lo, hi + 1, 4 if name.endswith('resolutions') else 1))
            elif isinstance(p, (bool, np.bool_)) or (isinstance(p, float) and not p.is_integer()):
                raise ValueError
            else:
                out.append(int(p))
    except (TypeError, ValueError):
        raise ConfigError(f'config.{name}: {value!r} is not a comma-separated list of integers '
                          f'(e.g. --config.{name}=128,160)') from None
    if not out and not allow_empty:
        raise ConfigError(f'config.{name}: empty; give at least one value')
    if allowed is not None:
        bad = [v for v in out if v not in allowed]
        if bad:
            what = (f'multiples of 4 in [{allowed[0]}, {allowed[-1]}]'
                    if name.endswith('resolutions') else f'{tuple(allowed)}')
            raise ConfigError(f'config.{name}: {bad} not allowed; allowed: {what}')
    elif any(v < minimum for v in out):
        raise ConfigError(f'config.{name}: {tuple(out)}; allowed: integers >= {minimum}')
    return tuple(dict.fromkeys(out))


def one_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """A single integer >= ``minimum`` (a one-element list is accepted)."""
    values = int_tuple(name, value, minimum=minimum)
    if len(values) != 1:
        raise ConfigError(f'config.{name}: {value!r}; allowed: one integer >= {minimum}')
    return values[0]


def float_tuple(name: str, value: Any, *, allow_empty: bool = False) -> tuple[float, ...]:
    """Positive finite numbers from ``(15, 20)``, ``'15,20'`` or ``15``."""
    try:
        out = tuple(float(v) for v in items(value))
    except (TypeError, ValueError):
        raise ConfigError(f'config.{name}: {value!r} is not a comma separated list of numbers, '
                          f'e.g. --config.{name}=15,20,25') from None
    if not out and not allow_empty:
        raise ConfigError(f'config.{name}: empty; give positive numbers, e.g. 15,20,25')
    if any(not math.isfinite(v) or v <= 0 for v in out):
        raise ConfigError(f'config.{name}: {value!r}; allowed: positive finite numbers, '
                          'e.g. 15,20,25')
    return out


def str_tuple(name: str, value: Any, allowed: Sequence[str] | None = None) -> tuple[str, ...]:
    """Distinct names from ``('mlp', 'additive')`` or ``'mlp,additive'``, checked."""
    out = tuple(dict.fromkeys(str(v) for v in items(value)))
    if not out:
        raise ConfigError(f'config.{name}: empty; allowed: a comma separated subset of '
                          f'{", ".join(allowed or ())}')
    if allowed is not None:
        bad = [v for v in out if v not in allowed]
        if bad:
            raise ConfigError(f'config.{name}: {bad} not allowed; allowed: a comma separated '
                              f'subset of {", ".join(allowed)}')
    return out


def number(name: str,
           value: Any,
           *,
           low: float | None = None,
           high: float | None = None,
           low_open: bool = False,
           high_open: bool = False) -> float:
    """A finite number in the given range (open or closed ends)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float('nan')
    ok = math.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        lo = '' if low is None else f'{"(" if low_open else "["}{low}'
        hi = '' if high is None else f'{high}{")" if high_open else "]"}'
        rng = (f'{lo}, {hi}' if lo and hi else
               (f'{">" if low_open else ">="} {low}' if lo else f'{"<" if high_open else "<="} '
                f'{high}'))
        raise ConfigError(f'config.{name}: {value!r}; allowed: a finite number {rng}')
    return v


def choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """``value`` if it is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f'config.{name}: {value!r}; allowed: {", ".join(map(str, allowed))}')
    return value


def width(value: Any, name: str = 'width') -> float:
    """A supernet width of :data:`ofa_jax.space.WIDTHS`."""
    try:
        w = float(value)
    except (TypeError, ValueError):
        w = float('nan')
    if w not in space.WIDTHS:
        raise ConfigError(f'config.{name}: {value!r}; allowed: {", ".join(map(str, space.WIDTHS))}')
    return w


def dtype(value: Any, name: str = 'dtype') -> str:
    """A measurement dtype of :data:`ofa_jax.latency.measure.DTYPES`."""
    return str(choice(name, value, tuple(measure.DTYPES)))


def resolutions(value: Any, name: str = 'resolutions') -> tuple[int, ...]:
    """Resolutions of the OFA space (multiples of 4 in [128, 224])."""
    return int_tuple(name, value, space.RESOLUTIONS)


def device(value: Any, name: str = 'device') -> Any:
    """The JAX device named by ``value`` ('' = JAX's default device)."""
    try:
        return fp_lib.resolve_device(value or None)
    except ValueError as err:
        raise ConfigError(f'config.{name}: {err}') from None


def depthwise(value: Any, dev: Any, name: str = 'depthwise') -> str:
    """The depthwise implementation for the device that runs the program.

    ``'auto'`` resolves from ``dev.platform``, never from JAX's default
    backend: with ``--config.device=cpu`` on a GPU host the CPU's choice is
    the one measured and stored.
    """
    try:
        return dw.resolve(str(value), platform=dev.platform)
    except ValueError as err:
        raise ConfigError(f'config.{name}: {err}') from None


def protocol(cfg: Any, name: str = 'protocol') -> measure.Protocol:
    """A :class:`measure.Protocol` from a config section."""
    fields = {f.name for f in dataclasses.fields(measure.Protocol)}
    values = dict(cfg)
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f'config.{name}: unknown field(s) {unknown}; known: {sorted(fields)}')
    try:
        return measure.Protocol(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f'config.{name}: {err}') from None


def store_path(value: Any, workdir: str, name: str = 'store') -> str:
    """The store path of a job ('' = ``WORKDIR/latency.sqlite``)."""
    return str(value) if value else os.path.join(workdir, 'latency.sqlite')


def open_store(path: str, name: str = 'store', **kwargs: Any) -> store_lib.LatencyStore:
    """Opens a latency store; any failure is a ConfigError naming the field and the path."""
    try:
        return store_lib.LatencyStore(path, **kwargs)
    except (store_lib.StoreError, OSError) as err:
        raise ConfigError(f'config.{name}: cannot open {path!r} ({err}); give a writable path '
                          'for the SQLite store') from None


def split(value: Any, name: str = 'split') -> tuple[float, float, float]:
    """Three non-negative fractions summing to 1 with a non-empty test part."""
    try:
        parts = tuple(float(v) for v in items(value))
        if (len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1) > 1e-6 or parts[2] == 0):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f'config.{name}: {value!r}; allowed: three non-negative fractions '
                          'summing to 1, test > 0, e.g. 0.7,0.15,0.15') from None
    return parts  # type: ignore[return-value]


def cpu_affinity(value: Any, name: str = 'cpu_affinity') -> tuple[int, ...] | None:
    """Cores to pin this process to, before XLA starts its threads.

    ``''`` leaves the affinity as launched (returns None); ``N`` (one integer)
    means the first N allowed cores; a list ``0,1`` means these cores.
    """
    given = items(value)
    if not given:
        return None
    allowed = fp_lib.affinity()
    cores = int_tuple(name, value, minimum=0)
    if len(given) == 1:
        n = cores[0]
        if not 1 <= n <= len(allowed):
            raise ConfigError(f'config.{name}: {n} cores asked; allowed: 1 to {len(allowed)} '
                              f'(this process may use cores {allowed}), or a list of cores')
        return tuple(allowed[:n])
    bad = [c for c in cores if c not in allowed]
    if bad:
        raise ConfigError(f'config.{name}: cores {bad} not in this process\'s affinity '
                          f'{allowed}')
    return cores


def set_affinity(value: Any, name: str = 'cpu_affinity') -> list[int]:
    """Applies :func:`cpu_affinity` to this process; returns the cores it runs on."""
    cores = cpu_affinity(value, name)
    if cores is not None:
        os.sched_setaffinity(0, cores)
    return fp_lib.affinity()


def file_map(field: str, value: Any) -> dict[str, str]:
    """``FILE:VALUE`` pairs of a config field (e.g. ``--config.devices=a.csv:2080ti,b.csv:xp``)."""
    out = {}
    for item in items(value):
        path, sep, v = str(item).rpartition(':')
        if not sep or not path or not v:
            raise ConfigError(f'config.{field}: entry {item!r} is not FILE:VALUE; allowed: '
                              'comma separated FILE:VALUE pairs')
        out[path.strip()] = v.strip()
    return out


def lookup_file(mapping: dict[str, str], path: str) -> str | None:
    """The value :func:`file_map` holds for ``path`` (its full path or its basename), or None."""
    for key, value in mapping.items():
        if key == path or os.path.basename(key) == os.path.basename(path):
            return value
    return None


def network(config: Any) -> measure.Protocol:
    """Checks the fields that fix the measured network and its timing; returns the protocol.

    ``batch``, ``dtype``, ``width``, ``num_classes``, ``depthwise``,
    ``cpu_affinity`` and ``protocol``: the same in every job that times
    sub-networks on a device.
    """
    one_int('batch', config.batch)
    dtype(config.dtype)
    width(config.width)
    one_int('num_classes', config.num_classes)
    choice('depthwise', config.depthwise, ('auto', 'conv', 'shifted'))
    cpu_affinity(config.cpu_affinity)
    return protocol(config.protocol)
