"""Training latency predictors with optax in one jit-compiled loop.

``make_train(model, TrainParams(...), train_data, val_data)`` returns ``train(rng)``
(purejaxrl's pattern): the whole optimisation, minibatch sampling and early
stopping run inside one ``lax.while_loop``, so ``jax.jit(jax.vmap(train))``
trains an ensemble of K seeds at once (:func:`fit_ensemble`).

Targets are normalised (:class:`TargetNorm`): ``log`` (standardised
log-latency: relative errors, good across devices), ``scale`` (latency divided
by its training mean: keeps additivity in milliseconds, for the additive
model) or ``standardize`` (z-score of the latency in ms).

The 2101.00732 setup, as far as the paper and code tell: Adam, MSE loss, the
MLP on the one-hot input, 70/15/15 split. Learning rate, batch size and epochs
are ours (:class:`TrainParams`, whose fields the experiment configs take over).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import optimize

from ofa_jax import space
from predictors import features

TARGET_KINDS = ('log', 'scale', 'standardize')
LOSSES = ('mse', 'huber', 'relative_l1')
DEFAULT_HUBER_DELTA = 0.05


@dataclasses.dataclass(frozen=True)
class TargetNorm:
    """Maps latency (ms) to the model's normalised target and back."""

    kind: str = 'log'
    mean: float = 0.0
    std: float = 1.0

    def encode(self, y_ms):
        y = jnp.asarray(y_ms, jnp.float32)
        if self.kind == 'log':
            return (jnp.log(y) - self.mean) / self.std
        if self.kind == 'scale':
            return y / self.std
        return (y - self.mean) / self.std

    def decode(self, t):
        if self.kind == 'log':
            return jnp.exp(t * self.std + self.mean)
        if self.kind == 'scale':
            return t * self.std
        return t * self.std + self.mean


def fit_target_norm(kind: str, y_ms: np.ndarray) -> TargetNorm:
    """Fits a :class:`TargetNorm` of ``kind`` (``TARGET_KINDS``) on training latencies."""
    y = np.asarray(y_ms, np.float64)
    if kind == 'log':
        ly = np.log(y)
        return TargetNorm('log', float(ly.mean()), float(max(ly.std(), 1e-6)))
    if kind == 'scale':
        return TargetNorm('scale', 0.0, float(y.mean()))
    if kind == 'standardize':
        return TargetNorm('standardize', float(y.mean()), float(max(y.std(), 1e-6)))
    raise ValueError(f'target: unknown kind {kind!r}; allowed: {", ".join(TARGET_KINDS)}')


def _is_number(value: Any) -> bool:
    """A real number that is finite (bools and strings are not numbers here)."""
    return (not isinstance(value, (bool, np.bool_)) and isinstance(value, numbers.Real) and
            math.isfinite(value))


def _real(name: str, value: Any, *, low: float, strict: bool) -> float:
    """``value`` as a float > ``low`` (``strict``) or >= ``low``, or a ValueError naming the
    field, the value and the range."""
    if not (_is_number(value) and (value > low if strict else value >= low)):
        raise ValueError(f'{name}: {value!r}; allowed: a finite number {">" if strict else ">="} '
                         f'{low:g}')
    return float(value)


def _count(name: str, value: Any) -> int:
    """``value`` as an int >= 1 (an integral float is accepted), or a ValueError."""
    if not (_is_number(value) and value >= 1 and value == int(value)):
        raise ValueError(f'{name}: {value!r}; allowed: an integer >= 1')
    return int(value)


