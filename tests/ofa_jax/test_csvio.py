"""Tests for OFA-style CSV reading and writing."""

import os

from absl.testing import absltest
import numpy as np

from ofa_jax import csvio
from ofa_jax import external_data
from ofa_jax import space

EXTERNAL = external_data.root()
ROW = ("\"{'wid': None, 'ks': [7, 7, 3, 3, 5, 7, 3, 7, 3, 7, 3, 7, 5, 7, 7, 5, 5, 5, 7, 5], "
       "'e': [6, 3, 4, 4, 3, 6, 4, 6, 6, 3, 4, 6, 6, 3, 3, 4, 6, 4, 6, 6], "
       "'d': [2, 4, 2, 3, 3], 'r': [208]}\"")


class CsvTest(absltest.TestCase):

    def _write(self, text):
        path = self.create_tempfile(content=text).full_path
        return path

    def test_round_trip_with_extra_columns(self):
        archs = space.sample_np(np.random.default_rng(0), 5)
        path = os.path.join(self.create_tempdir().full_path, 'x.csv')
        csvio.write_ofa_csv(path, archs, [1.5, 2, 3, 4, 5.25], extra={'device': ['cpu'] * 5})
        table = csvio.read_ofa_csv(path)
        self.assertLen(table, 5)
        np.testing.assert_array_equal(table.archs.kernel, archs.kernel)
        np.testing.assert_allclose(table.latency_ms, [1.5, 2, 3, 4, 5.25])
        self.assertEqual(table.extra['device'], ['cpu'] * 5)
        self.assertLen(table.take(slice(1, 3)), 2)

    def test_bad_rows_name_file_line_and_reason(self):
        cases = {
            'child_arch,latency\n' + ROW + ',abc\n': ':2: latency',
            'child_arch,latency\n' + ROW + ',1.0\n' + ROW + ',-1\n': ':3: latency',
            'child_arch,latency\n' + ROW.replace('[208]', '[130]') + ',1.0\n': ':2: r/resolution',
            'child_arch,latency\n"{}",1.0\n': ':2: arch: missing key',
            'arch,lat\n' + ROW + ',1.0\n': ':1: header',
            'child_arch,latency\n' + ROW + ',1.0,extra\n': ':2: 3 columns',
            '': ':1: empty file',
        }
        for text, fragment in cases.items():
            path = self._write(text)
            with self.assertRaises(ValueError) as ctx:
                csvio.read_ofa_csv(path)
            self.assertIn(path + fragment, str(ctx.exception))

    def test_byte_order_mark_and_bad_bytes(self):
        path = os.path.join(self.create_tempdir().full_path, 'bom.csv')
        with open(path, 'wb') as f:
            f.write(b'\xef\xbb\xbfchild_arch,latency\n' + ROW.encode() + b',1.5\n')
        self.assertLen(csvio.read_ofa_csv(path), 1)
        with open(path, 'ab') as f:
            f.write(b'\x80\x81,2\n')
        with self.assertRaisesRegex(ValueError, '^' + path + ':3: not UTF-8 text'):
            csvio.read_ofa_csv(path)

    def test_reads_public_file_when_present(self):
        path = os.path.join(EXTERNAL, 'ofanas_ofa_w1.0', 'RTX_2080_Ti_GPU_ofa.csv')
        if not os.path.exists(path):
            self.skipTest('external data not available')
        table = csvio.read_ofa_csv(path, max_rows=100)
        self.assertLen(table, 100)
        self.assertEqual(int(table.archs.resolution[0]), 208)
        self.assertAlmostEqual(table.latency_ms[0], 20.59500217437744)


if __name__ == '__main__':
    absltest.main()
