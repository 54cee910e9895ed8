"""Hostile input to every loader of outside data: refused with a ValueError naming the culprit.

Each case writes a bad file into a temp dir (nothing is copied from elsewhere)
and checks the error type and that the message names the file and the field,
tensor, row, key or parameter at fault. Loaders: ``ofa_jax.torch_pickle``
(.pth), ``ofa_jax.csvio`` (OFA CSV), ``predictors.checkpoint`` (predictor
folders), ``predictors.accuracy`` (OFA .pth and ours), ``predictors.lut``
(OFA yaml), plus the duplicate-row helper ``ofa_jax.dataset``.
"""

import json
import os
import pickle
import re
import struct
import time
import tracemalloc
import zipfile

from absl.testing import absltest
from absl.testing import parameterized
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import csvio
from ofa_jax import dataset
from ofa_jax import space
from ofa_jax import torch_pickle
from predictors import accuracy
from predictors import checkpoint
from predictors import features
from predictors import fit
from predictors import lut
from predictors import models
from predictors import train as train_lib

# ---------------------------------------------------------------------------
# Fixture writers.

_STORAGE = {np.dtype(np.float32): b'FloatStorage', np.dtype(np.int64): b'LongStorage'}


def _ops(obj) -> bytes:
    """Protocol-2 opcodes of a plain object, without PROTO and STOP."""
    return pickle.dumps(obj, protocol=2)[2:-1]


def _tensor(key: str, numel: int, dtype, offset: int, size, stride, legacy: bool) -> bytes:
    """Opcodes of ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``."""
    pid = (pickle.MARK + _ops('storage') + b'ctorch\n' + _STORAGE[np.dtype(dtype)] + b'\n' +
           _ops(key) + _ops('cpu') + _ops(numel) + (pickle.NONE if legacy else b'') + pickle.TUPLE +
           pickle.BINPERSID)
    return (b'ctorch._utils\n_rebuild_tensor_v2\n' + pickle.MARK + pid + _ops(offset) +
            _ops(tuple(size)) + _ops(tuple(stride)) + pickle.NEWFALSE + pickle.EMPTY_DICT +
            pickle.TUPLE + pickle.REDUCE)


def _state_pickle(tensors: dict, legacy: bool) -> tuple[bytes, dict]:
    """A pickled ``{name: tensor}`` dict and its storages {key: flat array}.

    ``tensors``: name -> (flat storage array, offset, size, stride); each
    tensor gets its own storage key.
    """
    body = pickle.PROTO + b'\x02' + pickle.EMPTY_DICT + pickle.MARK
    storages = {}
    for i, (name, (flat, offset, size, stride)) in enumerate(tensors.items()):
        key = str(i)
        storages[key] = np.ascontiguousarray(flat)
        body += _ops(name) + _tensor(key, flat.size, flat.dtype, offset, size, stride, legacy)
    return body + pickle.SETITEMS + pickle.STOP, storages


def _write_legacy(path: str, main: bytes, storages: dict) -> str:
    """The pre-1.6 ``torch.save`` layout: magic, protocol, sys info, object, keys, storages."""
    with open(path, 'wb') as f:
        f.write(pickle.dumps(torch_pickle.LEGACY_MAGIC, protocol=2))
        f.write(pickle.dumps(torch_pickle.LEGACY_PROTOCOL, protocol=2))
        f.write(pickle.dumps({'protocol_version': 1001, 'little_endian': True}, protocol=2))
        f.write(main)
        f.write(pickle.dumps(list(storages), protocol=2))
        for arr in storages.values():
            f.write(struct.pack('<q', arr.size) + arr.tobytes())
    return path


def _write_zip(path: str, main: bytes, storages: dict) -> str:
    """The >=1.6 ``torch.save`` zip layout."""
    with zipfile.ZipFile(path, 'w') as zf:
        zf.writestr('archive/data.pkl', main)
        for key, arr in storages.items():
            zf.writestr(f'archive/data/{key}', arr.tobytes())
    return path


def _write_pth(path: str, tensors: dict, fmt: str = 'legacy') -> str:
    main, storages = _state_pickle(tensors, legacy=fmt == 'legacy')
    return (_write_legacy if fmt == 'legacy' else _write_zip)(path, main, storages)


def _ofa_acc_state(hidden=(8, 8, 8), seed=0) -> dict:
    """An OFA tutorial-layout accuracy predictor state dict (0/2/4/6 Linear layers)."""
    rng = np.random.default_rng(seed)
    dims = [128, *hidden]
    state = {}
    for j, i in enumerate((0, 2, 4)):
        state[f'{i}.weight'] = rng.normal(size=(dims[j + 1], dims[j])).astype(np.float32)
        state[f'{i}.bias'] = rng.normal(size=dims[j + 1]).astype(np.float32)
    state['6.weight'] = rng.normal(size=(1, hidden[-1])).astype(np.float32)
    state['6.bias'] = np.array([0.7], np.float32)
    return state


