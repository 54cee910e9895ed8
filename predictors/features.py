"""Input features of the latency predictors, computed from ``Arch`` batches under jit.

Three families:

* ``onehot``: OFA's 128-d one-hot (the 2101.00732 MLP's input);
* block indices for the additive model: per position the active flag and the
  (kernel, expand) choice index, plus interpolation weights of the arch's
  resolution between resolution *knots* (the learned block-cost table is
  indexed by knot, position and choice; costs between knots are linear in
  r^2, since a block's work scales with its feature-map area);
* dense scalars: analytic log-MACs and log-params of the whole sub-network,
  resolution, per-stage depth, log batch size and standardised hardware
  features (datasheet values from :mod:`ofa_jax.hardware`, log-scaled) or
  HELP-style reference latencies (log ms). The 2101.00732 code fed raw core
  counts and GB/s; here every scalar is standardised with statistics stored in
  the :class:`FeatureSpec`, which is saved with the model.

Analytic MACs/params come from :mod:`ofa_jax.counts`'s per-block formulas over
the :func:`ofa_jax.spec.position_grid` of every resolution (MACs as counted
there; params of convolution and SE weights only, biases and BN ignored); they
only serve as features.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from ofa_jax import counts
from ofa_jax import encoding
from ofa_jax import hardware
from ofa_jax import space
from ofa_jax import spec as spec_lib

NUM_CHOICES = len(space.KERNEL_CHOICES) * len(space.EXPAND_CHOICES)
DEFAULT_KNOTS = (128, 144, 160, 176, 192, 208, 224)


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """Everything needed to turn archs (+ device context) into model inputs.

    Attributes:
      width: supernet width multiplier (1.0 or 1.2), for channel tables.
      knots: resolutions at which the additive model stores block costs.
      scalar_mean / scalar_std: standardisation of the arch scalars
        (log MACs, log params, resolution/224).
      batch_mean / batch_std: standardisation of log batch size.
      hw_mean / hw_std: standardisation of ``hardware.raw_features``.
      ref_mean / ref_std: standardisation of log reference latencies.
      num_refs: number of reference latencies (HELP variant), 0 if unused.
    """

    width: float = 1.2
    knots: tuple[int, ...] = DEFAULT_KNOTS
    scalar_mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    scalar_std: tuple[float, ...] = (1.0, 1.0, 1.0)
    batch_mean: float = 0.0
    batch_std: float = 1.0
    hw_mean: tuple[float, ...] = (0.0,) * len(hardware.FEATURE_NAMES)
    hw_std: tuple[float, ...] = (1.0,) * len(hardware.FEATURE_NAMES)
    ref_mean: float = 0.0
    ref_std: float = 1.0
    num_refs: int = 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> 'FeatureSpec':
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# ---------------------------------------------------------------------------
# Static tables (numpy, per width), used as compile-time constants.


@functools.lru_cache(maxsize=None)
def _tables(width: float) -> dict[str, np.ndarray]:
    """Per (resolution slot, position, choice) MACs/params and fixed terms."""
    net = spec_lib.net_spec(width)
    res = np.asarray(space.RESOLUTIONS, np.int64)
    grid = spec_lib.position_grid(net, res)  # [25, 20, 3 kernels, 3 expands], int64
    shape = (len(res), space.NUM_BLOCKS, NUM_CHOICES)  # choice = kernel_index * 3 + expand_index
    f32 = lambda x: np.asarray(x, np.float64).astype(np.float32)
    return {
        'macs': f32(counts.block_macs(grid).reshape(shape)),
        'params': f32(counts.block_params(grid, weights_only=True)[0].reshape(shape[1:])),
        'fixed_macs': f32(counts.fixed_macs(net, res)),
        'fixed_params': np.float32(counts.fixed_params(net, weights_only=True)),
    }


def block_macs_table(width: float = 1.2) -> np.ndarray:
    """float32[25, 20, 9]: MACs of the block at (resolution slot, position, choice)."""
    return _tables(width)['macs']


def choice_index(archs: space.Arch):
    """int32[..., 20]: ``kernel_index * 3 + expand_index`` of every position (jnp)."""
    ki = space.kernel_index(jnp.asarray(archs.kernel, jnp.int32))
    ei = space.expand_index(jnp.asarray(archs.expand, jnp.int32))
    return ki * len(space.EXPAND_CHOICES) + ei


def resolution_slot(resolution):
    """Index of a resolution in ``space.RESOLUTIONS`` (jnp; clipped to the ends)."""
    return space.resolution_index(jnp.asarray(resolution))


def knot_weights(resolution, knots: Sequence[int]):
    """(lo, w) such that value(r) = (1 - w) table[lo] + w table[lo + 1], linear in r^2.

    Resolutions outside the knots clamp to the end knots. With a single knot,
    ``lo = 0`` and ``w = 0``.
    """
    r = jnp.asarray(resolution, jnp.float32)
    if len(knots) == 1:
        return jnp.zeros(r.shape, jnp.int32), jnp.zeros(r.shape, jnp.float32)
    k = jnp.asarray(knots, jnp.float32)
    lo = jnp.clip(jnp.searchsorted(k, r, side='right') - 1, 0, len(knots) - 2).astype(jnp.int32)
    k0, k1 = k[lo], k[lo + 1]
    w = jnp.clip((r * r - k0 * k0) / (k1 * k1 - k0 * k0), 0.0, 1.0)
    return lo, w


def slot_knot_weights(knots: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(lo, w) of :func:`knot_weights` for every resolution of the space (numpy)."""
    # Pure numpy (same formula as knot_weights): constants even inside a trace.
    r = np.asarray(space.RESOLUTIONS, np.float64)
    if len(knots) == 1:
        return np.zeros(r.shape, np.int32), np.zeros(r.shape, np.float32)
    k = np.asarray(knots, np.float64)
    lo = np.clip(np.searchsorted(k, r, side='right') - 1, 0, len(knots) - 2).astype(np.int32)
    w = np.clip((r * r - k[lo]**2) / (k[lo + 1]**2 - k[lo]**2), 0.0, 1.0)
    return lo, w.astype(np.float32)


