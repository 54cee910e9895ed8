"""Reading PyTorch checkpoints without PyTorch, safely.

``torch.save`` writes pickles, and unpickling an untrusted pickle can run any
code. :func:`load` reads the two formats ``torch.save`` has used with a
restricted unpickler that resolves only the handful of globals a tensor
checkpoint needs and rebuilds every tensor as a numpy array:

* the legacy format (PyTorch < 1.6, e.g. OFA's ``acc_predictor.pth``): five
  pickles in a row (magic number, protocol version, system info, the object,
  the list of storage keys) followed by each storage's raw bytes, each
  preceded by its element count as a little-endian int64;
* the zip format (PyTorch >= 1.6): ``<archive>/data.pkl`` plus one file per
  storage, ``<archive>/data/<key>``.

Allowed globals: ``collections.OrderedDict``, ``torch._utils._rebuild_tensor``
/ ``_rebuild_tensor_v2`` / ``_rebuild_parameter`` (tensors and parameters),
``torch.*Storage`` types and ``torch`` dtypes (to pick the numpy dtype), and
``torch.Size``. Anything else (``os.system``, ``builtins.eval``, any class)
raises :class:`UnsafePickleError` before it is called.

Memory stays bounded by the file: every pickle is scanned opcode by opcode
(:mod:`pickletools`) before it is unpickled, so no length or memo index can
ask for more than the file holds; every tensor must fit in the bytes its
storage actually stores (offset, sizes and strides non-negative, element
count at most what the storage holds from the offset, last element inside
it), and all tensors together may hold at most :data:`MAX_VIEW_FACTOR` times
the stored elements. A zip entry is read only up to the bytes needed.
Every failure is a :class:`BadCheckpointError` (a ``ValueError``) whose
message starts with the file's path and names the tensor or storage at fault.
"""

from __future__ import annotations

import collections
import io
import math
import operator
import os
import pickle
import pickletools
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL = 1001

# All tensors of one file together may hold at most this many times the
# elements its storages store (tied weights and views share storage; a
# crafted file must not turn a few stored bytes into gigabytes of copies).
MAX_VIEW_FACTOR = 4
# Containers nest at most this deep in a checkpoint (a state dict nests 1-3).
MAX_DEPTH = 64
# A zip checkpoint's data.pkl, and all zip entries together, are read up to this
# many times the archive's size (torch.save stores entries uncompressed).
MAX_ZIP_RATIO = 16
# A memo index may exceed the number of opcodes before it by at most this.
_MEMO_SLACK = 1024


class BadCheckpointError(pickle.UnpicklingError, ValueError):
    """The file is not a valid tensor checkpoint; the message starts with its path.

    Both a ``pickle.UnpicklingError`` (what this module raised before) and a
    ``ValueError`` (what every loader of outside data raises).
    """


class UnsafePickleError(BadCheckpointError):
    """A checkpoint referenced a global outside the allowed set."""


class _NoState:
    """Refuses pickle's BUILD opcode, which would overwrite checked attributes."""

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError(f'BUILD (setting state) on a {self!r} is not allowed')


class _DType(_NoState):
    """Stands for a torch storage type or dtype; carries the numpy dtype."""

    def __init__(self, name: str, dtype: np.dtype):
        self.name, self.dtype = name, np.dtype(dtype)

    def __repr__(self) -> str:
        return f'torch.{self.name}'


class _Callable(_NoState):
    """An allowed global function; a fresh wrapper so a pickle cannot modify the function."""

    def __init__(self, name: str, fn: Any):
        self.name, self.fn = name, fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __repr__(self) -> str:
        return self.name


