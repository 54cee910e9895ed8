"""A latency model linear in each sub-network's work: seven numbers, fit from tens of rows.

The additive predictor learns a cost for every (position, kernel, expand,
resolution) cell: ~900 numbers, which need hundreds of measured sub-networks.
This model instead reads, from the architecture and the batch size alone
(:func:`predictors.roofline.layer_work`, the kernel list of OFA's MobileNetV3
as PyTorch runs it), six totals of the work a sub-network does:

* FLOPs of dense/pointwise convolutions and of depthwise convolutions;
* bytes moved by dense, by depthwise and by elementwise kernels (BatchNorm,
  activations, squeeze-excite, residual adds);
* kernel launches;

and fits ``latency_ms = coef . [totals, 1]`` on the device's own rows: a
ridge-regularised least squares weighted by ``1 / latency`` (relative error,
like MAPE), solved in closed form in a millisecond. Each coefficient is a
time per unit of work (ms per GFLOP, per 100 MB, per 100 launches). The totals
are strongly correlated (more FLOPs come with more bytes), so single
coefficients may come out negative and are not throughputs to read; forcing
them non-negative costs accuracy (RTX 2080 Ti file, 200 rows: test RMSE 0.56
against 0.45 ms unconstrained).

Where it sits: on the public RTX 2080 Ti file it reaches the authors'
7,000-row test RMSE from 25 rows (``benchmarks/sample_efficiency.py``), and on
HELP's GPU files it is a strong few-shot strategy (``work_refs`` in
``benchmarks/predictors_help.py``). Its limit is its form: effects the totals
do not see (a kernel size the library runs unusually fast, cache effects
between layers) stay in the residual, which is why the additive model fit on
thousands of rows ends lower.

The totals are sums over blocks of per-block work, so the model is exactly an
additive predictor without residual; :func:`to_predictor` writes it as one (a
:class:`~predictors.checkpoint.Predictor` that :func:`~predictors.checkpoint.save`
stores and that fine-tuning can start from). Between the feature spec's
resolution knots the additive table interpolates linearly in r^2 where the
work itself steps with the feature-map sizes; at the knots the two agree.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ofa_jax import space
from predictors import checkpoint
from predictors import features
from predictors import roofline
from predictors import train as train_lib

FEATURE_NAMES = ('dense_gflop', 'depthwise_gflop', 'dense_100mb', 'depthwise_100mb',
                 'elementwise_100mb', 'launches_100', 'one')
# Unit of each work total, so that coefficients read as ms per unit.
_FLOP_UNIT, _BYTE_UNIT, _LAUNCH_UNIT = 1e9, 1e8, 100.0
# Stem and fixed block before the 20 elastic positions, 12 slots per position
# (see roofline.layer_work); the rest are the final layers.
_HEAD_SLOTS, _SLOTS_PER_BLOCK = 9, 12
DEFAULT_RIDGE = 1e-4


@dataclasses.dataclass(frozen=True)
class WorkLinear:
    """A fitted model: ``latency_ms = coef . work_features(archs)``.

    Attributes:
      coef: ms per unit of each :data:`FEATURE_NAMES` entry (the last one the
        intercept, ms).
      batch: the batch size the work is counted at.
      width: the supernet width multiplier.
      rows: how many rows it was fitted on.
    """

    coef: tuple[float, ...]
    batch: int
    width: float
    rows: int = 0

    def __call__(self, archs: space.Arch) -> np.ndarray:
        """float64[n] predicted latency (ms) of a batch of archs."""
        return self.from_features(work_features(archs, self.batch, self.width))

    def from_features(self, x: np.ndarray) -> np.ndarray:
        """float64[n] predicted latency (ms) from precomputed :func:`work_features`."""
        return np.asarray(x, np.float64) @ np.asarray(self.coef)

    def to_dict(self) -> dict:
        """JSON-able form (:func:`from_dict` reads it)."""
        return {
            'coef': dict(zip(FEATURE_NAMES, map(float, self.coef))),
            'batch': self.batch,
            'width': self.width,
            'rows': self.rows
        }


def from_dict(d: dict) -> WorkLinear:
    """The inverse of :meth:`WorkLinear.to_dict`."""
    coef = d['coef']
    missing = [k for k in FEATURE_NAMES if k not in coef]
    if missing:
        raise ValueError(f'coef: missing {missing}; needed: {", ".join(FEATURE_NAMES)}')
    return WorkLinear(tuple(float(coef[k]) for k in FEATURE_NAMES), int(d['batch']),
                      float(d['width']), int(d.get('rows', 0)))


def _slot_features(work: roofline.LayerWork) -> np.ndarray:
    """float64[n, L, 7]: each kernel slot's contribution to every feature."""
    n, L = work.flops.shape
    out = np.zeros((n, L, len(FEATURE_NAMES)))
    dense, dw = work.kind == roofline.DENSE, work.kind == roofline.DEPTHWISE
    elem = work.kind == roofline.ELEMENTWISE
    out[:, :, 0] = np.where(dense, work.flops, 0.0) / _FLOP_UNIT
    out[:, :, 1] = np.where(dw, work.flops, 0.0) / _FLOP_UNIT
    out[:, :, 2] = np.where(dense, work.bytes, 0.0) / _BYTE_UNIT
    out[:, :, 3] = np.where(dw, work.bytes, 0.0) / _BYTE_UNIT
    out[:, :, 4] = np.where(elem, work.bytes, 0.0) / _BYTE_UNIT
    out[:, :, 5] = work.kernels / _LAUNCH_UNIT
    return out


