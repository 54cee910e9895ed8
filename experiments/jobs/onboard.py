"""The onboarding job (``experiments/onboard.py``): a predictor for a new device from a zoo.

:func:`run`:

1. loads the zoo (:mod:`predictors.zoo`) and plans what to measure: the
   zoo's reference archs, then ``shots`` sub-networks chosen greedily from a
   seeded pool (``selection='disagreement'``: where the zoo's members, each
   centred on its own mean log latency, disagree most, times the distance in
   (log MACs, resolution) to everything already chosen; ``'spread'``: the
   distance alone, a maximin design; one member: spread). The greedy order is
   a prefix, so raising ``shots`` keeps the earlier picks;
2. measures them on the device into the latency store with the paired
   protocol, through the one measurement path
   (:func:`ofa_jax.latency.gauges.measure_archs`, with
   :func:`experiments.jobs.measure_latency.row_provenance`): a rerun finds every
   row in the store and measures nothing;
3. optionally builds the device's lookup table (``lut=True``,
   :func:`experiments.jobs.build_lut.run`, resumable) or reads one
   (``lut_dir``) as a structural prior;
4. for each point of the learning curve (the references plus the first n
   shots), cross-validates every strategy on those rows alone (``cv_folds``
   interleaved folds, leave-one-out with 0 or few rows),
   and picks the strategy with the lowest CV MAPE at ``n = shots``
   (evaluation rows, ``eval_archs``, are measured last and never read before
   the choice is made);
5. writes ``WORKDIR/checkpoint`` (an ordinary
   :class:`~predictors.checkpoint.Predictor`, with a split-conformal
   calibration from the cross-validated predictions), ``report.md``,
   ``learning_curve.png``, ``onboard.json`` and ``latency.csv``.

Strategies (the adaptations of :mod:`predictors.transfer`):

* ``stack``: ``log y = sum_m w_m log p_m + b`` over the members
  (:func:`predictors.transfer.stack_fit`);
* ``affine``: ``log y = a log p_m + b`` on the member that fits the rows best;
* ``finetune``: that member rescaled to the rows' level, then every weight
  fine-tuned on the rows with a pull toward its own
  (:func:`predictors.transfer.finetune`, ``mode='full'``);
* ``shots_only``: the additive model's closed-form fit on the rows alone
  (ridge toward the per-stage cost-per-MAC prior; no zoo);
* ``work``: :mod:`predictors.work_linear` on the rows alone (seven
  coefficients on each sub-network's FLOPs, bytes and kernel launches at the
  onboarding's batch size, closed form; no zoo);
* with a LUT: ``lut`` (the table's sums, nothing fitted), ``lut_affine``
  (affine on the LUT's sums) and ``blend`` (the stack with the LUT as one
  more base).

How the choice becomes one checkpoint: ``finetune``, ``shots_only`` and
``work`` are a single :class:`Predictor` already and are saved as they are. The others
combine several predictors (or a LUT) in log space, which the checkpoint
format cannot hold; rather than extend it, the combination is distilled into
a new additive predictor: ``distill.archs`` seeded archs labelled by the
fitted combination, plus the measured rows with their measured latencies,
trained with :func:`predictors.fit.fit_predictor` (early stopping on a tenth
of the labelled archs). The distilled model reproduces the combination to
within the fidelity written in the report (MAPE against the combination on
held-out labelled archs), so what ``checkpoint.load(WORKDIR/checkpoint)``
scores is the chosen adaptation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from experiments import cli
from experiments import commands
from experiments import config_fields as cf
from experiments import plots
from experiments.configs import onboard as onboard_config
from experiments.jobs import build_lut as lut_job
from experiments.jobs import measure_latency as measure_job
from ofa_jax import counts
from ofa_jax import files
from ofa_jax import progress as progress_lib
from ofa_jax import space
from ofa_jax.latency import fingerprint as fp_lib
from ofa_jax.latency import gauges
from ofa_jax.latency import store as store_lib
from predictors import checkpoint
from predictors import conformal
from predictors import features
from predictors import fit
from predictors import lut as lut_lib
from predictors import metrics
from predictors import train as train_lib
from predictors import transfer
from predictors import work_linear
from predictors import zoo as zoo_lib

STRATEGIES = onboard_config.STRATEGIES
LUT_STRATEGIES = ('lut', 'lut_affine', 'blend')
SELECTIONS = ('disagreement', 'spread')
# Fewest rows a cross-validated point of the learning curve is computed on.
MIN_CV_ROWS = 3
# A held-out prediction is at least this fraction of the fastest training row
# (see Adapter.cross_val).
HELD_OUT_FLOOR = 0.1

ConfigError = cf.ConfigError


def _log(msg: str) -> None:
    sys.stderr.write(f'[onboard] {msg}\n')
    sys.stderr.flush()


# ---------------------------------------------------------------------------
# Config and plan.


def check(config: ml_collections.ConfigDict) -> None:
    """Every check that needs neither the zoo nor a device (ConfigError naming the field)."""
    if not config.zoo:
        raise ConfigError('config.zoo: empty; allowed: a folder written by experiments.build_zoo')
    cf.one_int('shots', config.shots, minimum=0)
    cf.one_int('references', config.references, minimum=0)
    if int(config.references) > zoo_lib.NUM_REFERENCES:
        raise ConfigError(f'config.references: {config.references}; allowed: 0 to '
                          f'{zoo_lib.NUM_REFERENCES} (the zoo\'s reference archs)')
    cf.choice('selection', config.selection, SELECTIONS)
    cf.one_int('pool', config.pool)
    if config.resolutions:
        cf.resolutions(config.resolutions)
    cf.network(config)
    cf.choice('lut', config.lut, (False, True))
    if config.lut and config.lut_dir:
        raise ConfigError(f'config.lut_dir: {config.lut_dir!r} with lut=True; allowed: one of '
                          'lut=True (build the table here) or lut_dir (use a built one)')
    cf.str_tuple('strategies', config.strategies, STRATEGIES)
    cf.int_tuple('curve', config.curve, minimum=0, allow_empty=True)
    cf.one_int('eval_archs', config.eval_archs, minimum=0)
    cf.number('stack_ridge', config.stack_ridge, low=0.0)
    cf.number('calibration_delta', config.calibration_delta, low=0.0)
    cf.one_int('finetune_steps', config.finetune_steps)
    cf.number('finetune_lr', config.finetune_lr, low=0.0, low_open=True)
    cf.number('anchor_weight', config.anchor_weight, low=0.0)
    cf.one_int('cv_folds', config.cv_folds, minimum=0)
    if int(config.cv_folds) == 1:
        raise ConfigError('config.cv_folds: 1; allowed: 0 (leave-one-out) or >= 2')
    cf.one_int('distill.archs', config.distill.archs, minimum=2)
    cf.choice('distill.closed_form', config.distill.get('closed_form', False), (False, True))
    try:
        train_lib.TrainParams.from_mapping(config.distill)
    except ValueError as e:
        raise ConfigError(f'config.distill.{e}') from None
    lut_cfg = ml_collections.ConfigDict(config.build_lut.to_dict())
    lut_cfg.resolutions = (128,)  # Filled in at run time.
    lut_job.check(lut_cfg)


@dataclasses.dataclass
class Plan:
    """What the onboarding measures and adapts from (pure function of config and zoo)."""

    zoo: zoo_lib.Zoo
    members: list[zoo_lib.Member]
    resolutions: tuple[int, ...]
    references: space.Arch  # batched, measured first
    shots: space.Arch  # batched, in greedy order
    evaluation: space.Arch | None  # batched held-out archs, or None
    pool: space.Arch  # the candidates the shots came from
    selection: str  # what was used ('spread' where disagreement needs >= 2 members)
    protocol: Any
    strategies: tuple[str, ...]
    curve: tuple[int, ...]


def load_zoo(config: ml_collections.ConfigDict) -> tuple[zoo_lib.Zoo, list[zoo_lib.Member]]:
    """The zoo and the members to adapt from (ConfigError naming the field)."""
    try:
        zoo = zoo_lib.load(str(config.zoo))
    except zoo_lib.ZooError as err:
        raise ConfigError(f'config.zoo: {err}') from None
    if float(zoo.width) != float(config.width):
        raise ConfigError(f'config.width: {config.width}; the zoo {config.zoo} holds width '
                          f'{zoo.width} predictors; allowed: {zoo.width}')
    names = cf.items(config.members)
    if not names:
        return zoo, list(zoo.members)
    bad = [n for n in names if n not in zoo.names]
    if bad:
        raise ConfigError(f'config.members: {bad} not in the zoo; allowed: a comma separated '
                          f'subset of {", ".join(zoo.names)}')
    return zoo, [zoo.member(n) for n in dict.fromkeys(names)]


def _sample(seed: int, n: int, resolutions: tuple[int, ...], exclude: set[str]) -> space.Arch:
    """``n`` distinct seeded archs whose keys are not in ``exclude``."""
    rng = np.random.default_rng(seed)
    out: dict[str, space.Arch] = {}
    while len(out) < n:
        for a in space.unstack(space.sample_np(rng, 2 * n, resolutions=resolutions)):
            k = space.arch_key(a)
            if k not in exclude and k not in out and len(out) < n:
                out[k] = a
    return space.stack(list(out.values()))


def _coords(archs: space.Arch, resolutions: tuple[int, ...], width: float,
            num_classes: int) -> np.ndarray:
    """float64[N, 2]: (log MACs, resolution), each scaled to [0, 1] over the space's range."""
    lo = np.log(counts.count_macs(space.smallest(min(resolutions)), width, num_classes=num_classes))
    hi = np.log(counts.count_macs(space.largest(max(resolutions)), width, num_classes=num_classes))
    macs = np.log(
        np.asarray(counts.count_macs(archs, width, num_classes=num_classes),
                   np.float64).reshape(-1))
    r = np.asarray(archs.resolution, np.float64).reshape(-1)
    span = max(max(resolutions) - min(resolutions), 1)
    return np.stack([(macs - lo) / max(hi - lo, 1e-9), (r - min(resolutions)) / span], axis=-1)


