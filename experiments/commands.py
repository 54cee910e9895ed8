"""Command lines generated from configs, so a listed command reruns what was run.

The main job records each stage it ran as (module, workdir, config); the
report turns each into ``python -m experiments.MODULE --config=... --workdir=...``
followed by one ``--config.FIELD=VALUE`` for every field that differs from
the stage config's defaults. Tuples are written as comma lists, which
ml_collections and :mod:`experiments.config_fields` read back as the tuple.
"""

from __future__ import annotations

import importlib
import shlex
from typing import Any, Mapping


def _flat(config: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f'{prefix}{key}'
        if isinstance(value, Mapping):
            out.update(_flat(value, name + '.'))
        else:
            out[name] = value
    return out


def format_value(value: Any) -> str:
    """A config value as ml_collections parses it back from the command line."""
    if isinstance(value, (tuple, list)):
        return ','.join(format_value(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def overrides(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[str]:
    """``--config.a.b=value`` for every field of ``config`` that differs from ``defaults``."""
    base = _flat(defaults)
    flags = []
    for name, value in _flat(config).items():
        if name in base and _same(base[name], value):
            continue
        flags.append(f'--config.{name}={format_value(value)}')
    return flags


def _same(a: Any, b: Any) -> bool:
    """Equal values of one kind: ``1 == 1.0`` counts, ``True == 1`` and ``'1' == 1`` do not."""
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    numbers = isinstance(a, (int, float)) and isinstance(b, (int, float))
    return (numbers or type(a) is type(b)) and a == b


def default_config(module: str) -> dict[str, Any]:
    """The defaults of ``experiments/configs/MODULE.py``."""
    return importlib.import_module(f'experiments.configs.{module}').get_config().to_dict()


def command(module: str, config: Mapping[str, Any], workdir: str) -> str:
    """The shell command that runs ``experiments.MODULE`` with ``config`` into ``workdir``."""
    parts = [
        'python', '-m', f'experiments.{module}', f'--config=experiments/configs/{module}.py',
        f'--workdir={workdir}'
    ] + overrides(config, default_config(module))
    return ' '.join(shlex.quote(p) for p in parts)
