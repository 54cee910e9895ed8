"""Config of experiments/search.py (vectorized evolutionary search over OFA sub-networks).

    python -m experiments.search --config=experiments/configs/search.py \
      --config.latency=../shared/data/external/ofa_note10_lut \
      --config.accuracy=../shared/data/external/ofa_acc_predictor/acc_predictor.pth \
      --config.budgets_ms=15,20,25 --config.seeds=1 --workdir=/tmp/search
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            latency='',  # predictor checkpoint folder, or OFA yaml LUT file/folder
            resolutions='',  # '' : the LUT's resolutions, or 160,176,192,208,224 for predictors
            budgets_ms='15,20,25',
            seeds=1,  # seeds per budget: seed_offset .. seed_offset + seeds - 1
            seed_offset=0,
            accuracy='',  # OFA acc_predictor.pth or our accuracy checkpoint; '' : MACs proxy
            width=1.2,  # supernet width (MACs/params counts, verification)
            max_macs=0.0,  # 0: no bound
            max_params=0.0,  # 0: no bound
            population_size=100,
            num_generations=500,
            parent_ratio=0.25,
            mutation_ratio=0.5,
            mutate_prob=0.1,
            # Candidates drawn per child slot and generation, checked in one batch; 0 =
            # redraw each infeasible child up to max_tries times, as OFA does.
            candidate_ratio=1.25,
            max_tries=4,  # candidate_ratio=0: redraws before a child falls back to its parent
            prng_impl='threefry2x32',  # JAX's default; or 'rbg', 'unsafe_rbg'
            # Score accuracy first, check latency only where it can matter: same
            # results, fewer rows when the latency estimator is an MLP predictor.
            objective_first=False,
            verify=False,  # measure found archs on this device
            verify_batch=1,
            # A latency store: verify with its gauge baseline (paired protocol), the scale
            # of predictors trained on it. '' = plain, unpaired measurement.
            verify_store='',
        ))
