"""A trained latency predictor as one object, saved and loaded with all it needs.

A :class:`Predictor` bundles the model name and options, the
:class:`~predictors.features.FeatureSpec`, the target normalisation, the
parameters (a leading K axis for an ensemble: the prediction is the mean of
the members' latencies), the device context it predicts for (batch size,
hardware features or reference latencies, already standardised) and free-form
metadata (device name, training config, data file).

``predictor(archs)`` scores a batch in one jitted call; the jitted function is
built once per predictor and compiles once per batch size.
``predictor.compiled(n)`` is the serving path: compiled ahead of time for n
archs with the weights frozen in as constants (faster on CPU).

On disk (a folder): ``predictor.json`` (everything but the weights) and
``params.msgpack`` (``flax.serialization``). :func:`load` refuses, with a
:class:`CheckpointError` (a ``ValueError``) naming the file and the field or
parameter, a file that is missing, truncated or not JSON/msgpack, a missing or
ill-typed field, non-finite weights, context or normalisation, and weights whose
tree or shapes do not match the model the JSON describes: a bad checkpoint fails
at load, not at its first call.

Called from the host (numpy archs), a predictor validates the archs
(:func:`ofa_jax.space.validate`: ``ValueError`` naming the field) and refuses
non-finite predictions; under ``jax.jit`` and for device arrays nothing is
checked (jitted code cannot raise).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import flax.serialization
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import space
from predictors import conformal
from predictors import features
from predictors import models
from predictors import train as train_lib

META_FILE = 'predictor.json'
# Written into predictor.json; load() refuses any other value (files without
# one predate the field and are read as this format).
FORMAT = 'ofa_jax.predictor/1'
PARAMS_FILE = 'params.msgpack'


class CheckpointError(ValueError):
    """A saved predictor is missing, unreadable or holds bad values; names the file."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint file does not exist (also a ``FileNotFoundError``, as before)."""