def choose_shots(k: int, pool: space.Arch, chosen: space.Arch | None, disagreement: np.ndarray, *,
                 resolutions: tuple[int, ...], width: float, num_classes: int) -> np.ndarray:
    """Indices into ``pool`` of ``k`` shots, greedy: disagreement x distance to the chosen.

    Args:
      k: how many.
      pool: batched candidates.
      chosen: archs already measured (the references), or None.
      disagreement: float[N] >= 0 per candidate (all ones: a maximin design).
      resolutions, width, num_classes: the space the distances are measured in.

    Returns:
      int64[k], in pick order (the first j are the picks of ``k = j``).
    """
    xy = _coords(pool, resolutions, width, num_classes)
    if chosen is not None and len(chosen):
        ref = _coords(chosen, resolutions, width, num_classes)
        nearest = np.min(np.linalg.norm(xy[:, None] - ref[None], axis=-1), axis=1)
    else:
        nearest = np.full(len(xy), 1e3)
    w = np.asarray(disagreement, np.float64)
    w = w / w.max() if w.max() > 0 else np.ones_like(w)
    picks: list[int] = []
    for _ in range(min(int(k), len(xy))):
        score = nearest * (w + 1e-6)
        score[picks] = -1.0
        i = int(np.argmax(score))
        picks.append(i)
        nearest = np.minimum(nearest, np.linalg.norm(xy - xy[i], axis=-1))
    return np.asarray(picks, np.int64)


def member_disagreement(member_ms: np.ndarray) -> np.ndarray:
    """float[N]: spread over members of each one's log latency centred on its own mean."""
    z = np.log(np.asarray(member_ms, np.float64))
    z = z - z.mean(axis=1, keepdims=True)
    return z.std(axis=0)


