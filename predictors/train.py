"""Training latency predictors with optax in one jit-compiled loop.

``make_train(model, config, train_data, val_data)`` returns ``train(rng)``
(purejaxrl's pattern): the whole optimisation, minibatch sampling and early
stopping run inside one ``lax.while_loop``, so ``jax.jit(jax.vmap(train))``
trains an ensemble of K seeds at once (:func:`fit_ensemble`).

Targets are normalised (:class:`TargetNorm`): ``log`` (standardised
log-latency: relative errors, good across devices), ``scale`` (latency divided
by its training mean: keeps additivity in milliseconds, for the additive
model) or ``standardize`` (z-score of the latency in ms).

The 2101.00732 setup, as far as the paper and code tell: Adam, MSE loss, the
MLP on the one-hot input, 70/15/15 split. Learning rate, batch size and epochs
here are ours (``experiments/configs/fit_predictor.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

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


def default_config() -> ml_collections.ConfigDict:
    """Optimiser and early-stopping settings (all overridable)."""
    return ml_collections.ConfigDict(
        dict(
            learning_rate=1e-3,
            weight_decay=0.0,
            batch_size=256,
            max_steps=20000,
            eval_every=100,
            patience=20,  # in evaluations
            lr_decay=True,  # cosine decay over max_steps
            loss='mse',  # LOSSES; early stopping uses the same loss on the validation rows
            # Where 'huber' turns from squared to linear (normalised units).
            huber_delta=DEFAULT_HUBER_DELTA,
        ))


def loss_options(config: ml_collections.ConfigDict) -> tuple[str, float]:
    """(loss, huber_delta) of a training config; older configs without the fields get
    the paper's ``mse`` and :data:`DEFAULT_HUBER_DELTA`."""
    return config.get('loss', 'mse'), float(config.get('huber_delta', DEFAULT_HUBER_DELTA))


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


def _take(tree, idx):
    return jax.tree_util.tree_map(lambda x: x[idx], tree)


def make_train(model,
               config: ml_collections.ConfigDict,
               train_data: tuple[dict, jnp.ndarray],
               val_data: tuple[dict, jnp.ndarray] | None = None,
               *,
               init_params: Any = None,
               trainable: Callable[[tuple], bool] | None = None,
               anchor_weight: float = 0.0) -> Callable[[jax.Array], TrainResult]:
    """Returns ``train(rng) -> TrainResult`` (jit/vmap friendly).

    Args:
      model: a Flax module mapping an input dict to normalised targets.
      config: see :func:`default_config`.
      train_data: (inputs dict with leading N axis, normalised targets [N]).
      val_data: same for early stopping; ``None`` uses the training data
        (few-shot fine-tuning) and effectively trains ``max_steps``.
      init_params: start from these parameters instead of ``model.init``.
      trainable: predicate on a parameter's path (tuple of keys); parameters
        it rejects are frozen (the paper's head-only fine-tuning).
      anchor_weight: L2 pull toward ``init_params`` (fine-tuning regularised
        toward the base model); 0 disables it.
    """
    x_tr, y_tr = train_data
    x_va, y_va = val_data if val_data is not None else train_data
    n = int(y_tr.shape[0])
    bs = int(min(config.batch_size, n))
    max_steps, eval_every = int(config.max_steps), int(config.eval_every)
    patience = int(config.patience) if val_data is not None else max_steps
    if config.lr_decay:
        lr = optax.cosine_decay_schedule(config.learning_rate, max_steps, alpha=0.01)
    else:
        lr = config.learning_rate
    opt = optax.adamw(lr,
                      weight_decay=config.weight_decay) if config.weight_decay else optax.adam(lr)
    base = init_params
    data_loss = loss_function(*loss_options(config))

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

    def train(rng: jax.Array) -> TrainResult:
        rng, init_rng = jax.random.split(rng)
        params = base if base is not None else model.init(init_rng, _take(x_tr, slice(0, 1)))
        opt_state = opt.init(params)
        first = data_loss(model.apply(params, x_tr), y_tr)

        def sgd_step(_, carry):
            params, opt_state, rng, _ = carry
            rng, k = jax.random.split(rng)
            idx = jax.random.randint(k, (bs,), 0, n)
            loss, grads = jax.value_and_grad(loss_fn)(params, _take(x_tr, idx), y_tr[idx])
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, rng, loss

        def cond(state):
            step, since_best = state[0], state[5]
            return (step < max_steps) & (since_best < patience)

        def body(state):
            step, params, opt_state, rng, best, since_best, best_val, best_step, _ = state
            params, opt_state, rng, loss = jax.lax.fori_loop(0, eval_every, sgd_step,
                                                             (params, opt_state, rng, 0.0))
            step = step + eval_every
            v = val_loss(params)
            better = v < best_val
            best = jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), params, best)
            return (step, params, opt_state, rng, best, jnp.where(better, 0, since_best + 1),
                    jnp.where(better, v, best_val), jnp.where(better, step, best_step), loss)

        init_val = val_loss(params)
        state = (jnp.int32(0), params, opt_state, rng, params, jnp.int32(0), init_val, jnp.int32(0),
                 first)
        state = jax.lax.while_loop(cond, body, state)
        steps, _, _, _, best, _, best_val, best_step, last = state
        return TrainResult(best, best_val, best_step, steps, first, last)

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
    """Prior parameters: per-stage cost per MAC x block MACs, plus fitted fixed terms."""
    per_knot = space.NUM_BLOCKS * features.NUM_CHOICES
    knot_slots = [space.RESOLUTIONS.index(int(k)) for k in fspec.knots]
    macs = features.block_macs_table(fspec.width)[knot_slots]  # [n_k, 20, 9]
    macs = macs / max(float(macs.max()), 1.0)
    stage = np.repeat(np.arange(space.NUM_STAGES), space.MAX_DEPTH * features.NUM_CHOICES)
    stage_cols = np.zeros((n_k * per_knot, space.NUM_STAGES))
    stage_cols[np.arange(n_k * per_knot), np.tile(stage, n_k)] = macs.reshape(-1)
    # Design of the small model: [per-stage MAC scales | fixed terms].
    small = np.concatenate([a[:, :n_k * per_knot] @ stage_cols, a[:, n_k * per_knot:]], axis=1)
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
    y = np.asarray(targets, np.float64)
    prior = _mac_prior(a, y, fspec, n_k)
    weight = np.full(cols, prior_ridge)
    weight[n_k * per_knot:] = ridge  # Fixed terms: few, always determined.
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
