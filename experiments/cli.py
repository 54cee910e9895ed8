"""What every experiment launcher shares: its flags and how it ends.

Each ``experiments/NAME.py`` is ``cli.main(jobs.NAME.run, ...)``: the flags
``--config`` (default ``experiments/configs/NAME.py``), ``--workdir`` and
``--traceback``, and one way to end. An anticipated error (a bad config
field, a data file, checkpoint or store that cannot be used) is one line on
stderr, ``error: ...`` naming the field or file, and exit status 2; Ctrl-C
is a line saying that what finished is kept, and status 130.
``--traceback`` re-raises instead, for a bug report.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import sys
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import config_fields as cf
from ofa_jax.latency import store as store_lib

# What a launcher turns into one line: configs, data, checkpoints, stores, files.
ANTICIPATED = (cf.ConfigError, ValueError, KeyError, OSError, store_lib.StoreError)


def one_line(err: BaseException) -> str:
    """An exception as the one line a launcher prints."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = ' '.join(text.split())  # One line, whatever the message held.
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f'{err.filename}: {text}'
    return text


def run(
    job: Callable[[Any, str], Any],
    config: Any,
    workdir: str | None,
    *,
    traceback: bool = False,
    interrupted: str = 'every finished measurement is kept; run '
    'the same command again to resume'
) -> Any:
    """Runs ``job(config, workdir)``; anticipated errors end the process with status 2."""
    if not workdir:
        sys.stderr.write('error: --workdir is required (output folder)\n')
        sys.exit(2)
    logging.set_verbosity(logging.WARNING)  # JAX logs every backend it fails to find.
    try:
        return job(config, workdir)
    except ANTICIPATED as err:
        if traceback:
            raise
        sys.stderr.write(f'error: {one_line(err)}\n')
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write(f'\ninterrupted: {interrupted}\n')
        sys.exit(130)


def print_json(obj: Any, drop: tuple[str, ...] = ()) -> None:
    """One JSON line on stdout (what scripts read), without the ``drop`` keys."""
    print(json.dumps({k: v for k, v in obj.items() if k not in drop}, default=str))


def _config_of(argv: list[str], default: str) -> Any:
    """The config that ``--config`` names in ``argv`` (``PATH[:ARG]``), else ``default``'s."""
    path, arg = default, None
    for a in argv[1:]:
        if a.startswith('--config='):
            path = a[len('--config='):]
    if ':' in os.path.basename(path):
        path, arg = path.rsplit(':', 1)
    try:
        spec = importlib.util.spec_from_file_location('_launch_config', path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config(arg) if arg is not None else module.get_config()
    except Exception:  # noqa: BLE001  (ml_collections reports a bad config file itself)
        return None


def quote_lists(argv: list[str], default: str) -> list[str]:
    """``--config.F=a,b`` for a tuple field ``F`` whose items do not parse as Python.

    ml_collections reads a tuple override with ``ast.literal_eval``: paths such
    as ``/data/a.csv,/data/b.csv`` or ``../x.csv,y.csv`` are a syntax error
    there and abort the launcher. Such a value becomes the tuple of its
    comma-separated strings; every other argument is left as it is.
    """
    config = _config_of(argv, default)
    if config is None:
        return argv
    out = [argv[0]]
    for a in argv[1:]:
        name, eq, value = a.partition('=')
        if eq and name.startswith('--config.') and ',' in value and value[:1] not in '([\'"':
            field = config
            for part in name[len('--config.'):].split('.'):
                field = field.get(part) if hasattr(field, 'get') else None
            if isinstance(field, tuple):
                try:
                    ast.literal_eval(value)
                except SyntaxError:
                    a = f'{name}={tuple(v.strip() for v in value.split(","))!r}'
                except ValueError:
                    pass
        out.append(a)
    return out


def launch(
    name: str,
    job: Callable[[Any, str], Any],
    *,
    show: Callable[[Any], None] = lambda result: None,
    interrupted: str = 'every finished measurement is kept; run the same command '
    'again to resume'
) -> None:
    """The whole launcher of ``experiments/NAME.py``: flags, the job, how it ends.

    Args:
      name: the job's name; its default config is ``experiments/configs/NAME.py``.
      job: ``run(config, workdir)``.
      show: prints the job's result.
      interrupted: what Ctrl-C says is kept.
    """
    default = os.path.join(os.path.dirname(__file__), 'configs', f'{name}.py')
    workdir = flags.DEFINE_string('workdir', None, 'Output folder.')
    config = config_flags.DEFINE_config_file('config',
                                             default,
                                             f'Config of {name}.',
                                             lock_config=True)
    traceback = flags.DEFINE_bool('traceback', False,
                                  'Re-raise errors with their stack instead of one line.')

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f'unexpected arguments: {argv[1:]}')
        show(
            run(job,
                config.value,
                workdir.value,
                traceback=traceback.value,
                interrupted=interrupted))

    app.run(main, argv=quote_lists(sys.argv, default))