def make_plan(config: ml_collections.ConfigDict) -> Plan:
    """Validates ``config``, loads the zoo and lists the archs to measure (no device work)."""
    check(config)
    zoo, members = load_zoo(config)
    resolutions = (cf.resolutions(config.resolutions)
                   if config.resolutions else tuple(zoo.reference_resolutions))
    refs = zoo.reference
    if not set(np.asarray(refs.resolution).ravel().tolist()) <= set(resolutions):
        # The same design (size levels, seed) at the resolutions asked for: nothing
        # is measured at a resolution the device was not asked to run, and a LUT
        # built for those resolutions covers every row.
        refs = zoo_lib.reference_archs(resolutions)
        _log(f'reference archs drawn at resolutions {list(resolutions)} (the zoo\'s are at '
             f'{sorted(set(np.asarray(zoo.reference.resolution).ravel().tolist()))})')
    seen = {space.arch_key(a) for a in space.unstack(refs)}
    refs = refs[:int(config.references)]
    evaluation = None
    if int(config.eval_archs):
        # Drawn first, and kept out of the pool: the held-out set depends on the
        # seed alone, and no shot is ever an evaluation arch.
        evaluation = _sample(int(config.seed) + 7919, int(config.eval_archs), resolutions, seen)
        seen |= {space.arch_key(a) for a in space.unstack(evaluation)}
    pool = _sample(int(config.seed), int(config.pool), resolutions, seen)
    selection = str(config.selection)
    if selection == 'disagreement' and len(members) >= 2:
        member_ms = member_predictions(members, pool)
        weight = member_disagreement(member_ms)
    else:
        selection = 'spread'
        weight = np.ones(len(pool))
    picks = choose_shots(int(config.shots),
                         pool,
                         refs if len(refs) else None,
                         weight,
                         resolutions=resolutions,
                         width=float(config.width),
                         num_classes=int(config.num_classes))
    shots = pool[picks] if len(picks) else None
    strategies = cf.str_tuple('strategies', config.strategies, STRATEGIES)
    has_lut = bool(config.lut or config.lut_dir)
    strategies = tuple(s for s in strategies if has_lut or s not in LUT_STRATEGIES)
    if 'finetune' in strategies and any(m.predictor.ensemble for m in members):
        _log('finetune left out: it adapts single-member predictors, the zoo holds ensembles')
        strategies = tuple(s for s in strategies if s != 'finetune')
    if not strategies:
        raise ConfigError(
            f'config.strategies: {tuple(cf.items(config.strategies))} all need a LUT; '
            'allowed: add one of stack, affine, finetune, shots_only, work, or set lut=True '
            'or lut_dir')
    k = int(config.shots)
    curve = tuple(sorted({int(n) for n in cf.items(config.curve) if int(n) <= k} | {k}))
    if int(config.references) + k < MIN_CV_ROWS:
        raise ConfigError(f'config.shots: {k} with references={config.references}: '
                          f'{int(config.references) + k} rows; allowed: references + shots >= '
                          f'{MIN_CV_ROWS} (cross-validation needs rows to fit on)')
    return Plan(zoo=zoo,
                members=members,
                resolutions=resolutions,
                references=refs,
                shots=shots,
                evaluation=evaluation,
                pool=pool,
                selection=selection,
                protocol=cf.protocol(config.protocol),
                strategies=strategies,
                curve=curve)


# ---------------------------------------------------------------------------
# Measurement.


@dataclasses.dataclass
class Measured:
    """The device's rows of the onboarding archs, from the store."""

    device_id: str
    device_kind: str
    latency_ms: dict[str, float]  # arch key -> ms
    cost_s: dict[str, float]  # arch key -> lower + compile + timing seconds
    measured_now: int
    already_done: int


def measure(config: ml_collections.ConfigDict, plan: Plan, archs: list[space.Arch],
            workdir: str) -> Measured:
    """Measures every arch of ``archs`` not yet in the store (paired protocol), with progress."""
    cf.set_affinity(config.cpu_affinity)  # Before any device work: XLA's threads inherit it.
    device = cf.device(config.device)
    depthwise = cf.depthwise(config.depthwise, device)
    store_path = cf.store_path(config.store, workdir)
    net = dict(batch=int(config.batch),
               dtype=str(config.dtype),
               width=float(config.width),
               num_classes=int(config.num_classes),
               depthwise=depthwise)
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(cf.open_store(store_path))
        try:
            stack.enter_context(store.writer_lease('onboard'))
        except store_lib.StoreError as err:
            raise ConfigError(f'config.store: {err}') from None
        fp = fp_lib.fingerprint(device, microbenchmarks=bool(config.microbenchmarks))
        fid = store.add_device(fp)
        provenance = dict(measure_job.row_provenance(fid, fp, plan.protocol, depthwise,
                                                     int(config.seed), os.getpid()),
                          job='onboard')
        keys = [
            store_lib.RowKey(fid, space.arch_key(a), net['batch'], net['dtype'], plan.protocol.name,
                             net['width'], net['num_classes'], depthwise) for a in archs
        ]
        pending = store.pending(keys)
        _log(f'{len(pending)} of {len(keys)} sub-networks to measure on {fp.get("device_kind")} '
             f'({len(keys) - len(pending)} already in {store_path})')
        gauge = None
        if pending and plan.protocol.paired:
            gauge = gauges.open_gauge(store, fid, device=device, **net)
        progress = progress_lib.Progress(len(pending), enabled=bool(config.progress))
        try:
            for key in pending:
                ms = gauges.measure_archs([space.from_key(key.arch_key)],
                                          device=device,
                                          protocol=plan.protocol,
                                          store=store,
                                          device_id=fid,
                                          gauge=gauge,
                                          provenance=provenance,
                                          **net)[0]
                progress.update(f'r{space.from_key(key.arch_key).resolution} {ms:.2f}ms')
        finally:
            progress.close()
        latency, cost = {}, {}
        for row in store.rows(fid,
                              batch=net['batch'],
                              dtype=net['dtype'],
                              protocol=plan.protocol.name,
                              width=net['width']):
            if row.key.num_classes == net['num_classes'] and row.key.depthwise == depthwise:
                latency[row.key.arch_key] = float(row.latency_ms)
                cost[row.key.arch_key] = float((row.lower_s or 0.0) + (row.compile_s or 0.0) +
                                               (row.time_s or 0.0))
        store.export_ofa_csv(os.path.join(workdir, 'latency.csv'), fid)
    return Measured(device_id=fid,
                    device_kind=str(fp.get('device_kind')),
                    latency_ms=latency,
                    cost_s=cost,
                    measured_now=len(pending),
                    already_done=len(keys) - len(pending))


