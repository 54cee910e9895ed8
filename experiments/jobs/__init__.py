"""Library side of the experiments: one module per job, each with ``run(config, workdir)``.

``experiments/NAME.py`` is the absl launcher of ``experiments/jobs/NAME.py``,
with its config in ``experiments/configs/NAME.py`` (as flax keeps
``examples/imagenet/train.py`` beside its ``main.py``). Tests and notebooks
call ``run`` directly.
"""
