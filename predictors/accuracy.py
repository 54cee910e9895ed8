"""Accuracy predictor in OFA's form: a 128-400-400-400-1 MLP on the one-hot encoding.

OFA (Cai et al., ICLR 2020) scores sub-networks with an MLP on the 128-d
one-hot encoding (:func:`ofa_jax.encoding.onehot128`): three hidden ReLU layers
of 400 units, a final linear layer without bias, plus a learned base accuracy.
OFA's published ``acc_predictor.pth`` (the tutorial's predictor) stores the
final layer *with* a bias and no base accuracy; the two forms are the same
function, so its final bias is loaded as the base accuracy.

* :class:`AccuracyMLP` is the Flax module; :class:`AccuracyPredictor` bundles
  it with parameters: ``predictor(archs) -> float32[n]`` (a fraction, jittable).
* :func:`load_ofa_pth` reads OFA's checkpoint without PyTorch
  (:mod:`ofa_jax.torch_pickle`); :func:`train` fits one on (arch, accuracy)
  pairs with optax; :func:`save` / :func:`load` keep our own checkpoint (a
  folder with ``accuracy_predictor.json`` and ``params.msgpack``);
  :func:`load_any` accepts either.

Every loader refuses bad input with a ``ValueError`` naming the file and the
key or parameter: a file that is not a checkpoint, missing or ill-shaped
weights, NaN/inf weights. Called from the host (numpy archs), a predictor
validates the archs (``ValueError`` naming the field) and refuses non-finite
predictions; jax arrays and tracers (inside ``jax.jit``) are not checked.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ofa_jax import encoding, space, torch_pickle
from predictors import checkpoint

META_FILE = 'accuracy_predictor.json'
FORMAT = 'ofa_jax.accuracy_predictor/1'

PRECISIONS = ('float32', 'bfloat16')


def dense_kwargs(precision: str) -> dict[str, Any]:
    """``nn.Dense`` options of a scoring precision.

    'bfloat16' multiplies in bfloat16 and accumulates in float32
    (``preferred_element_type``), which XLA:CPU runs 2-3x faster on CPUs with
    AVX512-BF16/AMX; outputs stay float32 (OFA's accuracy predictor: max abs
    error ~1e-4, rank correlation 0.99998 on 100,000 random archs).
    """
    if precision not in PRECISIONS:
        raise ValueError(f'precision: {precision!r} is not one of {PRECISIONS}')
    if precision == 'float32':
        return {}
    return {
        'dtype': jnp.bfloat16,
        'dot_general': functools.partial(jax.lax.dot_general, preferred_element_type=jnp.float32)
    }


class AccuracyMLP(nn.Module):
    """OFA's accuracy MLP: Dense+ReLU per hidden layer, bias-free head, base accuracy."""

    hidden: Sequence[int] = (400, 400, 400)
    base_acc_init: float = 0.0
    precision: str = 'float32'

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dense_kwargs(self.precision)
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, name=f'hidden_{i}', **kw)(x).astype(jnp.float32))
        y = nn.Dense(1, use_bias=False, name='head', **kw)(x)[..., 0].astype(jnp.float32)
        base = self.param('base_acc', lambda _: jnp.asarray(self.base_acc_init, jnp.float32))
        return y + base


@dataclasses.dataclass
class AccuracyPredictor:
    """``predictor(archs) -> float32[n]`` predicted top-1 accuracy (a fraction).

    Attributes:
      params: Flax parameters of :class:`AccuracyMLP`.
      hidden: hidden layer widths.
      meta: JSON-able provenance (source file, training data, ...).
      precision: 'float32' (exact) or 'bfloat16' (faster scoring for search;
        see :func:`dense_kwargs`); :meth:`with_precision` makes a copy.
    """

    params: Any
    hidden: tuple[int, ...] = (400, 400, 400)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    precision: str = 'float32'

    def __post_init__(self):
        self.hidden = tuple(int(h) for h in self.hidden)
        dense_kwargs(self.precision)  # Validates.
        self.model = AccuracyMLP(hidden=self.hidden, precision=self.precision)

    def with_precision(self, precision: str) -> 'AccuracyPredictor':
        """The same predictor scoring at another precision (parameters shared)."""
        return dataclasses.replace(self, precision=precision)

    def apply(self, params: Any, archs: space.Arch) -> jax.Array:
        """Pure scoring with explicit parameters (for training)."""
        return self.model.apply(params, encoding.onehot128(archs))

    def __call__(self, archs: space.Arch) -> jax.Array:
        """Predicted accuracy of a batch of archs (jittable; params are constants).

        Raises:
          ValueError: host (numpy) archs that are invalid (naming the field,
            value and allowed values), or a non-finite prediction.
        """
        if checkpoint.check_host_archs(archs, 'accuracy predictor'):
            return checkpoint.check_finite_output(self.apply(self.params, archs),
                                                  'accuracy predictor')
        return self.apply(self.params, archs)


