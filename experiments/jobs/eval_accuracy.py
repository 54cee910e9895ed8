"""The accuracy-dataset job: sample archs, evaluate each with the masked supernet, store rows.

:func:`run` is what ``experiments/eval_accuracy.py`` calls. The arch list is
a pure function of the config (arch ``i`` depends only on ``(seed, i)``),
and the store (:class:`ofa_jax.sharded_accuracy.AccuracyStore`, JSON lines
keyed by arch) skips archs already evaluated, so the same command after a
kill resumes. Every host of a multi-host job runs the same command
(``config.distributed=True``); each feeds its own rows of every batch and
process 0 writes the store.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import ml_collections
import numpy as np

from experiments import config_fields as cf
from ofa_jax import space

ConfigError = cf.ConfigError


@dataclasses.dataclass
class Plan:
    """The validated campaign."""

    archs: list[space.Arch]
    width: float
    store_path: str
    num_eval: int | None
    image_size: int | None


def plan(config: ml_collections.ConfigDict, workdir: str) -> Plan:
    """Validates the config and lists the archs (pure: no device work, no data read)."""
    resolutions = cf.resolutions(config.resolutions)
    width = cf.width(config.width)
    cf.one_int('num_archs', config.num_archs)
    cf.one_int('num_classes', config.num_classes)
    cf.one_int('calib_batches', config.calib_batches)
    cf.one_int('batch_size', config.batch_size)
    num_eval = cf.one_int('num_eval', config.num_eval, minimum=0)
    image_size = cf.one_int('image_size', config.image_size, minimum=0)
    cf.choice('depthwise', config.depthwise, ('auto', 'conv', 'shifted'))
    if not str(config.dataset):
        raise ConfigError('config.dataset: empty; give a tfds name, e.g. imagenet2012')
    if int(config.process_id) < -1 or int(config.num_processes) < 0:
        raise ConfigError('config.process_id / config.num_processes: -1 / 0 (found by JAX) or '
                          'a process index in [0, num_processes)')
    sampled = [
        space.sample_np(np.random.default_rng([int(config.seed), i]), resolutions=resolutions)
        for i in range(int(config.num_archs))
    ]
    archs = list({space.arch_key(a): a for a in sampled}.values())  # Dedupe, keep order.
    store = str(config.store) or os.path.join(workdir, 'accuracy.jsonl')
    return Plan(archs=archs,
                width=width,
                store_path=store,
                num_eval=num_eval or None,
                image_size=image_size or None)


def _initialize(config: ml_collections.ConfigDict) -> None:
    from ofa_jax import sharded_accuracy as sa
    if not bool(config.distributed):
        return
    sa.initialize_distributed(
        coordinator_address=str(config.coordinator_address) or None,
        num_processes=int(config.num_processes) or None,
        process_id=None if int(config.process_id) < 0 else int(config.process_id))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) the campaign; returns a summary dict (counts, seconds, paths).

    Raises:
      ConfigError: a bad config field or an unreadable checkpoint.
    """
    p = plan(config, workdir)
    _initialize(config)  # Before any other JAX call.
    import jax
    import tensorflow_datasets as tfds

    from ofa_jax import depthwise as dw
    from ofa_jax import ofa_weights, sharded_accuracy as sa, subnet, supernet

    os.makedirs(workdir, exist_ok=True)
    if config.supernet:
        try:
            width, variables = ofa_weights.load_pth(str(config.supernet), p.width)
        except (OSError, ValueError) as err:
            raise ConfigError(f'config.supernet: {err}') from None
        num_classes = int(np.shape(variables['params']['head']['classifier']['kernel'])[-1])
    else:
        width, num_classes = p.width, int(config.num_classes)
        variables = None
    depthwise = dw.resolve(str(config.depthwise), platform=jax.devices()[0].platform)
    net = supernet.build_supernet(width, num_classes=num_classes, depthwise=depthwise)
    if variables is None:
        size = p.image_size or int(p.archs[0].resolution)
        variables = subnet.init_variables(net, (1, size, size, 3),
                                          seed=int(config.seed),
                                          arch=p.archs[0])
    kwargs = {'data_dir': str(config.data_dir)} if config.data_dir else {}
    try:
        train = tfds.data_source(str(config.dataset), split=str(config.train_split), **kwargs)
        val = tfds.data_source(str(config.dataset), split=str(config.eval_split), **kwargs)
    except Exception as err:  # tfds raises many types for a missing dataset.
        raise ConfigError(f'config.dataset: {config.dataset!r}: {err}') from None
    evaluator = sa.ShardedEvaluator(net, variables, sa.data_mesh())
    t0 = time.time()
    new = []
    records = sa.evaluate_archs(evaluator,
                                p.archs,
                                train_source=train,
                                eval_source=val,
                                calib_batches=int(config.calib_batches),
                                batch_size=int(config.batch_size),
                                num_eval=p.num_eval,
                                seed=int(config.seed),
                                image_size=p.image_size,
                                store=p.store_path,
                                config={
                                    'supernet': str(config.supernet),
                                    'dataset': str(config.dataset),
                                    'train_split': str(config.train_split),
                                    'eval_split': str(config.eval_split),
                                    'depthwise': depthwise,
                                },
                                cache_images=bool(config.cache_images),
                                on_record=lambda i, rec: new.append(rec))
    return {
        'archs': len(p.archs),
        'evaluated': len(new),
        'skipped': len(p.archs) - len(new),
        'records': len(records),
        'seconds': round(time.time() - t0, 3),
        'devices': evaluator.num_devices,
        'processes': jax.process_count(),
        'process_index': jax.process_index(),
        'traces': sum(evaluator.trace_counts.values()),
        'store': p.store_path,
    }
