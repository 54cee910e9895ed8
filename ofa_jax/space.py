"""The OFA MobileNetV3 search space (``ofa_mbv3_d234_e346_k357``).

An architecture is an :class:`Arch`: a pytree of integer arrays holding the
*values* of each gene (kernel sizes 3/5/7, expand ratios 3/4/6, stage depths
2/3/4 and the input resolution in pixels). A batch of architectures is the same
pytree with leading axes, so sampling, canonicalisation and encoding work under
``jax.jit`` and ``jax.vmap``.

The width multiplier (1.0 or 1.2) is a property of the supernet, not of an
architecture: the same ``Arch`` describes a sub-network of either width.

Host-side helpers convert to and from OFA's dict form
``{'ks': [...], 'e': [...], 'd': [...], 'r': [...]}`` and parse the
``child_arch`` strings of OFA-style CSV files. Every conversion validates its
input and raises a ``ValueError`` that names the field, the offending value
and the allowed values; nothing is ever silently clipped.
"""

from __future__ import annotations

import ast
import math
from typing import Any, Iterable, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

KERNEL_CHOICES = (3, 5, 7)
EXPAND_CHOICES = (3, 4, 6)
DEPTH_CHOICES = (2, 3, 4)
NUM_STAGES = 5
MAX_DEPTH = 4
NUM_BLOCKS = NUM_STAGES * MAX_DEPTH
RESOLUTIONS = tuple(range(128, 225, 4))
WIDTHS = (1.0, 1.2)

# Value that blocks past a stage's depth carry in canonical form: they do not
# exist in the sub-network, so one fixed value makes equal sub-networks equal.
INACTIVE_KERNEL = KERNEL_CHOICES[0]
INACTIVE_EXPAND = EXPAND_CHOICES[0]

_FIELDS = ('kernel', 'expand', 'depth', 'resolution')
_LENGTHS = {'kernel': NUM_BLOCKS, 'expand': NUM_BLOCKS, 'depth': NUM_STAGES}
_OFA_KEYS = {'ks': 'kernel', 'e': 'expand', 'd': 'depth', 'r': 'resolution'}


@flax.struct.dataclass
class Arch:
    """One architecture, or a batch of them (leading axes on every field).

    Attributes:
      kernel: int32[..., 20], depthwise kernel size of each block (3, 5 or 7).
      expand: int32[..., 20], expand ratio of each block (3, 4 or 6).
      depth: int32[..., 5], number of active blocks in each stage (2, 3 or 4).
      resolution: int32[...], input resolution in pixels (128..224 step 4).
    """

    kernel: Any
    expand: Any
    depth: Any
    resolution: Any

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading (batch) axes shared by all fields; ``()`` for one arch."""
        return tuple(np.shape(self.resolution))

    def __len__(self) -> int:
        shape = self.batch_shape
        if not shape:
            raise TypeError('len() of a single Arch; it has no batch axis')
        return shape[0]

    def __getitem__(self, index) -> 'Arch':
        """Indexes or slices the batch axes of every field."""
        return jax.tree_util.tree_map(lambda x: x[index], self)


# ---------------------------------------------------------------------------
# Constructors and batch helpers.


def make_arch(kernel: Sequence[int], expand: Sequence[int], depth: Sequence[int],
              resolution: int) -> Arch:
    """Builds one validated, canonical host-side ``Arch`` from Python values."""
    arch = Arch(kernel=np.asarray(kernel),
                expand=np.asarray(expand),
                depth=np.asarray(depth),
                resolution=np.asarray(resolution))
    validate(arch)
    return canonicalize_np(_as_int32(arch))


def largest(resolution: int = 224) -> Arch:
    """The largest sub-network: kernel 7, expand 6, depth 4 everywhere."""
    return make_arch([7] * NUM_BLOCKS, [6] * NUM_BLOCKS, [4] * NUM_STAGES, resolution)


def smallest(resolution: int = 128) -> Arch:
    """The smallest sub-network: kernel 3, expand 3, depth 2 everywhere."""
    return make_arch([3] * NUM_BLOCKS, [3] * NUM_BLOCKS, [2] * NUM_STAGES, resolution)


def stack(archs: Iterable[Arch]) -> Arch:
    """Stacks single architectures into a batch (numpy arrays)."""
    archs = list(archs)
    if not archs:
        raise ValueError('stack: got no architectures; need at least one')
    return jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *archs)


def unstack(batch: Arch) -> list[Arch]:
    """Splits a batch with one leading axis into single host-side archs."""
    host = to_numpy(batch)
    return [host[i] for i in range(len(host))]


def to_numpy(arch: Arch) -> Arch:
    """Copies every field to a host numpy int32 array."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x, dtype=np.int32), arch)


