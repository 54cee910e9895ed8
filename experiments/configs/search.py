"""Config of ``experiments/search.py`` (vectorized evolutionary search over OFA sub-networks).

    python -m experiments.search --config=experiments/configs/search.py \
      --config.latency=../shared/data/external/ofa_note10_lut \
      --config.accuracy=../shared/data/external/ofa_acc_predictor/acc_predictor.pth \
      --config.budgets_ms=15,20,25 --config.seeds=1 --workdir=/tmp/search

With ``--config.verify=true`` every found sub-network is measured on
``device`` under ``protocol``; with a ``verify_store`` the rows already there
are reused, new ones are added, and a paired protocol uses that store's gauge
baseline (the scale of the predictors trained on it).
"""

import ml_collections

from experiments.configs import measure_latency


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.latency = ''  # predictor checkpoint folder, or OFA yaml LUT file/folder
    c.resolutions = ()  # () : the LUT's resolutions, or 160,176,192,208,224 for predictors
    c.budgets_ms = (15.0, 20.0, 25.0)
    # A budget below the smallest sub-network's latency (under the constraint):
    # 'error' refuses the run; 'drop' searches the others and lists it in
    # search.json's dropped_budgets (an error still when none is left).
    c.unreachable = 'error'
    c.seeds = 1  # seeds per budget: seed_offset .. seed_offset + seeds - 1
    c.seed_offset = 0
    c.accuracy = ''  # OFA acc_predictor.pth or our accuracy checkpoint; '' : MACs proxy
    c.width = 1.2  # supernet width (MACs/params counts, verification)
    c.max_macs = 0.0  # 0: no bound
    c.max_params = 0.0  # 0: no bound
    c.population_size = 100
    c.num_generations = 500
    c.parent_ratio = 0.25
    c.mutation_ratio = 0.5
    c.mutate_prob = 0.1
    # Candidates drawn per child slot and generation, checked in one batch; 0 =
    # redraw each infeasible child up to max_tries times, as OFA does.
    c.candidate_ratio = 1.25
    c.max_tries = 4  # candidate_ratio=0: redraws before a child falls back to its parent
    c.prng_impl = 'threefry2x32'  # JAX's default; or 'rbg', 'unsafe_rbg'
    # Score accuracy first, check latency only where it can matter: same
    # results, fewer rows when the latency estimator is an MLP predictor.
    c.objective_first = False

    # Budget safety: search under the split-conformal upper bound of the latency
    # estimator (predictors.conformal), so that the pick measures within budget
    # with probability >= coverage. 'auto': when a calibration exists (a
    # predictor checkpoint's conformal.json, or `calibration`); 'conformal':
    # required; 'none': the point estimate, as before.
    c.uncertainty = 'auto'
    c.coverage = 0.9
    c.calibration = ''  # conformal.json (e.g. fit_predictor's, for a LUT); '' = the checkpoint's
    # With verify: measure the picks; tighten and search again where one measured
    # over budget, at most max_rounds more times (0 = measure only).
    c.closed_loop = True
    c.max_rounds = 3
    c.loop_margin = 0.01  # extra tightening per round, a share of the budget
    # Between rounds, also refit a predictor checkpoint (single member) on every
    # row the device measured (the store's and the loop's) and search under the
    # refitted estimate: it learns where its picks measured over budget. A LUT
    # is recalibrated on the same rows (exp(b) * sum ** a); an ensemble is not
    # refitted (its constraint is only tightened).
    c.loop_refit = True
    c.refit_steps = 300  # Adam steps, full batch, every layer
    c.refit_min_rows = 50  # fewer measured rows (no store, say): tighten only
    c.refit_lr = 1e-3
    c.refit_anchor = 1e-4  # L2 weight toward the predictor's own weights
    # Also search on the point estimate (one more compile) to report the objective given up.
    c.compare_uncorrected = True
    # With the closed loop and compare_uncorrected: measure the point estimate's
    # picks too (same batch, distinct archs) and keep one where it measures
    # within budget and scores higher; what the bound gives up shrinks to what
    # the device says it must.
    c.measure_point_picks = True
    # With verify_store: a budget may also keep the best sub-network of the store
    # (this device, same key) that measured within it ('source: store').
    c.store_candidates = True
    # Deployable result: workdir/found/<budget>ms/ with the arch, weights, a
    # jax.export program (symbolic batch) and its measured latency.
    c.export = True
    # False: the program takes the weights as its first argument, as the
    # measured program does, so its latency is the stored row's; True: the
    # weights are constants in the program (one file; XLA folds them, and it
    # runs faster than the rows the search measured, ~0.9x on a 2-core CPU).
    c.export_weights_in_program = False
    c.supernet = ''  # OFA supernet .pth for the weights; '' = random weights (labelled so)
    # BatchNorm re-calibration of the exported weights, as OFA does for every
    # sub-network: calib_batches x calib_batch_size images of a tfds dataset
    # (read with tfds.data_source). '' = none for supernet weights, random
    # images for random weights.
    c.calib_dataset = ''  # e.g. 'imagenet2012'
    c.calib_data_dir = ''  # '' = tfds default
    c.calib_split = 'train'
    c.calib_batches = 8  # OFA: 2,000 images, 8 x 256
    c.calib_batch_size = 256

    # Verification: measure the found archs on this host.
    c.verify = False
    c.verify_batch = 1
    # A latency store: reuse its rows, add new ones, and time a paired protocol
    # with its gauge baseline. '' = measure without a store.
    c.verify_store = ''
    c.device = ''  # '' = JAX's default device
    c.dtype = 'float32'
    c.num_classes = 1000
    c.depthwise = 'auto'
    c.protocol = measure_latency.protocol_config()
    c.progress = True  # a progress line while the picks are measured
    return c
