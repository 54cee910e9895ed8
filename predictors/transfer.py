"""Adapting a trained latency predictor to a new device from k measurements.

Strategies (all take only the k shot rows; nothing else of the target is read):

* :func:`finetune` with ``mode='head'``: the 2101.00732 fine-tuning, hidden
  layers frozen, the output layer refit on the shots;
* :func:`finetune` with ``mode='full'``: every weight trained, with an L2
  pull toward the base weights (``anchor_weight``) so that a few shots cannot
  wreck what the base model knows;
* :func:`affine_fit` / :func:`affine_apply`: recalibrate a base predictor as
  ``log y = a log p + b`` (ridge toward a = 1); one shot fixes the scale;
* :func:`stack_fit` / :func:`stack_apply`: the same with one base predictor
  per source device, ``log y = sum_s w_s log p_s + b`` (ridge toward equal
  weights), so the shots pick the sources that behave like the target
  (``stack_refs`` in :mod:`predictors.experiment_transfer` also fits it on
  HELP's reference archs, the target rows a HELP-style 0-shot model reads;
  ``blend_refs`` adds the HELP-conditioned model as one more base). Both
  fits take ``huber_delta`` so that a shot that caught a slow run has a
  bounded pull;
* zero-shot: a device-conditioned predictor with the target's context
  (hardware features from the spec table, or HELP-style reference latencies)
  via :func:`with_context`.

Fine-tuning runs full-batch Adam for a fixed number of steps inside one jit,
and :func:`finetune` vmaps it over a leading seed axis of the shots, so K
draws of k shots adapt in one compiled call.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ofa_jax import space
from predictors import checkpoint
from predictors import fit
from predictors import train as train_lib

STRATEGIES = ('paper_head', 'paper_affine', 'hw_zero_affine', 'hw_finetune', 'help_affine',
              'help_finetune', 'stack_affine', 'stack_refs', 'blend_refs', 'work_refs')


class StackCalibration(NamedTuple):
    """What :func:`stack_fit` returns: ``log y = weights . log p + offset``."""

    weights: np.ndarray  # float[S], one per base predictor
    offset: float


class AffineCalibration(NamedTuple):
    """What :func:`affine_fit` returns: ``log y = scale log p + offset``."""

    scale: float
    offset: float


def draw_shots(rng: np.random.Generator, allowed: np.ndarray, k: int) -> np.ndarray:
    """``k`` distinct row indices drawn from ``allowed`` (never anything else)."""
    allowed = np.asarray(allowed)
    if k > len(allowed):
        raise ValueError(f'shots: k={k} exceeds the {len(allowed)} rows allowed for adaptation')
    return np.sort(rng.choice(allowed, size=k, replace=False))


def stack_fit(pred_ms: np.ndarray,
              true_ms: np.ndarray,
              *,
              ridge: float = 1.0,
              huber_delta: float = 0.0,
              iterations: int = 50) -> StackCalibration:
    """(w float[S], b) minimising sum rho(log y - w . log p - b) + ridge |w - 1/S|^2.

    ``rho`` is the square, or with ``huber_delta > 0`` the Huber function
    (square within ``huber_delta`` in log units, linear beyond), solved by
    iteratively reweighted least squares: a shot that caught a slow run then
    pulls the calibration by a bounded amount instead of its squared residual.

    Args:
      pred_ms: float[S, k], each of S base predictors' latencies of the shots.
      true_ms: float[k], the shots' measured latencies.
      ridge: pull of the weights toward equal shares (which keep the scale).
      huber_delta: 0 for least squares; else the Huber threshold (0.05: 5%).
      iterations: reweighting rounds (Huber only).

    Returns:
      The weights and the offset (a :class:`StackCalibration`, unpacks as
      ``w, b``); with 0 shots (1/S, 0) (the geometric mean of the bases), with
      1 or 2 only the offset is fit.
    """
    if huber_delta < 0:
        raise ValueError(f'huber_delta: {huber_delta}; allowed: >= 0 (0: least squares)')
    lp = np.log(np.asarray(pred_ms, np.float64))
    lp = lp.reshape(lp.shape[0] if lp.ndim > 1 else 1, -1)
    ly = np.log(np.asarray(true_ms, np.float64).reshape(-1))
    num_bases, k = lp.shape
    w0 = np.full(num_bases, 1.0 / num_bases)
    if k == 0:
        return StackCalibration(w0, 0.0)
    if k < 3:
        return StackCalibration(w0, float(np.mean(ly - w0 @ lp)))
    weight = np.ones(k)
    for _ in range(iterations if huber_delta else 1):
        # Weighted least squares, the weights rescaled to sum to k so that the
        # ridge means the same whatever share of the shots is down-weighted.
        share = weight * (k / weight.sum())
        x_mean, y_mean = lp @ share / k, ly @ share / k
        xc, yc = lp - x_mean[:, None], ly - y_mean
        w = np.linalg.solve((xc * share) @ xc.T + ridge * np.eye(num_bases),
                            (xc * share) @ yc + ridge * w0)
        b = float(y_mean - w @ x_mean)
        resid = np.abs(ly - w @ lp - b)
        new = train_lib.irls_weights('huber', resid, ly, huber_delta) if huber_delta else weight
        if np.allclose(new, weight, rtol=0, atol=1e-9):
            break
        weight = new
    return StackCalibration(w, b)


def stack_apply(pred_ms, w: np.ndarray, b: float) -> np.ndarray:
    """Applies :func:`stack_fit` to float[S, n] base predictions."""
    lp = np.log(np.asarray(pred_ms, np.float64)).reshape(len(w), -1)
    return np.exp(np.asarray(w) @ lp + b)


def affine_fit(pred_ms: np.ndarray,
               true_ms: np.ndarray,
               *,
               ridge: float = 1.0,
               huber_delta: float = 0.0) -> AffineCalibration:
    """(a, b) minimising sum rho(log y - a log p - b) + ridge (a - 1)^2.

    :func:`stack_fit` with one base (``huber_delta`` as there). With 0 shots
    returns (1, 0); with 1 or 2 only the offset b is fit. The result is an
    :class:`AffineCalibration` (unpacks as ``a, b``).
    """
    w, b = stack_fit(np.reshape(pred_ms, (1, -1)), true_ms, ridge=ridge, huber_delta=huber_delta)
    return AffineCalibration(float(w[0]), b)


def affine_apply(pred_ms, a: float, b: float):
    """Applies a recalibration from :func:`affine_fit`."""
    return jnp.exp(a * jnp.log(jnp.asarray(pred_ms)) + b)


def with_context(predictor: checkpoint.Predictor, context) -> checkpoint.Predictor:
    """The same predictor scoring for another device context (zero-shot)."""
    return predictor.replace(context=np.asarray(context, np.float32))


@functools.partial(jax.jit, static_argnames=('model', 'mode', 'steps'))
def _finetune_batch(model, params, xs, ys, ws, anchor_weight, lr, *, mode: str, steps: int):
    """Full-batch Adam on each seed's shots: xs/ys/ws have a leading seed axis.

    ``ws`` weights each row's squared error (0: a padding row, not learnt).
    """

    def labels(p):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: 'train' if mode == 'full' or any('head' in str(getattr(k, 'key', k))
                                                             for k in path) else 'freeze', p)

    opt = optax.multi_transform({'train': optax.adam(lr), 'freeze': optax.set_to_zero()}, labels)

    def one(x, y, w):

        def loss_fn(p):
            err = jnp.sum(w * (model.apply(p, x) - y)**2) / jnp.sum(w)
            sq = jax.tree_util.tree_map(lambda a, b: jnp.sum((a - b)**2), p, params)
            return err + anchor_weight * sum(jax.tree_util.tree_leaves(sq))

        def step(_, carry):
            p, s = carry
            g = jax.grad(loss_fn)(p)
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s

        p, _ = jax.lax.fori_loop(0, steps, step, (params, opt.init(params)))
        return p

    return jax.vmap(one)(xs, ys, ws)


def finetune(predictor: checkpoint.Predictor,
             shot_archs: space.Arch,
             shot_ms: np.ndarray,
             *,
             mode: str = 'head',
             steps: int = 300,
             learning_rate: float = 1e-3,
             anchor_weight: float = 0.0,
             shot_weights: np.ndarray | None = None) -> list[checkpoint.Predictor]:
    """Fine-tunes a single-member predictor on shots with a leading seed axis.

    Args:
      predictor: base predictor (not an ensemble); its normalisation and
        context are kept.
      shot_archs: Arch with batch shape [S, k] (S independent draws).
      shot_ms: float[S, k] measured latencies.
      mode: ``'head'`` (only the layer named ``head``) or ``'full'``.
      steps: Adam steps (full batch).
      learning_rate: Adam step size.
      anchor_weight: L2 weight toward the base parameters.
      shot_weights: float[S, k] weight of each shot's squared error, or None
        (all 1); a row of weight 0 is not learnt.

    Returns:
      S adapted predictors.
    """
    if mode not in ('head', 'full'):
        raise ValueError(f'mode: {mode!r}; allowed: head, full')
    if predictor.ensemble:
        raise ValueError('finetune: pass a single-member predictor, not an ensemble')
    s, k = np.shape(shot_ms)
    if shot_weights is None:
        shot_weights = np.ones((s, k))
    ws = np.asarray(shot_weights, np.float32)
    if ws.shape != (s, k) or not (ws >= 0).all() or not (ws.sum(-1) > 0).all():
        raise ValueError(f'shot_weights: shape {ws.shape}, each >= 0 with a positive sum per '
                         f'draw; allowed: float[{s}, {k}] of that kind')
    # Padded to a power of two with rows of weight 0 (the same loss): XLA's compile
    # of the step loop is the cost (2-3.5 s on the 2-core CPU, against 0.01 s for its
    # 200 steps on 48 rows), and the callers' row counts vary from call to call
    # (cross-validation folds, a learning curve, a refit per round).
    pad = max(8, 1 << (k - 1).bit_length()) - k
    if pad:
        rows = np.resize(np.arange(k), k + pad)
        shot_archs = jax.tree_util.tree_map(lambda v: np.asarray(v)[:, rows], shot_archs)
        shot_ms = np.asarray(shot_ms)[:, rows]
        ws = np.concatenate([ws, np.zeros((s, pad), np.float32)], axis=1)
        k += pad
    flat = jax.tree_util.tree_map(lambda v: np.asarray(v).reshape((s * k,) + np.shape(v)[2:]),
                                  shot_archs)
    x = fit.make_inputs(flat, predictor.fspec, predictor.context)
    xs = jax.tree_util.tree_map(lambda v: v.reshape((s, k) + v.shape[1:]), x)
    ys = predictor.norm.encode(np.asarray(shot_ms))
    new = _finetune_batch(predictor.model,
                          predictor.params,
                          xs,
                          ys,
                          ws,
                          jnp.float32(anchor_weight),
                          jnp.float32(learning_rate),
                          mode=mode,
                          steps=int(steps))
    return [
        predictor.replace(params=jax.tree_util.tree_map(lambda v, i=i: v[i], new)) for i in range(s)
    ]


def predict_many(predictors: list[checkpoint.Predictor], archs: space.Arch) -> np.ndarray:
    """float64[S, N]: each predictor's latencies for the same archs."""
    return np.stack([np.asarray(p(archs), np.float64) for p in predictors])


def context_rows(context: Any, n: int) -> np.ndarray:
    """Broadcasts one device context to ``n`` rows."""
    c = np.asarray(context, np.float32).reshape(-1)
    return np.broadcast_to(c, (n, c.size)).copy()
