"""Config of an accuracy-dataset campaign (``experiments/eval_accuracy.py``).

Launch (one host; every local device shares each batch)::

    python -m experiments.eval_accuracy \
      --config=experiments/configs/eval_accuracy.py \
      --config.supernet=ofa_mbv3_d234_e346_k357_w1.2 --config.num_archs=1000 \
      --config.dataset=imagenet2012 --config.data_dir=/data/tfds \
      --config.batch_size=256 --config.num_eval=10000 --workdir=/tmp/acc

Multi-host (a TPU VM slice): the same command on every worker with
``--config.distributed=True`` (JAX finds the coordinator on TPU VMs; elsewhere
also set ``coordinator_address``, ``num_processes`` and ``process_id``).
Process 0 writes the store; a rerun resumes.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Defaults: 100 archs at 224 on ImageNet validation, width 1.2, OFA's calibration size."""
    c = ml_collections.ConfigDict()
    c.supernet = ''  # OFA .pth checkpoint; '' = random weights (smoke tests only).
    c.width = 1.2
    c.num_classes = 1000  # Used with random weights; a checkpoint sets its own.
    c.num_archs = 100
    c.seed = 0  # Samples the archs and the calibration examples.
    c.resolutions = (224,)
    c.dataset = 'imagenet2012'  # tfds name (read with tfds.data_source).
    c.data_dir = ''  # '' = tfds default.
    c.train_split = 'train'  # Calibration images.
    c.eval_split = 'validation'
    c.calib_batches = 8  # OFA re-calibrates on 2,000 images: 8 x 256.
    c.batch_size = 256  # Global batch (all devices of all hosts).
    c.num_eval = 0  # 0 = the whole eval split.
    c.image_size = 0  # 0 = each arch's resolution; else feed this size (tests).
    c.depthwise = 'auto'  # 'auto', 'conv' or 'shifted' (see ofa_jax.depthwise).
    c.cache_images = False  # Keep preprocessed batches in host memory per resolution.
    c.store = ''  # '' = WORKDIR/accuracy.jsonl.
    c.distributed = False  # Multi-host: call jax.distributed.initialize first.
    c.coordinator_address = ''  # 'HOST:PORT' of process 0; '' = found by JAX (TPU VM, SLURM).
    c.num_processes = 0  # 0 = found by JAX.
    c.process_id = -1  # -1 = found by JAX.
    return c