@dataclasses.dataclass
class Predictor:
    """A trained latency predictor: ``predictor(archs) -> latency_ms``.

    Attributes:
      model_name: registry name (``models.MODEL_NAMES``).
      model_kwargs: keyword options of the module.
      fspec: feature spec (standardisation statistics, knots, width).
      norm: target normalisation.
      params: Flax parameters; with a leading K axis when ``ensemble``.
      ensemble: whether ``params`` stacks K members.
      context: float32[C] standardised device context (may be empty).
      meta: JSON-able metadata (device, batch size, config, data).
      offset_ms: added to every prediction: the device's current level
        relative to the training rows (:func:`predictors.drift.last_level`).
      calibration: split-conformal calibration on held-out rows
        (:class:`predictors.conformal.Calibration`, ``conformal.json`` in the
        checkpoint folder), or None; :meth:`upper` needs it.
    """

    model_name: str
    model_kwargs: dict[str, Any]
    fspec: features.FeatureSpec
    norm: train_lib.TargetNorm
    params: Any
    ensemble: bool = False
    context: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), np.float32))
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    offset_ms: float = 0.0
    calibration: Any = None

    def __post_init__(self):
        self.offset_ms = float(self.offset_ms)
        self.context = np.asarray(self.context, np.float32).reshape(-1)
        self._model = models.build_model(self.model_name, fspec=self.fspec, **self.model_kwargs)

    @property
    def model(self):
        return self._model

    @property
    def num_members(self) -> int:
        if not self.ensemble:
            return 1
        return int(jax.tree_util.tree_leaves(self.params)[0].shape[0])

    def inputs(self, archs: space.Arch, context=None) -> dict[str, Any]:
        """Model inputs for ``archs`` (jnp; usable inside jit)."""
        return _inputs(archs, self.context if context is None else context, self.fspec)

    def members_ms(self, archs: space.Arch) -> jnp.ndarray:
        """float32[K, N]: every member's prediction (for spread).

        Raises:
          ValueError: host (numpy) archs that are invalid (naming the field), or
            a non-finite prediction.
        """
        host = check_host_archs(archs, 'predictor')
        params = self.params if self.ensemble else jax.tree_util.tree_map(
            lambda v: v[None], self.params)
        out = _score(params,
                     jnp.asarray(self.context),
                     _as_jnp(archs),
                     model=self._model,
                     fspec=self.fspec,
                     norm=self.norm,
                     reduce=False) + self.offset_ms
        return check_finite_output(out, 'predictor') if host else out

    def __call__(self, archs: space.Arch) -> jnp.ndarray:
        """Predicted latency (ms, float32) of a batch of archs, one jitted call.

        Host (numpy) archs are validated first and the predictions checked to be
        finite; jax arrays and tracers (inside ``jax.jit``) are not checked.

        Raises:
          ValueError: invalid host archs (naming the field, the value and the
            allowed values) or a non-finite prediction.
        """
        host = check_host_archs(archs, 'predictor')
        out = self._predict(archs)
        return check_finite_output(out, 'predictor') if host else out

    def _predict(self, archs: space.Arch) -> jnp.ndarray:
        if self.ensemble:
            out = _score(self.params,
                         jnp.asarray(self.context),
                         _as_jnp(archs),
                         model=self._model,
                         fspec=self.fspec,
                         norm=self.norm,
                         reduce=True)
        else:
            out = _score_one(self.params,
                             jnp.asarray(self.context),
                             _as_jnp(archs),
                             model=self._model,
                             fspec=self.fspec,
                             norm=self.norm)
        return out + self.offset_ms if self.offset_ms else out

    def breakdown(self, archs: space.Arch) -> dict[str, np.ndarray]:
        """Where an additive predictor's latency goes, per arch (ms, float32 numpy).

        Returns ``fixed_ms`` [N] (stem, head and final layers at the arch's
        resolution, plus ``offset_ms``), ``blocks_ms`` [N, 20] (each block's
        learned cost at its configuration and input size; 0 for blocks the
        depth leaves out) and ``residual_ms`` [N] (the residual MLP's
        correction: what does not add up). They sum to ``self(archs)``; an
        ensemble gives its members' mean. On an absolute scale only block
        cost *differences* are identified by training data (a constant can
        move between the fixed term and the blocks every arch has).

        Raises:
          ValueError: the predictor is not the additive model, or its target
            normalisation is not linear in ms (``log``).
        """
        if self.model_name != 'additive':
            raise ValueError(f'breakdown: model {self.model_name!r} has no per-block terms; '
                             "allowed: 'additive'")
        if self.norm.kind not in ('scale', 'standardize'):
            raise ValueError(f'breakdown: target {self.norm.kind!r} does not split into terms in '
                             "ms; allowed: 'scale', 'standardize'")
        check_host_archs(archs, 'breakdown')
        params = self.params if self.ensemble else jax.tree_util.tree_map(
            lambda v: v[None], self.params)
        # The members' mean of the raw terms (identity decode), then the linear scale.
        parts = np.asarray(
            _score(params,
                   jnp.asarray(self.context),
                   _as_jnp(archs),
                   model=self._model.clone(return_parts=True),
                   fspec=self.fspec,
                   norm=_IDENTITY,
                   reduce=True)) * self.norm.std
        shift = self.offset_ms + (self.norm.mean if self.norm.kind == 'standardize' else 0.0)
        return {
            'fixed_ms': parts[..., 0] + shift,
            'blocks_ms': parts[..., 1:-1],
            'residual_ms': parts[..., -1],
        }

    def compiled(self, batch_size: int, *, fuse_dots: bool | None = None) -> 'CompiledScorer':
        """``self(archs)`` compiled ahead of time for one batch size, weights frozen in.

        The serving path for a fixed predictor and big batches (scoring a
        sample of the space, a search population): see :func:`compile_scorer`.
        Predictions agree with ``self(archs)`` to float32 rounding.
        """
        return compile_scorer(self, batch_size, fuse_dots=fuse_dots)

    def upper(self, archs: space.Arch, coverage: float) -> jnp.ndarray:
        """Upper bounds (ms) that the measured latency stays under with probability ``coverage``.

        Split-conformal on the held-out rows of :attr:`calibration`
        (:mod:`predictors.conformal`); jittable. ValueError when the checkpoint
        has no calibration or too few rows for ``coverage``.
        """
        if self.calibration is None:
            raise ValueError('upper: this predictor has no calibration (conformal.json); fit it '
                             'with experiments.fit_predictor, or conformal.fit(...) on held-out '
                             'rows and replace(calibration=...)')
        spread = self.log_spread if self.calibration.normalized else None
        return self.calibration.bound_fn(self, coverage, spread)(archs)

    def log_spread(self, archs: space.Arch) -> jnp.ndarray:
        """float32[N]: the members' standard deviation of log latency (0 for one member)."""
        return conformal.log_spread(self.members_ms(archs))

    def replace(self, **changes) -> 'Predictor':
        """A copy with some fields changed (e.g. ``params`` or ``context``)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields.update(changes)
        return Predictor(**fields)


def _is_host(archs: space.Arch) -> bool:
    """Whether no field of ``archs`` is a jax array (concrete or a tracer)."""
    return not any(isinstance(v, jax.Array) for v in jax.tree_util.tree_leaves(archs))


def check_host_archs(archs: space.Arch, what: str) -> bool:
    """Validates host (numpy / Python) archs; returns whether they were host archs.

    Jax arrays, and tracers inside ``jax.jit``, are left alone (jitted code
    cannot raise; device arrays come from ``space.sample`` or jitted code).

    Raises:
      ValueError: ``'{what}: {field}: value ... is not allowed; allowed: ...'``.
    """
    if not _is_host(archs):
        return False
    if not isinstance(archs, space.Arch):
        raise ValueError(f'{what}: archs is a {type(archs).__name__}, not an ofa_jax.space.Arch')
    try:
        space.validate(archs)
    except ValueError as err:
        raise ValueError(f'{what}: {err}') from None
    return True


def check_finite_output(out: jax.Array, what: str) -> jax.Array:
    """``out`` if every value is finite, else ``ValueError`` naming the first bad row."""
    if not bool(jnp.all(jnp.isfinite(out))):
        values = np.asarray(out)
        count, at = non_finite(values)
        raise ValueError(f'{what}: {count} of {values.size} predictions are not finite '
                         f'(first at index {at}: {values[at]}); the weights or inputs are bad')
    return out


def non_finite(values: np.ndarray) -> tuple[int, tuple[int, ...]]:
    """(how many values are NaN/inf, index of the first) of a float array (any rank)."""
    mask = ~np.isfinite(np.asarray(values))
    count = int(np.count_nonzero(mask))
    at = np.unravel_index(int(np.argmax(mask)), mask.shape) if count else ()
    return count, tuple(int(i) for i in at)


def _inputs(archs, context, fspec):
    x = features.arch_inputs(archs, fspec)
    ctx = jnp.asarray(context, jnp.float32)
    x['context'] = jnp.broadcast_to(ctx, x['scalars'].shape[:-1] + ctx.shape[-1:])
    return x


# Module-level jits keyed on the (hashable) model, feature spec and
# normalisation: predictors that differ only in weights or context (seeds,
# fine-tuned copies) share one compiled program per batch shape.
# Rows per chunk when scoring big batches: a [chunk, 400] activation stays in
# cache, where a [100000, 400] one streams through memory at every layer.
SCORE_CHUNK = 2048


@functools.partial(jax.jit, static_argnames=('model', 'fspec', 'norm'))
def _score_one(params, context, archs, *, model, fspec, norm):

    def score(a):
        return norm.decode(model.apply(params, _inputs(a, context, fspec)))

    n = archs.resolution.shape[0] if archs.resolution.ndim == 1 else 0
    if n <= SCORE_CHUNK:
        return score(archs)
    m = -(-n // SCORE_CHUNK)
    # Pad with copies of the first arch (valid input) to whole chunks; shapes are static.
    padded = jax.tree_util.tree_map(
        lambda v: jnp.concatenate(
            [v, jnp.broadcast_to(v[:1], (m * SCORE_CHUNK - n,) + v.shape[1:])]).reshape(
                (m, SCORE_CHUNK) + v.shape[1:]), archs)
    return jax.lax.map(score, padded).reshape(-1)[:n]


# Decodes the model's output as it is (``Predictor.breakdown`` scales the terms itself).
_IDENTITY = train_lib.TargetNorm('scale', 0.0, 1.0)


@functools.partial(jax.jit, static_argnames=('model', 'fspec', 'norm', 'reduce'))
def _score(params, context, archs, *, model, fspec, norm, reduce):
    x = _inputs(archs, context, fspec)
    per = jax.vmap(lambda p: norm.decode(model.apply(p, x)))(params)
    return jnp.mean(per, axis=0) if reduce else per


def _as_jnp(archs: space.Arch) -> space.Arch:
    return jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.int32), archs)


# XLA:CPU runs every chain of dots (with the element-wise ops between them) as
# one YNNPACK fusion under this option; with the weights compile-time
# constants it packs them once instead of at every call. Scoring 100,000 archs
# on a 2-core AMD EPYC, five same-process runs: paper MLP +3-12% (median 11%),
# additive model +26-77% over ``predictor(archs)``
# (benchmarks/predictors_speed.py). The option is
# experimental in jaxlib 0.10; where XLA refuses it, the scorer compiles without.
CPU_DOT_FUSION = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT'}


@dataclasses.dataclass(frozen=True)
class CompiledScorer:
    """An AOT-compiled ``archs -> latency_ms`` for exactly ``batch_size`` archs.

    Attributes:
      executable: the ``jax.stages.Compiled`` program.
      batch_size: the only batch size it accepts.
      compiler_options: the XLA options it was compiled with (empty: none).
      note: why an option was dropped, else empty.
    """

    executable: Any
    batch_size: int
    compiler_options: dict[str, str]
    note: str = ''

    def __call__(self, archs: space.Arch) -> jax.Array:
        shape = tuple(np.shape(archs.resolution))
        if shape != (self.batch_size,):
            raise ValueError(f'compiled scorer: archs.resolution has shape {shape}, this scorer '
                             f'takes exactly ({self.batch_size},); compile another with '
                             f'.compiled({shape[0] if len(shape) == 1 else "N"}) or pad the batch')
        return self.executable(_as_jnp(archs))


def compile_scorer(score: Any, batch_size: int, *, fuse_dots: bool | None = None) -> CompiledScorer:
    """Compiles ``score`` (a predictor: ``archs -> float32[n]``) for one batch size.

    ``score``'s weights are closed over, so XLA sees them as constants and
    optimises for them (on CPU it packs them for its matmul kernels once,
    at compile time). The price: one compile per predictor and batch size,
    where ``predictor(archs)`` shares one program among predictors that
    differ only in weights.

    Args:
      score: any callable on a batched :class:`~ofa_jax.space.Arch`
        (:class:`Predictor`, ``AccuracyPredictor``, a constraint's latency).
      batch_size: rows per call (> 0).
      fuse_dots: compile with :data:`CPU_DOT_FUSION`; default: when JAX's
        default backend is the CPU. ``True`` elsewhere is an error.

    Returns:
      A :class:`CompiledScorer`.
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f'compile_scorer: batch_size={batch_size!r}; need an integer >= 1')
    backend = jax.default_backend()
    if fuse_dots is None:
        fuse_dots = backend == 'cpu'
    elif fuse_dots and backend != 'cpu':
        raise ValueError(f'compile_scorer: fuse_dots=True is an XLA:CPU option; the default '
                         f'backend is {backend!r} (pass fuse_dots=None or False)')
    n = int(batch_size)
    i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
    spec = space.Arch(kernel=i32(n, space.NUM_BLOCKS),
                      expand=i32(n, space.NUM_BLOCKS),
                      depth=i32(n, space.NUM_STAGES),
                      resolution=i32(n))
    fn = lambda archs: jnp.asarray(score(archs), jnp.float32)
    options, note = (dict(CPU_DOT_FUSION) if fuse_dots else {}), ''
    if options:
        try:
            executable = jax.jit(fn, compiler_options=options).lower(spec).compile()
        except jax.errors.JaxRuntimeError as e:  # XLA refused the option: compile plainly.
            options, note = {}, f'XLA refused {CPU_DOT_FUSION}: {str(e).splitlines()[0]}'
    if not options:
        executable = jax.jit(fn).lower(spec).compile()
    return CompiledScorer(executable, n, options, note)


