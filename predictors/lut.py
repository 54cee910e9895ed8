"""Lookup-table (LUT) latency model, in OFA's and ProxylessNAS's format.

A LUT maps the key of one layer configuration to its measured latency
(``{count, mean, std}`` in milliseconds); a sub-network is predicted as the sum
over its layers. Keys follow OFA's tutorial tables (``*_lookup_table.yaml``)::

    Conv-input:160x160x3-output:80x80x24
    expanded_conv-input:80x80x24-output:40x40x32-expand:96-kernel:3-stride:2-idskip:0-se:0-hs:0
    Conv_1-input:5x5x192-output:5x5x1152
    AvgPool2D-input:5x5x1152-output:1x1x1152
    Conv_2-input:1x1x1152-output:1x1x1536
    Logits-input:1x1x1536-output:1000

A sub-network's layers are: the first conv, the fixed expand-1 block, every
active elastic block, the final 1x1 conv, the pooling, the feature-mix conv
and the classifier. Feature sizes round up (``(s - 1) // stride + 1``) and
``expand`` is the hidden channel count ``make_divisible(round(in * e), 8)``.

Two ways to predict:

* host: :meth:`LookupTable.predict_arch` walks the layer keys of one arch and
  raises a ``KeyError`` naming the first missing key;
* dense: :meth:`LookupTable.predict` sums a ``float32[R, 20, 3, 3]`` block
  table (resolution, position, kernel, expand) and per-resolution fixed terms;
  it is pure ``jnp`` and works under ``jax.jit``/``vmap``/``lax.scan``. The
  dense arrays are built once, when the table is created, and a missing key
  for a resolution the table covers is rejected then; a resolution the table
  does not cover predicts NaN (jitted code cannot raise).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Iterable, Mapping

import jax.numpy as jnp
import numpy as np
import yaml

from ofa_jax import files
from ofa_jax import space
from ofa_jax import spec as spec_lib

_CONV_RE = re.compile(r'^Conv-input:(\d+)x(\d+)x3-output:')
_FILE_RE = re.compile(r'^(\d+)_lookup_table\.ya?ml$')


@dataclasses.dataclass(frozen=True)
class LutEntry:
    """Timing of one layer configuration (OFA's yaml value)."""

    count: int
    mean: float
    std: float


# ---------------------------------------------------------------------------
# Keys.


def _shape(*dims: int) -> str:
    return 'x'.join(str(int(d)) for d in dims)


def block_key(block: spec_lib.BlockSpec) -> str:
    """OFA key of one MBConv block (``expanded_conv-input:...-hs:0/1``)."""
    fmt = 'expanded_conv-input:{}-output:{}-expand:{}-kernel:{}-stride:{}-idskip:{}-se:{}-hs:{}'
    return fmt.format(_shape(block.in_size, block.in_size, block.in_channels),
                      _shape(block.out_size, block.out_size, block.out_channels),
                      block.mid_channels, block.kernel, block.stride, int(block.residual),
                      int(block.se), int(block.act == 'hswish'))


def first_conv_key(net: spec_lib.NetSpec, resolution: int) -> str:
    """Key of the stride-2 3x3 stem conv."""
    s = spec_lib.conv_out_size(resolution, 2)
    out = _shape(s, s, net.first_channels)
    return f'Conv-input:{_shape(resolution, resolution, 3)}-output:{out}'


def final_keys(net: spec_lib.NetSpec, resolution: int) -> list[str]:
    """Keys of the layers after the last stage: Conv_1, AvgPool2D, Conv_2, Logits."""
    f = spec_lib.final_size(resolution)
    last, final, feat = net.stage_channels[-1], net.final_channels, net.feature_channels
    return [
        f'Conv_1-input:{_shape(f, f, last)}-output:{_shape(f, f, final)}',
        f'AvgPool2D-input:{_shape(f, f, final)}-output:{_shape(1, 1, final)}',
        f'Conv_2-input:{_shape(1, 1, final)}-output:{_shape(1, 1, feat)}',
        f'Logits-input:{_shape(1, 1, feat)}-output:{net.num_classes}',
    ]


def fixed_keys(net: spec_lib.NetSpec, resolution: int) -> list[str]:
    """Keys every sub-network at ``resolution`` has: stem, fixed block, final layers."""
    return [
        first_conv_key(net, resolution),
        block_key(spec_lib.first_block(net, resolution)), *final_keys(net, resolution)
    ]


# The block at elastic ``position`` (0..19) with this kernel and expand; the
# geometry lives in ofa_jax.spec (kept here under its old name for LUT builders).
position_block = spec_lib.position_block


def layer_keys(arch: space.Arch, width: float = 1.2, num_classes: int = 1000) -> list[str]:
    """Keys of every layer of one sub-network, in network order.

    Args:
      arch: one (host or device) architecture.
      width: supernet width multiplier (1.0 or 1.2).
      num_classes: classifier outputs (the ``Logits`` key).

    Returns:
      ``['Conv-...', 'expanded_conv-...' (fixed block), 'expanded_conv-...' for
      each active block, 'Conv_1-...', 'AvgPool2D-...', 'Conv_2-...', 'Logits-...']``.
    """
    net = spec_lib.net_spec(width, num_classes)
    r = int(np.asarray(arch.resolution))
    keys = [first_conv_key(net, r), block_key(spec_lib.first_block(net, r))]
    keys += [block_key(b) for b in spec_lib.block_specs(net, arch)]
    return keys + final_keys(net, r)


def all_keys(resolution: int, width: float = 1.2, num_classes: int = 1000) -> list[str]:
    """Every distinct key the space produces at ``resolution`` (sorted, unique)."""
    net = spec_lib.net_spec(width, num_classes)
    keys = set(fixed_keys(net, resolution))
    for per_kernel in spec_lib.position_blocks(net, resolution):
        keys.update(block_key(b) for per_expand in per_kernel for b in per_expand)
    return sorted(keys)


# ---------------------------------------------------------------------------
# OFA yaml files.

_ENTRY_FIELDS = ('count', 'mean', 'std')


class _UniqueKeyLoader(getattr(yaml, 'CSafeLoader', yaml.SafeLoader)):  # type: ignore[misc]
    """The safe yaml loader, refusing a mapping that repeats a key (yaml keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
            except TypeError:  # Unhashable; the base class reports it.
                break
            if repeated:
                raise yaml.constructor.ConstructorError(None, None,
                                                        f'key {key!r:.200} appears twice',
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _number(value: object) -> float | None:
    """``value`` as a float if it is a finite int or float (not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # An int past the float range.
        return None
    return number if np.isfinite(number) else None


def read_lut_yaml(path: str | os.PathLike) -> dict[str, LutEntry]:
    """Reads one OFA yaml table (``key: {count, mean, std}``).

    Every entry needs all three fields: ``count`` an integer >= 1, ``mean`` and
    ``std`` finite numbers of ms >= 0; keys are strings, each once.

    Raises:
      ValueError: naming the file (and the bad key, field, value and what is
        allowed) for bytes that are not yaml, a document that is not a
        non-empty mapping, a repeated key or a malformed entry.
    """
    path = os.fspath(path)
    with open(path, 'rb') as f:
        try:
            raw = yaml.load(f, Loader=_UniqueKeyLoader)
        except (yaml.YAMLError, RecursionError) as err:
            text = ' '.join(str(err).split())[:300]
            raise ValueError(f'{path}: not valid yaml: {text}') from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f'{path}: expected a non-empty mapping key -> {{count, mean, std}}')
    entries = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ValueError(f'{path}: key {key!r:.80} is not a string; keys look like '
                             '"Conv-input:160x160x3-output:80x80x24"')
        if not isinstance(value, dict):
            raise ValueError(f'{path}: entry {key!r} must be a mapping with "count", "mean" and '
                             f'"std"; got {value!r:.80}')
        missing = [name for name in _ENTRY_FIELDS if name not in value]
        if missing:
            raise ValueError(f'{path}: entry {key!r} lacks {", ".join(map(repr, missing))}; each '
                             'entry needs "count" (runs), "mean" and "std" (ms)')
        count = value['count']
        mean, std = _number(value['mean']), _number(value['std'])
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f'{path}: entry {key!r} has count {value["count"]!r:.80}; allowed: '
                             'an integer >= 1')
        for name, number in (('mean', mean), ('std', std)):
            if number is None or number < 0:
                raise ValueError(f'{path}: entry {key!r} has {name} {value[name]!r:.80}; need a '
                                 'finite non-negative number of ms')
        entries[key] = LutEntry(count=count, mean=mean, std=std)
    return entries


