"""Fitting a :class:`~predictors.checkpoint.Predictor` end to end from arrays.

Glue between features, models, target normalisation, the closed-form start
of the additive model and the jit/vmap training loop; used by the fit and
transfer experiments and by notebooks.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import space
from predictors import checkpoint
from predictors import features
from predictors import models
from predictors import train as train_lib

# Target normalisation each model trains best with.
DEFAULT_TARGET = {'mlp': 'standardize', 'additive': 'scale', 'context_mlp': 'log'}


def make_inputs(archs: space.Arch, fspec: features.FeatureSpec, context=None) -> dict[str, Any]:
    """Model inputs of a host batch; ``context`` is [C] (shared) or [N, C] (per row)."""
    archs = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.int32), archs)
    x = jax.jit(features.arch_inputs, static_argnums=1)(archs, fspec)
    n = x['scalars'].shape[0]
    ctx = np.zeros((0,), np.float32) if context is None else np.asarray(context, np.float32)
    x['context'] = jnp.asarray(np.broadcast_to(ctx, (n,) + ctx.shape[-1:]))
    return x


def fit_predictor(
        model_name: str,
        train_archs: space.Arch,
        train_ms: np.ndarray,
        val_archs: space.Arch | None = None,
        val_ms: np.ndarray | None = None,
        *,
        fspec: features.FeatureSpec,
        config: train_lib.TrainParamsLike | None = None,
        target: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        train_context: np.ndarray | None = None,
        val_context: np.ndarray | None = None,
        predict_context: Sequence[float] | None = None,
        seed: int = 0,
        num_members: int = 1,
        meta: dict[str, Any] | None = None) -> tuple[checkpoint.Predictor, train_lib.TrainResult]:
    """Trains ``num_members`` seeds of a model at once and wraps them as a Predictor.

    Args:
      model_name: ``models.MODEL_NAMES``.
      train_archs, train_ms: training rows (latency in ms).
      val_archs, val_ms: early-stopping rows (``None``: train ``max_steps``).
      fspec: feature spec (fit it on the training archs).
      config: :class:`~predictors.train.TrainParams` (a mapping or ``ConfigDict`` is
        converted with ``TrainParams.from_mapping``; ``None``: the defaults).
      target: ``train.TARGET_KINDS``; default per model (``DEFAULT_TARGET``).
      model_kwargs: module options.
      train_context / val_context: per-row standardised device context [N, C].
      predict_context: the device context the returned predictor scores for.
      seed: PRNG seed of the first member.
      num_members: ensemble size K (trained with ``jax.vmap``).
      meta: metadata stored with the predictor.

    Returns:
      (predictor, training result with a leading K axis).
    """
    if model_name not in models.MODEL_NAMES:
        raise ValueError(f'model: unknown model {model_name!r}; allowed: '
                         f'{", ".join(models.MODEL_NAMES)}')
    model_kwargs = dict(model_kwargs or {})
    hp = train_lib.as_train_params(config)  # Bad settings fail here, before any work.
    norm = train_lib.fit_target_norm(target or DEFAULT_TARGET[model_name], train_ms)
    if hp.loss == 'relative_l1' and norm.kind != 'scale':
        raise ValueError(f"loss: 'relative_l1' divides by the target, so it needs the positive "
                         f"'scale' target; {model_name!r} trains on {norm.kind!r}; allowed "
                         "there: mse, huber")
    model = models.build_model(model_name, fspec=fspec, **model_kwargs)
    x_tr = make_inputs(train_archs, fspec, train_context)
    y_tr = norm.encode(train_ms)
    val = None
    if val_archs is not None and len(val_ms):
        val = (make_inputs(val_archs, fspec, val_context), norm.encode(val_ms))
    init = None
    if model_name == 'additive':
        ridge = 1e-6
        if val is not None:
            ridge, _ = train_lib.select_prior_ridge(train_archs,
                                                    np.asarray(y_tr),
                                                    val_archs,
                                                    np.asarray(val[1]),
                                                    fspec,
                                                    loss=hp.loss,
                                                    huber_delta=hp.huber_delta)
        lin = train_lib.additive_lstsq_init(train_archs,
                                            np.asarray(y_tr),
                                            fspec,
                                            prior_ridge=ridge,
                                            loss=hp.loss,
                                            huber_delta=hp.huber_delta)
        init = model.init(jax.random.PRNGKey(seed), jax.tree_util.tree_map(lambda v: v[:1], x_tr))
        init = {'params': {**init['params'], **{k: jnp.asarray(v) for k, v in lin.items()}}}
    train_fn = train_lib.make_train(model, hp, (x_tr, y_tr), val, init_params=init)
    result = train_lib.fit_ensemble(train_fn, seed, num_members)
    params = result.params
    if num_members == 1:
        params = jax.tree_util.tree_map(lambda v: v[0], params)
    if predict_context is None and train_context is not None:
        predict_context = np.asarray(train_context)[0]
    predictor = checkpoint.Predictor(model_name=model_name,
                                     model_kwargs=model_kwargs,
                                     fspec=fspec,
                                     norm=norm,
                                     params=params,
                                     ensemble=num_members > 1,
                                     context=np.asarray(
                                         predict_context if predict_context is not None else [],
                                         np.float32),
                                     meta=dict(meta or {}))
    return predictor, result