@dataclasses.dataclass(frozen=True)
class TrainParams:
    """Optimiser and early-stopping settings of :func:`make_train`: their one home.

    The experiment configs take their training fields (names and defaults)
    from ``dataclasses.asdict(TrainParams())``. Values are checked and
    normalised (``int``/``float``/``bool``) on construction; a bad one raises
    ValueError naming the field, the value and what is allowed.

    Attributes:
      learning_rate: Adam step size (> 0); the peak of the cosine decay.
      weight_decay: decoupled weight decay (AdamW) when > 0; 0 uses plain Adam.
      batch_size: minibatch rows (capped at the number of training rows).
      max_steps: SGD steps at most (also the cosine decay's horizon).
      eval_every: SGD steps between two validation evaluations.
      patience: evaluations without improvement before early stopping.
      lr_decay: cosine decay of the learning rate over ``max_steps`` (to 1%).
      loss: ``LOSSES``; early stopping uses the same loss on the validation rows.
      huber_delta: where ``'huber'`` turns from squared to linear (normalised
        target units).
    """

    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    max_steps: int = 20000
    eval_every: int = 100
    patience: int = 20
    lr_decay: bool = True
    loss: str = 'mse'
    huber_delta: float = DEFAULT_HUBER_DELTA

    def __post_init__(self):
        values = dict(learning_rate=_real('learning_rate', self.learning_rate, low=0, strict=True),
                      weight_decay=_real('weight_decay', self.weight_decay, low=0, strict=False),
                      batch_size=_count('batch_size', self.batch_size),
                      max_steps=_count('max_steps', self.max_steps),
                      eval_every=_count('eval_every', self.eval_every),
                      patience=_count('patience', self.patience))
        if not isinstance(self.lr_decay, (bool, np.bool_)):
            raise ValueError(f'lr_decay: {self.lr_decay!r}; allowed: True, False')
        values['lr_decay'] = bool(self.lr_decay)
        if not isinstance(self.loss, str) or self.loss not in LOSSES:
            raise ValueError(f'loss: {self.loss!r}; allowed: {", ".join(LOSSES)}')
        values['huber_delta'] = _real('huber_delta', self.huber_delta, low=0, strict=True)
        for name, value in values.items():
            object.__setattr__(self, name, value)  # Frozen: normalised once, here.

    @classmethod
    def from_mapping(cls, mapping: Any) -> TrainParams:
        """The known fields of a dict, ``ConfigDict`` or any mapping (other keys are ignored).

        Missing fields keep their defaults, so an older config without ``loss``
        or ``huber_delta`` trains with the paper's ``mse``.
        """
        if isinstance(mapping, TrainParams):
            return mapping
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: mapping[name] for name in names if name in mapping})

    def to_dict(self) -> dict[str, Any]:
        """``{field: value}``, e.g. to store with a predictor or to build a config from."""
        return dataclasses.asdict(self)


# What :func:`make_train` and ``fit.fit_predictor`` accept as training settings
# (a mapping, ``ml_collections.ConfigDict`` included, goes through ``from_mapping``).
TrainParamsLike = TrainParams | Mapping[str, Any]


def as_train_params(config: TrainParamsLike | Any | None) -> TrainParams:
    """``config`` as :class:`TrainParams`: itself, ``from_mapping`` of a mapping, or the defaults
    for ``None``."""
    if config is None:
        return TrainParams()
    return TrainParams.from_mapping(config)


LossFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def loss_function(name: str, huber_delta: float = DEFAULT_HUBER_DELTA) -> LossFn:
    """``loss(pred, y) -> scalar`` on normalised targets, by name (``LOSSES``).

    ``mse`` is the paper's. Latency files carry outlier rows (a run that
    caught a clock dip or a neighbour: the HELP 2080 Ti files have 5-30% of
    rows 10% or more above their device's usual ratio), and the squared loss
    pulls every prediction toward them; ``huber`` (squared within
    ``huber_delta``, linear beyond) and ``relative_l1`` (mean |pred - y| / |y|,
    the MAPE itself; for the positive ``scale`` targets) follow the typical row.
    """
    if name == 'mse':
        return lambda pred, y: jnp.mean((pred - y)**2)
    if name == 'huber':
        if not huber_delta > 0:
            raise ValueError(f'huber_delta: {huber_delta}; allowed: > 0')
        return lambda pred, y: jnp.mean(optax.huber_loss(pred, y, delta=huber_delta))
    if name == 'relative_l1':
        return lambda pred, y: jnp.mean(jnp.abs(pred - y) / jnp.maximum(jnp.abs(y), 1e-6))
    raise ValueError(f'loss: {name!r}; allowed: {", ".join(LOSSES)}')


class TrainResult(NamedTuple):
    """What ``train(rng)`` returns (leading K axis under ``vmap``)."""

    params: Any
    best_val: jnp.ndarray
    best_step: jnp.ndarray
    steps: jnp.ndarray
    first_train_loss: jnp.ndarray
    final_train_loss: jnp.ndarray


class StepCarry(NamedTuple):
    """Carry of the inner ``lax.fori_loop`` over the SGD steps of one evaluation period."""

    params: Any
    opt_state: Any
    rng: jax.Array
    loss: jnp.ndarray  # minibatch loss of the latest step


class TrainCarry(NamedTuple):
    """Carry of the training ``lax.while_loop``: one iteration is one evaluation period."""

    step: jnp.ndarray  # int32: SGD steps done
    params: Any
    opt_state: Any
    rng: jax.Array
    best_params: Any  # the parameters of the best validation loss so far
    bad_evals: jnp.ndarray  # int32: evaluations since the last improvement
    best_val: jnp.ndarray
    best_step: jnp.ndarray  # int32: the step of best_params
    last_loss: jnp.ndarray  # minibatch loss of the latest SGD step