def lookup_table(config: ml_collections.ConfigDict, plan: Plan,
                 workdir: str) -> tuple[lut_lib.LookupTable | None, float, str]:
    """(the LUT or None, the device-seconds it cost over every run, its folder)."""
    if not (config.lut or config.lut_dir):
        return None, 0.0, ''
    if config.lut:
        lut_cfg = ml_collections.ConfigDict(config.build_lut.to_dict())
        lut_cfg.resolutions = plan.resolutions
        lut_cfg.store = cf.store_path(config.store, workdir)
        lut_work = os.path.join(workdir, 'lut')
        summary = lut_job.run(lut_cfg, lut_work)
        folder = os.path.join(lut_work, 'lut')
        seconds_path = os.path.join(lut_work, 'lut_seconds.json')
        total = 0.0
        if os.path.exists(seconds_path):
            with open(seconds_path) as f:
                total = float(json.load(f).get('elapsed_s', 0.0))
        if summary.get('timed_now', 0):  # A resumed build adds what this run timed.
            total += float(summary['elapsed_s'])
            files.write_json(seconds_path, {'elapsed_s': total})
    else:
        folder = str(config.lut_dir)
        total = float('nan')
        # A table an onboarding built keeps its total over resumed builds beside it
        # (a resumed build's provenance.json holds only that run's time).
        seconds_path = os.path.join(os.path.dirname(os.path.abspath(folder)), 'lut_seconds.json')
        prov = os.path.join(folder, 'provenance.json')
        if os.path.exists(seconds_path):
            with open(seconds_path) as f:
                total = float(json.load(f).get('elapsed_s', float('nan')))
        elif os.path.exists(prov):
            with open(prov) as f:
                total = float(json.load(f).get('elapsed_s', float('nan')))
    try:
        table = lut_lib.load_lut(folder,
                                 width=float(config.width),
                                 num_classes=int(config.num_classes))
    except (OSError, KeyError, ValueError) as err:
        field = 'lut_dir' if config.lut_dir else 'lut'
        raise ConfigError(f'config.{field}: {folder}: {cli.one_line(err)}') from None
    missing = sorted(set(plan.resolutions) - set(table.resolutions))
    if missing:
        raise ConfigError(f'config.lut_dir: {folder} has no table for resolutions {missing}; '
                          f'allowed: a LUT covering {plan.resolutions}')
    return table, total, folder


# ---------------------------------------------------------------------------
# Adaptation.


@dataclasses.dataclass
class Bases:
    """The priors' latencies of some archs: members float64[M, N], LUT float64[N] or None."""

    members: np.ndarray
    lut: np.ndarray | None

    def take(self, idx: Any) -> 'Bases':
        """The same for a subset of the archs."""
        return Bases(self.members[:, idx], None if self.lut is None else self.lut[idx])


@dataclasses.dataclass
class Fitted:
    """One strategy fitted on some rows.

    Attributes:
      strategy: its name.
      apply: ``(archs, bases) -> float64[N]`` predicted ms.
      predictor: the fitted model as one Predictor where it is one, else None
        (a combination, distilled for the checkpoint).
      detail: what was fitted (weights, chosen member), for the report.
    """

    strategy: str
    apply: Callable[[space.Arch, Bases], np.ndarray]
    predictor: checkpoint.Predictor | None
    detail: dict[str, Any]


def _eager_predict(predictor: checkpoint.Predictor, archs: space.Arch) -> np.ndarray:
    """Predictions without the jitted scorer: one leave-one-out fold's model is used once,
    and its normalisation (a static argument there) differs from fold to fold."""
    x = fit.make_inputs(archs, predictor.fspec, predictor.context)
    out = predictor.norm.decode(predictor.model.apply(predictor.params, x)) + predictor.offset_ms
    return np.asarray(out, np.float64).reshape(-1)


def _rescaled(predictor: checkpoint.Predictor, ratio: float) -> checkpoint.Predictor:
    """The same predictor with every prediction multiplied by ``ratio``."""
    n = predictor.norm
    if n.kind == 'log':
        norm = train_lib.TargetNorm('log', n.mean + float(np.log(ratio)), n.std)
    elif n.kind == 'scale':
        norm = train_lib.TargetNorm('scale', 0.0, n.std * ratio)
    else:
        norm = train_lib.TargetNorm('standardize', n.mean * ratio, n.std * ratio)
    return predictor.replace(norm=norm, offset_ms=predictor.offset_ms * ratio)


