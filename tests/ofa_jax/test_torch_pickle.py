"""Tests for ofa_jax.torch_pickle: checkpoints load as numpy, crafted pickles are refused."""

import collections
import os
import pickle
import struct
import zipfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from ofa_jax import external_data
from ofa_jax import ofa_weights
from ofa_jax import space
from ofa_jax import subnet
from ofa_jax import supernet
from ofa_jax import torch_pickle

_EXTERNAL = external_data.root()
_ACC_PTH = os.path.join(_EXTERNAL, 'ofa_acc_predictor', 'acc_predictor.pth')
_DTYPE_STORAGE = {np.dtype(np.float32): b'FloatStorage', np.dtype(np.int64): b'LongStorage'}


def _frag(obj) -> bytes:
    """Pickle opcodes for a plain object, without PROTO and STOP."""
    return pickle.dumps(obj, protocol=2)[2:-1]


def _tensor_ops(key: str, storage_numel: int, dtype, offset: int, size, stride,
                legacy: bool) -> bytes:
    """Opcodes that rebuild a tensor the way torch.save writes it."""
    pid = (pickle.MARK + _frag('storage') + b'ctorch\n' + _DTYPE_STORAGE[np.dtype(dtype)] + b'\n' +
           _frag(key) + _frag('cpu') + _frag(storage_numel) + (pickle.NONE if legacy else b'') +
           pickle.TUPLE + pickle.BINPERSID)
    return (b'ctorch._utils\n_rebuild_tensor_v2\n' + pickle.MARK + pid + _frag(offset) +
            _frag(tuple(size)) + _frag(tuple(stride)) + pickle.NEWFALSE +
            b'ccollections\nOrderedDict\n' + pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.TUPLE +
            pickle.REDUCE)


def _state_dict_pickle(tensors, legacy: bool) -> tuple[bytes, dict]:
    """A pickled OrderedDict of tensors plus the storages {key: flat array}.

    Each tensor is (name, storage array, offset, size, stride) so views with
    offsets and strides can be written.
    """
    body = (pickle.PROTO + b'\x02' + b'ccollections\nOrderedDict\n' + pickle.EMPTY_TUPLE +
            pickle.REDUCE + pickle.MARK)
    storages = {}
    for i, (name, flat, offset, size, stride) in enumerate(tensors):
        key = str(1000 + i)
        storages[key] = np.ascontiguousarray(flat)
        body += _frag(name) + _tensor_ops(key, flat.size, flat.dtype, offset, size, stride, legacy)
    return body + pickle.SETITEMS + pickle.STOP, storages


def write_legacy(path, main_pickle: bytes, storages: dict) -> None:
    """Writes the pre-1.6 torch.save format: 5 pickles, then raw storages."""
    with open(path, 'wb') as f:
        f.write(pickle.dumps(torch_pickle.LEGACY_MAGIC, protocol=2))
        f.write(pickle.dumps(torch_pickle.LEGACY_PROTOCOL, protocol=2))
        f.write(
            pickle.dumps(
                {
                    'protocol_version': 1001,
                    'little_endian': True,
                    'type_sizes': {
                        'short': 2,
                        'int': 4,
                        'long': 4
                    }
                },
                protocol=2))
        f.write(main_pickle)
        f.write(pickle.dumps(list(storages), protocol=2))
        for arr in storages.values():
            f.write(struct.pack('<q', arr.size))
            f.write(arr.astype(arr.dtype.newbyteorder('<')).tobytes())


def write_zip(path, main_pickle: bytes, storages: dict) -> None:
    """Writes the >=1.6 torch.save zip format."""
    with zipfile.ZipFile(path, 'w') as zf:
        zf.writestr('archive/data.pkl', main_pickle)
        zf.writestr('archive/version', '3\n')
        for key, arr in storages.items():
            zf.writestr(f'archive/data/{key}', arr.tobytes())


def _example():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 4)).astype(np.float32)
    big = rng.normal(size=20).astype(np.float32)
    ints = np.arange(6, dtype=np.int64)
    tensors = [
        ('layer.weight', w.reshape(-1), 0, (3, 4), (4, 1)),
        ('layer.weight_t', w.reshape(-1), 0, (4, 3), (1, 4)),  # transposed view
        ('view', big, 5, (2, 3), (3, 1)),  # offset into a storage
        ('steps', ints, 0, (6,), (1,)),
        ('scalar', big, 7, (), ()),
    ]
    want = collections.OrderedDict([('layer.weight', w), ('layer.weight_t', w.T),
                                    ('view', big[5:11].reshape(2, 3)), ('steps', ints),
                                    ('scalar', big[7])])
    return tensors, want