def _as_int32(arch: Arch) -> Arch:
    return jax.tree_util.tree_map(lambda x: np.asarray(x).astype(np.int32), arch)


# ---------------------------------------------------------------------------
# Validation (host side; never inside jit).


def _allowed(field: str) -> str:
    return {
        'kernel': f'one of {KERNEL_CHOICES}',
        'expand': f'one of {EXPAND_CHOICES}',
        'depth': f'one of {DEPTH_CHOICES}',
        'resolution': f'a multiple of 4 in [{RESOLUTIONS[0]}, {RESOLUTIONS[-1]}]',
    }[field]


def _choices(field: str) -> tuple[int, ...]:
    return {
        'kernel': KERNEL_CHOICES,
        'expand': EXPAND_CHOICES,
        'depth': DEPTH_CHOICES,
        'resolution': RESOLUTIONS,
    }[field]


def _check_values(field: str, values: Any, where: str = '') -> np.ndarray:
    """Checks integer dtype and allowed values; returns the int array."""
    if isinstance(values, (list, tuple)):
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f'{where}{field}: value {v!r} is not an integer; '
                                 f'allowed: {_allowed(field)}')
    arr = np.asarray(values)
    if arr.dtype == bool or arr.dtype.kind not in 'iu':
        bad = _first_non_int(values)
        raise ValueError(f'{where}{field}: value {bad!r} is not an integer; '
                         f'allowed: {_allowed(field)}')
    ok = np.isin(arr, _choices(field))
    if not ok.all():
        bad = arr[~ok].flat[0]
        raise ValueError(f'{where}{field}: value {int(bad)} is not allowed; '
                         f'allowed: {_allowed(field)}')
    return arr


def _first_non_int(values: Any) -> Any:
    flat = np.asarray(values, dtype=object).reshape(-1)
    for v in flat:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            return v
    return values


def validate(arch: Arch) -> None:
    """Raises ``ValueError`` naming field, value and allowed values if invalid.

    Accepts one arch or a batch. Checks field shapes (kernel and expand have 20
    entries, depth 5, resolution is a scalar per arch), integer dtypes and the
    allowed value of every gene.
    """
    batch = tuple(np.shape(arch.resolution))
    for field in _FIELDS:
        value = getattr(arch, field)
        shape = tuple(np.shape(value))
        want = batch + ((_LENGTHS[field],) if field in _LENGTHS else ())
        if shape != want:
            if field in _LENGTHS:
                raise ValueError(f'{field}: has shape {shape}, expected {want} '
                                 f'({_LENGTHS[field]} entries per architecture)')
            raise ValueError(f'{field}: has shape {shape}, expected {want}')
        _check_values(field, value)


# ---------------------------------------------------------------------------
# Array module and gene-value -> choice-index maps (numpy or jnp, jit friendly).


def array_module(*values: Any):
    """``jax.numpy`` if any of ``values`` is a jax array (tracers included), else numpy."""
    for v in values:
        if isinstance(v, jax.Array):
            return jnp
    return np


def is_traced(*trees: Any) -> bool:
    """Whether any leaf of ``trees`` is a jax tracer (inside jit, vmap or grad)."""
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(trees))


def _compare_index(values: Any, choices: Sequence[int]) -> Any:
    """int32 index of each value in the sorted ``choices``: ``sum_i (v >= choices[i])``."""
    xp = array_module(values)
    v = xp.asarray(values)
    index = xp.zeros(v.shape, xp.int32)
    for c in choices[1:]:
        index = index + (v >= c).astype(xp.int32)
    return index


def _value_table(choices: Sequence[int]) -> np.ndarray:
    table = _compare_index(np.arange(max(choices) + 1), choices)
    table.setflags(write=False)
    return table


