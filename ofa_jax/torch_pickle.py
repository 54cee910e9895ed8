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
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL = 1001


class UnsafePickleError(pickle.UnpicklingError):
    """A checkpoint referenced a global outside the allowed set."""


class _DType:
    """Stands for a torch storage type or dtype; carries the numpy dtype."""

    def __init__(self, name: str, dtype: np.dtype):
        self.name, self.dtype = name, np.dtype(dtype)

    def __repr__(self) -> str:
        return f'torch.{self.name}'


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


class _Storage:
    """A storage referenced by a persistent id; filled with bytes later."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, np.dtype(dtype), int(numel)
        self.array: np.ndarray | None = None


class _LazyTensor:
    """A tensor whose storage bytes are not read yet (legacy format)."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

    def materialize(self) -> np.ndarray:
        data = self.storage.array
        if data is None:
            raise pickle.UnpicklingError(f'storage {self.storage.key!r} has no data')
        # Bounds check before as_strided: a crafted size/stride must not read
        # outside the storage.
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride) if n > 0)
        bad = self.offset < 0 or any(s < 0 for s in self.stride)
        if bad or (0 not in self.size and last >= data.size):
            raise pickle.UnpicklingError(
                f'tensor (offset {self.offset}, size {self.size}, stride {self.stride}) '
                f'exceeds its storage of {data.size} elements')
        if not self.size:
            return data[self.offset].copy()
        if 0 in self.size:
            return np.zeros(self.size, data.dtype)
        item = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(data[self.offset:],
                                               shape=self.size,
                                               strides=tuple(s * item for s in self.stride),
                                               writeable=False)
        return np.array(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError('tensor rebuilt from something that is not a storage')
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
            return _rebuild_tensor
        if name in ('_rebuild_parameter', '_rebuild_parameter_with_state'):
            return _rebuild_parameter
    if module == 'torch':
        if name in _STORAGE_DTYPES:
            return _DType(name, _STORAGE_DTYPES[name])
        if name in _TORCH_DTYPES:
            return _DType(name, _TORCH_DTYPES[name])
        if name == 'Size':
            return _torch_size
    raise UnsafePickleError(f'checkpoint refers to global {module}.{name}, which is not allowed '
                            '(only tensors, storages, dtypes and OrderedDict are)')


class _Unpickler(pickle.Unpickler):
    """Resolves only allowed globals; storages come from ``persistent_load``."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage] | None = None):
        super().__init__(file)
        self.storages = {} if storages is None else storages

    def find_class(self, module: str, name: str) -> Any:
        return _allowed_global(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] not in ('storage', b'storage'):
            raise UnsafePickleError(f'unsupported persistent id {pid!r:.80}')
        # legacy: (storage, type, key, location, numel, view_metadata);
        # zip:    (storage, type, key, location, numel).
        _, storage_type, key, _, numel = pid[:5]
        if not isinstance(storage_type, _DType):
            raise UnsafePickleError(f'storage type {storage_type!r:.80} is not a torch storage')
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError('storage views (view_metadata) are not supported')
        key = key.decode() if isinstance(key, bytes) else str(key)
        if key not in self.storages:
            self.storages[key] = _Storage(key, storage_type.dtype, numel)
        return self.storages[key]


def _materialize(obj: Any) -> Any:
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialize(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize(v) for v in obj)
    return obj


def _load_legacy(f: BinaryIO) -> Any:
    header = _Unpickler(f)
    magic = header.load()
    if magic != LEGACY_MAGIC:
        raise pickle.UnpicklingError('not a PyTorch checkpoint (bad magic number)')
    protocol = _Unpickler(f).load()
    if protocol != LEGACY_PROTOCOL:
        raise pickle.UnpicklingError(f'unsupported legacy protocol version {protocol!r}')
    sys_info = _Unpickler(f).load()
    if not isinstance(sys_info, dict) or not sys_info.get('little_endian', True):
        raise pickle.UnpicklingError('only little-endian checkpoints are supported')
    main = _Unpickler(f)
    obj = main.load()
    keys = _Unpickler(f).load()
    if not isinstance(keys, list):
        raise pickle.UnpicklingError('legacy checkpoint: storage key list missing')
    for key in keys:
        storage = main.storages.get(str(key))
        if storage is None:
            raise pickle.UnpicklingError(f'legacy checkpoint: unknown storage key {key!r}')
        raw = f.read(8)
        if len(raw) != 8:
            raise pickle.UnpicklingError(f'storage {key!r}: truncated file')
        (numel,) = struct.unpack('<q', raw)
        nbytes = numel * storage.dtype.itemsize
        if numel < 0 or numel != storage.numel:
            raise pickle.UnpicklingError(f'storage {key!r}: {numel} elements on disk, '
                                         f'{storage.numel} expected')
        data = f.read(nbytes)
        if len(data) != nbytes:
            raise pickle.UnpicklingError(f'storage {key!r}: truncated file')
        storage.array = np.frombuffer(data, storage.dtype.newbyteorder('<'))
    return _materialize(obj)


def _load_zip(zf: zipfile.ZipFile) -> Any:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith('/data.pkl') or n == 'data.pkl']
    if len(pkl) != 1:
        raise pickle.UnpicklingError('zip checkpoint: expected exactly one data.pkl')
    prefix = pkl[0][:-len('data.pkl')]
    unpickler = _Unpickler(io.BytesIO(zf.read(pkl[0])))
    obj = unpickler.load()
    for key, storage in unpickler.storages.items():
        name = f'{prefix}data/{key}'
        if name not in names:
            raise pickle.UnpicklingError(f'zip checkpoint: storage file {name!r} missing')
        data = zf.read(name)
        nbytes = storage.numel * storage.dtype.itemsize
        if len(data) < nbytes:
            raise pickle.UnpicklingError(f'storage {key!r}: {len(data)} bytes, need {nbytes}')
        storage.array = np.frombuffer(data[:nbytes], storage.dtype.newbyteorder('<'))
    return _materialize(obj)


def load(path: str | os.PathLike) -> Any:
    """Loads a PyTorch checkpoint as numpy arrays inside dicts/lists/tuples.

    Args:
      path: a file written by ``torch.save`` (legacy or zip format).

    Returns:
      The saved object with every tensor replaced by a ``np.ndarray``
      (``OrderedDict`` state dicts stay ``OrderedDict``).

    Raises:
      UnsafePickleError: the file refers to a global outside the allow list
        (nothing from it is ever called).
      pickle.UnpicklingError: the file is not a valid tensor checkpoint.
      FileNotFoundError: no such file.
    """
    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return _load_zip(zf)
    with open(path, 'rb') as f:
        return _load_legacy(f)
