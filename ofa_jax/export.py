"""A deployable sub-network: arch, weights and a serialized XLA program in one folder.

:func:`export_subnet` writes, for one found arch::

    DIR/arch.json            OFA arch dict ({"ks", "e", "d", "r"})
    DIR/weights.msgpack      Flax variables of the static sub-network
    DIR/program.jaxexport    jax.export serialization, batch dimension symbolic
    DIR/export.json          what the weights are, input shape and dtype, the
                             program's arguments, measured latency and its
                             protocol (when given)

The weights are sliced from supernet variables (:func:`ofa_jax.extract.extract_subnet`)
with BatchNorm re-calibrated on ``calibration_images`` when given
(:func:`ofa_jax.accuracy_data.recalibrate_bn`, as OFA does for every
sub-network); with no supernet the weights are random and ``export.json``
says so (``"weights": "random..."``): the program then times and runs like the
real one but its logits mean nothing.

By default the program takes the weights as its first argument, as the
program the latency store times does (:func:`ofa_jax.latency.measure.compile_module`
lowers ``apply(variables, x)``): the exported program is then the measured
one, and its latency is the stored row's. Loading needs JAX and Flax's
msgpack reader (:func:`load`, or by hand)::

    import flax.serialization
    from jax import export
    with open('DIR/program.jaxexport', 'rb') as f:
        program = export.deserialize(bytearray(f.read()))
    with open('DIR/weights.msgpack', 'rb') as f:
        variables = flax.serialization.msgpack_restore(f.read())
    logits = program.call(variables, images)   # float32 [n, r, r, 3], any n

``weights_in_program=True`` bakes the weights into the program as constants
instead (``program.call(images)``, one file to ship). XLA then folds them
(BatchNorm into the convolutions, among others): on a 2-core x86 CPU such a
program ran about 0.9x the stored row's latency, so the store and the search
overrate its latency slightly; ``export.json`` records which form was written.

A folder that exists and is not an export of ours is refused
(:class:`ExportError`); one of ours is replaced file by file (atomically).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import accuracy_data
from ofa_jax import depthwise as dw_lib
from ofa_jax import extract
from ofa_jax import files
from ofa_jax import space
from ofa_jax import subnet

FORMAT = 'ofa_jax.export/1'
META_FILE = 'export.json'
FILES = ('arch.json', 'weights.msgpack', 'program.jaxexport', META_FILE)


class ExportError(ValueError):
    """An export folder cannot be written (not ours) or read (not an export)."""


def check_folder(out_dir: str | os.PathLike, field: str = 'export folder') -> str:
    """``out_dir`` if it is absent, empty or an export of ours; ExportError otherwise."""
    out_dir = os.fspath(out_dir)
    if not os.path.exists(out_dir):
        return out_dir
    if not os.path.isdir(out_dir):
        raise ExportError(f'{field}: {out_dir} exists and is not a folder; allowed: a new or '
                          f'empty folder, or one written by ofa_jax.export')
    names = set(os.listdir(out_dir))
    if not names:
        return out_dir
    meta = os.path.join(out_dir, META_FILE)
    try:
        with open(meta) as f:
            ours = json.load(f).get('format') == FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours or names - set(FILES) - {n for n in names if n.startswith('.')}:
        raise ExportError(f'{field}: {out_dir} exists and is not an ofa_jax export (it holds '
                          f'{", ".join(sorted(names)[:5])}); allowed: a new or empty folder, or '
                          'one written by ofa_jax.export')
    return out_dir


def subnet_variables(arch: space.Arch,
                     *,
                     width: float = 1.2,
                     num_classes: int = 1000,
                     depthwise: str = 'conv',
                     supernet_variables: dict | None = None,
                     calibration_images: Sequence[np.ndarray] | None = None,
                     seed: int = 0) -> tuple[subnet.SubNet, dict, str]:
    """(model, variables, weights label) of ``arch``: from a supernet, or random.

    The label is ``'supernet'`` or ``'random'``, followed by ``', BatchNorm
    re-calibrated on N batches'`` when ``calibration_images`` are given.
    """
    arch = space.to_numpy(arch)
    r = int(arch.resolution)
    if supernet_variables is None:
        model = subnet.build_subnet(arch, width, num_classes=num_classes, depthwise=depthwise)
        variables = subnet.init_variables(model, (1, r, r, 3), seed=seed)
        label = 'random'
    else:
        model, variables = extract.extract_subnet(supernet_variables,
                                                  arch,
                                                  width,
                                                  depthwise=depthwise)
        label = 'supernet'
    if calibration_images is not None and len(calibration_images):
        variables = accuracy_data.recalibrate_bn(model, variables, calibration_images)
        label += f', BatchNorm re-calibrated on {len(calibration_images)} batches'
    return model, variables, label


def random_images(resolution: int, batches: int = 2, batch: int = 8, seed: int = 0) -> list:
    """Standard-normal image batches: BatchNorm statistics for random weights.

    Random weights with unit running variance let activations grow block by
    block (logits ~50, and float32 rounding with them); statistics of a few
    random batches keep them at the scale of a trained network.
    """
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=(batch, resolution, resolution, 3)).astype(np.float32)
        for _ in range(batches)
    ]


def serialize_program(model: Any,
                      variables: dict,
                      resolution: int,
                      dtype: str = 'float32',
                      weights_in_program: bool = False) -> bytes:
    """``jax.export`` of ``model.apply(variables, x)`` with a symbolic batch dimension.

    The program's arguments are ``(variables, images)``; with
    ``weights_in_program`` only ``images`` (the weights become constants).
    """
    (batch,) = jax.export.symbolic_shape('b')
    x = jax.ShapeDtypeStruct((batch, resolution, resolution, 3), jnp.dtype(dtype))
    if weights_in_program:
        exported = jax.export.export(jax.jit(lambda images: model.apply(variables, images)))(x)
    else:
        structs = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                         variables)
        exported = jax.export.export(jax.jit(model.apply))(structs, x)
    return bytes(exported.serialize())


def export_subnet(arch: space.Arch,
                  out_dir: str | os.PathLike,
                  *,
                  width: float = 1.2,
                  num_classes: int = 1000,
                  depthwise: str = 'conv',
                  dtype: str = 'float32',
                  supernet_variables: dict | None = None,
                  calibration_images: Sequence[np.ndarray] | None = None,
                  measured: dict[str, Any] | None = None,
                  seed: int = 0,
                  weights_in_program: bool = False) -> dict[str, Any]:
    """Writes the deployable folder of one arch (see the module docstring).

    Args:
      arch: one host-side architecture (validated).
      out_dir: the folder (created; refused if it holds anything not ours).
      width, num_classes: the network.
      depthwise: ``'conv'`` (portable; the default), ``'shifted'`` or
        ``'auto'`` (resolved for JAX's default backend).
      dtype: input dtype of the program.
      supernet_variables: SuperNet variables (e.g. :func:`ofa_jax.ofa_weights.load_pth`);
        None: random weights, labelled so.
      calibration_images: batches that re-calibrate BatchNorm (for random
        weights, e.g. :func:`random_images`).
      measured: what is known of the program's latency (e.g.
        ``{'latency_ms', 'protocol', 'device', 'batch'}``), kept in export.json.
      seed: seed of random weights.
      weights_in_program: bake the weights into the program as constants
        (``program.call(images)``) instead of taking them as its first
        argument, the form that is measured (see the module docstring).

    Returns:
      The ``export.json`` content.
    """
    out_dir = check_folder(out_dir)
    arch = space.to_numpy(arch)
    space.validate(arch)
    model, variables, label = subnet_variables(arch,
                                               width=width,
                                               num_classes=num_classes,
                                               depthwise=dw_lib.resolve(depthwise),
                                               supernet_variables=supernet_variables,
                                               calibration_images=calibration_images,
                                               seed=seed)
    r = int(arch.resolution)
    program = serialize_program(model, variables, r, dtype, weights_in_program)
    os.makedirs(out_dir, exist_ok=True)
    host = jax.tree_util.tree_map(np.asarray, variables)
    files.write_bytes(os.path.join(out_dir, 'weights.msgpack'),
                      flax.serialization.msgpack_serialize(flax.serialization.to_state_dict(host)))
    files.write_bytes(os.path.join(out_dir, 'program.jaxexport'), program)
    files.write_json(os.path.join(out_dir, 'arch.json'), space.to_ofa_dict(arch))
    meta = {
        'format': FORMAT,
        'arch_key': space.arch_key(arch),
        'weights': label,
        'width': float(width),
        'num_classes': int(num_classes),
        'depthwise': model.depthwise,
        'input': {
            'shape': ['batch', r, r, 3],
            'dtype': str(dtype),
            'layout': 'NHWC, ImageNet-normalised RGB'
        },
        'program_args': ['images'] if weights_in_program else ['variables', 'images'],
        'output': {
            'shape': ['batch', int(num_classes)],
            'meaning': 'logits'
        },
        'program_bytes': len(program),
        'jax_version': jax.__version__,
        'measured': dict(measured or {}),
    }
    files.write_json(os.path.join(out_dir, META_FILE), meta)
    return meta


def load_program(out_dir: str | os.PathLike) -> Any:
    """The ``jax.export.Exported`` program of an export folder.

    ``.call(variables, images)`` runs it, or ``.call(images)`` for a program
    written with ``weights_in_program``; :func:`load` binds the weights.
    """
    path = os.path.join(os.fspath(out_dir), 'program.jaxexport')
    try:
        with open(path, 'rb') as f:
            return jax.export.deserialize(bytearray(f.read()))
    except FileNotFoundError:
        raise ExportError(f'{path}: no exported program') from None


def read_meta(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The folder's ``export.json``; ExportError if it is missing or not ours."""
    path = os.path.join(os.fspath(out_dir), META_FILE)
    try:
        with open(path) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise ExportError(f'{path}: no export.json') from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ExportError(f'{path}: not JSON ({err})') from None
    if not isinstance(meta, dict) or meta.get('format') != FORMAT:
        raise ExportError(f'{path}: format is not {FORMAT!r}')
    return meta