def _as_tensors(state: dict) -> dict:
    return {k: (v.reshape(-1), 0, v.shape, _strides(v)) for k, v in state.items()}


def _strides(v: np.ndarray) -> tuple:
    return tuple(s // v.itemsize for s in np.ascontiguousarray(v).strides)


def _archs(n: int, seed: int = 0) -> space.Arch:
    return space.sample_np(np.random.default_rng(seed), n, resolutions=(160, 192, 224))


def _bad_archs(field: str, value: int, n: int = 4) -> space.Arch:
    """Numpy archs with one gene set to an invalid ``value``."""
    archs = _archs(n)
    arr = np.array(getattr(archs, field))
    if arr.ndim == 1:
        arr[1] = value
    else:
        arr[1, 0] = value
    return archs.replace(**{field: arr})


_BAD_GENES = (
    ('kernel_4', 'kernel', 4, r'kernel: value 4 is not allowed; allowed: one of \(3, 5, 7\)'),
    ('expand_5', 'expand', 5, r'expand: value 5 is not allowed; allowed: one of \(3, 4, 6\)'),
    ('depth_1', 'depth', 1, r'depth: value 1 is not allowed; allowed: one of \(2, 3, 4\)'),
    ('resolution_130', 'resolution', 130, r'resolution: value 130 is not allowed; allowed: a '
     r'multiple of 4 in \[128, 224\]'),
)


class _Case(parameterized.TestCase):
    """Helpers: a temp dir and an assertion that the message names the culprit."""

    def setUp(self):
        super().setUp()
        self.dir = self.create_tempdir().full_path

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def write(self, name: str, data: bytes | str) -> str:
        p = self.path(name)
        with open(p, 'wb') as f:
            f.write(data.encode() if isinstance(data, str) else data)
        return p

    def assert_refused(self, fn, *fragments: str, error=ValueError) -> str:
        """``fn()`` raises ``error`` whose one-line message contains every fragment (regex)."""
        with self.assertRaises(error) as ctx:
            fn()
        msg = str(ctx.exception)
        self.assertNotIn('\n', msg)
        for fragment in fragments:
            self.assertRegex(msg, fragment)
        return msg


# ---------------------------------------------------------------------------
# ofa_jax.torch_pickle


class TorchPickleHostileTest(_Case):

    @parameterized.parameters('legacy', 'zip')
    def test_stride0_tensor_refused_fast_without_allocating(self, fmt):
        # 4 stored bytes claiming 400M float32 elements (1.6 GB) through stride 0.
        p = _write_pth(self.path(f'stride0_{fmt}.pth'),
                       {'w': (np.ones(1, np.float32), 0, (400_000_000,), (0,))}, fmt)
        self.assertLess(os.path.getsize(p), 1024)
        tracemalloc.start()
        t0 = time.perf_counter()
        try:
            self.assert_refused(lambda: torch_pickle.load(p), re.escape(p), "tensor 'w'",
                                r'size \(400000000,\), stride \(0,\)', 'exceeds its storage',
                                'holds 1')
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertLess(time.perf_counter() - t0, 2.0)
        self.assertLess(peak, 8 << 20)  # Far from 1.6 GB.

    @parameterized.named_parameters(
        ('past_end', (4,), (1,), 2, r'offset 2, size \(4,\)'),
        ('negative_stride', (2,), (-1,), 0, r'stride \(-1,\) holds -1; must be >= 0'),
        ('negative_size', (-3,), (1,), 0, r'size \(-3,\) holds -3; must be >= 0'),
        ('big_stride', (2, 2), (4, 1), 0, r'last at index 5'),
    )
    def test_tensor_outside_its_storage(self, size, stride, offset, fragment):
        p = _write_pth(self.path('view.pth'),
                       {'w': (np.zeros(4, np.float32), offset, size, stride)})
        self.assert_refused(lambda: torch_pickle.load(p), re.escape(p), "tensor 'w'", fragment)

    def test_many_views_of_one_storage_capped(self):
        # 50 tensors, each the whole of one 1000-element storage: 50x what is stored.
        main = pickle.PROTO + b'\x02' + pickle.EMPTY_LIST + pickle.MARK
        main += b''.join(_tensor('0', 1000, np.float32, 0, (1000,), (1,), True) for _ in range(50))
        main += pickle.APPENDS + pickle.STOP
        p = _write_legacy(self.path('views.pth'), main, {'0': np.zeros(1000, np.float32)})
        self.assert_refused(lambda: torch_pickle.load(p), re.escape(p), "tensor '4'",
                            f'more than {torch_pickle.MAX_VIEW_FACTOR}x the 1000')

    @parameterized.parameters(10, 60, 150, -3)
    def test_truncated_pth(self, cut):
        state = _ofa_acc_state(hidden=(4, 4, 4))
        good = _write_pth(self.path('good.pth'), _as_tensors(state))
        with open(good, 'rb') as f:
            data = f.read()
        p = self.write('truncated.pth', data[:cut])
        self.assert_refused(lambda: torch_pickle.load(p), '^' + re.escape(p) + ': ')
        self.assertIsInstance(torch_pickle.load(good), dict)

    def test_truncated_zip(self):
        state = _ofa_acc_state(hidden=(4, 4, 4))
        good = _write_pth(self.path('good.pth'), _as_tensors(state), 'zip')
        with open(good, 'rb') as f:
            data = f.read()
        p = self.write('truncated_zip.pth', data[:len(data) // 2])
        self.assert_refused(lambda: torch_pickle.load(p), '^' + re.escape(p) + ': ')

    @parameterized.parameters(0, 1, 2)
    def test_random_bytes_pth(self, seed):
        p = self.write(f'random{seed}.pth', np.random.default_rng(seed).bytes(4096))
        msg = self.assert_refused(lambda: torch_pickle.load(p), '^' + re.escape(p) + ': ')
        self.assertNotIn('Traceback', msg)

    def test_empty_pth(self):
        p = self.write('empty.pth', b'')
        self.assert_refused(lambda: torch_pickle.load(p), re.escape(p), 'not a valid PyTorch')

    def test_huge_memo_index_refused_before_allocating(self):
        # LONG_BINPUT 2**31-1 would make the C unpickler allocate a 16 GiB memo table.
        p = _write_legacy(self.path('memo.pth'), b'\x80\x02N' + b'r\xff\xff\xff\x7f' + b'.', {})
        self.assert_refused(lambda: torch_pickle.load(p), re.escape(p), 'memo index 2147483647')

    def test_huge_bytes_length_refused_before_allocating(self):
        # BINBYTES8 of 1 TiB: the C unpickler would allocate it before reading.
        evil = b'\x80\x04\x8e' + struct.pack('<Q', 1 << 40) + b'.'
        p = _write_legacy(self.path('bytes8.pth'), evil, {})
        self.assert_refused(lambda: torch_pickle.load(p), re.escape(p), '1099511627776 bytes')

    def test_build_on_storage_type_refused(self):
        # BUILD would overwrite the dtype the storage bytes are read with.
        evil = b'\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeK\x01sb.'
        p = _write_legacy(self.path('build.pth'), evil, {})
        self.assert_refused(lambda: torch_pickle.load(p),
                            re.escape(p),
                            'BUILD',
                            error=torch_pickle.UnsafePickleError)

    def test_missing_zip_storage(self):
        main, _ = _state_pickle({'w': (np.zeros(4, np.float32), 0, (4,), (1,))}, legacy=False)
        p = _write_zip(self.path('nostorage.pth'), main, {})
        self.assert_refused(lambda: torch_pickle.load(p), re.escape(p), "archive/data/0' missing")

    def test_storage_shorter_than_declared(self):
        main, _ = _state_pickle({'w': (np.zeros(4, np.float32), 0, (4,), (1,))}, legacy=False)
        p = _write_zip(self.path('short.pth'), main, {'0': np.zeros(2, np.float32)})
        self.assert_refused(lambda: torch_pickle.load(p), re.escape(p), 'archive/data/0',
                            '8 bytes, need 16')


# ---------------------------------------------------------------------------
# ofa_jax.csvio

_ROW = ("\"{'wid': None, 'ks': [7, 7, 3, 3, 5, 7, 3, 7, 3, 7, 3, 7, 5, 7, 7, 5, 5, 5, 7, 5], "
        "'e': [6, 3, 4, 4, 3, 6, 4, 6, 6, 3, 4, 6, 6, 3, 3, 4, 6, 4, 6, 6], "
        "'d': [2, 4, 2, 3, 3], 'r': [208]}\"")


def _csv(*rows: str, header: str = 'child_arch,latency') -> str:
    return '\n'.join([header, *rows]) + '\n'


class CsvHostileTest(_Case):

    def read(self, text: str | bytes, name: str = 'x.csv'):
        p = self.write(name, text)
        return p, lambda: csvio.read_ofa_csv(p)

    def test_random_bytes(self):
        p, fn = self.read(np.random.default_rng(0).bytes(4096))
        self.assert_refused(fn, '^' + re.escape(p) + r':1: not UTF-8 text \(byte 0x')

    def test_bad_bytes_on_a_later_row(self):
        p, fn = self.read(_csv(_ROW + ',1.0', _ROW + ',2.0').encode() + b'\xff\xfe,3\n')
        self.assert_refused(fn, re.escape(p) + ':4: not UTF-8')

    @parameterized.named_parameters(
        ('kernel_4', "'ks': [7, 7, 3", "'ks': [4, 7, 3",
         r'ks/kernel: value 4 .*one of \(3, 5, 7\)'),
        ('expand_5', "'e': [6, 3", "'e': [5, 3", r'e/expand: value 5 .*one of \(3, 4, 6\)'),
        ('depth_1', "'d': [2, 4", "'d': [1, 4", r'd/depth: value 1 .*one of \(2, 3, 4\)'),
        ('resolution_130', "[208]", "[130]", r'r/resolution: value 130 .*multiple of 4 in'),
        ('ks_19_entries', "'ks': [7, 7, 3", "'ks': [7, 3",
         r'kernel: ks has 19 entries, expected 20'),
        ('e_21_entries', "'e': [6, 3", "'e': [6, 6, 3", r'expand: e has 21 entries, expected 20'),
        ('d_6_entries', "'d': [2, 4", "'d': [2, 2, 4", r'depth: d has 6 entries, expected 5'),
        ('missing_key', "'d': [2, 4, 2, 3, 3], ", '', r"arch: missing key 'd'"),
    )
    def test_invalid_arch(self, old, new, fragment):
        row = _ROW.replace(old, new, 1)
        self.assertNotEqual(row, _ROW)
        p, fn = self.read(_csv(_ROW + ',1.0', row + ',2.0'))
        self.assert_refused(fn, re.escape(p) + ':3: ', fragment)

    @parameterized.named_parameters(
        ('nan', 'nan', 'positive finite'),
        ('inf', 'inf', 'positive finite'),
        ('negative', '-1', 'positive finite'),
        ('zero', '0', 'positive finite'),
        ('tiny', '1e-300', 'implausible'),
        ('huge', '1e12', 'implausible'),
        ('text', 'fast', 'not a number'),
    )
    def test_bad_latency(self, value, reason):
        p, fn = self.read(_csv(_ROW + ',1.0', _ROW + f',{value}'))
        self.assert_refused(fn,
                            re.escape(p) + ':3: latency', re.escape(repr(value)), reason,
                            r'allowed: a finite number of milliseconds in \[1e-06, 1e\+07\]')

    def test_missing_latency_column(self):
        p, fn = self.read(_csv(_ROW + ',1.0', _ROW))
        self.assert_refused(fn,
                            re.escape(p) + ':3: 1 columns, the header has 2', 'child_arch, latency')

    def test_header_without_latency(self):
        p, fn = self.read(_csv(_ROW, header='child_arch'))
        self.assert_refused(fn, re.escape(p) + ':1: header', 'child_arch,latency')

    def test_duplicate_header_column(self):
        p, fn = self.read(_csv(_ROW + ',1.0,a,b', header='child_arch,latency,device,device'))
        self.assert_refused(fn, re.escape(p) + ":1: column 'device' appears twice")

    def test_overlong_line(self):
        p, fn = self.read(_csv(_ROW + ',1.0', 'x' * (csvio.MAX_LINE_BYTES + 10)))
        self.assert_refused(fn, re.escape(p) + ':3: line longer than')

    def test_not_csv(self):
        p, fn = self.read(_csv(_ROW + ',1.0', '"' + 'a' * 200_000 + '",1.0'))
        self.assert_refused(fn, re.escape(p) + ':3: not a CSV row')

    def test_usable_row_count(self):
        _, fn = self.read(_csv(_ROW + ',1.0', '', _ROW + ',2.0'))
        self.assertLen(fn(), 2)


# ---------------------------------------------------------------------------
# ofa_jax.dataset


class DatasetTest(_Case):

    def _rows(self):
        archs = _archs(5, seed=3)[np.array([0, 1, 0, 2, 3, 1, 0, 4])]  # Fancy index: copies.
        # Row 7 repeats row 3's arch, written with a different (inactive) block.
        inactive = np.flatnonzero(~np.asarray(space.active_blocks(archs.depth[3])))
        self.assertNotEmpty(inactive)
        for field in ('kernel', 'expand', 'depth', 'resolution'):
            getattr(archs, field)[7] = getattr(archs, field)[3]
        archs.kernel[7, inactive[0]] = 7
        return archs, np.array([1., 2, 3, 4, 5, 6, 8, 10])

    @parameterized.parameters(('mean', [4., 4, 7, 5]), ('median', [3., 4, 7, 5]),
                              ('first', [1., 2, 4, 5]))
    def test_dedupe_counts_duplicates(self, how, want):
        archs, y = self._rows()
        result = dataset.dedupe(archs, y, how)
        self.assertEqual(result.num_duplicates, 4)  # 8 rows, 4 distinct archs.
        self.assertEqual(result.num_rows, 4)
        np.testing.assert_array_equal(result.counts, [3, 2, 2, 1])
        np.testing.assert_allclose(result.latency_ms, want)
        self.assertEqual(dataset.arch_groups(archs).num_repeated, 3)

    def test_split_keeps_each_arch_in_one_split(self):
        archs = _archs(200, seed=1)
        archs = jax.tree_util.tree_map(lambda v: np.concatenate([v, v[:50]]), archs)  # 50 repeats
        groups = dataset.arch_groups(archs)
        self.assertEqual(groups.num_duplicates, 50)
        splits = dataset.split_by_arch(archs, (0.8, 0.1, 0.1), seed=0)
        self.assertEqual(sum(s.size for s in splits), 250)
        seen = [set(groups.ids[s].tolist()) for s in splits]
        self.assertEmpty(seen[0] & seen[1])
        self.assertEmpty(seen[0] & seen[2])
        self.assertEmpty(seen[1] & seen[2])

    def test_dedupe_table(self):
        p = self.write('dup.csv',
                       _csv(_ROW + ',1.0,a', _ROW + ',3.0,b', header='child_arch,'
                            'latency,run'))
        table, dropped = dataset.dedupe_table(csvio.read_ofa_csv(p))
        self.assertEqual(dropped, 1)
        self.assertLen(table, 1)
        self.assertEqual(table.extra['run'], ['a'])
        np.testing.assert_allclose(table.latency_ms, [2.0])

    @parameterized.named_parameters(
        ('bad_how', lambda a, y: dataset.dedupe(a, y, 'max'), "how='max'"),
        ('nan_latency', lambda a, y: dataset.dedupe(a, np.where(np.arange(y.size) == 2, np.nan, y)),
         r'latency_ms\[2\] is nan'),
        ('length', lambda a, y: dataset.dedupe(a, y[:3]), '8 archs but 3 latencies'),
        ('fractions', lambda a, y: dataset.split_by_arch(a, (0.5, 0.6)), 'summing to 1'),
        ('invalid_arch', lambda a, y: dataset.arch_groups(_bad_archs('expand', 5)),
         'expand: value 5'),
    )
    def test_bad_arguments(self, fn, fragment):
        archs, y = self._rows()
        self.assert_refused(lambda: fn(archs, y), fragment)


# ---------------------------------------------------------------------------
# predictors.checkpoint


def _predictor(model_name: str = 'mlp', seed: int = 0) -> checkpoint.Predictor:
    """A small untrained predictor (random weights)."""
    archs = _archs(32, seed)
    fspec = features.fit_feature_spec(archs)
    kwargs = {'hidden': (8, 8)} if model_name == 'mlp' else {}
    model = models.build_model(model_name, fspec=fspec, **kwargs)
    params = model.init(jax.random.PRNGKey(seed), fit.make_inputs(archs[:1], fspec))
    return checkpoint.Predictor(model_name, kwargs, fspec, train_lib.TargetNorm('scale', 0.0, 10.0),
                                params)


class CheckpointHostileTest(_Case):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.pred = _predictor('mlp')

    def saved(self) -> str:
        return checkpoint.save(self.pred, self.path('ckpt'))

    def edit_params(self, folder: str, fn) -> str:
        p = os.path.join(folder, checkpoint.PARAMS_FILE)
        with open(p, 'rb') as f:
            params = flax.serialization.msgpack_restore(f.read())
        fn(params['params'])
        with open(p, 'wb') as f:
            f.write(flax.serialization.msgpack_serialize(params))
        return p

    def edit_meta(self, folder: str, fn) -> str:
        p = os.path.join(folder, checkpoint.META_FILE)
        with open(p) as f:
            meta = json.load(f)
        fn(meta)
        with open(p, 'w') as f:
            json.dump(meta, f)
        return p

    def test_saved_checkpoint_loads(self):
        archs = _archs(6)
        loaded = checkpoint.load(self.saved())
        np.testing.assert_array_equal(np.asarray(loaded(archs)), np.asarray(self.pred(archs)))

    @parameterized.parameters(np.nan, np.inf, -np.inf)
    def test_non_finite_weights(self, value):
        folder = self.saved()

        def poison(params):
            kernel = np.array(params['Dense_1']['kernel'])
            kernel[3, 2] = value
            params['Dense_1']['kernel'] = kernel

        p = self.edit_params(folder, poison)
        self.assert_refused(lambda: checkpoint.load(folder), re.escape(p),
                            'parameter params/Dense_1/kernel', r'first at index \(3, 2\)',
                            'allowed: finite numbers')

    def test_wrong_shape_weights(self):
        folder = self.saved()

        def reshape(params):
            params['Dense_0']['kernel'] = np.zeros((128, 9), np.float32)

        p = self.edit_params(folder, reshape)
        self.assert_refused(lambda: checkpoint.load(folder), re.escape(p),
                            r'parameter params/Dense_0/kernel has shape \(128, 9\)',
                            r'needs \(128, 8\)')

    def test_config_does_not_match_weights(self):
        folder = self.saved()
        self.edit_meta(folder, lambda m: m['model_kwargs'].update(hidden=[8, 16]))
        self.assert_refused(lambda: checkpoint.load(folder),
                            re.escape(os.path.join(folder, checkpoint.PARAMS_FILE)),
                            r'params/Dense_1/(bias|kernel) has shape')

    def test_missing_parameter(self):
        folder = self.saved()
        p = self.edit_params(folder, lambda params: params.pop('head'))
        self.assert_refused(lambda: checkpoint.load(folder), re.escape(p), 'missing',
                            'params/head/')

    @parameterized.parameters(1, 10, -10)
    def test_truncated_params(self, cut):
        folder = self.saved()
        p = os.path.join(folder, checkpoint.PARAMS_FILE)
        with open(p, 'rb') as f:
            data = f.read()
        self.write(os.path.join(folder, checkpoint.PARAMS_FILE), data[:cut])
        self.assert_refused(lambda: checkpoint.load(folder), re.escape(p), 'not a msgpack')

    def test_garbage_params(self):
        folder = self.saved()
        p = self.write(os.path.join(folder, checkpoint.PARAMS_FILE),
                       np.random.default_rng(0).bytes(2048))
        self.assert_refused(lambda: checkpoint.load(folder), re.escape(p))

    def test_missing_params_file(self):
        folder = self.saved()
        p = os.path.join(folder, checkpoint.PARAMS_FILE)
        os.remove(p)
        self.assert_refused(lambda: checkpoint.load(folder), re.escape(p), error=FileNotFoundError)
        self.assert_refused(lambda: checkpoint.load(folder), re.escape(p), error=ValueError)

    @parameterized.named_parameters(
        ('garbage', b'\xff\x00{not json', 'not a JSON'),
        ('truncated', b'{"format": "ofa_jax.pred', 'not a JSON'),
        ('array', b'[1, 2]', 'expected an object'),
    )
    def test_bad_meta_file(self, data, fragment):
        folder = self.saved()
        p = self.write(os.path.join(folder, checkpoint.META_FILE), data)
        self.assert_refused(lambda: checkpoint.load(folder), re.escape(p), fragment)

    @parameterized.named_parameters(
        ('missing_norm', lambda m: m.pop('norm'), "missing field 'norm'"),
        ('nan_norm_std', lambda m: m['norm'].update(std=float('nan')), 'norm.std is nan'),
        ('zero_norm_std', lambda m: m['norm'].update(std=0.0), 'norm.std is 0.0'),
        ('bad_norm_kind', lambda m: m['norm'].update(kind='cubic'), "norm.kind is 'cubic'"),
        ('inf_offset', lambda m: m.update(offset_ms=float('inf')), 'offset_ms is inf'),
        ('nan_fspec', lambda m: m['fspec'].update(batch_std=float('nan')), 'fspec.batch_std'),
        ('string_ensemble', lambda m: m.update(ensemble='yes'), "field 'ensemble'"),
        ('unknown_model', lambda m: m.update(model_name='transformer'), 'transformer'),
    )
    def test_bad_meta_field(self, edit, fragment):
        folder = self.saved()
        p = self.edit_meta(folder, edit)
        self.assert_refused(lambda: checkpoint.load(folder), re.escape(p), fragment)

    @parameterized.named_parameters(*_BAD_GENES)
    def test_invalid_archs_from_host(self, field, value, fragment):
        self.assert_refused(lambda: self.pred(_bad_archs(field, value)), '^predictor: ' + fragment)
        self.assert_refused(lambda: self.pred.members_ms(_bad_archs(field, value)), fragment)

    def test_device_and_jitted_archs_are_not_checked(self):
        archs = jax.tree_util.tree_map(jnp.asarray, _archs(4))
        want = np.asarray(self.pred(_archs(4)))
        np.testing.assert_allclose(np.asarray(jax.jit(lambda a: self.pred(a))(archs)),
                                   want,
                                   rtol=1e-6)
        np.testing.assert_allclose(np.asarray(self.pred(archs)), want, rtol=1e-6)

    def test_non_finite_prediction(self):
        bad = self.pred.replace(norm=train_lib.TargetNorm('log', 1e9, 1.0))  # exp overflows.
        self.assert_refused(lambda: bad(_archs(3)), 'predictor: 3 of 3 predictions are not finite')


# ---------------------------------------------------------------------------
# predictors.accuracy


class AccuracyHostileTest(_Case):

    @parameterized.named_parameters(*_BAD_GENES)
    def test_invalid_archs_from_host(self, field, value, fragment):
        pred = accuracy.from_ofa_state_dict(_ofa_acc_state())
        self.assert_refused(lambda: pred(_bad_archs(field, value)),
                            '^accuracy predictor: ' + fragment)

    def test_valid_host_archs(self):
        pred = accuracy.from_ofa_state_dict(_ofa_acc_state())
        self.assertEqual(np.asarray(pred(_archs(5))).shape, (5,))

    @parameterized.parameters('legacy', 'zip')
    def test_pth_with_nan_weight(self, fmt):
        state = _ofa_acc_state()
        state['2.weight'][1, 3] = np.nan
        p = _write_pth(self.path(f'nan_{fmt}.pth'), _as_tensors(state), fmt)
        self.assert_refused(lambda: accuracy.load_any(p), re.escape(p), '2.weight',
                            r'non-finite values \(first at index \(1, 3\): nan\)')

    @parameterized.named_parameters(
        ('wrong_inputs', '0.weight', np.zeros(
            (8, 100), np.float32), r'0.weight has shape \(8, 100\), expected \(.any., 128\)'),
        ('wrong_bias', '2.bias', np.zeros((9,), np.float32), r'2.bias has shape \(9,\)'),
        ('wrong_head', '6.weight', np.zeros((2, 8), np.float32), r'6.weight has shape \(2, 8\)'),
    )
    def test_pth_with_wrong_shape(self, key, value, fragment):
        state = _ofa_acc_state()
        state[key] = value
        p = _write_pth(self.path('shape.pth'), _as_tensors(state))
        self.assert_refused(lambda: accuracy.load_any(p), re.escape(p), fragment)

    def test_pth_missing_key(self):
        state = _ofa_acc_state()
        del state['4.bias']
        p = _write_pth(self.path('missing.pth'), _as_tensors(state))
        self.assert_refused(lambda: accuracy.load_any(p), re.escape(p), "no '4.bias'")

    def test_truncated_and_random_pth(self):
        good = _write_pth(self.path('good.pth'), _as_tensors(_ofa_acc_state()))
        with open(good, 'rb') as f:
            data = f.read()
        self.assertIsInstance(accuracy.load_any(good), accuracy.AccuracyPredictor)
        for name, blob in (('trunc.pth', data[:len(data) - 7]),
                           ('random.pth', np.random.default_rng(1).bytes(1000))):
            p = self.write(name, blob)
            self.assert_refused(lambda p=p: accuracy.load_any(p), '^' + re.escape(p) + ': ')

    def test_our_checkpoint_with_nan_and_wrong_hidden(self):
        pred = accuracy.from_ofa_state_dict(_ofa_acc_state())
        folder = accuracy.save(pred, self.path('acc'))
        meta_p = os.path.join(folder, accuracy.META_FILE)
        with open(meta_p) as f:
            meta = json.load(f)
        meta['hidden'] = [8, 8, 16]
        with open(meta_p, 'w') as f:
            json.dump(meta, f)
        params_p = os.path.join(folder, checkpoint.PARAMS_FILE)
        self.assert_refused(lambda: accuracy.load(folder), re.escape(params_p),
                            r'params/(head|hidden_2)/kernel has shape')
        meta['hidden'] = [8, 8, 8]
        with open(meta_p, 'w') as f:
            json.dump(meta, f)
        accuracy.load(folder)
        with open(params_p, 'rb') as f:
            params = flax.serialization.msgpack_restore(f.read())
        params['params']['base_acc'] = np.array(np.inf, np.float32)
        with open(params_p, 'wb') as f:
            f.write(flax.serialization.msgpack_serialize(params))
        self.assert_refused(lambda: accuracy.load(folder), re.escape(params_p),
                            'parameter params/base_acc', 'non-finite')


# ---------------------------------------------------------------------------
# predictors.lut

_KEY = 'Conv-input:128x128x3-output:64x64x24'


class LutHostileTest(_Case):

    def read(self, text: str | bytes, name: str = 'table.yaml'):
        p = self.write(name, text)
        return p, lambda: lut.read_lut_yaml(p)

    @parameterized.named_parameters(
        ('syntax', f'{_KEY}: {{count: 1, mean: [1\n', 'not valid yaml'),
        ('random_bytes', np.random.default_rng(0).bytes(512), 'not valid yaml'),
        ('empty', '', 'non-empty mapping'),
        ('a_list', '- 1\n- 2\n', 'non-empty mapping'),
        ('two_documents', f'{_KEY}: {{count: 1, mean: 1, std: 0}}\n---\nb: 1\n', 'not valid yaml'),
    )
    def test_not_a_table(self, text, fragment):
        p, fn = self.read(text)
        self.assert_refused(fn, '^' + re.escape(p) + ': ', fragment)

    @parameterized.named_parameters(
        ('no_count', '{mean: 1.0, std: 0.1}', "lacks 'count'"),
        ('no_mean', '{count: 3, std: 0.1}', "lacks 'mean'"),
        ('no_std', '{count: 3, mean: 1.0}', "lacks 'std'"),
        ('negative_mean', '{count: 3, mean: -0.5, std: 0.1}', 'mean -0.5; need a finite'),
        ('nan_mean', '{count: 3, mean: .nan, std: 0.1}', 'mean nan; need a finite'),
        ('inf_mean', '{count: 3, mean: .inf, std: 0.1}', 'mean inf; need a finite'),
        ('string_mean', '{count: 3, mean: fast, std: 0.1}', "mean 'fast'; need a finite"),
        ('bool_mean', '{count: 3, mean: true, std: 0.1}', 'mean True; need a finite'),
        ('negative_std', '{count: 3, mean: 1.0, std: -1}', 'std -1; need a finite'),
        ('zero_count', '{count: 0, mean: 1.0, std: 0.1}', 'count 0; allowed: an integer >= 1'),
        ('float_count', '{count: 1.5, mean: 1.0, std: 0.1}', 'count 1.5; allowed'),
        ('not_a_mapping', '[1, 2, 3]', 'must be a mapping'),
    )
    def test_bad_entry(self, entry, fragment):
        p, fn = self.read(f'{_KEY}: {{count: 1, mean: 0.5, std: 0.0}}\nLogits-x: {entry}\n')
        self.assert_refused(fn, re.escape(p), "entry 'Logits-x'", fragment)

    def test_repeated_key(self):
        p, fn = self.read(f'{_KEY}: {{count: 1, mean: 0.5, std: 0.0}}\n'
                          f'{_KEY}: {{count: 1, mean: 9.5, std: 0.0}}\n')
        self.assert_refused(fn, re.escape(p), 'not valid yaml', 'appears twice', _KEY)

    def test_non_string_key(self):
        p, fn = self.read('12: {count: 1, mean: 0.5, std: 0.0}\n')
        self.assert_refused(fn, re.escape(p), 'key 12 is not a string')

    def test_file_name_and_keys_disagree(self):
        folder = self.path('luts')
        os.makedirs(folder)
        p = self.write(os.path.join('luts', '160_lookup_table.yaml'),
                       f'{_KEY}: {{count: 1, mean: 0.5, std: 0.0}}\n')
        self.assert_refused(lambda: lut.load_lut(folder), re.escape(p),
                            'file name says resolution 160', r'keys say \[128\]')

    def test_missing_entry_names_the_file(self):
        p = self.write('one.yaml', f'{_KEY}: {{count: 1, mean: 0.5, std: 0.0}}\n')
        self.assert_refused(lambda: lut.load_lut(p),
                            re.escape(p),
                            'has no entry for key',
                            error=KeyError)

    def test_good_table_still_loads(self):
        keys = lut.all_keys(128, 1.2, 10)
        text = ''.join(
            f'{k}: {{count: 2, mean: {0.01 * (i + 1)}, std: 0.0}}\n' for i, k in enumerate(keys))
        p = self.write('good.yaml', text)
        table = lut.load_lut(p, width=1.2, num_classes=10)
        self.assertEqual(table.resolutions, (128,))


if __name__ == '__main__':
    absltest.main()