def init_predictor(key: jax.Array,
                   *,
                   hidden: Sequence[int] = (400, 400, 400),
                   base_acc: float = 0.0) -> AccuracyPredictor:
    """A randomly initialised predictor."""
    model = AccuracyMLP(hidden=tuple(hidden), base_acc_init=base_acc)
    params = model.init(key, jnp.zeros((1, encoding.ONEHOT_DIM), jnp.float32))
    return AccuracyPredictor(params=params, hidden=tuple(hidden), meta={'source': 'random init'})


def _weight(state: Mapping[str, np.ndarray], key: str, shape: tuple[int | None, ...],
            expected: str) -> np.ndarray:
    """``state[key]`` as a finite float array of ``shape`` (``None``: any size)."""
    if key not in state:
        raise ValueError(f'accuracy: state dict has no {key!r} (keys: {sorted(state)[:8]}); '
                         f'expected {expected}')
    w = np.asarray(state[key])
    if w.dtype.kind not in 'fiu':
        raise ValueError(f'accuracy: {key} has dtype {w.dtype}; expected a float tensor')
    if w.ndim != len(shape) or any(n is not None and n != m for n, m in zip(shape, w.shape)):
        want = tuple('any' if n is None else n for n in shape)
        raise ValueError(f'accuracy: {key} has shape {w.shape}, expected {want}')
    count, at = checkpoint.non_finite(w)
    if count:
        raise ValueError(f'accuracy: {key} has {count} non-finite values (first at '
                         f'index {at}: {w[at]}); allowed: finite numbers')
    return w


def from_ofa_state_dict(state: Mapping[str, np.ndarray]) -> AccuracyPredictor:
    """Maps an OFA accuracy-predictor state dict onto :class:`AccuracyMLP` params.

    Accepts the tutorial layout (``0.weight, 0.bias, 2.*, 4.*, 6.weight,
    6.bias``, an ``nn.Sequential``) and the later one (``layers.<i>.*`` with a
    bias-free head and ``base_acc``). Torch ``Linear`` weights are
    [out, in]; Flax kernels are [in, out].

    Raises:
      ValueError: a missing key, a wrong shape or a non-finite weight, naming
        the key.
    """
    if not isinstance(state, Mapping):
        raise ValueError(f'accuracy: expected a state dict, got a {type(state).__name__}')
    state = {
        str(k)[len('layers.'):] if str(k).startswith('layers.') else str(k): v
        for k, v in state.items()
    }
    linear = sorted({int(k.split('.')[0]) for k in state if k.split('.')[0].isdigit()})
    if len(linear) < 2:
        raise ValueError(f'accuracy: state dict keys {sorted(state)[:8]} do not look like an '
                         'OFA accuracy predictor (expected 0.weight, 0.bias, ..., 6.weight)')
    *hidden_ids, head_id = linear
    params, hidden = {}, []
    prev = encoding.ONEHOT_DIM
    for i, lid in enumerate(hidden_ids):
        w = _weight(state, f'{lid}.weight', (None, prev), f'a Linear layer with {prev} inputs')
        if w.shape[0] < 1:
            raise ValueError(f'accuracy: {lid}.weight has shape {w.shape}; a hidden layer needs '
                             '>= 1 unit')
        b = _weight(state, f'{lid}.bias', (w.shape[0],), f'the bias of {lid}.weight')
        params[f'hidden_{i}'] = {
            'kernel': jnp.asarray(w.T, jnp.float32),
            'bias': jnp.asarray(b, jnp.float32)
        }
        hidden.append(w.shape[0])
        prev = w.shape[0]
    head = _weight(state, f'{head_id}.weight', (1, prev), f'the head Linear({prev}, 1)')
    params['head'] = {'kernel': jnp.asarray(head.T, jnp.float32)}
    base = 0.0
    for key in ('base_acc', f'{head_id}.bias'):  # Either, or both, carry the base accuracy.
        if key in state:
            one = (1,) * np.ndim(state[key])
            base += float(_weight(state, key, one, 'one number').reshape(-1)[0])
    params['base_acc'] = jnp.asarray(base, jnp.float32)
    return AccuracyPredictor(params={'params': params}, hidden=tuple(hidden))


def load_ofa_pth(path: str | os.PathLike) -> AccuracyPredictor:
    """Loads OFA's published ``acc_predictor.pth`` without PyTorch.

    Raises:
      ValueError: the file is not a tensor checkpoint
        (:class:`ofa_jax.torch_pickle.BadCheckpointError`) or not an accuracy
        predictor's state dict (missing key, wrong shape, non-finite weight);
        the message names the file and the key.
    """
    path = os.fspath(path)
    state = torch_pickle.load(path)
    if not isinstance(state, Mapping):
        raise ValueError(f'accuracy: {path} holds a {type(state).__name__}, not a state dict')
    try:
        pred = from_ofa_state_dict(state)
    except ValueError as err:
        raise ValueError(f'{path}: {err}') from None
    pred.meta = {'source': os.path.abspath(path), 'format': 'ofa acc_predictor.pth'}
    return pred