def read_weights(out_dir: str | os.PathLike) -> dict:
    """The Flax variables in the folder's ``weights.msgpack``."""
    path = os.path.join(os.fspath(out_dir), 'weights.msgpack')
    try:
        with open(path, 'rb') as f:
            return flax.serialization.msgpack_restore(f.read())
    except FileNotFoundError:
        raise ExportError(f'{path}: no weights') from None
    except Exception as err:  # msgpack raises its own error types.
        raise ExportError(f'{path}: unreadable weights ({type(err).__name__}: {err})') from None


def program_args(out_dir: str | os.PathLike) -> tuple:
    """What goes before the images in ``program.call``: the weights, or nothing."""
    args = read_meta(out_dir).get('program_args', ['images'])
    return (read_weights(out_dir),) if args == ['variables', 'images'] else ()


def load(out_dir: str | os.PathLike) -> Callable[[Any], jax.Array]:
    """``images -> logits`` of an export folder, compiled on first call per shape."""
    program = load_program(out_dir)
    # Device-resident arguments, not constants closed over (XLA would fold
    # them into another program than the one measured).
    args = jax.device_put(tuple(program_args(out_dir)))
    call = jax.jit(program.call)
    return lambda images: call(*args, images)


def load_snippet(out_dir: str) -> str:
    """A few lines that load and run the folder's program (for reports)."""
    program = os.path.join(out_dir, 'program.jaxexport')
    if not program_args(out_dir):
        return ('from jax import export\n'
                f'with open({program!r}, "rb") as f:\n'
                '    program = export.deserialize(bytearray(f.read()))\n'
                'logits = program.call(images)  # float32 [n, r, r, 3] -> [n, classes]\n')
    return ('import flax.serialization\n'
            'from jax import export\n'
            f'with open({program!r}, "rb") as f:\n'
            '    program = export.deserialize(bytearray(f.read()))\n'
            f'with open({os.path.join(out_dir, "weights.msgpack")!r}, "rb") as f:\n'
            '    variables = flax.serialization.msgpack_restore(f.read())\n'
            'logits = program.call(variables, images)  # float32 [n, r, r, 3] -> [n, classes]\n')
