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
``params.msgpack`` (``flax.serialization``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import space
from predictors import features
from predictors import models
from predictors import train as train_lib

META_FILE = 'predictor.json'
# Written into predictor.json; load() refuses any other value (files without
# one predate the field and are read as this format).
FORMAT = 'ofa_jax.predictor/1'
PARAMS_FILE = 'params.msgpack'


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
        """float32[K, N]: every member's prediction (for spread)."""
        params = self.params if self.ensemble else jax.tree_util.tree_map(
            lambda v: v[None], self.params)
        return _score(params,
                      jnp.asarray(self.context),
                      _as_jnp(archs),
                      model=self._model,
                      fspec=self.fspec,
                      norm=self.norm,
                      reduce=False) + self.offset_ms

    def __call__(self, archs: space.Arch) -> jnp.ndarray:
        """Predicted latency (ms, float32) of a batch of archs, one jitted call."""
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

    def replace(self, **changes) -> 'Predictor':
        """A copy with some fields changed (e.g. ``params`` or ``context``)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields.update(changes)
        return Predictor(**fields)


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
    """Reads what :func:`write_files` wrote: (params as jnp arrays, meta dict)."""
    path = os.path.join(directory, meta_file)
    if not os.path.exists(path):
        raise FileNotFoundError(f'{directory}: no {meta_file}; not a saved {what}')
    with open(path) as f:
        meta = json.load(f)
    with open(os.path.join(directory, PARAMS_FILE), 'rb') as f:
        params = flax.serialization.msgpack_restore(f.read())
    return jax.tree_util.tree_map(jnp.asarray, params), meta


def load(directory: str | os.PathLike) -> Predictor:
    """Loads a predictor written by :func:`save`; ``ValueError`` for another format."""
    params, meta = read_files(os.fspath(directory))
    fmt = meta.get('format', FORMAT)
    if fmt != FORMAT:
        raise ValueError(f'{os.fspath(directory)}: format {fmt!r} in {META_FILE} is not '
                         f'{FORMAT!r}, the one this version of ofa_jax reads')
    # JSON turns tuples into lists; module options must stay hashable for jit.
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in meta['model_kwargs'].items()}
    return Predictor(model_name=meta['model_name'],
                     model_kwargs=kwargs,
                     fspec=features.FeatureSpec.from_dict(meta['fspec']),
                     norm=train_lib.TargetNorm(**meta['norm']),
                     params=params,
                     ensemble=bool(meta['ensemble']),
                     context=np.asarray(meta['context'], np.float32),
                     meta=meta['meta'],
                     offset_ms=float(meta.get('offset_ms', 0.0)))