def save(predictor: Predictor, directory: str | os.PathLike) -> str:
    """Writes ``predictor.json`` and ``params.msgpack`` into ``directory``."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    meta = {
        'format': FORMAT,
        'model_name': predictor.model_name,
        'model_kwargs': predictor.model_kwargs,
        'fspec': dataclasses.asdict(predictor.fspec),
        'norm': dataclasses.asdict(predictor.norm),
        'ensemble': predictor.ensemble,
        'context': predictor.context.tolist(),
        'meta': predictor.meta,
        'offset_ms': predictor.offset_ms,
    }
    write_files(directory, predictor.params, meta)
    if predictor.calibration is not None:
        predictor.calibration.save(os.path.join(directory, conformal.FILE))
    return directory


def write_files(directory: str,
                params: Any,
                meta: dict[str, Any],
                meta_file: str = META_FILE) -> None:
    """Writes ``params`` (msgpack) and ``meta`` (JSON), each atomically (tmp + rename)."""
    host = jax.tree_util.tree_map(np.asarray, params)
    blob = flax.serialization.msgpack_serialize(flax.serialization.to_state_dict(host))
    for name, data, mode in ((PARAMS_FILE, blob, 'wb'), (meta_file, json.dumps(meta,
                                                                               indent=1), 'w')):
        tmp = os.path.join(directory, f'.{name}.tmp')
        with open(tmp, mode) as f:
            f.write(data)
        os.replace(tmp, os.path.join(directory, name))


def read_files(directory: str,
               what: str = 'predictor',
               meta_file: str = META_FILE) -> tuple[Any, dict[str, Any]]:
    """Reads what :func:`write_files` wrote: (params as jnp arrays, meta dict).

    Every parameter must be a finite number array.

    Raises:
      CheckpointNotFoundError: a file is missing (also a ``FileNotFoundError``).
      CheckpointError: a file is not JSON / msgpack, or a parameter is not a
        finite number array (naming the file and the parameter path).
    """
    path = os.path.join(directory, meta_file)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f'{directory}: no {meta_file}; not a saved {what}')
    try:
        with open(path, 'rb') as f:
            meta = json.loads(f.read().decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f'{path}: not a JSON {what} description '
                              f'({type(err).__name__}: {str(err)[:200]})') from None
    if not isinstance(meta, dict):
        raise CheckpointError(f'{path}: holds a JSON {type(meta).__name__}, expected an object')
    params_path = os.path.join(directory, PARAMS_FILE)
    if not os.path.isfile(params_path):
        raise CheckpointNotFoundError(f'{params_path}: missing; a saved {what} has {meta_file} '
                                      f'and {PARAMS_FILE}')
    with open(params_path, 'rb') as f:
        blob = f.read()
    try:
        params = flax.serialization.msgpack_restore(blob)
    except Exception as err:  # pylint: disable=broad-except
        # msgpack and flax raise many types for truncated or garbage bytes.
        raise CheckpointError(f'{params_path}: not a msgpack parameter file (truncated or '
                              f'corrupt: {type(err).__name__}: {str(err)[:200]})') from None
    check_params(params, params_path)
    return jax.tree_util.tree_map(jnp.asarray, params), meta


def check_params(params: Any, where: str) -> None:
    """Checks a restored parameter tree: nested dicts of finite number arrays.

    Raises:
      CheckpointError: ``'{where}: parameter {path} ...'`` for a leaf that is
        not a number array or holds NaN/inf.
    """
    if not isinstance(params, dict) or not params:
        raise CheckpointError(f'{where}: holds a {type(params).__name__}, expected a non-empty '
                              'mapping of parameters')
    for key, value in flax.traverse_util.flatten_dict(params, sep='/').items():
        arr = value if isinstance(value, np.ndarray) else None
        if arr is None and isinstance(value,
                                      (int, float, np.number)) and not isinstance(value, bool):
            arr = np.asarray(value)
        if arr is None or arr.dtype.kind not in 'fiu':
            raise CheckpointError(f'{where}: parameter {key} is a {type(value).__name__} '
                                  f'{getattr(value, "dtype", "")}; expected a number array')
        if arr.dtype.kind == 'f':
            count, at = non_finite(arr)
            if count:
                raise CheckpointError(f'{where}: parameter {key} has {count} non-finite '
                                      f'values (first at index {at}: {arr[at]}); allowed: finite '
                                      'numbers')


def check_param_shapes(params: Any, expected: Any, where: str, *, members: bool = False) -> None:
    """Checks ``params`` has exactly the tree and shapes of ``expected``.

    Args:
      params: the loaded parameters.
      expected: shapes from ``jax.eval_shape(model.init, ...)``.
      where: the file, for messages.
      members: ``params`` stacks ensemble members on a leading axis (the same
        size for every leaf).

    Raises:
      CheckpointError: a missing or unexpected parameter, or a wrong shape,
        naming the parameter path.
    """
    got = flax.traverse_util.flatten_dict(flax.serialization.to_state_dict(params), sep='/')
    want = flax.traverse_util.flatten_dict(flax.serialization.to_state_dict(expected), sep='/')
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        raise CheckpointError(f'{where}: parameters do not match the model: missing '
                              f'{missing[:5]}, unexpected {extra[:5]}')
    k = None
    for key in sorted(want):
        shape, need = tuple(np.shape(got[key])), tuple(want[key].shape)
        if members:
            if not shape or (k is not None and shape[0] != k):
                raise CheckpointError(f'{where}: parameter {key} has shape {shape}; an ensemble '
                                      f'needs a leading member axis of {k or "K >= 1"}')
            k = shape[0]
            shape = shape[1:]
        if shape != need:
            raise CheckpointError(f'{where}: parameter {key} has shape {shape}, the model its '
                                  f'config describes needs {need}')


_JSON_TYPES = {dict: 'object', list: 'array', str: 'string', bool: 'boolean'}


def _field(meta: dict[str, Any], key: str, kind: type, where: str) -> Any:
    """``meta[key]``, which must be a ``kind``; else CheckpointError naming ``where`` and key."""
    if key not in meta:
        raise CheckpointError(f'{where}: missing field {key!r}')
    value = meta[key]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise CheckpointError(f'{where}: field {key!r} is {value!r:.80}; expected a JSON '
                              f'{_JSON_TYPES[kind]}')
    return value


def _finite(value: Any, name: str, where: str) -> float:
    """``value`` as a float if it is a finite number; else CheckpointError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise CheckpointError(f'{where}: {name} is {value!r:.80}; allowed: a finite number')
    return float(value)