def save(predictor: AccuracyPredictor, directory: str | os.PathLike) -> str:
    """Writes our checkpoint (json + msgpack) into ``directory``; returns it."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    meta = {'format': FORMAT, 'hidden': list(predictor.hidden), 'meta': predictor.meta}
    checkpoint.write_files(directory, predictor.params, meta, meta_file=META_FILE)
    return directory


def load(directory: str | os.PathLike) -> AccuracyPredictor:
    """Loads a checkpoint written by :func:`save`.

    Raises:
      FileNotFoundError: a file is missing (a ``checkpoint.CheckpointNotFoundError``,
        also a ``ValueError``).
      ValueError: another format, a bad field, non-finite weights or weights
        that do not fit ``hidden`` (naming the file and field or parameter).
    """
    directory = os.fspath(directory)
    params, meta = checkpoint.read_files(directory, 'accuracy predictor', meta_file=META_FILE)
    where = os.path.join(directory, META_FILE)
    if meta.get('format') != FORMAT:
        raise checkpoint.CheckpointError(f'{where}: format {meta.get("format")!r}, '
                                         f'expected {FORMAT!r}')
    hidden = meta.get('hidden')
    if (not isinstance(hidden, list) or not hidden or
            any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden)):
        raise checkpoint.CheckpointError(f'{where}: field hidden is {hidden!r:.80}; expected a '
                                         'non-empty list of positive layer widths')
    info = meta.get('meta', {})
    if not isinstance(info, dict):
        raise checkpoint.CheckpointError(f'{where}: field meta is {info!r:.80}; expected an '
                                         'object')
    expected = jax.eval_shape(
        AccuracyMLP(hidden=tuple(hidden)).init, jax.random.key(0),
        jax.ShapeDtypeStruct((1, encoding.ONEHOT_DIM), jnp.float32))
    checkpoint.check_param_shapes(params, expected, os.path.join(directory, checkpoint.PARAMS_FILE))
    return AccuracyPredictor(params=params, hidden=tuple(hidden), meta=info)


def load_any(path: str | os.PathLike) -> AccuracyPredictor:
    """Our checkpoint folder, or an OFA ``.pth`` (read without PyTorch)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return load(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f'{path}: no such accuracy predictor (an OFA .pth file or a '
                                f'folder with {META_FILE})')
    return load_ofa_pth(path)


def train(archs: space.Arch,
          accuracy: np.ndarray,
          *,
          key: jax.Array,
          steps: int = 2000,
          batch_size: int = 256,
          learning_rate: float = 1e-3,
          hidden: Sequence[int] = (400, 400, 400),
          init: AccuracyPredictor | None = None) -> tuple[AccuracyPredictor, np.ndarray]:
    """Fits an accuracy predictor to (arch, accuracy) pairs with Adam on MSE.

    The base accuracy starts at the mean accuracy, as OFA does, so the MLP
    learns the residual.

    Args:
      archs: batched Arch [n].
      accuracy: float[n] accuracies as fractions.
      key: PRNG key (init and minibatches).
      steps: optimisation steps (one jitted ``lax.scan``).
      batch_size: minibatch size (sampled with replacement).
      learning_rate: Adam learning rate.
      hidden: hidden widths (ignored when ``init`` is given).
      init: start from this predictor (fine-tuning) instead of random init.

    Returns:
      (predictor, per-step training loss float32[steps]).
    """
    y = jnp.asarray(accuracy, jnp.float32)
    n = int(y.shape[0])
    if n == 0:
        raise ValueError('accuracy: no training data')
    x = encoding.onehot128(jax.tree_util.tree_map(jnp.asarray, archs))
    k_init, k_data = jax.random.split(key)
    if init is None:
        init = init_predictor(k_init, hidden=hidden, base_acc=float(jnp.mean(y)))
    model, tx = init.model, optax.adam(learning_rate)

    def loss_fn(params, idx):
        return jnp.mean((model.apply(params, x[idx]) - y[idx])**2)

    @jax.jit
    def run(params, key):

        def step(carry, k):
            params, opt = carry
            idx = jax.random.randint(k, (min(batch_size, n),), 0, n)
            loss, grads = jax.value_and_grad(loss_fn)(params, idx)
            updates, opt = tx.update(grads, opt, params)
            return (optax.apply_updates(params, updates), opt), loss

        (params, _), losses = jax.lax.scan(step, (params, tx.init(params)),
                                           jax.random.split(key, steps))
        return params, losses

    params, losses = run(init.params, k_data)
    meta = dict(init.meta, trained_on=n, steps=steps, final_loss=float(losses[-1]))
    return AccuracyPredictor(params=params, hidden=init.hidden, meta=meta), np.asarray(losses)
