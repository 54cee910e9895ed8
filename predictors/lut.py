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

from ofa_jax import space
from ofa_jax import spec as spec_lib

_EXPAND_INDEX = {e: i for i, e in enumerate(space.EXPAND_CHOICES)}
_KERNEL_INDEX = {k: i for i, k in enumerate(space.KERNEL_CHOICES)}
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


def position_block(net: spec_lib.NetSpec, resolution: int, position: int, kernel: int,
                   expand: int) -> spec_lib.BlockSpec:
    """The block at elastic ``position`` (0..19) with this kernel and expand.

    Its input size does not depend on the other genes: only the first block of
    a stage strides, and every stage starts at a fixed size.
    """
    stage, index = divmod(position, space.MAX_DEPTH)
    size = spec_lib.stage_input_sizes(resolution)[stage]
    stride = spec_lib.STAGE_STRIDES[stage] if index == 0 else 1
    if index > 0:
        size = spec_lib.conv_out_size(size, spec_lib.STAGE_STRIDES[stage])
    return spec_lib.BlockSpec(position=position,
                              in_channels=net.block_in_channels(position),
                              out_channels=net.block_out_channels(position),
                              mid_channels=net.mid_channels(position, expand),
                              kernel=kernel,
                              expand=expand,
                              stride=stride,
                              act=spec_lib.STAGE_ACTS[stage],
                              se=spec_lib.STAGE_SE[stage],
                              in_size=size,
                              out_size=spec_lib.conv_out_size(size, stride))


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
    for p in range(space.NUM_BLOCKS):
        for k in space.KERNEL_CHOICES:
            for e in space.EXPAND_CHOICES:
                keys.add(block_key(position_block(net, resolution, p, k, e)))
    return sorted(keys)


# ---------------------------------------------------------------------------
# OFA yaml files.


def read_lut_yaml(path: str | os.PathLike) -> dict[str, LutEntry]:
    """Reads one OFA yaml table (``key: {count, mean, std}``).

    Raises:
      ValueError: naming the file and the bad key if an entry is malformed.
    """
    path = os.fspath(path)
    with open(path) as f:
        loader = getattr(yaml, 'CSafeLoader', yaml.SafeLoader)
        try:
            raw = yaml.load(f, Loader=loader)
        except yaml.YAMLError as err:
            raise ValueError(f'{path}: not valid yaml: {err}') from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f'{path}: expected a non-empty mapping key -> {{count, mean, std}}')
    entries = {}
    for key, value in raw.items():
        try:
            mean = float(value['mean'])
            entry = LutEntry(count=int(value.get('count', 1)),
                             mean=mean,
                             std=float(value.get('std', 0.0)))
        except (TypeError, KeyError, ValueError, AttributeError):
            raise ValueError(f'{path}: entry {key!r} must be a mapping with a numeric "mean" '
                             f'(and optional "count", "std"); got {value!r}') from None
        if not np.isfinite(entry.mean) or entry.mean < 0:
            raise ValueError(f'{path}: entry {key!r} has mean {entry.mean}; need a finite '
                             'non-negative number of ms')
        entries[str(key)] = entry
    return entries