def _take(tree, idx):
    return jax.tree_util.tree_map(lambda x: x[idx], tree)


def make_train(model,
               config: TrainParamsLike | None,
               train_data: tuple[dict, jnp.ndarray],
               val_data: tuple[dict, jnp.ndarray] | None = None,
               *,
               init_params: Any = None,
               trainable: Callable[[tuple], bool] | None = None,
               anchor_weight: float = 0.0) -> Callable[[jax.Array], TrainResult]:
    """Returns ``train(rng) -> TrainResult`` (jit/vmap friendly).

    Args:
      model: a Flax module mapping an input dict to normalised targets.
      config: :class:`TrainParams` (a mapping or ``ConfigDict`` is converted
        with :meth:`TrainParams.from_mapping`; ``None``: the defaults).
      train_data: (inputs dict with leading N axis, normalised targets [N]).
      val_data: same for early stopping; ``None`` uses the training data
        (few-shot fine-tuning) and effectively trains ``max_steps``.
      init_params: start from these parameters instead of ``model.init``.
      trainable: predicate on a parameter's path (tuple of keys); parameters
        it rejects are frozen (the paper's head-only fine-tuning).
      anchor_weight: L2 pull toward ``init_params`` (fine-tuning regularised
        toward the base model); 0 disables it.
    """
    hp = as_train_params(config)
    x_tr, y_tr = train_data
    x_va, y_va = val_data if val_data is not None else train_data
    n = int(y_tr.shape[0])
    bs = min(hp.batch_size, n)
    max_steps, eval_every = hp.max_steps, hp.eval_every
    patience = hp.patience if val_data is not None else max_steps
    if hp.lr_decay:
        lr = optax.cosine_decay_schedule(hp.learning_rate, max_steps, alpha=0.01)
    else:
        lr = hp.learning_rate
    opt = optax.adamw(lr, weight_decay=hp.weight_decay) if hp.weight_decay else optax.adam(lr)
    base = init_params
    data_loss = loss_function(hp.loss, hp.huber_delta)

    def label_fn(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: 'train'
            if trainable(tuple(getattr(k, 'key', str(k)) for k in path)) else 'freeze', params)

    if trainable is not None:
        opt = optax.multi_transform({'train': opt, 'freeze': optax.set_to_zero()}, label_fn)

    def loss_fn(params, x, y):
        loss = data_loss(model.apply(params, x), y)
        if anchor_weight and base is not None:
            sq = jax.tree_util.tree_map(lambda a, b: jnp.sum((a - b)**2), params, base)
            loss = loss + anchor_weight * sum(jax.tree_util.tree_leaves(sq))
        return loss

    def val_loss(params):
        return data_loss(model.apply(params, x_va), y_va)

    def sgd_step(_, c: StepCarry) -> StepCarry:
        rng, k = jax.random.split(c.rng)
        idx = jax.random.randint(k, (bs,), 0, n)
        loss, grads = jax.value_and_grad(loss_fn)(c.params, _take(x_tr, idx), y_tr[idx])
        updates, opt_state = opt.update(grads, c.opt_state, c.params)
        return StepCarry(optax.apply_updates(c.params, updates), opt_state, rng, loss)

    def cond(c: TrainCarry) -> jnp.ndarray:
        return (c.step < max_steps) & (c.bad_evals < patience)

    def body(c: TrainCarry) -> TrainCarry:
        params, opt_state, rng, loss = jax.lax.fori_loop(
            0, eval_every, sgd_step, StepCarry(c.params, c.opt_state, c.rng, 0.0))
        step = c.step + eval_every
        v = val_loss(params)
        better = v < c.best_val
        return TrainCarry(step=step,
                          params=params,
                          opt_state=opt_state,
                          rng=rng,
                          best_params=jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b),
                                                             params, c.best_params),
                          bad_evals=jnp.where(better, 0, c.bad_evals + 1),
                          best_val=jnp.where(better, v, c.best_val),
                          best_step=jnp.where(better, step, c.best_step),
                          last_loss=loss)

    def train(rng: jax.Array) -> TrainResult:
        rng, init_rng = jax.random.split(rng)
        params = base if base is not None else model.init(init_rng, _take(x_tr, slice(0, 1)))
        opt_state = opt.init(params)
        first = data_loss(model.apply(params, x_tr), y_tr)
        carry = TrainCarry(step=jnp.int32(0),
                           params=params,
                           opt_state=opt_state,
                           rng=rng,
                           best_params=params,
                           bad_evals=jnp.int32(0),
                           best_val=val_loss(params),
                           best_step=jnp.int32(0),
                           last_loss=first)
        carry = jax.lax.while_loop(cond, body, carry)
        return TrainResult(params=carry.best_params,
                           best_val=carry.best_val,
                           best_step=carry.best_step,
                           steps=carry.step,
                           first_train_loss=first,
                           final_train_loss=carry.last_loss)

    return train