def analytic_counts(archs: space.Arch, width: float = 1.2):
    """(MACs, params) of each arch as float32 arrays (analytic, conv + SE weights)."""
    t = _tables(spec_lib.check_width(width))
    active = space.active_blocks(jnp.asarray(archs.depth))
    c = choice_index(archs)
    slot = resolution_slot(archs.resolution)
    pos = jnp.arange(space.NUM_BLOCKS)
    macs = jnp.asarray(t['macs'])[slot[..., None], pos, c]
    params = jnp.asarray(t['params'])[pos, c]
    total_macs = jnp.asarray(t['fixed_macs'])[slot] + jnp.sum(jnp.where(active, macs, 0.0), -1)
    total_params = t['fixed_params'] + jnp.sum(jnp.where(active, params, 0.0), -1)
    return total_macs, total_params


def raw_scalars(archs: space.Arch, width: float = 1.2):
    """float32[..., 3]: log MACs, log params, resolution / 224 (unstandardised)."""
    macs, params = analytic_counts(archs, width)
    r = jnp.asarray(archs.resolution, jnp.float32) / 224.0
    return jnp.stack([jnp.log(macs), jnp.log(params), r], axis=-1)


# ---------------------------------------------------------------------------
# Model inputs.


def arch_inputs(archs: space.Arch, fspec: FeatureSpec) -> dict[str, Any]:
    """Model inputs that depend only on the architecture (jit friendly).

    Returns a dict with ``onehot`` [..., 128], ``slot`` int[...] (index in
    ``space.RESOLUTIONS``), ``res`` [...] (scaled), ``choice`` int[..., 20],
    ``active`` bool[..., 20], ``knot_lo`` int[...], ``knot_w`` [...],
    ``depth`` [..., 5] (scaled to [-1, 1]) and ``scalars`` [..., 3] standardised.
    """
    lo, w = knot_weights(archs.resolution, fspec.knots)
    scal = (raw_scalars(archs, fspec.width) - jnp.asarray(fspec.scalar_mean)) / jnp.asarray(
        fspec.scalar_std)
    return {
        'onehot': encoding.onehot128(archs),
        'slot': resolution_slot(archs.resolution).astype(jnp.int32),
        'res': (jnp.asarray(archs.resolution, jnp.float32) - 176.0) / 48.0,
        'choice': choice_index(archs),
        'active': space.active_blocks(jnp.asarray(archs.depth)),
        'knot_lo': lo,
        'knot_w': w,
        'depth': (jnp.asarray(archs.depth, jnp.float32) - 3.0),
        'scalars': scal.astype(jnp.float32),
    }


