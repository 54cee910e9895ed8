"""Atomic file writes: a reader (or a rerun after a kill) sees the old file or the new one.

Every file that a rerun reads back (summaries, costs, provenance, reports)
is written to a temporary file in the same folder, flushed to disk and
renamed over the target, which POSIX makes atomic.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable

import numpy as np


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode('utf-8'))


def json_default(x: Any) -> Any:
    """JSON for numpy values and anything else with a ``str``."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    return str(x)


def write_json(path: str | os.PathLike,
               obj: Any,
               *,
               indent: int | None = 1,
               default: Callable[[Any], Any] = json_default) -> None:
    """Writes ``obj`` as JSON atomically. NaN and infinity are written as ``null``.

    Bare ``NaN`` is not JSON, and a file that other tools cannot parse is
    worse than a missing value.
    """
    write_text(path, json.dumps(_finite(obj), indent=indent, default=default, allow_nan=False))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) or isinstance(obj, np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    return obj