def fit_ensemble(train: Callable[[jax.Array], TrainResult], seed: int,
                 num_members: int) -> TrainResult:
    """Runs ``train`` for ``num_members`` seeds at once: ``jit(vmap(train))``."""
    keys = jax.random.split(jax.random.PRNGKey(seed), num_members)
    out = jax.jit(jax.vmap(train))(keys)
    return jax.block_until_ready(out)


# ---------------------------------------------------------------------------
# Closed-form start for the additive model.


def _mac_prior(a: np.ndarray, y: np.ndarray, fspec: features.FeatureSpec, n_k: int) -> np.ndarray:
    """Prior parameters: per-stage cost per MAC x block MACs, plus fitted fixed terms.

    All >= 0 when the targets are (latencies, or latencies over a scale).
    """
    per_knot = space.NUM_BLOCKS * features.NUM_CHOICES
    knot_slots = [space.RESOLUTIONS.index(int(k)) for k in fspec.knots]
    macs = features.block_macs_table(fspec.width)[knot_slots]  # [n_k, 20, 9]
    macs = macs / max(float(macs.max()), 1.0)
    stage = np.repeat(np.arange(space.NUM_STAGES), space.MAX_DEPTH * features.NUM_CHOICES)
    stage_cols = np.zeros((n_k * per_knot, space.NUM_STAGES))
    stage_cols[np.arange(n_k * per_knot), np.tile(stage, n_k)] = macs.reshape(-1)
    # Design of the small model: [per-stage MAC scales | fixed terms].
    small = np.concatenate([a[:, :n_k * per_knot] @ stage_cols, a[:, n_k * per_knot:]], axis=1)
    # Non-negative: a stage's cost per MAC and a resolution's fixed cost are
    # costs. Unconstrained, a solve on fewer rows than these columns (an
    # onboarding's first shots) interpolates with negative scales and the
    # table then predicts latencies <= 0 for sub-networks it has not seen.
    # Targets that are not latencies (a standardised or log target, which
    # can be < 0) keep the unconstrained solve: their fixed terms shift.
    if np.all(y > 0):
        coef = optimize.nnls(small, y)[0]
    else:
        coef = np.linalg.lstsq(small, y, rcond=None)[0]
    return np.concatenate([stage_cols @ coef[:space.NUM_STAGES], coef[space.NUM_STAGES:]])


def irls_weights(loss: str, resid: np.ndarray, y: np.ndarray, huber_delta: float) -> np.ndarray:
    """Row weights under which weighted least squares takes a step toward ``loss``'s optimum.

    Iteratively reweighted least squares: ``mse`` weighs every row 1;
    ``huber`` weighs a row whose residual exceeds ``huber_delta`` by
    delta / |r| (its squared residual then grows like the linear branch);
    ``relative_l1`` weighs by 1 / (|y|^2 max(|r / y|, 1e-3)).
    """
    r = np.abs(np.asarray(resid, np.float64))
    if loss == 'mse':
        return np.ones_like(r)
    if loss == 'huber':
        return np.minimum(1.0, huber_delta / np.maximum(r, 1e-12))
    if loss == 'relative_l1':
        y2 = np.maximum(np.asarray(y, np.float64)**2, 1e-12)
        return 1.0 / (y2 * np.maximum(r / np.sqrt(y2), 1e-3))
    raise ValueError(f'loss: {loss!r}; allowed: {", ".join(LOSSES)}')