# Value-indexed forms of kernel_index / expand_index: KERNEL_INDEX[k] for
# k in 0..7, EXPAND_INDEX[e] for e in 0..6 (the same map, as int32 tables).
KERNEL_INDEX = _value_table(KERNEL_CHOICES)
EXPAND_INDEX = _value_table(EXPAND_CHOICES)


def _choice_index(values: Any, choices: Sequence[int], table: np.ndarray, gather: bool) -> Any:
    if not gather:
        return _compare_index(values, choices)
    xp = array_module(values)
    return xp.asarray(table)[xp.clip(xp.asarray(values), 0, table.size - 1)]


def kernel_index(kernel: Any, *, gather: bool = False) -> Any:
    """Index in :data:`KERNEL_CHOICES` of kernel values (3/5/7 -> 0/1/2), int32.

    numpy in, numpy out; a jax array (or tracer) gives a jax array. Computed by
    comparisons, ``sum_i (k >= KERNEL_CHOICES[i])``, which fuse with their
    neighbours under XLA (scoring 10^5 archs is bound by memory traffic);
    ``gather=True`` looks the values up in :data:`KERNEL_INDEX` instead (same
    numbers, a different XLA program; the LUT's jitted float32 sums keep their
    rounding that way). Values that are not choices map to the index of the
    largest choice below them (0 below the smallest): no validation here, see
    :func:`validate`.
    """
    return _choice_index(kernel, KERNEL_CHOICES, KERNEL_INDEX, gather)


def expand_index(expand: Any, *, gather: bool = False) -> Any:
    """Index in :data:`EXPAND_CHOICES` of expand values (3/4/6 -> 0/1/2), int32.

    As :func:`kernel_index` (``gather=True`` uses :data:`EXPAND_INDEX`).
    """
    return _choice_index(expand, EXPAND_CHOICES, EXPAND_INDEX, gather)