def write_lut_yaml(path: str | os.PathLike, entries: Mapping[str, LutEntry]) -> None:
    """Writes one table in OFA's yaml format (atomically: temp file, fsync, rename)."""
    path = os.fspath(path)
    data = {
        k: {
            'count': int(v.count),
            'mean': float(v.mean),
            'std': float(v.std)
        } for k, v in sorted(entries.items())
    }
    files.write_text(path, yaml.safe_dump(data, sort_keys=True, default_flow_style=False))


def _resolutions_in(entries: Mapping[str, LutEntry]) -> list[int]:
    found = []
    for key in entries:
        m = _CONV_RE.match(key)
        if m and m.group(1) == m.group(2):
            found.append(int(m.group(1)))
    return sorted(set(found))


# ---------------------------------------------------------------------------
# The table.


class LookupTable:
    """A per-resolution latency lookup table with host and dense (jit) paths.

    Args:
      tables: resolution -> {key -> LutEntry}. Several resolutions may share
        one dict (a merged yaml).
      width: width multiplier the keys were generated for.
      num_classes: classifier size in the ``Logits`` key.

    Raises:
      KeyError: some key of a covered resolution is missing (names the key and
        the resolution).
    """

    def __init__(self,
                 tables: Mapping[int, Mapping[str, LutEntry]],
                 *,
                 width: float = 1.2,
                 num_classes: int = 1000):
        if not tables:
            raise ValueError('LookupTable: no resolutions given')
        self.width = spec_lib.check_width(width)
        self.num_classes = int(num_classes)
        self.net = spec_lib.net_spec(self.width, self.num_classes)
        self.tables = {int(r): dict(t) for r, t in sorted(tables.items())}
        for r in self.tables:
            if r not in space.RESOLUTIONS:
                raise ValueError(f'LookupTable: resolution {r} is not in the space; allowed: '
                                 f'multiples of 4 in [{space.RESOLUTIONS[0]}, '
                                 f'{space.RESOLUTIONS[-1]}]')
        self._build_dense()

    @property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(self.tables)

    def _lookup(self, resolution: int, key: str) -> float:
        table = self.tables.get(resolution)
        if table is None:
            raise KeyError(f'LUT has no table for resolution {resolution}; it covers '
                           f'{self.resolutions}')
        entry = table.get(key)
        if entry is None:
            raise KeyError(f'LUT (resolution {resolution}, width {self.width}) has no entry '
                           f'for key {key!r}')
        return entry.mean

    def _build_dense(self) -> None:
        n_res = len(self.tables)
        block = np.zeros(
            (n_res, space.NUM_BLOCKS, len(space.KERNEL_CHOICES), len(space.EXPAND_CHOICES)),
            np.float64)
        fixed = np.zeros((n_res,), np.float64)
        res_index = np.full((len(space.RESOLUTIONS),), -1, np.int32)
        for i, r in enumerate(self.tables):
            res_index[space.RESOLUTIONS.index(r)] = i
            fixed[i] = sum(self._lookup(r, k) for k in fixed_keys(self.net, r))
            # position_blocks(...)[p][ki][ei] lines up with block[i, p, ki, ei].
            for p, per_kernel in enumerate(spec_lib.position_blocks(self.net, r)):
                for ki, per_expand in enumerate(per_kernel):
                    for ei, b in enumerate(per_expand):
                        block[i, p, ki, ei] = self._lookup(r, block_key(b))
        self.block_ms = block
        self.fixed_ms = fixed
        self.res_index = res_index

    # -- host paths --------------------------------------------------------

    def predict_arch(self, arch: space.Arch) -> float:
        """Sum of the layer latencies of one arch (ms), walking its keys.

        Raises:
          KeyError: naming the first missing key (or the uncovered resolution).
        """
        r = int(np.asarray(arch.resolution))
        return float(
            sum(
                self._lookup(r, k)
                for k in layer_keys(arch, width=self.width, num_classes=self.num_classes)))

    def predict_np(self, archs: space.Arch) -> np.ndarray:
        """Host batch prediction from the dense arrays (float64 ms).

        Raises:
          KeyError: if some resolution is not covered.
        """
        fixed, blocks = self._terms_np(archs)
        return (fixed + blocks.sum(-1)).reshape(np.shape(archs.resolution))

    def breakdown(self, archs: space.Arch) -> dict[str, np.ndarray]:
        """The table's latency per part, like ``checkpoint.Predictor.breakdown`` (float64 ms).

        ``fixed_ms`` [N] (stem, head and final layers), ``blocks_ms`` [N, 20]
        (0 for blocks the depth leaves out) and ``residual_ms`` [N] (zeros:
        a table is a plain sum); they add up to :meth:`predict_np`.

        Raises:
          KeyError: if some resolution is not covered.
        """
        fixed, blocks = self._terms_np(archs)
        return {'fixed_ms': fixed, 'blocks_ms': blocks, 'residual_ms': np.zeros_like(fixed)}

    def _terms_np(self, archs: space.Arch) -> tuple[np.ndarray, np.ndarray]:
        """(fixed float64[N], per-block float64[N, 20], 0 where inactive) of flattened archs."""
        a = space.to_numpy(archs)
        r = np.atleast_1d(a.resolution)
        ok = np.isin(r, space.RESOLUTIONS)
        ri = np.where(ok, self.res_index[space.resolution_index(r)], -1)
        if np.any(ri < 0):
            bad = sorted(set(int(x) for x in r[ri < 0]))
            raise KeyError(f'LUT has no table for resolution(s) {bad}; it covers '
                           f'{self.resolutions}')
        kernel = np.asarray(a.kernel).reshape(-1, space.NUM_BLOCKS)
        expand = np.asarray(a.expand).reshape(-1, space.NUM_BLOCKS)
        active = space.active_blocks_np(np.asarray(a.depth).reshape(-1, space.NUM_STAGES))
        pos = np.arange(space.NUM_BLOCKS)
        per_block = self.block_ms[ri[:, None], pos,
                                  space.kernel_index(kernel),
                                  space.expand_index(expand)]
        return self.fixed_ms[ri], np.where(active, per_block, 0.0)

    # -- dense jittable path -----------------------------------------------

    def predict(self, archs: space.Arch) -> jnp.ndarray:
        """Predicted latency (float32 ms) of one arch or a batch; pure ``jnp``.

        Usable inside ``jax.jit``, ``vmap`` and ``lax.scan``; the table arrays
        become compile-time constants. Resolutions the table does not cover
        give NaN.
        """
        block = jnp.asarray(self.block_ms, jnp.float32)
        fixed = jnp.asarray(self.fixed_ms, jnp.float32)
        r = jnp.asarray(archs.resolution, jnp.int32)
        slot = space.resolution_index(r)
        in_space = jnp.asarray(space.RESOLUTIONS, jnp.int32)[slot] == r
        ri = jnp.asarray(self.res_index)[slot]
        valid = in_space & (ri >= 0)
        ri = jnp.maximum(ri, 0)
        # Table gathers: this XLA program keeps the float32 sums' rounding.
        ki = space.kernel_index(jnp.asarray(archs.kernel), gather=True)
        ei = space.expand_index(jnp.asarray(archs.expand), gather=True)
        pos = jnp.arange(space.NUM_BLOCKS)
        per_block = block[ri[..., None], pos, ki, ei]
        active = space.active_blocks(jnp.asarray(archs.depth))
        total = fixed[ri] + jnp.sum(jnp.where(active, per_block, 0.0), axis=-1)
        return jnp.where(valid, total, jnp.nan).astype(jnp.float32)

    __call__ = predict

    def entries(self, resolution: int) -> dict[str, LutEntry]:
        """The raw entries of one resolution's table."""
        return dict(self.tables[int(resolution)])