def context_vector(fspec: FeatureSpec,
                   *,
                   batch_size: float | None = None,
                   hw: Sequence[float] | None = None,
                   refs: Sequence[float] | None = None) -> np.ndarray:
    """Standardised device context: [log batch, hardware features..., log refs...].

    Args:
      fspec: the feature spec holding the statistics.
      batch_size: inference batch size (None -> omitted).
      hw: ``hardware.raw_features`` of the device (None -> omitted).
      refs: latencies (ms) of the reference archs on the device (None -> omitted).
    """
    parts = []
    if batch_size is not None:
        parts.append([(math.log(batch_size) - fspec.batch_mean) / fspec.batch_std])
    if hw is not None:
        parts.append(
            (np.asarray(hw, np.float64) - np.asarray(fspec.hw_mean)) / np.asarray(fspec.hw_std))
    if refs is not None:
        parts.append((np.log(np.asarray(refs, np.float64)) - fspec.ref_mean) / fspec.ref_std)
    if not parts:
        return np.zeros((0,), np.float32)
    return np.concatenate([np.asarray(p, np.float64).reshape(-1) for p in parts]).astype(np.float32)


def fit_feature_spec(archs: space.Arch,
                     *,
                     width: float = 1.2,
                     knots: Sequence[int] | None = None,
                     batch_sizes: Sequence[float] | None = None,
                     hw_features: Sequence[Sequence[float]] | None = None,
                     ref_latencies: Sequence[Sequence[float]] | None = None) -> FeatureSpec:
    """Fits the standardisation statistics on training data.

    Args:
      archs: the training architectures.
      width: supernet width.
      knots: block-cost resolution knots; default: the distinct training
        resolutions when there are at most 8 of them (exact per-resolution
        tables), else every 16 px from 128 to 224.
      batch_sizes / hw_features / ref_latencies: per training device values
        (one entry per device, not per row).
    """
    scal = np.asarray(raw_scalars(archs, width), np.float64).reshape(-1, 3)
    if knots is None:
        res = sorted(set(np.asarray(archs.resolution).reshape(-1).tolist()))
        knots = tuple(res) if len(res) <= 8 else DEFAULT_KNOTS
    kw = {}
    if batch_sizes:
        lb = np.log(np.asarray(batch_sizes, np.float64))
        kw.update(batch_mean=float(lb.mean()), batch_std=float(max(lb.std(), 1.0)))
    if hw_features:
        h = np.asarray(hw_features, np.float64)
        # Floor on the spread: two GPUs with close specs must not blow up the scale.
        kw.update(hw_mean=tuple(h.mean(0).tolist()),
                  hw_std=tuple(np.maximum(h.std(0), 0.1).tolist()))
    if ref_latencies:
        lr = np.log(np.asarray(ref_latencies, np.float64))
        kw.update(ref_mean=float(lr.mean()),
                  ref_std=float(max(lr.std(), 1e-3)),
                  num_refs=int(lr.shape[-1]))
    return FeatureSpec(width=float(width),
                       knots=tuple(int(k) for k in knots),
                       scalar_mean=tuple(scal.mean(0).tolist()),
                       scalar_std=tuple(np.maximum(scal.std(0), 1e-6).tolist()),
                       **kw)