class LoadTest(parameterized.TestCase):

    @parameterized.parameters('legacy', 'zip')
    def test_state_dict_roundtrip(self, fmt):
        tensors, want = _example()
        main, storages = _state_dict_pickle(tensors, legacy=fmt == 'legacy')
        path = os.path.join(self.create_tempdir().full_path, 'ckpt.pth')
        (write_legacy if fmt == 'legacy' else write_zip)(path, main, storages)
        got = torch_pickle.load(path)
        self.assertIsInstance(got, collections.OrderedDict)
        self.assertEqual(list(got), list(want))
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
            self.assertEqual(got[k].dtype, want[k].dtype)

    def test_out_of_bounds_view_is_refused(self):
        flat = np.zeros(4, np.float32)
        main, storages = _state_dict_pickle([('x', flat, 2, (3,), (1,))], legacy=True)
        path = os.path.join(self.create_tempdir().full_path, 'bad.pth')
        write_legacy(path, main, storages)
        with self.assertRaisesRegex(pickle.UnpicklingError, 'exceeds'):
            torch_pickle.load(path)
        # Also a ValueError, naming the file and the tensor.
        with self.assertRaisesRegex(ValueError, f"^{path}: tensor 'x' .*exceeds"):
            torch_pickle.load(path)

    def test_not_a_checkpoint(self):
        path = os.path.join(self.create_tempdir().full_path, 'x.pth')
        with open(path, 'wb') as f:
            f.write(pickle.dumps({'a': 1}, protocol=2))
        with self.assertRaises(pickle.UnpicklingError):
            torch_pickle.load(path)
        with self.assertRaisesRegex(ValueError, f'^{path}: .*bad magic number'):
            torch_pickle.load(path)

    def test_ofa_supernet_checkpoint_loads_as_flax_variables(self):
        # The layout OFA publishes its supernets in: {'state_dict': OrderedDict}.
        model = supernet.build_supernet(1.0, depthwise='conv')
        rng = np.random.default_rng(5)
        shapes = subnet.init_variables(model, (1, 32, 32, 3), arch=space.largest())
        variables = jax.tree_util.tree_map(
            lambda a: rng.standard_normal(np.shape(a)).astype(np.float32), shapes)
        state = ofa_weights.to_ofa_state_dict(variables, 1.0)
        tensors = [(k, np.ascontiguousarray(v).reshape(-1), 0, v.shape,
                    tuple(s // 4
                          for s in np.ascontiguousarray(v).strides))
                   for k, v in state.items()]
        inner, storages = _state_dict_pickle(tensors, legacy=False)
        wrapped = (pickle.PROTO + b'\x02' + pickle.EMPTY_DICT + _frag('state_dict') + inner[2:-1] +
                   pickle.SETITEM + pickle.STOP)
        tmp = self.create_tempdir().full_path
        for name, main in (('wrapped', wrapped), ('bare', inner)):
            path = os.path.join(tmp, f'ofa_mbv3_d234_e346_k357_w1.0_{name}.pth')
            write_zip(path, main, storages)
            width, got = ofa_weights.load_pth(path)
            self.assertEqual(width, 1.0)  # inferred from the first conv
            jax.tree_util.tree_map(np.testing.assert_array_equal, got, variables)
        state['first_conv.conv.weight'] = np.zeros((20, 3, 3, 3), np.float32)
        with self.assertRaisesRegex(ValueError, '20 output channels; allowed: 16 .w1.0., 24'):
            ofa_weights.checkpoint_width(state)

    @absltest.skipUnless(os.path.exists(_ACC_PTH), 'OFA accuracy predictor not present')
    def test_ofa_acc_predictor(self):
        sd = torch_pickle.load(_ACC_PTH)
        shapes = {k: v.shape for k, v in sd.items()}
        self.assertEqual(shapes['0.weight'], (400, 128))
        self.assertEqual(shapes['6.weight'], (1, 400))
        self.assertEqual(sum(v.size for v in sd.values()), 372_801)


class MaliciousTest(parameterized.TestCase):

    @parameterized.named_parameters(
        ('os_system', b'cos\nsystem\n'),
        ('posix_system', b'cposix\nsystem\n'),
        ('builtins_eval', b'cbuiltins\neval\n'),
        ('subprocess', b'csubprocess\ncheck_output\n'),
    )
    def test_global_is_refused_never_called(self, global_op):
        tmp = self.create_tempdir().full_path
        marker = os.path.join(tmp, 'pwned')
        if b'eval' in global_op:
            arg = f"open({marker!r}, 'w').write('x')"
        elif b'check_output' in global_op:
            arg = ['touch', marker]
        else:
            arg = f'touch {marker}'
        evil = (pickle.PROTO + b'\x02' + global_op + pickle.MARK + _frag(arg) + pickle.TUPLE +
                pickle.REDUCE + pickle.STOP)
        for writer in (write_legacy, write_zip):
            path = os.path.join(tmp, f'evil_{writer.__name__}.pth')
            writer(path, evil, {})
            with self.assertRaisesRegex(torch_pickle.UnsafePickleError, 'not allowed'):
                torch_pickle.load(path)
            self.assertFalse(os.path.exists(marker))

    def test_stack_global_protocol4_is_refused(self):
        tmp = self.create_tempdir().full_path
        marker = os.path.join(tmp, 'pwned')

        class Evil:

            def __reduce__(self):
                return (os.system, (f'touch {marker}',))

        evil = pickle.dumps(Evil(), protocol=4)
        self.assertIn(pickle.STACK_GLOBAL, evil)
        path = os.path.join(tmp, 'evil.pth')
        write_legacy(path, evil, {})
        with self.assertRaises(torch_pickle.UnsafePickleError):
            torch_pickle.load(path)
        self.assertFalse(os.path.exists(marker))

    def test_evil_header_is_refused(self):
        tmp = self.create_tempdir().full_path
        path = os.path.join(tmp, 'evil_header.pth')
        with open(path, 'wb') as f:
            f.write(b'\x80\x02cos\nsystem\n(X\x04\x00\x00\x00truetR.')
        with self.assertRaises(torch_pickle.UnsafePickleError):
            torch_pickle.load(path)


if __name__ == '__main__':
    absltest.main()