def additive_lstsq_init(archs: space.Arch,
                        targets: np.ndarray,
                        fspec: features.FeatureSpec,
                        ridge: float = 1e-6,
                        prior_ridge: float = 1e-6,
                        loss: str = 'mse',
                        huber_delta: float = DEFAULT_HUBER_DELTA,
                        iterations: int = 10) -> dict[str, np.ndarray]:
    """Ridge least-squares block table and fixed terms for normalised ``targets``.

    The additive part is linear in its parameters, so its optimum is a linear
    solve; Adam then only has to fit the residual MLP. Returns
    ``{'block_table', 'fixed'}`` arrays shaped like the model's parameters.
    For a ``loss`` other than ``mse`` the solve is repeated ``iterations``
    times with :func:`irls_weights`, so the start already discounts outlier
    rows (Adam from the least-squares start stays near the outliers' pull).

    With few rows most (position, choice, knot) cells are not determined by the
    data. Shrinking them toward zero makes unseen big blocks look free, and a
    search then picks exactly those. So the table is shrunk toward a physical
    prior instead: a per-stage cost per MAC times the block's analytic MACs,
    fitted first (5 scales + fixed terms: well determined by a few dozen rows).
    Gradient descent started here stays at the prior where data is silent.
    """
    n_k = len(fspec.knots)
    per_knot = space.NUM_BLOCKS * features.NUM_CHOICES
    a = additive_design(archs, fspec)
    cols = a.shape[1]
    y = np.asarray(targets, np.float64)
    prior = _mac_prior(a, y, fspec, n_k)
    weight = np.full(cols, prior_ridge)
    weight[n_k * per_knot:] = ridge  # Fixed terms: few, always determined.
    n = a.shape[0]
    rows_w = np.ones(n)
    for _ in range(1 if loss == 'mse' else iterations):
        aw = a * rows_w[:, None]
        ata = aw.T @ a
        scale = max(np.trace(ata) / cols, 1e-12)
        sol = np.linalg.solve(ata + np.diag(weight * scale), aw.T @ y + weight * scale * prior)
        rows_w = irls_weights(loss, y - a @ sol, y, huber_delta)
        rows_w *= n / rows_w.sum()  # keep the ridge's meaning
    return {
        'block_table': sol[:n_k * per_knot].astype(np.float32),
        'fixed': sol[n_k * per_knot:].astype(np.float32)
    }


PRIOR_RIDGES = (1e-6, 1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def select_prior_ridge(archs: space.Arch,
                       targets: np.ndarray,
                       val_archs: space.Arch,
                       val_targets: np.ndarray,
                       fspec: features.FeatureSpec,
                       ridges: Sequence[float] = PRIOR_RIDGES,
                       **kwargs: Any) -> tuple[float, dict[float, float]]:
    """The shrinkage toward the MAC prior whose least-squares table fits ``val`` best.

    With about as many rows as table cells the near-interpolating solve of a
    tiny ridge is ill-conditioned (on the RTX 2080 Ti file, 800 rows for 905
    cells gave 4x the test error of 25 rows): the validation rows pick the
    ridge instead. Returns (ridge, validation MSE per ridge).
    """
    a_val = additive_design(val_archs, fspec)
    y_val = np.asarray(val_targets, np.float64)
    errors = {}
    for r in ridges:
        lin = additive_lstsq_init(archs, targets, fspec, prior_ridge=float(r), **kwargs)
        sol = np.concatenate([lin['block_table'].reshape(-1), lin['fixed'].reshape(-1)])
        errors[float(r)] = float(np.mean((a_val @ sol.astype(np.float64) - y_val)**2))
    return min(errors, key=errors.get), errors


def additive_design(archs: space.Arch, fspec: features.FeatureSpec) -> np.ndarray:
    """float64[n, cells]: the additive model's linear design (block table cells, fixed terms)."""
    n_k = len(fspec.knots)
    per_knot = space.NUM_BLOCKS * features.NUM_CHOICES
    lo, w = (np.asarray(a) for a in features.knot_weights(archs.resolution, fspec.knots))
    hi = np.minimum(lo + 1, n_k - 1)
    choice = np.asarray(features.choice_index(archs))
    active = np.asarray(space.active_blocks(np.asarray(archs.depth)))
    n = len(lo)
    cols = n_k * per_knot + n_k
    a = np.zeros((n, cols), np.float64)
    rows = np.repeat(np.arange(n), space.NUM_BLOCKS)
    pos_c = (np.arange(space.NUM_BLOCKS) * features.NUM_CHOICES + choice).reshape(-1)
    act = active.reshape(-1).astype(np.float64)
    wr = np.repeat(w, space.NUM_BLOCKS)
    np.add.at(a, (rows, np.repeat(lo, space.NUM_BLOCKS) * per_knot + pos_c), act * (1 - wr))
    np.add.at(a, (rows, np.repeat(hi, space.NUM_BLOCKS) * per_knot + pos_c), act * wr)
    np.add.at(a, (np.arange(n), n_k * per_knot + lo), 1 - w)
    np.add.at(a, (np.arange(n), n_k * per_knot + hi), w)
    return a
