"""Tests for ofa_jax.external_data: one place decides where public data is read."""

import os
from unittest import mock

from absl.testing import absltest

from ofa_jax import external_data


class ExternalDataTest(absltest.TestCase):

    def test_env_var_overrides_the_default(self):
        with mock.patch.dict(os.environ, {external_data.ENV_VAR: '/data/ofa'}):
            self.assertEqual(external_data.root(), '/data/ofa')
            self.assertEqual(external_data.path('ofa_note10_lut'), '/data/ofa/ofa_note10_lut')

    def test_default_is_beside_the_checkout(self):
        with mock.patch.dict(os.environ, {external_data.ENV_VAR: ''}):
            root = external_data.root()
        repo = os.path.dirname(os.path.dirname(os.path.abspath(external_data.__file__)))
        self.assertEqual(root, os.path.join(os.path.dirname(repo), 'shared', 'data', 'external'))


if __name__ == '__main__':
    absltest.main()
