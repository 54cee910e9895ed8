"""Reading and writing OFA-style latency CSV files (``child_arch,latency,...``).

The format is the one of the 2101.00732 authors' datasets: a header row with
``child_arch`` and ``latency`` first, then any extra columns; ``child_arch`` is
an OFA dict literal and ``latency`` is in milliseconds. Bad rows fail with the
file, the line number and the reason.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import math
import os
from typing import Iterable, Mapping, Sequence

import numpy as np

from ofa_jax import space


@dataclasses.dataclass
class LatencyTable:
    """Rows of an OFA-style CSV file, in file order.

    Attributes:
      archs: batched ``Arch`` (numpy, canonical) with one row per CSV row.
      latency_ms: float64[n] latency in milliseconds.
      extra: extra columns by name, as lists of strings.
      path: the file the rows came from (or '' if built in memory).
    """

    archs: space.Arch
    latency_ms: np.ndarray
    extra: dict[str, list[str]]
    path: str = ''

    def __len__(self) -> int:
        return int(self.latency_ms.shape[0])

    def take(self, index) -> 'LatencyTable':
        """Rows at ``index`` (slice, int array or boolean mask)."""
        idx = np.arange(len(self))[index]
        return LatencyTable(archs=self.archs[idx],
                            latency_ms=self.latency_ms[idx],
                            extra={
                                k: [v[i] for i in idx] for k, v in self.extra.items()
                            },
                            path=self.path)


def read_ofa_csv(path: str | os.PathLike, *, max_rows: int | None = None) -> LatencyTable:
    """Reads an OFA-style latency CSV.

    Args:
      path: the CSV file.
      max_rows: read at most this many data rows.

    Returns:
      A :class:`LatencyTable`.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: a bad header or row, as ``'FILE:LINE: reason'``.
    """
    path = os.fspath(path)
    kernels, expands, depths, resolutions, latencies = [], [], [], [], []
    with open(path, newline='') as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(
                f'{path}:1: empty file; expected a header "child_arch,latency"') from None
        if len(header) < 2 or header[0].strip() != 'child_arch' or header[1].strip() != 'latency':
            raise ValueError(
                f'{path}:1: header {header[:2]!r} must start with "child_arch,latency"')
        extra_names = [h.strip() for h in header[2:]]
        extra = {name: [] for name in extra_names}
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise ValueError(f'{path}:{line}: {len(row)} columns, the header has {len(header)}')
            arch = _fast_parse(row[0])
            if arch is None:  # Slow path: full validation with a precise message.
                try:
                    arch = space.parse_child_arch(row[0])
                except ValueError as err:
                    raise ValueError(f'{path}:{line}: {err}') from None
            try:
                latency = float(row[1])
            except ValueError:
                raise ValueError(f'{path}:{line}: latency {row[1]!r} is not a number') from None
            if not math.isfinite(latency) or latency <= 0:
                raise ValueError(f'{path}:{line}: latency {row[1]!r} must be a positive finite '
                                 'number of milliseconds')
            kernels.append(arch.kernel)
            expands.append(arch.expand)
            depths.append(arch.depth)
            resolutions.append(arch.resolution)
            latencies.append(latency)
            for name, value in zip(extra_names, row[2:]):
                extra[name].append(value)
            if max_rows is not None and len(latencies) >= max_rows:
                break
    if not latencies:
        raise ValueError(f'{path}: no data rows')
    archs = space.Arch(kernel=np.stack(kernels),
                       expand=np.stack(expands),
                       depth=np.stack(depths),
                       resolution=np.asarray(resolutions, np.int32))
    return LatencyTable(archs=archs,
                        latency_ms=np.asarray(latencies, np.float64),
                        extra=extra,
                        path=path)


_KERNELS = frozenset(space.KERNEL_CHOICES)
_EXPANDS = frozenset(space.EXPAND_CHOICES)
_DEPTHS = frozenset(space.DEPTH_CHOICES)
_RESOLUTIONS = frozenset(space.RESOLUTIONS)


def _fast_parse(text: str) -> space.Arch | None:
    """Parses a well-formed child_arch quickly; ``None`` means "use the slow path"."""
    try:
        d = ast.literal_eval(text)
        ks, e, depth, r = d['ks'], d['e'], d['d'], d['r']
        if set(d) - {'ks', 'e', 'd', 'r', 'wid'} or d.get('wid') is not None:
            return None
        r = r[0] if isinstance(r, list) and len(r) == 1 else r
        if (len(ks) != space.NUM_BLOCKS or len(e) != space.NUM_BLOCKS or
                len(depth) != space.NUM_STAGES):
            return None
        for values, allowed in ((ks, _KERNELS), (e, _EXPANDS), (depth, _DEPTHS), ([r],
                                                                                  _RESOLUTIONS)):
            for v in values:
                if type(v) is not int or v not in allowed:
                    return None
    except (ValueError, SyntaxError, TypeError, KeyError, MemoryError, RecursionError):
        return None
    return space.Arch(kernel=np.asarray(ks, np.int32),
                      expand=np.asarray(e, np.int32),
                      depth=np.asarray(depth, np.int32),
                      resolution=np.int32(r))


def write_ofa_csv(path: str | os.PathLike,
                  archs: space.Arch | Sequence[space.Arch],
                  latency_ms: Iterable[float],
                  extra: Mapping[str, Sequence[object]] | None = None) -> None:
    """Writes rows in the OFA CSV format (``child_arch,latency`` then ``extra``).

    The file is written to a temporary name and renamed, so a reader never
    sees a half-written file.
    """
    if isinstance(archs, space.Arch):
        archs = space.unstack(archs) if archs.batch_shape else [archs]
    archs = list(archs)
    latency_ms = [float(v) for v in latency_ms]
    extra = dict(extra or {})
    if len(archs) != len(latency_ms):
        raise ValueError(f'write_ofa_csv: {len(archs)} archs but {len(latency_ms)} latencies')
    for name, values in extra.items():
        if len(values) != len(archs):
            raise ValueError(f'write_ofa_csv: column {name!r} has {len(values)} values, '
                             f'expected {len(archs)}')
    path = os.fspath(path)
    tmp = f'{path}.tmp-{os.getpid()}'
    with open(tmp, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['child_arch', 'latency', *extra])
        for i, (arch, latency) in enumerate(zip(archs, latency_ms)):
            writer.writerow([
                space.format_child_arch(arch),
                repr(latency), *(values[i] for values in extra.values())
            ])
    os.replace(tmp, path)
