"""Latency predictor models (Flax linen modules) and a registry by name.

Every model maps the input dict of :func:`predictors.features.arch_inputs`
(plus ``context`` [..., C] for device-conditioned models) to a normalised
target ``[...]``; :mod:`predictors.train` owns the normalisation.

* ``mlp``: the 2101.00732 predictor, 128 -> 400 -> 400 -> 400 -> 1 with ReLU
  on OFA's one-hot.
* ``additive``: sum over active blocks of learned per-block costs from a table
  indexed by (resolution knot, position, kernel x expand), linear in r^2
  between knots, plus a per-resolution fixed term, plus a small residual MLP on
  cheap whole-net scalars (depths, resolution, analytic counts, the additive
  total) for what does not add up. Scoring gathers 2 x 20 table entries per
  arch and never builds a one-hot.
* ``context_mlp``: an MLP over [one-hot, arch scalars, device context]
  (batch size, hardware features or HELP-style reference latencies), for one
  model over many devices.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ofa_jax import space
from predictors import features


class PaperMLP(nn.Module):
    """128 -> 400 -> 400 -> 400 -> 1, ReLU (2101.00732, same as OFA's predictors)."""

    hidden: Sequence[int] = (400, 400, 400)

    @nn.compact
    def __call__(self, inputs: dict[str, Any]) -> jnp.ndarray:
        x = inputs['onehot']
        for h in self.hidden:
            x = nn.relu(nn.Dense(h)(x))
        return nn.Dense(1, name='head')(x)[..., 0]


class AdditiveModel(nn.Module):
    """Learned per-block cost table + fixed terms + small residual MLP.

    Attributes:
      knots: resolutions at which the table stores costs (``FeatureSpec.knots``).
      residual_hidden: width of the residual MLP; 0 disables it.
      residual_onehot: also feed OFA's one-hot to the residual MLP (slower).
      return_parts: return the terms instead of their sum: ``[..., 22]``,
        the fixed term, the 20 blocks' costs (0 where inactive), the
        residual (``Predictor.breakdown``); same parameters.
    """

    knots: Sequence[int]
    residual_hidden: int = 32
    residual_onehot: bool = False
    return_parts: bool = False

    @nn.compact
    def __call__(self, inputs: dict[str, Any]) -> jnp.ndarray:
        n_k, n_pos, n_c = len(self.knots), space.NUM_BLOCKS, features.NUM_CHOICES
        table = self.param('block_table', nn.initializers.zeros, (n_k * n_pos * n_c,))
        fixed = self.param('fixed', nn.initializers.zeros, (n_k,))
        # Interpolate the knot table to every resolution of the space once per call
        # (25 x 180 values), then one flat gather per block: no one-hot is built.
        lo, w = features.slot_knot_weights(self.knots)
        hi = np.minimum(lo + 1, n_k - 1)
        t = table.reshape(n_k, n_pos * n_c)
        eff = t[lo] * (1 - w[:, None]) + t[hi] * w[:, None]
        eff = jnp.concatenate(
            [eff.reshape(len(lo), n_pos, n_c),
             jnp.zeros((len(lo), n_pos, 1), eff.dtype)], axis=-1)
        fixed_eff = fixed[lo] * (1 - w) + fixed[hi] * w
        # Inactive blocks point at a zero entry, so the sum needs no mask.
        per_pos = jnp.where(inputs['active'], inputs['choice'], n_c)
        idx = inputs['slot'][..., None] * (n_pos *
                                           (n_c + 1)) + jnp.arange(n_pos) * (n_c + 1) + per_pos
        blocks = eff.reshape(-1)[idx]
        fixed_term = fixed_eff[inputs['slot']]
        total = jnp.sum(blocks, axis=-1) + fixed_term
        if not self.residual_hidden:
            return self._parts(fixed_term, blocks,
                               jnp.zeros_like(total)) if self.return_parts else total
        parts = [inputs['depth'], inputs['res'][..., None], total[..., None]]
        if self.residual_onehot:
            parts += [inputs['onehot'], inputs['scalars']]
        x = jnp.concatenate(parts, axis=-1)
        x = nn.tanh(nn.Dense(self.residual_hidden, name='res_in')(x))
        res = nn.Dense(1, kernel_init=nn.initializers.zeros, name='res_out')(x)[..., 0]
        if self.return_parts:
            return self._parts(fixed_term, blocks, res)
        return total + res

    @staticmethod
    def _parts(fixed, blocks, residual):
        return jnp.concatenate([fixed[..., None], blocks, residual[..., None]], axis=-1)


class ContextMLP(nn.Module):
    """MLP over [one-hot, arch scalars, device context] for many devices at once."""

    hidden: Sequence[int] = (256, 256, 256)

    @nn.compact
    def __call__(self, inputs: dict[str, Any]) -> jnp.ndarray:
        x = jnp.concatenate([inputs['onehot'], inputs['scalars'], inputs['context']], axis=-1)
        for h in self.hidden:
            x = nn.relu(nn.Dense(h)(x))
        return nn.Dense(1, name='head')(x)[..., 0]


MODEL_NAMES = ('mlp', 'additive', 'context_mlp')


def build_model(name: str, *, fspec: features.FeatureSpec, **kwargs: Any) -> nn.Module:
    """Builds a model by name (``MODEL_NAMES``); extra keyword args go to the module."""
    if name == 'mlp':
        return PaperMLP(**kwargs)
    if name == 'additive':
        return AdditiveModel(knots=tuple(fspec.knots), **kwargs)
    if name == 'context_mlp':
        return ContextMLP(**kwargs)
    raise ValueError(f'model: unknown model {name!r}; allowed: {", ".join(MODEL_NAMES)}')