class Adapter:
    """Fits the strategies on subsets of the adaptation rows (refs, then shots).

    Args:
      archs: batched adaptation archs.
      latency_ms: their measured latencies.
      bases: the priors' latencies of those archs.
      members: the zoo members (same order as ``bases.members``).
      fspec: feature spec of the ``shots_only`` model (fitted on archs only).
      config: the onboarding config (ridge, Huber threshold, fine-tuning).
    """

    def __init__(self, archs: space.Arch, latency_ms: np.ndarray, bases: Bases,
                 members: list[zoo_lib.Member], fspec: features.FeatureSpec,
                 config: ml_collections.ConfigDict):
        self.archs = archs
        self.y = np.asarray(latency_ms, np.float64)
        self.bases = bases
        self.members = members
        self.fspec = fspec
        self.ridge = float(config.stack_ridge)
        self.delta = float(config.calibration_delta)
        self.steps = int(config.finetune_steps)
        self.lr = float(config.finetune_lr)
        self.anchor = float(config.anchor_weight)
        self.batch = int(config.batch)
        self.width = float(config.width)
        self._work_x = None  # work_linear features of the rows, counted on first use

    def _best_member(self, idx: np.ndarray) -> tuple[int, transfer.AffineCalibration]:
        """The member whose affine recalibration fits rows ``idx`` best, and that fit."""
        best = None
        ly = np.log(self.y[idx])
        for m in range(self.bases.members.shape[0]):
            p = self.bases.members[m, idx]
            a, b = transfer.affine_fit(p, self.y[idx], huber_delta=self.delta)
            err = float(np.mean((ly - a * np.log(p) - b)**2))
            if best is None or err < best[0]:
                best = (err, m, transfer.AffineCalibration(a, b))
        return best[1], best[2]

    def fit(self, strategy: str, idx: np.ndarray) -> Fitted:
        """``strategy`` fitted on the adaptation rows ``idx``."""
        y = self.y[idx]
        b = self.bases.take(idx)
        if strategy in ('stack', 'blend'):
            stacked = b.members if strategy == 'stack' else np.vstack([b.members, b.lut[None]])
            w, off = transfer.stack_fit(stacked, y, ridge=self.ridge, huber_delta=self.delta)

            def apply(archs, bases, w=w, off=off, strategy=strategy):
                p = bases.members if strategy == 'stack' else np.vstack(
                    [bases.members, bases.lut[None]])
                return transfer.stack_apply(p, w, off)

            names = [m.name for m in self.members] + ([] if strategy == 'stack' else ['lut'])
            return Fitted(strategy, apply, None, {
                'weights': dict(zip(names,
                                    np.asarray(w).tolist())),
                'offset': off
            })
        if strategy == 'affine':
            m, (a, off) = self._best_member(idx)
            return Fitted(
                strategy, lambda archs, bases: np.asarray(
                    transfer.affine_apply(bases.members[m], a, off), np.float64), None, {
                        'member': self.members[m].name,
                        'scale': a,
                        'offset': off
                    })
        if strategy == 'lut':
            return Fitted(strategy, lambda archs, bases: np.asarray(bases.lut, np.float64), None,
                          {})
        if strategy == 'lut_affine':
            a, off = transfer.affine_fit(b.lut, y, huber_delta=self.delta)
            return Fitted(
                strategy, lambda archs, bases: np.asarray(transfer.affine_apply(bases.lut, a, off),
                                                          np.float64), None, {
                                                              'scale': a,
                                                              'offset': off
                                                          })
        if strategy == 'finetune':
            m, _ = self._best_member(idx)
            base = self.members[m].predictor
            ratio = float(np.exp(np.mean(np.log(y) - np.log(b.members[m]))))
            base = _rescaled(base, ratio)
            shot_archs = jax.tree_util.tree_map(lambda v: np.asarray(v)[None], self.archs[idx])
            tuned = transfer.finetune(base,
                                      shot_archs,
                                      y[None],
                                      mode='full',
                                      steps=self.steps,
                                      learning_rate=self.lr,
                                      anchor_weight=self.anchor)[0]
            return Fitted(strategy, lambda archs, bases: _eager_predict(tuned, archs), tuned, {
                'member': self.members[m].name,
                'rescale': ratio
            })
        if strategy == 'shots_only':
            pred = lstsq_predictor(self.archs[idx], y, self.fspec)
            return Fitted(strategy, lambda archs, bases: _eager_predict(pred, archs), pred,
                          {'rows': int(len(idx))})
        if strategy == 'work':
            if self._work_x is None:
                self._work_x = work_linear.work_features(self.archs, self.batch, self.width)
            model = work_linear.fit(self.archs[idx],
                                    y,
                                    batch=self.batch,
                                    width=self.width,
                                    x=self._work_x[idx])
            pred = work_linear.to_predictor(model, self.fspec)
            return Fitted(strategy, lambda archs, bases: _eager_predict(pred, archs), pred,
                          {'coef': model.to_dict()['coef']})
        raise ValueError(f'strategy: {strategy!r}; allowed: {", ".join(STRATEGIES)}')

    def cross_val(self, strategy: str, idx: np.ndarray, folds: int = 0) -> np.ndarray:
        """float64[len(idx)]: each row predicted by ``strategy`` fitted without its fold.

        ``folds`` interleaved folds (row j in fold ``j % folds``); 0, or no more
        rows than folds, is leave-one-out. A held-out prediction is floored at
        :data:`HELD_OUT_FLOOR` times the fastest latency of its fold's training
        rows: a strategy fitted on fewer rows than it has coefficients (the
        work model on a handful of shots) can extrapolate to a latency <= 0,
        which has no log ratio to calibrate on. The floored row still scores
        an error near 90%, so the choice sees it.
        """
        idx = np.asarray(idx)
        k = len(idx) if not folds or len(idx) <= folds else int(folds)
        fold = np.arange(len(idx)) % k
        out = np.empty(len(idx))
        for f in range(k):
            held, train = idx[fold == f], idx[fold != f]
            fitted = self.fit(strategy, train)
            out[fold == f] = np.maximum(fitted.apply(self.archs[held], self.bases.take(held)),
                                        HELD_OUT_FLOOR * float(self.y[train].min()))
        return out


def cv_name(folds: int, rows: int) -> str:
    """How :meth:`Adapter.cross_val` splits ``rows`` rows, in words."""
    return 'leave-one-out' if not folds or rows <= folds else f'{folds}-fold cross-validation'


