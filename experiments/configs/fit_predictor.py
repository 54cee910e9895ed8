"""Config of experiments/fit_predictor.py.

    python -m experiments.fit_predictor --config=experiments/configs/fit_predictor.py \
      --config.data=RTX_2080_Ti_GPU_ofa.csv --config.width=1.0 --config.model=additive \
      --workdir=/tmp/fit
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            data='',  # OFA CSV file, or a latency store path (then device/batch/dtype)
            device='',
            batch=1,
            dtype='float32',
            protocol='',  # store only: rows of this protocol id; '' = any (latest per arch)
            max_rows=0,  # 0: all rows
            width=1.2,  # supernet width of the archs (the 2101.00732 files: 1.0)
            model='additive',  # mlp | additive | additive_mlp | lut | xla_cost (store only)
            lut='',  # model=lut: OFA yaml file or folder of {r}_lookup_table.yaml
            lut_width=1.2,
            split='0.7,0.15,0.15',  # file order: train, validation, test
            drift='none',  # none | last_level: offset to the latest validation rows' level
            seed=0,
            members=1,  # ensemble size, trained at once with jax.vmap
            learning_rate=1e-3,
            weight_decay=0.0,
            batch_size=256,
            max_steps=20000,
            eval_every=100,
            patience=20,
            lr_decay=True,
            loss='mse',  # mse | huber | relative_l1 (predictors.train.LOSSES)
            huber_delta=0.05,  # loss=huber: threshold in normalised target units
        ))
