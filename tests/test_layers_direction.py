"""The three layers import one way only: experiments -> predictors -> ofa_jax.

Every module's imports are read with ``ast`` (top level and inside
functions), so a late import cannot hide a dependency against the direction.
"""

import ast
import os

from absl.testing import absltest
from absl.testing import parameterized

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Package -> top-level modules it must never import.
FORBIDDEN = {
    'ofa_jax': ('predictors', 'experiments', 'benchmarks', 'ml_collections', 'matplotlib'),
    'predictors': ('experiments', 'benchmarks', 'ml_collections', 'matplotlib'),
    'experiments': ('benchmarks',),
}


def imported_modules(path: str) -> list[tuple[int, str]]:
    """(line, top-level module name) of every import in a Python file."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split('.')[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.lineno, node.module.split('.')[0]))
    return out


def package_files(package: str) -> list[str]:
    files = []
    for folder, _, names in os.walk(os.path.join(ROOT, package)):
        files += [os.path.join(folder, n) for n in sorted(names) if n.endswith('.py')]
    return files


class ImportDirectionTest(parameterized.TestCase):

    @parameterized.parameters(*FORBIDDEN)
    def test_no_import_against_the_direction(self, package):
        files = package_files(package)
        self.assertNotEmpty(files)
        bad = []
        for path in files:
            for line, module in imported_modules(path):
                if module in FORBIDDEN[package]:
                    bad.append(f'{os.path.relpath(path, ROOT)}:{line} imports {module}')
        self.assertEqual(bad, [], f'{package} must not import {FORBIDDEN[package]}')

    def test_the_checker_sees_late_imports(self):
        path = os.path.join(self.create_tempdir().full_path, 'm.py')
        with open(path, 'w') as f:
            f.write('import os\n\ndef f():\n    from predictors import lut\n'
                    '    import matplotlib.pyplot\n')
        self.assertEqual(imported_modules(path), [(1, 'os'), (4, 'predictors'), (5, 'matplotlib')])

    def test_no_import_error_fallbacks_between_layers(self):
        # An `except ImportError` around one of our own packages papers over a cycle.
        bad = []
        for package in FORBIDDEN:
            for path in package_files(package):
                with open(path) as f:
                    tree = ast.parse(f.read(), path)
                for node in ast.walk(tree):
                    if not isinstance(node, ast.Try):
                        continue
                    catches = [ast.unparse(h.type) for h in node.handlers if h.type is not None]
                    if not any('ImportError' in c for c in catches):
                        continue
                    for sub in ast.walk(node):
                        mods = ([a.name for a in sub.names] if isinstance(sub, ast.Import) else
                                [sub.module] if isinstance(sub, ast.ImportFrom) else [])
                        if any(m and m.split('.')[0] in FORBIDDEN for m in mods):
                            bad.append(f'{os.path.relpath(path, ROOT)}:{node.lineno}')
        self.assertEqual(bad, [])


LAYERS = ('ofa_jax', 'predictors', 'experiments')  # Lowest first.


def layer_of(path: str) -> str:
    """The layer a test belongs to: the highest of our packages it imports."""
    used = {module for _, module in imported_modules(path)}
    return max((LAYERS.index(m) for m in used if m in LAYERS), default=0)


class TestLayoutTest(absltest.TestCase):

    def test_each_test_sits_in_its_layers_folder(self):
        tests = os.path.join(ROOT, 'tests')
        loose = sorted(n for n in os.listdir(tests)
                       if n.startswith('test_') and n != 'test_layers_direction.py')
        self.assertEqual(loose, [], 'tests belong in tests/<layer>/')
        wrong, names = [], []
        for layer in LAYERS:
            folder = os.path.join(tests, layer)
            found = sorted(
                n for n in os.listdir(folder) if n.startswith('test_') and n.endswith('.py'))
            self.assertNotEmpty(found, folder)
            for name in found:
                names.append(name)
                want = LAYERS[layer_of(os.path.join(folder, name))]
                if want != layer:
                    wrong.append(f'tests/{layer}/{name} imports {want}: belongs in tests/{want}/')
            # No __init__.py: a package named like ours would shadow it on import.
            self.assertFalse(os.path.exists(os.path.join(folder, '__init__.py')), folder)
        self.assertEqual(wrong, [])
        # pytest imports test files by base name (no packages): names must differ.
        self.assertEqual(len(names), len(set(names)))


if __name__ == '__main__':
    absltest.main()