_STORAGE_DTYPES = {
    'FloatStorage': np.float32,
    'DoubleStorage': np.float64,
    'HalfStorage': np.float16,
    'LongStorage': np.int64,
    'IntStorage': np.int32,
    'ShortStorage': np.int16,
    'CharStorage': np.int8,
    'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}
_TORCH_DTYPES = {
    'float32': np.float32,
    'float': np.float32,
    'float64': np.float64,
    'double': np.float64,
    'float16': np.float16,
    'half': np.float16,
    'int64': np.int64,
    'long': np.int64,
    'int32': np.int32,
    'int': np.int32,
    'int16': np.int16,
    'int8': np.int8,
    'uint8': np.uint8,
    'bool': np.bool_,
}


class _Storage(_NoState):
    """A storage referenced by a persistent id; filled with bytes later."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, np.dtype(dtype), int(numel)
        self.array: np.ndarray | None = None

    def __repr__(self) -> str:
        return f'storage {self.key!r}'


def _index_tuple(value: Any, what: str) -> tuple[int, ...]:
    """``value`` as a tuple of non-negative ints, else BadCheckpointError naming ``what``."""
    if not isinstance(value, (tuple, list)):
        raise BadCheckpointError(f'{what} {value!r:.80} is not a tuple of integers')
    out = []
    for v in value:
        if isinstance(v, bool):
            raise BadCheckpointError(f'{what} {tuple(value)!r:.80} holds a bool')
        try:
            v = operator.index(v)
        except TypeError:
            raise BadCheckpointError(f'{what} {tuple(value)!r:.80} holds {v!r:.40}, '
                                     'not an integer') from None
        if v < 0:
            raise BadCheckpointError(f'{what} {tuple(value)!r:.80} holds {v}; must be >= 0')
        out.append(v)
    return tuple(out)


class _LazyTensor(_NoState):
    """A tensor whose storage bytes are not read yet; checked when materialised."""

    def __init__(self, storage: _Storage, offset: Any, size: Any, stride: Any):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def check(self, name: str) -> tuple[int, tuple[int, ...], tuple[int, ...], int]:
        """(offset, size, stride, element count), after checking the tensor fits its storage.

        The element count must fit in what the storage holds from the offset,
        and the last element must lie inside it; nothing is allocated here.
        """
        storage = self.storage
        data = storage.array
        where = f'tensor {name}'
        if data is None:
            raise BadCheckpointError(f'{where}: {storage!r} has no data in the file')
        size = _index_tuple(self.size, f'{where}: size')
        stride = _index_tuple(self.stride, f'{where}: stride')
        (offset,) = _index_tuple((self.offset,), f'{where}: storage offset')
        if len(stride) != len(size):
            raise BadCheckpointError(f'{where}: size {size} and stride {stride} differ in length')
        numel = math.prod(size)
        if numel:
            available = max(data.size - offset, 0)
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if numel > available or last >= data.size:
                raise BadCheckpointError(
                    f'{where} (offset {offset}, size {size}, stride {stride}) exceeds its '
                    f'storage: needs {numel} elements (last at index {last}), {storage!r} '
                    f'holds {data.size} ({available} from the offset)')
        return offset, size, stride, numel

    def materialize(self, name: str) -> np.ndarray:
        """A fresh array (checked first with :meth:`check`)."""
        offset, size, stride, numel = self.check(name)
        data = self.storage.array
        if numel == 0:
            return np.zeros(size, data.dtype)
        if not size:
            return data[offset].copy()
        item = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(data[offset:],
                                               shape=size,
                                               strides=tuple(s * item for s in stride),
                                               writeable=False)
        return np.array(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    if not isinstance(storage, _Storage):
        raise BadCheckpointError(f'tensor rebuilt from {storage!r:.80}, which is not a storage')
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *unused):
    return data


def _torch_size(values=()):
    return tuple(values)


def _allowed_global(module: str, name: str) -> Any:
    if module == 'collections' and name == 'OrderedDict':
        return collections.OrderedDict
    if module == 'torch._utils':
        if name in ('_rebuild_tensor', '_rebuild_tensor_v2'):
            return _Callable(f'{module}.{name}', _rebuild_tensor)
        if name in ('_rebuild_parameter', '_rebuild_parameter_with_state'):
            return _Callable(f'{module}.{name}', _rebuild_parameter)
    if module == 'torch':
        if name in _STORAGE_DTYPES:
            return _DType(name, _STORAGE_DTYPES[name])
        if name in _TORCH_DTYPES:
            return _DType(name, _TORCH_DTYPES[name])
        if name == 'Size':
            return _Callable('torch.Size', _torch_size)
    raise UnsafePickleError(f'checkpoint refers to global {module}.{name:.80}, which is not '
                            'allowed (only tensors, storages, dtypes and OrderedDict are)')


class _Unpickler(pickle.Unpickler):
    """Resolves only allowed globals; storages come from ``persistent_load``."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage] | None = None):
        super().__init__(file)
        self.storages = {} if storages is None else storages

    def find_class(self, module: str, name: str) -> Any:
        return _allowed_global(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] not in ('storage', b'storage'):
            raise UnsafePickleError(f'unsupported persistent id {pid!r:.80}')
        # legacy: (storage, type, key, location, numel, view_metadata);
        # zip:    (storage, type, key, location, numel).
        _, storage_type, key, _, numel = pid[:5]
        if not isinstance(storage_type, _DType):
            raise UnsafePickleError(f'storage type {storage_type!r:.80} is not a torch storage')
        if len(pid) > 5 and pid[5] is not None:
            raise BadCheckpointError('storage views (view_metadata) are not supported')
        if not isinstance(key, (str, bytes)):
            raise BadCheckpointError(f'storage key {key!r:.80} is not a string')
        key = key.decode('utf-8', 'replace') if isinstance(key, bytes) else key
        (numel,) = _index_tuple((numel,), f'storage {key!r:.80}: element count')
        if key not in self.storages:
            self.storages[key] = _Storage(key, storage_type.dtype, numel)
        storage = self.storages[key]
        if storage.dtype != storage_type.dtype or storage.numel != numel:
            raise BadCheckpointError(f'{storage!r} is declared twice with different types or '
                                     'sizes')
        return storage


def _scan_pickle(data: bytes | memoryview, start: int, what: str) -> int:
    """Checks one pickle at ``data[start:]`` opcode by opcode; returns the offset after it.

    ``pickletools.genops`` reads every counted argument through a bounded
    ``BytesIO``, so a length past the end fails here, before the C unpickler
    could allocate for it; a memo index (``PUT``) far past the opcodes seen so
    far (picklers number them 0, 1, ...) would make it allocate a memo table of
    that size, and is refused.
    """
    stream = io.BytesIO(data)
    stream.seek(start)
    count = 0
    for op, arg, _ in pickletools.genops(stream):
        count += 1
        if op.name in ('PUT', 'BINPUT', 'LONG_BINPUT') and not 0 <= arg < count + _MEMO_SLACK:
            raise BadCheckpointError(f'{what}: memo index {arg} after {count} opcodes')
        if op.name == 'STOP':
            return stream.tell()
    raise BadCheckpointError(f'{what}: pickle ends without STOP')  # genops raises first.


def _unpickle(data: bytes | memoryview,
              start: int,
              what: str,
              storages: dict[str, _Storage] | None = None) -> tuple[Any, int]:
    """(object, end offset) of the checked pickle at ``data[start:]``."""
    end = _scan_pickle(data, start, what)
    unpickler = _Unpickler(io.BytesIO(data[start:end]), storages)
    return unpickler.load(), end


class _Materializer:
    """Turns lazy tensors into arrays inside the unpickled containers.

    Shared references (the memo) stay shared, cycles terminate, nesting is
    capped at :data:`MAX_DEPTH`, and all tensors together are capped at
    ``budget`` elements.
    """

    def __init__(self, budget: int):
        self.budget = budget
        self.used = 0
        self.memo: dict[int, Any] = {}

    def __call__(self, obj: Any, name: str = '', depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise BadCheckpointError(f'{name or "object"}: containers nest deeper than '
                                     f'{MAX_DEPTH} levels')
        if id(obj) in self.memo:
            return self.memo[id(obj)]
        out: Any
        if isinstance(obj, _LazyTensor):
            label = repr(name) if name else '(top level)'
            need = obj.check(label)[-1]
            if self.used + need > self.budget:
                raise BadCheckpointError(
                    f'tensor {label}: the tensors so far hold {self.used + need} elements, '
                    f'more than {MAX_VIEW_FACTOR}x the {self.budget // MAX_VIEW_FACTOR} '
                    'the file stores')
            self.used += need
            out = obj.materialize(label)
        elif isinstance(obj, (collections.OrderedDict, dict)):
            out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
            self.memo[id(obj)] = out
            for k, v in obj.items():
                out[k] = self(v, _join(name, k), depth + 1)
        elif isinstance(obj, list):
            out = []
            self.memo[id(obj)] = out
            out.extend(self(v, _join(name, i), depth + 1) for i, v in enumerate(obj))
        elif isinstance(obj, tuple):
            out = tuple(self(v, _join(name, i), depth + 1) for i, v in enumerate(obj))
        elif isinstance(obj, (set, frozenset)):
            if any(isinstance(v, _NoState) for v in obj):
                raise BadCheckpointError(f'{name or "object"}: a set holds tensors or storages')
            out = obj
        elif isinstance(obj, _NoState):
            raise BadCheckpointError(f'{name or "object"}: {obj!r:.80} on its own (not inside a '
                                     'tensor) is not supported')
        else:
            out = obj
        self.memo[id(obj)] = out
        return out


def _join(name: str, key: Any) -> str:
    """``name.key``: where an object sits in the checkpoint, for messages (capped)."""
    key = f'{key!r:.60}' if not isinstance(key, str) else key[:60]
    return (f'{name}.{key}' if name else key)[-200:]


def _materialize(obj: Any, storages: dict[str, _Storage]) -> Any:
    stored = sum(s.array.size for s in storages.values() if s.array is not None)
    return _Materializer(MAX_VIEW_FACTOR * stored)(obj)


def _load_legacy(data: bytes) -> Any:
    magic, pos = _unpickle(data, 0, 'magic number')
    if magic != LEGACY_MAGIC:
        raise BadCheckpointError('not a PyTorch checkpoint (bad magic number)')
    protocol, pos = _unpickle(data, pos, 'protocol version')
    if protocol != LEGACY_PROTOCOL:
        raise BadCheckpointError(f'unsupported legacy protocol version {protocol!r:.80}')
    sys_info, pos = _unpickle(data, pos, 'system info')
    if not isinstance(sys_info, dict) or not sys_info.get('little_endian', True):
        raise BadCheckpointError('only little-endian checkpoints are supported')
    storages: dict[str, _Storage] = {}
    obj, pos = _unpickle(data, pos, 'main pickle', storages)
    keys, pos = _unpickle(data, pos, 'storage key list')
    if not isinstance(keys, list):
        raise BadCheckpointError('legacy checkpoint: storage key list missing')
    seen = set()
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise BadCheckpointError(f'legacy checkpoint: unknown storage key {key!r:.80}')
        if storage.key in seen:
            raise BadCheckpointError(f'legacy checkpoint: {storage!r} listed twice')
        seen.add(storage.key)
        if pos + 8 > len(data):
            raise BadCheckpointError(f'{storage!r}: truncated file (element count missing)')
        (numel,) = struct.unpack_from('<q', data, pos)
        pos += 8
        if numel < 0 or numel != storage.numel:
            raise BadCheckpointError(f'{storage!r}: {numel} elements on disk, '
                                     f'{storage.numel} expected')
        nbytes = numel * storage.dtype.itemsize
        if pos + nbytes > len(data):
            raise BadCheckpointError(f'{storage!r}: truncated file ({nbytes} bytes needed, '
                                     f'{len(data) - pos} left)')
        storage.array = np.frombuffer(data,
                                      storage.dtype.newbyteorder('<'),
                                      count=numel,
                                      offset=pos)
        pos += nbytes
    return _materialize(obj, storages)


def _read_entry(zf: zipfile.ZipFile, name: str, nbytes: int, budget: list[int]) -> bytes:
    """At most ``nbytes`` of entry ``name``; counts them against ``budget[0]``."""
    info = zf.getinfo(name)
    if info.file_size < nbytes:
        raise BadCheckpointError(f'zip entry {name!r}: {info.file_size} bytes, need {nbytes}')
    if nbytes > budget[0]:
        raise BadCheckpointError(f'zip entry {name!r}: {nbytes} bytes would pass '
                                 f'{MAX_ZIP_RATIO}x the archive size')
    with zf.open(info) as f:
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise BadCheckpointError(f'zip entry {name!r}: {len(data)} bytes, need {nbytes}')
    budget[0] -= nbytes
    return data


def _load_zip(zf: zipfile.ZipFile, archive_size: int) -> Any:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith('/data.pkl') or n == 'data.pkl']
    if len(pkl) != 1:
        raise BadCheckpointError('zip checkpoint: expected exactly one data.pkl')
    prefix = pkl[0][:-len('data.pkl')]
    budget = [MAX_ZIP_RATIO * max(archive_size, 1 << 16)]
    blob = _read_entry(zf, pkl[0], zf.getinfo(pkl[0]).file_size, budget)
    storages: dict[str, _Storage] = {}
    obj, _ = _unpickle(blob, 0, pkl[0], storages)
    for key, storage in storages.items():
        name = f'{prefix}data/{key}'
        if name not in names:
            raise BadCheckpointError(f'zip checkpoint: storage file {name!r} missing')
        nbytes = storage.numel * storage.dtype.itemsize
        raw = _read_entry(zf, name, nbytes, budget)
        storage.array = np.frombuffer(raw, storage.dtype.newbyteorder('<'))
    return _materialize(obj, storages)


def load(path: str | os.PathLike) -> Any:
    """Loads a PyTorch checkpoint as numpy arrays inside dicts/lists/tuples.

    Args:
      path: a file written by ``torch.save`` (legacy or zip format).

    Returns:
      The saved object with every tensor replaced by a ``np.ndarray``
      (``OrderedDict`` state dicts stay ``OrderedDict``; an object referenced
      twice in the file is one object here too).

    Raises:
      UnsafePickleError: the file refers to a global outside the allow list
        (nothing from it is ever called).
      BadCheckpointError: the file is not a valid tensor checkpoint (truncated,
        random bytes, a tensor outside its storage, ...); a ``ValueError`` and a
        ``pickle.UnpicklingError`` whose message starts with ``path``.
      FileNotFoundError: no such file.
    """
    path = os.fspath(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                return _load_zip(zf, os.path.getsize(path))
        with open(path, 'rb') as f:
            data = f.read()
        return _load_legacy(data)
    except OSError:
        raise
    except BadCheckpointError as err:
        raise type(err)(f'{path}: {err}') from None
    except Exception as err:  # pylint: disable=broad-except
        # Whatever else a malformed pickle or zip raises (EOFError, KeyError,
        # struct.error, zipfile.BadZipFile, ...): one error naming the file.
        raise BadCheckpointError(f'{path}: not a valid PyTorch checkpoint '
                                 f'({type(err).__name__}: {str(err)[:200]})') from None
