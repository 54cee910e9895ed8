"""Reading and writing OFA-style latency CSV files (``child_arch,latency,...``).

The format is the one of the 2101.00732 authors' datasets: a header row with
``child_arch`` and ``latency`` first, then any extra columns; ``child_arch`` is
an OFA dict literal and ``latency`` is in milliseconds. Nothing doubtful is
accepted: a bad file fails with a ``ValueError`` ``'FILE:LINE: field: reason'``
naming the file, the line (the header is line 1), the field, the bad value and
what is allowed, for bytes that are not UTF-8 text, a wrong column count, an
invalid arch (every gene is checked: kernel 3/5/7, expand 3/4/6, depth 2/3/4,
resolution 128..224 step 4, 20/20/5 entries) and a latency that is not a
finite number in [:data:`MIN_LATENCY_MS`, :data:`MAX_LATENCY_MS`].

Repeated archs are kept (a table is what the file holds);
:mod:`ofa_jax.dataset` counts, merges and splits them.
"""

from __future__ import annotations

import ast
import codecs
import csv
import dataclasses
import io
import math
import os
from typing import BinaryIO, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ofa_jax import files
from ofa_jax import space

# Latencies outside [MIN_LATENCY_MS, MAX_LATENCY_MS] are refused: below 1 ns or
# above ~3 hours per batch is a unit mix-up or a corrupt value, not a timing.
MIN_LATENCY_MS = 1e-6
MAX_LATENCY_MS = 1e7
# Longest line accepted (a child_arch is ~200 characters).
MAX_LINE_BYTES = 1 << 20


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
      path: the CSV file (UTF-8, an optional byte order mark is skipped).
      max_rows: read at most this many data rows (>= 1).

    Returns:
      A :class:`LatencyTable` with every row of the file, repeated archs
      included; ``len(table)`` is the number of usable rows (at least 1).
      Whether that is enough, and what to do with repeats
      (:func:`ofa_jax.dataset.dedupe`), is the caller's call.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: bad bytes, header or row, as ``'FILE:LINE: field: reason'``.
    """
    path = os.fspath(path)
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or
                                 max_rows < 1):
        raise ValueError(f'{path}: max_rows={max_rows!r}; allowed: None or an integer >= 1')
    kernels, expands, depths, resolutions, latencies = [], [], [], [], []
    with open(path, 'rb') as f:
        rows = _csv_rows(f, path)
        _, header = next(rows, (1, None))
        if header is None:
            raise ValueError(f'{path}:1: empty file; expected a header "child_arch,latency"')
        if len(header) < 2 or header[0].strip() != 'child_arch' or header[1].strip() != 'latency':
            raise ValueError(f'{path}:1: header {header[:2]!r:.200} must start with '
                             '"child_arch,latency"')
        extra_names = [h.strip() for h in header[2:]]
        for i, name in enumerate(extra_names):
            if name in extra_names[:i] or name in ('child_arch', 'latency'):
                raise ValueError(f'{path}:1: column {name!r:.80} appears twice in the header')
        extra = {name: [] for name in extra_names}
        for line, row in rows:
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise ValueError(f'{path}:{line}: {len(row)} columns, the header has '
                                 f'{len(header)} ({", ".join(header)[:200]})')
            arch = _fast_parse(row[0])
            if arch is None:  # Slow path: full validation with a precise message.
                try:
                    arch = space.parse_child_arch(row[0])
                except ValueError as err:
                    raise ValueError(f'{path}:{line}: {err}') from None
            latency = _parse_latency(row[1], f'{path}:{line}')
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


def _csv_rows(f: BinaryIO, path: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of each CSV row; ``ValueError`` naming the line for bad CSV."""
    reader = csv.reader(_text_lines(f, path))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise ValueError(f'{path}:{reader.line_num}: not a CSV row ({err})') from None
        yield reader.line_num, row


def _text_lines(f: BinaryIO, path: str) -> Iterator[str]:
    """The file's lines as text; ``ValueError`` naming the line for non-UTF-8 or huge lines."""
    number = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE_BYTES:
            raise ValueError(f'{path}:{number}: line longer than {MAX_LINE_BYTES} bytes; an OFA '
                             'CSV row is "child_arch,latency[,...]" (a few hundred bytes)')
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        try:
            yield raw.decode('utf-8')
        except UnicodeDecodeError as err:
            raise ValueError(f'{path}:{number}: not UTF-8 text (byte 0x{raw[err.start]:02x} at '
                             f'column {err.start + 1}); expected CSV rows '
                             '"child_arch,latency[,...]"') from None


def _parse_latency(text: str, where: str) -> float:
    """The latency cell as ms; ``ValueError`` naming ``where``, the value and the range."""
    allowed = ('allowed: a finite number of milliseconds in '
               f'[{MIN_LATENCY_MS:g}, {MAX_LATENCY_MS:g}]')
    try:
        latency = float(text)
    except ValueError:
        raise ValueError(f'{where}: latency {text[:80]!r} is not a number; {allowed}') from None
    if not math.isfinite(latency) or latency <= 0:
        raise ValueError(f'{where}: latency {text[:80]!r} must be a positive finite number of '
                         f'milliseconds; {allowed}')
    if not MIN_LATENCY_MS <= latency <= MAX_LATENCY_MS:
        raise ValueError(f'{where}: latency {text[:80]!r} is implausible (a unit mix-up or a '
                         f'corrupt value); {allowed}')
    return latency


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
    buf = io.StringIO(newline='')
    writer = csv.writer(buf)
    writer.writerow(['child_arch', 'latency', *extra])
    for i, (arch, latency) in enumerate(zip(archs, latency_ms)):
        writer.writerow([
            space.format_child_arch(arch),
            repr(latency), *(values[i] for values in extra.values())
        ])
    files.write_text(path, buf.getvalue())