def resolution_index(resolution: Any) -> Any:
    """Index in :data:`RESOLUTIONS` of resolutions (128..224 -> 0..24).

    Values outside the space clip to the first or last index and values in
    between two resolutions round down, so ``RESOLUTIONS[index] == r`` tells
    whether ``r`` is in the space. Keeps the input's integer dtype.
    """
    xp = array_module(resolution)
    step = RESOLUTIONS[1] - RESOLUTIONS[0]
    return xp.clip((xp.asarray(resolution) - RESOLUTIONS[0]) // step, 0, len(RESOLUTIONS) - 1)


# ---------------------------------------------------------------------------
# Canonical form, masks and keys (jit/vmap friendly).


def active_blocks(depth: jax.Array) -> jax.Array:
    """bool[..., 20]: whether each block is inside its stage's depth."""
    depth = jnp.asarray(depth)
    position = jnp.arange(MAX_DEPTH)
    mask = position < depth[..., :, None]
    return mask.reshape(depth.shape[:-1] + (NUM_BLOCKS,))


def active_blocks_np(depth: Any) -> np.ndarray:
    """Host (numpy) version of :func:`active_blocks`."""
    depth = np.asarray(depth)
    mask = np.arange(MAX_DEPTH) < depth[..., :, None]
    return mask.reshape(depth.shape[:-1] + (NUM_BLOCKS,))


def canonicalize(arch: Arch) -> Arch:
    """Sets inactive blocks to the fixed (kernel 3, expand 3); jit friendly."""
    mask = active_blocks(arch.depth)
    return arch.replace(kernel=jnp.where(mask, jnp.asarray(arch.kernel),
                                         INACTIVE_KERNEL).astype(jnp.int32),
                        expand=jnp.where(mask, jnp.asarray(arch.expand),
                                         INACTIVE_EXPAND).astype(jnp.int32),
                        depth=jnp.asarray(arch.depth, jnp.int32),
                        resolution=jnp.asarray(arch.resolution, jnp.int32))


def canonicalize_np(arch: Arch) -> Arch:
    """Host (numpy) version of :func:`canonicalize`."""
    depth = np.asarray(arch.depth, np.int32)
    mask = active_blocks_np(depth)
    return Arch(kernel=np.where(mask, arch.kernel, INACTIVE_KERNEL).astype(np.int32),
                expand=np.where(mask, arch.expand, INACTIVE_EXPAND).astype(np.int32),
                depth=depth,
                resolution=np.asarray(arch.resolution, np.int32))


def arch_key(arch: Arch) -> str:
    """A compact string identifying one sub-network (equal iff same network).

    Example: ``r224-d44444-k7777...-e6666...``. Inactive blocks are
    canonicalised first, so two dicts that differ only there share a key.
    """
    a = canonicalize_np(to_numpy(arch))
    if a.batch_shape:
        raise ValueError(f'arch_key takes one architecture, got batch shape {a.batch_shape}')
    return 'r{}-d{}-k{}-e{}'.format(int(a.resolution), ''.join(map(str, a.depth)),
                                    ''.join(map(str, a.kernel)), ''.join(map(str, a.expand)))


def from_key(key: str) -> Arch:
    """Inverse of :func:`arch_key`."""
    try:
        r, d, k, e = key.split('-')
        if not (r[0] == 'r' and d[0] == 'd' and k[0] == 'k' and e[0] == 'e'):
            raise ValueError
        return make_arch([int(c) for c in k[1:]], [int(c) for c in e[1:]], [int(c) for c in d[1:]],
                         int(r[1:]))
    except (ValueError, IndexError) as err:
        if isinstance(err, ValueError) and str(err):
            raise
        raise ValueError(f'arch key {key!r} is not of the form r<res>-d<5 digits>-k<20 digits>'
                         f'-e<20 digits>') from None


def num_subnets(resolutions: Sequence[int] = RESOLUTIONS) -> int:
    """Number of distinct sub-networks (canonical archs) over ``resolutions``.

    Per stage: sum over depth d of (3 kernels x 3 expands)^d = 81 + 729 + 6561.
    """
    per_stage = sum((len(KERNEL_CHOICES) * len(EXPAND_CHOICES))**d for d in DEPTH_CHOICES)
    return per_stage**NUM_STAGES * len(tuple(resolutions))


def space_size_log10(resolutions: Sequence[int] = RESOLUTIONS) -> float:
    """log10 of :func:`num_subnets` (about 20.7 for all 25 resolutions)."""
    return math.log10(num_subnets(resolutions))


# ---------------------------------------------------------------------------
# Sampling.


def sample(key: jax.Array,
           shape: Sequence[int] = (),
           *,
           resolutions: Sequence[int] = RESOLUTIONS) -> Arch:
    """Samples canonical architectures uniformly per gene with ``jax.random``.

    Args:
      key: a PRNG key.
      shape: batch shape; ``()`` for one arch.
      resolutions: resolutions to draw from (validated).

    Returns:
      An ``Arch`` of jax int32 arrays with batch shape ``shape``.
    """
    resolutions = _check_resolutions(resolutions)
    shape = tuple(shape)
    kk, ke, kd, kr = jax.random.split(key, 4)
    pick = lambda k, choices, s: jnp.asarray(choices, jnp.int32)[jax.random.randint(
        k, s, 0, len(choices))]
    arch = Arch(kernel=pick(kk, KERNEL_CHOICES, shape + (NUM_BLOCKS,)),
                expand=pick(ke, EXPAND_CHOICES, shape + (NUM_BLOCKS,)),
                depth=pick(kd, DEPTH_CHOICES, shape + (NUM_STAGES,)),
                resolution=pick(kr, resolutions, shape))
    return canonicalize(arch)


def sample_np(rng: np.random.Generator,
              n: int | None = None,
              *,
              resolutions: Sequence[int] = RESOLUTIONS) -> Arch:
    """Host-side sampling with a numpy ``Generator``; ``n=None`` gives one arch."""
    resolutions = _check_resolutions(resolutions)
    shape = () if n is None else (int(n),)
    arch = Arch(kernel=rng.choice(KERNEL_CHOICES, shape + (NUM_BLOCKS,)),
                expand=rng.choice(EXPAND_CHOICES, shape + (NUM_BLOCKS,)),
                depth=rng.choice(DEPTH_CHOICES, shape + (NUM_STAGES,)),
                resolution=rng.choice(resolutions, shape))
    return canonicalize_np(arch)


def _check_resolutions(resolutions: Sequence[int]) -> tuple[int, ...]:
    resolutions = tuple(resolutions)
    if not resolutions:
        raise ValueError(f'resolutions: empty; allowed: {_allowed("resolution")}')
    _check_values('resolution', resolutions)
    return tuple(int(r) for r in resolutions)


def parse_resolutions(text: str | Sequence[int]) -> tuple[int, ...]:
    """Parses ``'128,160'`` (or a sequence) into validated resolutions."""
    if isinstance(text, str):
        try:
            values = [int(t) for t in text.replace(' ', '').split(',') if t]
        except ValueError:
            raise ValueError(f'resolutions: {text!r} is not a comma separated list of integers; '
                             f'allowed: {_allowed("resolution")}') from None
    else:
        values = list(text)
    return _check_resolutions(values)


# ---------------------------------------------------------------------------
# OFA dict form and CSV child_arch strings.


def from_ofa_dict(d: Mapping[str, Any]) -> Arch:
    """Converts OFA's ``{'ks', 'e', 'd', 'r'}`` dict (``'wid'`` optional) to an Arch.

    ``'r'`` may be an int or a one-element list. Entries of ``ks``/``e`` past a
    stage's depth must still be valid choices (OFA always fills them) and are
    canonicalised away.
    """
    if not isinstance(d, Mapping):
        raise ValueError(f'arch: expected a dict with keys ks, e, d, r; got {type(d).__name__}')
    for key in _OFA_KEYS:
        if key not in d:
            raise ValueError(f"arch: missing key '{key}' ({_OFA_KEYS[key]}); "
                             f"required keys: 'ks', 'e', 'd', 'r' (and optional 'wid')")
    extra = set(d) - set(_OFA_KEYS) - {'wid'}
    if extra:
        raise ValueError(f'arch: unknown key(s) {sorted(extra)}; allowed keys: ks, e, d, r, wid')
    if d.get('wid') not in (None, 0, 1, 2):
        raise ValueError(f"wid: value {d['wid']!r} is not supported; allowed: None")
    fields = {}
    for key, field in _OFA_KEYS.items():
        value = d[key]
        if field == 'resolution':
            if isinstance(value, (list, tuple)):
                if len(value) != 1:
                    raise ValueError(f'resolution: r={value!r} must be one integer or a list of '
                                     f'one; allowed: {_allowed("resolution")}')
                value = value[0]
            _check_values(field, [value], where=f'{key}/')
            fields[field] = int(value)
        else:
            if not isinstance(value, (list, tuple, np.ndarray)):
                raise ValueError(f'{field}: {key}={value!r} must be a list of '
                                 f'{_LENGTHS[field]} integers')
            if len(value) != _LENGTHS[field]:
                raise ValueError(f'{field}: {key} has {len(value)} entries, expected '
                                 f'{_LENGTHS[field]}; each {_allowed(field)}')
            _check_values(field, list(value), where=f'{key}/')
            fields[field] = [int(v) for v in value]
    return make_arch(**fields)


def to_ofa_dict(arch: Arch, *, with_wid: bool = True) -> dict[str, Any]:
    """Converts one arch to OFA's dict form (``'r'`` as a one-element list)."""
    a = canonicalize_np(to_numpy(arch))
    if a.batch_shape:
        raise ValueError(f'to_ofa_dict takes one architecture, got batch shape {a.batch_shape}')
    out = {'wid': None} if with_wid else {}
    out.update(ks=[int(v) for v in a.kernel],
               e=[int(v) for v in a.expand],
               d=[int(v) for v in a.depth],
               r=[int(a.resolution)])
    return out


def parse_child_arch(text: str) -> Arch:
    """Parses an OFA CSV ``child_arch`` string without ``eval``.

    The string is a Python dict literal such as
    ``"{'wid': None, 'ks': [...], 'e': [...], 'd': [...], 'r': [208]}"``;
    ``ast.literal_eval`` accepts literals only (no names, calls or attributes),
    so a crafted string cannot run code.
    """
    if not isinstance(text, str):
        raise ValueError(f'child_arch: expected a string, got {type(text).__name__}')
    if len(text) > 4096:
        raise ValueError(f'child_arch: string of {len(text)} characters is too long (max 4096)')
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        raise ValueError(f'child_arch: {text[:80]!r} is not a dict literal like '
                         "\"{'ks': [...], 'e': [...], 'd': [...], 'r': [224]}\"") from None
    return from_ofa_dict(value)


def format_child_arch(arch: Arch) -> str:
    """Formats one arch like the ``child_arch`` column of OFA CSV files."""
    return str(to_ofa_dict(arch, with_wid=True))