@dataclasses.dataclass(frozen=True)
class Recalibrated:
    """A lookup table's sums mapped onto a device's measurements: ``exp(offset) * sum ** scale``.

    A LUT times each layer alone, so its sums miss what a whole network costs
    beyond its layers (fusion across them, launch and memory traffic), by a
    share that grows or shrinks with size. Two numbers fitted on measured
    sub-networks (log-space least squares, as ``transfer.affine_fit``) take
    most of that out, and the table's entries still rank the blocks.
    """

    table: LookupTable
    scale: float
    offset: float

    @property
    def resolutions(self) -> tuple[int, ...]:
        return self.table.resolutions

    def predict(self, archs: space.Arch) -> jnp.ndarray:
        """Recalibrated latency (float32 ms); pure ``jnp`` like :meth:`LookupTable.predict`."""
        raw = self.table.predict(archs)
        return jnp.exp(self.scale * jnp.log(raw) + self.offset).astype(jnp.float32)

    __call__ = predict

    def predict_np(self, archs: space.Arch) -> np.ndarray:
        """Host path: float64 ms."""
        return np.exp(self.scale * np.log(self.table.predict_np(archs)) + self.offset)


def load_lut(path_or_dir: str | os.PathLike,
             *,
             width: float = 1.2,
             num_classes: int = 1000,
             resolutions: Iterable[int] | None = None) -> LookupTable:
    """Loads OFA yaml tables into a :class:`LookupTable`.

    Args:
      path_or_dir: one yaml file (its resolutions are those of its ``Conv``
        keys), or a folder of ``{r}_lookup_table.yaml`` files.
      width: width multiplier of the network the table was measured on.
      num_classes: classifier outputs in the ``Logits`` key.
      resolutions: keep only these resolutions (default: all found).

    Raises:
      FileNotFoundError: no such file, or a folder without tables.
      KeyError / ValueError: a missing key or a malformed file.
    """
    path = os.fspath(path_or_dir)
    tables: dict[int, dict[str, LutEntry]] = {}
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, '*_lookup_table.y*ml')))
        if not found:
            raise FileNotFoundError(f'{path}: folder has no {{r}}_lookup_table.yaml files')
        for f in found:
            m = _FILE_RE.match(os.path.basename(f))
            if not m:
                continue
            r = int(m.group(1))
            entries = read_lut_yaml(f)
            _check_resolutions(f, _resolutions_in(entries), expected=r)
            tables[r] = entries
    elif os.path.exists(path):
        entries = read_lut_yaml(path)
        found = _resolutions_in(entries)
        if not found:
            raise ValueError(f'{path}: no "Conv-input:RxRx3-..." key, cannot tell the resolution')
        _check_resolutions(path, found)
        for r in found:
            tables[r] = entries
    else:
        raise FileNotFoundError(f'{path}: no such LUT file or folder')
    if resolutions is not None:
        wanted = [int(r) for r in resolutions]
        missing = [r for r in wanted if r not in tables]
        if missing:
            raise KeyError(f'{path}: no table for resolution(s) {missing}; found {sorted(tables)}')
        tables = {r: tables[r] for r in wanted}
    try:
        return LookupTable(tables, width=width, num_classes=num_classes)
    except KeyError as err:  # A missing entry: say which file lacks it.
        raise KeyError(f'{path}: {err.args[0]}') from None


def _check_resolutions(path: str, found: list[int], expected: int | None = None) -> None:
    """The resolutions of a file's ``Conv`` keys are in the space (and the file name's)."""
    for r in found:
        if r not in space.RESOLUTIONS:
            raise ValueError(f'{path}: key "Conv-input:{r}x{r}x3-..." has resolution {r}; allowed: '
                             f'multiples of 4 in [{space.RESOLUTIONS[0]}, {space.RESOLUTIONS[-1]}]')
    if expected is not None and found != [expected]:
        raise ValueError(f'{path}: the file name says resolution {expected}, its '
                         f'"Conv-input:RxRx3-..." keys say {found or "none"}')


def save_lut(directory: str | os.PathLike, table: LookupTable) -> list[str]:
    """Writes one ``{r}_lookup_table.yaml`` per resolution; returns the paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for r, entries in table.tables.items():
        p = os.path.join(os.fspath(directory), f'{r}_lookup_table.yaml')
        write_lut_yaml(p, entries)
        paths.append(p)
    return paths
