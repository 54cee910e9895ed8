"""Building an (arch, accuracy) dataset by evaluating sub-networks of a supernet.

As OFA does for its accuracy predictor: for each sampled architecture, extract
the static sub-network from the supernet's variables
(:func:`ofa_jax.extract.extract_subnet`), re-calibrate its BatchNorm running
statistics on a few training batches (the shared statistics of the supernet do
not fit a sub-network), then measure top-1 accuracy on an evaluation split.

Data come from ``tfds.data_source`` (random access, no TensorFlow needed; tests
use ``tfds.testing.mock_data``). Images are resized in the pipeline (shorter
side to ``resolution / 0.875``, centre crop, as OFA's evaluation transform;
mock images have random sizes) and normalised with ImageNet mean and std.

Re-calibration: the statistic of each BatchNorm is the batch-size weighted
average over the calibration batches of the per-batch mean and biased
variance, as OFA's ``set_running_statistics`` (:func:`recalibrate_bn`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import extract, layers, space

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CROP_RATIO = 0.875


@dataclasses.dataclass
class AccuracyRecord:
    """One evaluated sub-network: its arch (OFA dict form) and top-1 accuracy."""

    arch: dict[str, Any]
    accuracy: float
    num_examples: int


def preprocess(image: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 HxWx3 (or HxW) -> float32 [r, r, 3]: resize, centre crop, normalise."""
    from PIL import Image
    img = Image.fromarray(np.asarray(image, np.uint8).squeeze())
    img = img.convert('RGB')
    short = int(round(resolution / CROP_RATIO))
    w, h = img.size
    scale = short / min(w, h)
    img = img.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))),
                     Image.BILINEAR)
    w, h = img.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    x = np.asarray(img, np.float32) / 255.0
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def batch_indices(indices: Sequence[int],
                  batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Splits ``indices`` into fixed-size batches: (example indices int64[b], valid bool[b]).

    The last batch is padded by repeating its first example, marked not
    valid (fixed shapes: one compile per resolution). :func:`batches` and the
    sharded evaluator (:mod:`ofa_jax.sharded_accuracy`) use this one rule, so
    both see the same batches.
    """
    indices = np.asarray(list(indices), np.int64)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        pad = batch_size - len(chunk)
        idx = np.concatenate([chunk, np.full(pad, chunk[0], np.int64)])
        yield idx, np.arange(batch_size) < len(chunk)


def load_batch(source: Any,
               idx: np.ndarray,
               valid: np.ndarray,
               resolution: int,
               *,
               image_key: str = 'image',
               label_key: str = 'label') -> tuple[np.ndarray, np.ndarray]:
    """(images float32[b, r, r, 3], labels int32[b]) of ``idx``; label -1 where not ``valid``."""
    examples = [source[int(i)] for i in idx]
    x = np.stack([preprocess(e[image_key], resolution) for e in examples])
    y = np.asarray([int(e[label_key]) if v else -1 for e, v in zip(examples, valid)], np.int32)
    return x, y.reshape(len(examples))


def batches(source: Any,
            indices: Sequence[int],
            resolution: int,
            batch_size: int,
            *,
            image_key: str = 'image',
            label_key: str = 'label') -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (images float32[b, r, r, 3], labels int32[b]) from a random-access source.

    The last batch is padded by repeating examples, with labels -1 so padded
    rows never count as correct (fixed shapes: one compile per resolution).
    """
    for idx, valid in batch_indices(indices, batch_size):
        yield load_batch(source, idx, valid, resolution, image_key=image_key, label_key=label_key)


def calibration_indices(num_train: int, calib_batches: int, batch_size: int,
                        seed: int) -> np.ndarray:
    """The training examples BatchNorm re-calibration uses (a seeded draw without replacement)."""
    rng = np.random.default_rng(seed)
    return rng.choice(num_train, size=min(num_train, calib_batches * batch_size), replace=False)


def recalibrate_bn(model: Any, variables: dict, images: Sequence[np.ndarray]) -> dict:
    """Replaces every BatchNorm's running statistics by their average over ``images``.

    As OFA's ``set_running_statistics``: each batch runs in train mode
    (normalised by its own statistics), every BatchNorm records the batch's
    per-channel mean and *biased* variance, and the new running statistics
    are their averages weighted by batch size (checked against OFA's code by
    ``benchmarks/ofa_torch_parity.py``).

    Args:
      model: a Flax module built from :class:`ofa_jax.layers.BatchNorm`
        (which reports batch moments in :data:`layers.BATCH_MOMENTS`).
      variables: its variables (``params`` and ``batch_stats``).
      images: calibration batches, float32 [b, r, r, 3].

    Returns:
      A variables dict with re-calibrated ``batch_stats`` (a BatchNorm the
      forward pass never reached keeps its statistics).
    """
    if 'batch_stats' not in variables:
        return variables

    @jax.jit
    def moments(x):
        _, upd = model.apply(variables,
                             x,
                             train=True,
                             mutable=['batch_stats', layers.BATCH_MOMENTS])
        return upd[layers.BATCH_MOMENTS]

    total, n = None, 0
    for x in images:
        x = jnp.asarray(x)
        m = jax.tree_util.tree_map(lambda v, b=x.shape[0]: v * b, _one_call(moments(x)))
        total = m if total is None else jax.tree_util.tree_map(jnp.add, total, m)
        n += int(x.shape[0])
    if n == 0:
        raise ValueError('recalibrate_bn: no calibration batches')
    new = flax.traverse_util.flatten_dict(jax.tree_util.tree_map(lambda v: v / n, total))
    stats = flax.traverse_util.flatten_dict(variables['batch_stats'])
    stats.update({k: v for k, v in new.items() if k in stats})
    return dict(variables, batch_stats=flax.traverse_util.unflatten_dict(stats))


def _one_call(sown: Any) -> Any:
    """Sown ``(value,)`` tuples -> values (each BatchNorm runs once per forward pass)."""

    def take(t):
        if len(t) != 1:
            raise ValueError(f'recalibrate_bn: a BatchNorm ran {len(t)} times in one forward '
                             'pass; expected once')
        return t[0]

    return jax.tree_util.tree_map(take, sown, is_leaf=lambda t: isinstance(t, tuple))


def evaluate(model: Any, variables: dict, data: Iterator[tuple[np.ndarray,
                                                               np.ndarray]]) -> tuple[float, int]:
    """Top-1 accuracy of ``model`` over ``data``; returns (accuracy, examples)."""

    @jax.jit
    def correct(x, y):
        logits = model.apply(variables, x)
        return jnp.sum((jnp.argmax(logits, -1) == y) & (y >= 0)), jnp.sum(y >= 0)

    hits, count = 0, 0
    for x, y in data:
        h, c = correct(jnp.asarray(x), jnp.asarray(y))
        hits, count = hits + int(h), count + int(c)
    return (hits / count if count else float('nan')), count


def build_dataset(supernet_variables: dict,
                  archs: Sequence[space.Arch],
                  *,
                  train_source: Any,
                  eval_source: Any,
                  width: float = 1.2,
                  calib_batches: int = 4,
                  batch_size: int = 32,
                  num_eval: int | None = None,
                  seed: int = 0,
                  extract_fn: Callable[..., tuple[Any, dict]] | None = None,
                  depthwise: str = 'auto',
                  image_size: int | None = None) -> list[AccuracyRecord]:
    """Evaluates each arch's sub-network after BatchNorm re-calibration.

    Args:
      supernet_variables: variables of the supernet (e.g. converted OFA weights).
      archs: architectures to evaluate (host-side, one each).
      train_source: random-access source for calibration (``tfds.data_source``).
      eval_source: random-access source to measure accuracy on.
      width: supernet width.
      calib_batches: calibration batches (OFA uses 2,000 images; fewer in tests).
      batch_size: batch size of calibration and evaluation.
      num_eval: evaluate the first ``num_eval`` examples (default: all).
      seed: picks the calibration examples.
      extract_fn: ``(variables, arch, width, depthwise=) -> (model, variables)``
        (default :func:`ofa_jax.extract.extract_subnet`).
      depthwise: depthwise implementation of the static sub-networks.
      image_size: feed images of this size instead of each arch's resolution
        (tests use tiny images; the networks accept any size).

    Returns:
      One :class:`AccuracyRecord` per arch.
    """
    extract_fn = extract_fn or extract.extract_subnet
    calib_idx = calibration_indices(len(train_source), calib_batches, batch_size, seed)
    n_eval = len(eval_source) if num_eval is None else min(int(num_eval), len(eval_source))
    records = []
    for arch in archs:
        r = int(np.asarray(arch.resolution)) if image_size is None else int(image_size)
        model, variables = extract_fn(supernet_variables, arch, width, depthwise=depthwise)
        calib = [x for x, _ in batches(train_source, calib_idx, r, batch_size)]
        variables = recalibrate_bn(model, variables, calib)
        acc, count = evaluate(model, variables, batches(eval_source, range(n_eval), r, batch_size))
        records.append(
            AccuracyRecord(arch=space.to_ofa_dict(arch), accuracy=acc, num_examples=count))
    return records


def to_training_data(records: Sequence[AccuracyRecord]) -> tuple[space.Arch, np.ndarray]:
    """(batched Arch, accuracy float32[n]) for ``predictors.accuracy.train``."""
    archs = space.stack([space.from_ofa_dict(r.arch) for r in records])
    return archs, np.asarray([r.accuracy for r in records], np.float32)