def load(directory: str | os.PathLike) -> Predictor:
    """Loads a predictor written by :func:`save`.

    Raises:
      CheckpointNotFoundError: a file is missing (also a ``FileNotFoundError``).
      CheckpointError: another format, a bad field, non-finite values or
        weights that do not fit the model (a ``ValueError`` naming the file and
        the field or parameter).
    """
    directory = os.fspath(directory)
    params, meta = read_files(directory)
    where = os.path.join(directory, META_FILE)
    fmt = meta.get('format', FORMAT)
    if fmt != FORMAT:
        raise CheckpointError(f'{directory}: format {fmt!r} in {META_FILE} is not '
                              f'{FORMAT!r}, the one this version of ofa_jax reads')
    # JSON turns tuples into lists; module options must stay hashable for jit.
    kwargs = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in _field(meta, 'model_kwargs', dict, where).items()
    }
    norm_d = _field(meta, 'norm', dict, where)
    for name in ('mean', 'std'):
        _finite(norm_d.get(name, 0.0), f'norm.{name}', where)
    if norm_d.get('kind') not in train_lib.TARGET_KINDS:
        raise CheckpointError(f'{where}: norm.kind is {norm_d.get("kind")!r:.80}; allowed: '
                              f'{", ".join(train_lib.TARGET_KINDS)}')
    if not float(norm_d.get('std', 1.0)) > 0:
        raise CheckpointError(f'{where}: norm.std is {norm_d.get("std")!r}; allowed: > 0')
    context = _field(meta, 'context', list, where)
    try:
        context = np.asarray(context, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise CheckpointError(
            f'{where}: context {context!r:.80} is not a list of numbers') from None
    if not np.all(np.isfinite(context)):
        raise CheckpointError(f'{where}: context {context.tolist()!r:.80} has non-finite values; '
                              'allowed: finite numbers')
    offset_ms = _finite(meta.get('offset_ms', 0.0), 'offset_ms', where)
    ensemble = _field(meta, 'ensemble', bool, where)
    fspec_d = _field(meta, 'fspec', dict, where)
    for name, value in fspec_d.items():  # Standardisation statistics: finite numbers.
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float):
                _finite(v, f'fspec.{name}', where)
    try:
        predictor = Predictor(model_name=_field(meta, 'model_name', str, where),
                              model_kwargs=kwargs,
                              fspec=features.FeatureSpec.from_dict(fspec_d),
                              norm=train_lib.TargetNorm(**norm_d),
                              params=params,
                              ensemble=ensemble,
                              context=context.astype(np.float32),
                              meta=_field(meta, 'meta', dict, where),
                              offset_ms=offset_ms)
        one = jax.tree_util.tree_map(lambda v: np.asarray(v)[None], space.smallest())
        x = predictor.inputs(_as_jnp(one))
        expected = jax.eval_shape(predictor.model.init, jax.random.PRNGKey(0), x)
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f'{where}: does not describe a model this version builds '
                              f'({type(err).__name__}: {str(err)[:200]})') from None
    check_param_shapes(params,
                       expected,
                       os.path.join(directory, PARAMS_FILE),
                       members=predictor.ensemble)
    cal_path = os.path.join(directory, conformal.FILE)
    if os.path.exists(cal_path):
        try:
            predictor.calibration = conformal.load(cal_path)
        except ValueError as err:
            raise CheckpointError(str(err)) from None
    return predictor
