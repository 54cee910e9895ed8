"""Config of ``experiments/fit_predictor.py``: fit or evaluate one latency estimator.

    python -m experiments.fit_predictor --config=experiments/configs/fit_predictor.py \
      --config.data=RTX_2080_Ti_GPU_ofa.csv --config.width=1.0 --config.model=additive \
      --workdir=/tmp/fit

The training fields (``learning_rate`` ... ``huber_delta``) are those of
:class:`predictors.train.TrainParams`, with its defaults.
"""

import dataclasses

import ml_collections

from predictors import train as train_lib


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.data = ''  # OFA CSV file, or a latency store path (then device/batch/dtype)
    c.device = ''
    c.batch = 1
    c.dtype = 'float32'
    c.protocol = ''  # store only: rows of this protocol id; '' = any (latest per arch)
    c.max_rows = 0  # 0: all rows
    c.width = 1.2  # supernet width of the archs (the 2101.00732 files: 1.0)
    c.model = 'additive'  # mlp | additive | additive_mlp | lut | xla_cost (store only)
    c.lut = ''  # model=lut: OFA yaml file or folder of {r}_lookup_table.yaml
    c.lut_width = 1.2
    c.num_classes = 1000  # model=lut: classifier size of the table's networks
    c.split = (0.7, 0.15, 0.15)  # file order: train, validation, test
    # Rows repeating an arch are merged before the split: mean | median | first.
    c.duplicates = 'mean'
    c.drift = 'none'  # none | last_level: offset to the latest validation rows' level
    c.seed = 0
    c.members = 1  # ensemble size, trained at once with jax.vmap
    c.update(dataclasses.asdict(train_lib.TrainParams()))
    return c