def write_lut_yaml(path: str | os.PathLike, entries: Mapping[str, LutEntry]) -> None:
    """Writes one table in OFA's yaml format (atomically: temp file + rename)."""
    path = os.fspath(path)
    data = {
        k: {
            'count': int(v.count),
            'mean': float(v.mean),
            'std': float(v.std)
        } for k, v in sorted(entries.items())
    }
    tmp = f'{path}.tmp-{os.getpid()}'
    with open(tmp, 'w') as f:
        yaml.safe_dump(data, f, sort_keys=True, default_flow_style=False)
    os.replace(tmp, path)


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
            for p in range(space.NUM_BLOCKS):
                for ki, k in enumerate(space.KERNEL_CHOICES):
                    for ei, e in enumerate(space.EXPAND_CHOICES):
                        key = block_key(position_block(self.net, r, p, k, e))
                        block[i, p, ki, ei] = self._lookup(r, key)
        self.block_ms = block
        self.fixed_ms = fixed
        self.res_index = res_index
        # Gene value -> choice index, indexable by the raw value.
        self._k_lut = np.zeros((max(space.KERNEL_CHOICES) + 1,), np.int32)
        for k, i in _KERNEL_INDEX.items():
            self._k_lut[k] = i
        self._e_lut = np.zeros((max(space.EXPAND_CHOICES) + 1,), np.int32)
        for e, i in _EXPAND_INDEX.items():
            self._e_lut[e] = i

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
        ri = np.where(ok, self.res_index[np.clip((r - space.RESOLUTIONS[0]) // 4, 0, 24)], -1)
        if np.any(ri < 0):
            bad = sorted(set(int(x) for x in r[ri < 0]))
            raise KeyError(f'LUT has no table for resolution(s) {bad}; it covers '
                           f'{self.resolutions}')
        kernel = np.asarray(a.kernel).reshape(-1, space.NUM_BLOCKS)
        expand = np.asarray(a.expand).reshape(-1, space.NUM_BLOCKS)
        depth = np.asarray(a.depth).reshape(-1, space.NUM_STAGES)
        active = (np.arange(space.MAX_DEPTH) < depth[:, :, None]).reshape(-1, space.NUM_BLOCKS)
        pos = np.arange(space.NUM_BLOCKS)
        per_block = self.block_ms[ri[:, None], pos, self._k_lut[kernel], self._e_lut[expand]]
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
        slot = (r - space.RESOLUTIONS[0]) // 4
        in_space = (slot >= 0) & (slot < len(space.RESOLUTIONS)) & (r % 4 == 0)
        ri = jnp.asarray(self.res_index)[jnp.clip(slot, 0, len(space.RESOLUTIONS) - 1)]
        valid = in_space & (ri >= 0)
        ri = jnp.maximum(ri, 0)
        ki = jnp.asarray(self._k_lut)[jnp.clip(jnp.asarray(archs.kernel), 0, self._k_lut.size - 1)]
        ei = jnp.asarray(self._e_lut)[jnp.clip(jnp.asarray(archs.expand), 0, self._e_lut.size - 1)]
        pos = jnp.arange(space.NUM_BLOCKS)
        per_block = block[ri[..., None], pos, ki, ei]
        active = space.active_blocks(jnp.asarray(archs.depth))
        total = fixed[ri] + jnp.sum(jnp.where(active, per_block, 0.0), axis=-1)
        return jnp.where(valid, total, jnp.nan).astype(jnp.float32)

    __call__ = predict

    def entries(self, resolution: int) -> dict[str, LutEntry]:
        """The raw entries of one resolution's table."""
        return dict(self.tables[int(resolution)])


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
        files = sorted(glob.glob(os.path.join(path, '*_lookup_table.y*ml')))
        if not files:
            raise FileNotFoundError(f'{path}: folder has no {{r}}_lookup_table.yaml files')
        for f in files:
            m = _FILE_RE.match(os.path.basename(f))
            if not m:
                continue
            tables[int(m.group(1))] = read_lut_yaml(f)
    elif os.path.exists(path):
        entries = read_lut_yaml(path)
        found = _resolutions_in(entries)
        if not found:
            raise ValueError(f'{path}: no "Conv-input:RxRx3-..." key, cannot tell the resolution')
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
    return LookupTable(tables, width=width, num_classes=num_classes)


def save_lut(directory: str | os.PathLike, table: LookupTable) -> list[str]:
    """Writes one ``{r}_lookup_table.yaml`` per resolution; returns the paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for r, entries in table.tables.items():
        p = os.path.join(os.fspath(directory), f'{r}_lookup_table.yaml')
        write_lut_yaml(p, entries)
        paths.append(p)
    return paths