def lstsq_predictor(archs: space.Arch,
                    latency_ms: np.ndarray,
                    fspec: features.FeatureSpec,
                    scale: float = 1.0,
                    meta: dict[str, Any] | None = None) -> checkpoint.Predictor:
    """The additive table (no residual MLP) solved by least squares on the rows.

    Fitted on ``latency_ms / scale`` and stored with that scale as its target
    normalisation (``shots_only``: 1; a distillation: the labels' mean).
    """
    table = train_lib.additive_lstsq_init(archs, np.asarray(latency_ms) / scale, fspec)
    return checkpoint.Predictor(model_name='additive',
                                model_kwargs={'residual_hidden': 0},
                                fspec=fspec,
                                norm=train_lib.TargetNorm('scale', 0.0, scale),
                                params={'params': {
                                    k: np.asarray(v) for k, v in table.items()
                                }},
                                meta=dict(meta or {}))


def distill(fitted: Fitted, adapter: Adapter, pool: space.Arch, pool_bases: Bases,
            config: ml_collections.ConfigDict,
            meta: dict[str, Any]) -> tuple[checkpoint.Predictor, dict[str, Any]]:
    """A single additive Predictor trained to reproduce ``fitted`` (see the module docstring)."""
    labels = fitted.apply(pool, pool_bases)
    n_val = max(1, len(pool) // 10)
    tr_archs = space.stack(space.unstack(pool[:-n_val]) + space.unstack(adapter.archs))
    tr_ms = np.concatenate([labels[:-n_val], adapter.y])
    fspec = features.fit_feature_spec(tr_archs, width=adapter.fspec.width)
    if bool(config.distill.get('closed_form', False)):
        predictor = lstsq_predictor(tr_archs, tr_ms, fspec, scale=float(np.mean(tr_ms)), meta=meta)
        steps = []
    else:
        predictor, result = fit.fit_predictor('additive',
                                              tr_archs,
                                              tr_ms,
                                              pool[-n_val:],
                                              labels[-n_val:],
                                              fspec=fspec,
                                              config=train_lib.TrainParams.from_mapping(
                                                  config.distill),
                                              seed=int(config.seed),
                                              meta=meta)
        steps = np.asarray(result.steps).tolist()
    fidelity = metrics.all_metrics(np.asarray(predictor(pool[-n_val:]), np.float64),
                                   labels[-n_val:])
    return predictor, {
        'archs': int(len(pool)),
        'held_out': n_val,
        'closed_form': bool(config.distill.get('closed_form', False)),
        'steps': steps,
        'fidelity_mape': fidelity['mape'],
        'fidelity_rmse_ms': fidelity['rmse_ms'],
    }


# ---------------------------------------------------------------------------
# The job.

# Member and LUT predictions are made on batches padded to a whole number of
# these rows, so each compiles its scorer once: the pool, the adaptation rows,
# the held-out and the distillation archs would otherwise be four shapes, four
# compiles each (6.5 s for the distillation's alone with 9 members and a LUT).
PREDICT_BUCKET = checkpoint.SCORE_CHUNK


def _padded(archs: space.Arch) -> space.Arch:
    """``archs`` padded with copies of the first to a whole number of PREDICT_BUCKET rows."""
    n = len(archs)
    pad = -(-n // PREDICT_BUCKET) * PREDICT_BUCKET - n
    return jax.tree_util.tree_map(
        lambda v: np.concatenate([np.asarray(v),
                                  np.repeat(np.asarray(v)[:1], pad, axis=0)]), archs)


def member_predictions(members: list[zoo_lib.Member], archs: space.Arch) -> np.ndarray:
    """float64[M, N]: each member's predicted latency (ms) of a batch of archs."""
    padded = _padded(archs)
    return np.stack([np.asarray(m.predictor(padded), np.float64)[:len(archs)] for m in members])


def _bases(plan: Plan, table: lut_lib.LookupTable | None, archs: space.Arch) -> Bases:
    members = member_predictions(plan.members, archs)
    lut = None if table is None else np.asarray(table.predict(_padded(archs)),
                                                np.float64)[:len(archs)]
    return Bases(members, lut)


def _cv_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    return {
        'mape': metrics.mape(pred, true),
        'rmse_ms': metrics.rmse(pred, true),
        'acc10': metrics.within(pred, true, 0.1)
    }


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Onboards ``config.device``: ``WORKDIR/checkpoint``, the report; returns the summary.

    Raises:
      ConfigError: a bad field (naming it, the value and the allowed values),
        an unusable zoo, store or LUT.
    """
    t_start = time.perf_counter()
    plan = make_plan(config)
    os.makedirs(workdir, exist_ok=True)
    adapt_list = space.unstack(plan.references) if len(plan.references) else []
    adapt_list += space.unstack(plan.shots) if plan.shots is not None else []
    eval_list = space.unstack(plan.evaluation) if plan.evaluation is not None else []
    # The evaluation archs are measured last, and read only after the choice.
    measured = measure(config, plan, adapt_list + eval_list, workdir)
    table, lut_seconds, lut_folder = lookup_table(config, plan, workdir)
    adapt = space.stack(adapt_list)
    keys = [space.arch_key(a) for a in adapt_list]
    y = np.asarray([measured.latency_ms[k] for k in keys], np.float64)
    row_s = np.asarray([measured.cost_s[k] for k in keys], np.float64)
    bases = _bases(plan, table, adapt)
    fspec = features.fit_feature_spec(plan.pool, width=float(config.width))
    adapter = Adapter(adapt, y, bases, plan.members, fspec, config)
    n_refs = len(plan.references)

    curve: list[dict[str, Any]] = []
    oof_at: dict[int, dict[str, np.ndarray]] = {}
    for n in plan.curve:
        idx = np.arange(n_refs + n)
        point: dict[str, Any] = {
            'shots': n,
            'rows': len(idx),
            'device_s': float(row_s[idx].sum()),
            'cv': {}
        }
        t_cv = time.perf_counter()
        if len(idx) >= MIN_CV_ROWS:
            oof_at[n] = {}
            point['cv_s_by'] = {}
            for s in plan.strategies:
                t_s = time.perf_counter()
                oof = adapter.cross_val(s, idx, int(config.cv_folds))
                point['cv_s_by'][s] = time.perf_counter() - t_s
                oof_at[n][s] = oof
                point['cv'][s] = _cv_metrics(oof, y[idx])
        point['cv_s'] = time.perf_counter() - t_cv
        curve.append(point)
        _log(f'shots {n}: ' + ', '.join(f'{s} {m["mape"]:.2f}%' for s, m in point['cv'].items()))
    final = plan.curve[-1]
    scores = {s: m['mape'] for s, m in curve[-1]['cv'].items() if np.isfinite(m['mape'])}
    chosen = min(plan.strategies, key=lambda s: scores.get(s, np.inf))
    _log(f'chosen: {chosen} ({cv_name(int(config.cv_folds), len(y))} MAPE '
         f'{scores[chosen]:.2f}% on {len(y)} rows)')
    t_final = time.perf_counter()
    fitted = adapter.fit(chosen, np.arange(len(y)))
    meta = {
        'onboard': {
            'strategy': chosen,
            'zoo': os.path.abspath(str(config.zoo)),
            'members': [m.name for m in plan.members],
            'device': measured.device_kind,
            'device_id': measured.device_id,
            'detail': fitted.detail,
        },
        'device': measured.device_kind,
        'batch': int(config.batch),
    }
    distilled = None
    if fitted.predictor is not None:
        predictor = fitted.predictor.replace(meta=meta)
        if chosen == 'shots_only':  # Same predictions with the rows' scale as normalisation.
            s = float(np.mean(y))
            predictor = predictor.replace(norm=train_lib.TargetNorm('scale', 0.0, s),
                                          params=jax.tree_util.tree_map(
                                              lambda v: np.asarray(v) / s, predictor.params))
    else:
        d_archs = _sample(
            int(config.seed) + 104729, int(config.distill.archs), plan.resolutions, set(keys))
        predictor, distilled = distill(fitted, adapter, d_archs, _bases(plan, table, d_archs),
                                       config, meta)
    oof = oof_at[final][chosen]
    predictor.calibration = conformal.fit(oof,
                                          y,
                                          estimator=f'onboard:{chosen}',
                                          rows='cross-validated predictions of the adaptation '
                                          'rows')
    ckpt_dir = os.path.join(workdir, 'checkpoint')
    checkpoint.save(predictor, ckpt_dir)
    final_s = time.perf_counter() - t_final
    saved = checkpoint.load(ckpt_dir)
    fitted_on_rows = np.asarray(saved(adapt), np.float64)

    evaluation = None
    if plan.evaluation is not None:
        ev_y = np.asarray([measured.latency_ms[space.arch_key(a)] for a in eval_list], np.float64)
        ev_bases = _bases(plan, table, plan.evaluation)
        evaluation = {
            'archs': len(ev_y),
            'checkpoint': metrics.all_metrics(saved(plan.evaluation), ev_y),
            'curve': []
        }
        for n in plan.curve:
            idx = np.arange(n_refs + n)
            if len(idx) < MIN_CV_ROWS:
                continue
            entry = {'shots': n, 'strategies': {}}
            for s in plan.strategies:
                p = adapter.fit(s, idx).apply(plan.evaluation, ev_bases)
                used_rows = s != 'lut'
                uses_lut = s in LUT_STRATEGIES
                entry['strategies'][s] = dict(metrics.all_metrics(p, ev_y),
                                              device_s=float(row_s[idx].sum() * used_rows +
                                                             (lut_seconds if uses_lut else 0.0)))
            evaluation['curve'].append(entry)

    summary: dict[str, Any] = {
        'device': measured.device_kind,
        'device_id': measured.device_id,
        'zoo': str(config.zoo),
        'members': [m.name for m in plan.members],
        'selection': plan.selection,
        'resolutions': list(plan.resolutions),
        'references': n_refs,
        'shots': int(config.shots),
        'measured_now': measured.measured_now,
        'already_done': measured.already_done,
        'device_s': float(row_s.sum()),
        'lut': lut_folder,
        'lut_device_s': lut_seconds,
        'strategies': list(plan.strategies),
        'chosen': chosen,
        'chosen_cv': curve[-1]['cv'][chosen],
        'detail': fitted.detail,
        'distilled': distilled,
        'checkpoint': ckpt_dir,
        'checkpoint_on_rows': metrics.all_metrics(fitted_on_rows, y),
        'curve': curve,
        'evaluation': evaluation,
        'shot_keys': keys[n_refs:],
        # Every row the adaptation read (references, then shots), as measured.
        'adapt_keys': keys,
        'adapt_ms': y.tolist(),
        'elapsed_s': time.perf_counter() - t_start,
        # After the measurements: choosing (cross-validation of every strategy on
        # all the rows) plus the chosen one's final fit, distillation and save.
        'adaptation_s': {
            'choice': curve[-1]['cv_s'],
            'final_fit': final_s,
            'total': curve[-1]['cv_s'] + final_s
        },
    }
    files.write_json(os.path.join(workdir, 'onboard.json'), summary)
    plot_curve(os.path.join(workdir, 'learning_curve.png'), curve, chosen, measured.device_kind)
    files.write_text(os.path.join(workdir, 'report.md'), report(summary, config, workdir))
    return summary


# ---------------------------------------------------------------------------
# Report.


def plot_curve(path: str, curve: list[dict[str, Any]], chosen: str, device: str) -> None:
    """Cross-validated MAPE of each strategy against the shots used."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=110)
    names = sorted({s for p in curve for s in p['cv']})
    for s in names:
        xs = [p['shots'] for p in curve if s in p['cv']]
        ys = [p['cv'][s]['mape'] for p in curve if s in p['cv']]
        ax.plot(xs, ys, 'o-', lw=2.0 if s == chosen else 1.0, ms=3, label=s)
    ax.set_xlabel('shots measured (besides the reference archs)')
    ax.set_ylabel('cross-validated MAPE (%)')
    ax.set_yscale('log')
    ax.set_title(f'onboarding {device}: chosen {chosen}', fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def report(summary: dict[str, Any], config: ml_collections.ConfigDict, workdir: str) -> str:
    """``report.md``: device, measurements, learning curve, choice, checkpoint, evaluation."""
    folds = int(config.cv_folds)
    lines = [
        f'# Onboarding {summary["device"]} from the zoo {summary["zoo"]}',
        '',
        f'- device fingerprint `{summary["device_id"]}`; batch {config.batch}, {config.dtype}, '
        f'width {config.width}, resolutions {summary["resolutions"]}',
        f'- zoo members used: {", ".join(summary["members"])}',
        f'- measured: {summary["references"]} reference archs + {summary["shots"]} shots '
        f'(selection: {summary["selection"]}), {summary["device_s"]:.1f} device-seconds '
        f'(lower + compile + timing); {summary["measured_now"]} measured in this run, '
        f'{summary["already_done"]} found in the store',
    ]
    if summary['lut']:
        lines.append(f'- LUT prior: `{summary["lut"]}` ({summary["lut_device_s"]:.1f} '
                     'device-seconds)')
    lines += [
        '', '## Learning curve (cross-validated on the measured rows only)', '',
        'Each point refits every strategy on the reference archs plus the first n shots, '
        f'holding out one of {folds} interleaved folds at a time (leave-one-out where a point has '
        'no more rows than folds); nothing else of the device is read.'
        if folds else 'Each point refits every strategy on the reference archs plus the first n '
        'shots, leaving one row out at a time; nothing else of the device is read.', '',
        '![learning curve](learning_curve.png)', ''
    ]
    names = list(summary['strategies'])
    rows = summary['curve'][-1]['rows']
    lines.append('| shots | rows | device-s | ' + ' | '.join(f'{s} MAPE %' for s in names) + ' |')
    lines.append('|' + '---|' * (3 + len(names)))
    for p in summary['curve']:
        cells = [f'{p["cv"][s]["mape"]:.2f}' if s in p['cv'] else '-' for s in names]
        lines.append(f'| {p["shots"]} | {p["rows"]} | {p["device_s"]:.1f} | ' + ' | '.join(cells) +
                     ' |')
    cv = summary['chosen_cv']
    lines += [
        '', '## Chosen adaptation', '',
        f'**{summary["chosen"]}**: the lowest cross-validated MAPE at {summary["shots"]} shots '
        f'({cv["mape"]:.2f}%, RMSE {cv["rmse_ms"]:.3f} ms, {100 * cv["acc10"]:.0f}% within '
        f'10%). Fitted: `{json.dumps(summary["detail"], default=str)}`.', ''
    ]
    d = summary['distilled']
    if d:
        how = ('its table solved by least squares' if d.get('closed_form') else 'trained')
        lines.append(f'A combination is not one Predictor: it was distilled into an additive '
                     f'predictor ({how}) on {d["archs"]} labelled archs plus the measured rows; '
                     'fidelity '
                     f'to the combination on {d["held_out"]} held-out labelled archs: MAPE '
                     f'{d["fidelity_mape"]:.2f}%, RMSE {d["fidelity_rmse_ms"]:.4f} ms.')
    else:
        lines.append('The chosen adaptation is one Predictor, saved as it is.')
    on_rows = summary['checkpoint_on_rows']
    lines += [
        '', f'Checkpoint: `{summary["checkpoint"]}` (`predictors.checkpoint.load(...)(archs)`); '
        f'on the measured rows it was fitted on: MAPE {on_rows["mape"]:.2f}%. Its conformal '
        'bound (`Predictor.upper`) is calibrated on the cross-validated predictions.'
    ]
    t = summary['adaptation_s']
    lines += [
        '', f'Adaptation after the measurements: {t["total"]:.1f} s on the host '
        f'(choice: {cv_name(folds, rows)} of {len(names)} strategies on all {rows} rows, '
        f'{t["choice"]:.1f} s: ' +
        ', '.join(f'{k} {v:.1f}' for k, v in summary['curve'][-1].get('cv_s_by', {}).items()) +
        '; the chosen one\'s final fit'
        f'{", distillation" if d else ""} and save, {t["final_fit"]:.1f} s). The learning curve\'s '
        'other points are for this report and are not part of it.'
    ]
    ev = summary['evaluation']
    if ev:
        c = ev['checkpoint']
        lines += [
            '', f'## Held-out evaluation ({ev["archs"]} random sub-networks, measured after the '
            'choice)', '', f'Checkpoint: MAPE {c["mape"]:.2f}%, RMSE {c["rmse_ms"]:.3f} ms, '
            f'{100 * c["acc10"]:.0f}% within 10%.', '',
            '| shots | strategy | device-s | MAPE % | RMSE ms | within 10% |',
            '|---|---|---|---|---|---|'
        ]
        for entry in ev['curve']:
            for s, m in entry['strategies'].items():
                lines.append(f'| {entry["shots"]} | {s} | {m["device_s"]:.1f} | {m["mape"]:.2f} | '
                             f'{m["rmse_ms"]:.3f} | {100 * m["acc10"]:.0f}% |')
    flat = config.to_dict()
    defaults = onboard_config.get_config().to_dict()
    for name in onboard_config.TIED_LUT_FIELDS:  # Set once, at the top.
        flat['build_lut'][name] = defaults['build_lut'][name]
    lines += ['', '## Command', '', '    ' + commands.command('onboard', flat, workdir), '']
    return '\n'.join(lines)