def work_features(archs: space.Arch, batch: int, width: float = 1.2) -> np.ndarray:
    """float64[n, 7]: the work totals of each arch (:data:`FEATURE_NAMES`), 1 last.

    Raises:
      ValueError: naming the field, for an invalid arch, batch or width.
    """
    x = _slot_features(roofline.layer_work(archs, batch, width)).sum(axis=1)
    x[:, -1] = 1.0
    return x


def fit(archs: space.Arch,
        latency_ms: Sequence[float],
        *,
        batch: int,
        width: float = 1.2,
        ridge: float = DEFAULT_RIDGE,
        x: np.ndarray | None = None) -> WorkLinear:
    """Fits the coefficients on measured rows (closed form).

    Args:
      archs: the measured sub-networks (a batch).
      latency_ms: their latencies (ms), positive and finite.
      batch: the batch size they were measured at.
      width: the supernet width multiplier.
      ridge: ridge strength on the column-scaled features (relative to the
        weighted rows' scale); it keeps a fit on fewer rows than features
        defined.
      x: precomputed :func:`work_features` of ``archs`` (skips recounting).

    Raises:
      ValueError: naming the field, for no rows, a length mismatch, a
        non-positive or non-finite latency or a negative ridge.
    """
    y = np.asarray(latency_ms, np.float64).reshape(-1)
    if x is None:
        x = work_features(archs, batch, width)
    if len(y) == 0:
        raise ValueError('latency_ms: no rows; allowed: at least 1')
    if len(y) != len(x):
        raise ValueError(f'latency_ms: {len(y)} values for {len(x)} archs; allowed: one per arch')
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError(f'latency_ms: {y[~(np.isfinite(y) & (y > 0))][:3].tolist()} ...; '
                         'allowed: positive finite ms')
    if not ridge >= 0:
        raise ValueError(f'ridge: {ridge}; allowed: >= 0')
    # Weighted by 1/y: the residuals are relative errors.
    a = x / y[:, None]
    scale = np.maximum(np.abs(a).max(axis=0), 1e-12)
    a_s = a / scale
    gram = a_s.T @ a_s + ridge * len(y) * np.eye(a_s.shape[1])
    sol = np.linalg.solve(gram, a_s.sum(axis=0))
    return WorkLinear(tuple((sol / scale).tolist()), int(batch), float(width), int(len(y)))


def to_predictor(model: WorkLinear, fspec: features.FeatureSpec) -> checkpoint.Predictor:
    """The same model as an additive :class:`~predictors.checkpoint.Predictor`.

    The block table holds each (knot, position, choice) block's work times the
    coefficients, the fixed term the stem, the final layers and the intercept.

    Raises:
      ValueError: ``fspec.width`` differs from the model's.
    """
    if float(fspec.width) != float(model.width):
        raise ValueError(f'fspec.width: {fspec.width}; allowed: {model.width} (the model\'s)')
    coef = np.asarray(model.coef)
    knots = tuple(int(k) for k in fspec.knots)
    kernels = [k for k in space.KERNEL_CHOICES for _ in space.EXPAND_CHOICES]
    expands = [e for _ in space.KERNEL_CHOICES for e in space.EXPAND_CHOICES]
    # One deepest arch per (knot, choice): choice = kernel_index * 3 + expand_index.
    probe = space.stack([
        space.make_arch([k] * space.NUM_BLOCKS, [e] * space.NUM_BLOCKS,
                        [space.MAX_DEPTH] * space.NUM_STAGES, r)
        for r in knots
        for k, e in zip(kernels, expands)
    ])
    per_slot = _slot_features(roofline.layer_work(probe, model.batch, model.width)) @ coef
    per_slot = per_slot.reshape(len(knots), features.NUM_CHOICES, -1)
    end = _HEAD_SLOTS + space.NUM_BLOCKS * _SLOTS_PER_BLOCK
    blocks = per_slot[:, :, _HEAD_SLOTS:end].reshape(len(knots), features.NUM_CHOICES,
                                                     space.NUM_BLOCKS, _SLOTS_PER_BLOCK)
    table = blocks.sum(-1).transpose(0, 2, 1)  # [knot, position, choice]
    # Stem and final layers do not depend on the choice: take choice 0's.
    fixed = per_slot[:, 0, :_HEAD_SLOTS].sum(-1) + per_slot[:, 0, end:].sum(-1) + coef[-1]
    # Stored in units of a typical latency (the fixed term plus the mean
    # choice at three of four positions: the mean depth is 3 of 4), as
    # fit_predictor's 'scale' target does, so fine-tuning sees unit-scale values.
    scale = float(np.mean(fixed + table.sum(axis=1).mean(axis=-1) * 0.75))
    scale = scale if np.isfinite(scale) and scale > 0 else 1.0
    params = {
        'params': {
            'block_table': np.asarray(table.reshape(-1) / scale, np.float32),
            'fixed': np.asarray(fixed / scale, np.float32)
        }
    }
    return checkpoint.Predictor(model_name='additive',
                                model_kwargs={'residual_hidden': 0},
                                fspec=fspec,
                                norm=train_lib.TargetNorm('scale', 0.0, scale),
                                params=params,
                                meta={'work_linear': model.to_dict()})
