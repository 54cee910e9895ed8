"""The zoo job (``experiments/build_zoo.py``): one base predictor per (device, batch size).

:func:`run` lists the members of ``config.sources`` (one per CSV file; one per
(device, batch size) of each latency store), fits each with the fit job
(:func:`experiments.jobs.fit_predictor.run`, the ``fit`` section, into
``WORKDIR/<member>/``: ``checkpoint/``, ``metrics.json``, ``conformal.json``,
``pred_vs_measured.png``), then adds the member's hardware facts and its
predictions of the zoo's reference archs (:func:`predictors.zoo.reference_archs`)
and writes the index ``WORKDIR/zoo.json`` (:mod:`predictors.zoo`, the one home
of the format). A rerun refits every member (seconds each).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Any

import ml_collections
import numpy as np

from experiments import config_fields as cf
from experiments.jobs import fit_predictor as fit_job
from ofa_jax import hardware
from ofa_jax import space
from ofa_jax.latency import store as store_lib
from predictors import checkpoint
from predictors import zoo as zoo_lib

ConfigError = cf.ConfigError
TRAINED_MODELS = ('mlp', 'additive', 'additive_mlp')


@dataclasses.dataclass
class MemberSource:
    """Where one member's rows come from, and what it is called."""

    name: str
    device: str  # label: a CSV's device name, a store's device kind
    batch: int
    data: str  # the CSV file or the store
    store_device: str = ''  # the store's fingerprint id ('' for a CSV file)


def _slug(text: str) -> str:
    return re.sub(r'[^0-9A-Za-z]+', '_', str(text)).strip('_').lower() or 'device'


def _csv_member(path: str, devices: dict[str, str], batches: dict[str, str]) -> MemberSource:
    stem = os.path.splitext(os.path.basename(path))[0]
    b = cf.lookup_file(batches, path)
    if b is None:
        m = re.search(r'batch(\d+)', stem)
        b = m.group(1) if m else '1'
    try:
        batch = int(b)
        if batch < 1:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f'config.batch_sizes: {b!r} for {path}; allowed: an integer >= 1') from None
    device = cf.lookup_file(devices, path) or re.sub(r'_?batch\d+', '', stem) or stem
    name = _slug(stem if re.search(r'batch\d+', stem) else f'{stem}_b{batch}')
    return MemberSource(name=name, device=device, batch=batch, data=path)


def _store_members(path: str,
                   config: ml_collections.ConfigDict) -> tuple[list[MemberSource], list[str]]:
    """One member per (device, batch) of a store with >= ``min_rows`` distinct archs."""
    try:
        with store_lib.LatencyStore(path, readonly=True) as store:
            fps = store.devices()
            groups: dict[tuple[str, int], set[str]] = {}
            for row in store.rows(dtype=str(config.dtype), width=float(config.width)):
                groups.setdefault((row.key.device, int(row.key.batch)), set()).add(row.key.arch_key)
    except store_lib.StoreError as err:
        raise ConfigError(f'config.sources: {err}') from None
    members, skipped = [], []
    for (fid, batch), keys in sorted(groups.items()):
        kind = str(fps.get(fid, {}).get('device_kind') or fid)
        if len(keys) < int(config.min_rows):
            skipped.append(f'{path}: device {kind} ({fid[:8]}) batch {batch}: {len(keys)} archs '
                           f'< config.min_rows={config.min_rows}')
            continue
        members.append(
            MemberSource(name=_slug(f'{kind}_{fid[:8]}_b{batch}'),
                         device=kind,
                         batch=batch,
                         data=path,
                         store_device=fid))
    return members, skipped


def list_members(config: ml_collections.ConfigDict) -> tuple[list[MemberSource], list[str]]:
    """The members of ``config.sources`` and the store groups skipped (ConfigError on bad input)."""
    sources = cf.str_tuple('sources', config.sources)
    devices = cf.file_map('devices', config.devices)
    batches = cf.file_map('batch_sizes', config.batch_sizes)
    members, skipped = [], []
    for path in sources:
        if not os.path.isfile(path):
            raise ConfigError(f'config.sources: {path!r} does not exist; allowed: OFA CSV files '
                              'and latency stores')
        if path.endswith('.csv'):
            members.append(_csv_member(path, devices, batches))
        else:
            found, left = _store_members(path, config)
            members += found
            skipped += left
    if not members:
        raise ConfigError(f'config.sources: no member to fit ({"; ".join(skipped) or "no rows"})')
    names = [m.name for m in members]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f'config.sources: member names {twice} appear twice (same device and '
                          'batch from two sources); allowed: one source per device and batch, or '
                          'distinct names through config.devices=FILE:NAME')
    return members, skipped


def check(config: ml_collections.ConfigDict) -> None:
    """Every check that reads no data (ConfigError naming the field)."""
    cf.str_tuple('sources', config.sources)
    cf.width(config.width)
    cf.dtype(config.dtype)
    cf.one_int('min_rows', config.min_rows, minimum=fit_job.MIN_ROWS)
    if config.reference_resolutions:
        cf.resolutions(config.reference_resolutions, 'reference_resolutions')
    cf.choice('fit.model', config.fit.model, TRAINED_MODELS)
    template = ml_collections.ConfigDict(config.fit.to_dict())
    template.data = 'member.csv'
    template.protocol = ''
    try:
        fit_job.check(template)
    except ConfigError as err:
        raise ConfigError(str(err).replace('config.', 'config.fit.', 1)) from None


def member_config(config: ml_collections.ConfigDict,
                  member: MemberSource) -> ml_collections.ConfigDict:
    """The fit job's config of one member: the ``fit`` section with its rows."""
    c = ml_collections.ConfigDict(config.fit.to_dict())
    c.data = member.data
    c.device = member.store_device
    c.batch = member.batch
    if not member.store_device:
        c.protocol = ''
    return c


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Builds the zoo of ``config`` in ``workdir``; returns the summary (also printed).

    Raises:
      ConfigError: a bad field, a missing source, no member, clashing names,
        members without a common resolution for the reference archs.
    """
    check(config)
    members, skipped = list_members(config)
    os.makedirs(workdir, exist_ok=True)
    rows = {}
    for m in members:
        cfg = member_config(config, m)
        archs, lat = fit_job.load_rows(cfg)
        rows[m.name] = (archs, lat)
    if config.reference_resolutions:
        resolutions = cf.resolutions(config.reference_resolutions, 'reference_resolutions')
    else:
        common = None
        for archs, _ in rows.values():
            have = set(np.asarray(archs.resolution).reshape(-1).tolist())
            common = have if common is None else common & have
        if not common:
            raise ConfigError('config.reference_resolutions: the members share no resolution; '
                              'allowed: resolutions to spread the reference archs over, e.g. '
                              '160,192,224')
        resolutions = tuple(sorted(common))
    reference = zoo_lib.reference_archs(resolutions)
    entries, summary = [], []
    for m in members:
        folder = os.path.join(workdir, m.name)
        sys.stderr.write(f'[build_zoo] {m.name}: fitting on {len(rows[m.name][1])} rows of '
                         f'{m.data}\n')
        out = fit_job.run(member_config(config, m), folder, data=rows[m.name])
        predictor = checkpoint.load(os.path.join(folder, zoo_lib.CHECKPOINT_DIR))
        spec = hardware.lookup(m.device)
        ref_ms = np.asarray(predictor(reference), np.float64)
        zoo_lib.write_member(folder,
                             hardware=None if spec is None else dataclasses.asdict(spec),
                             reference=reference,
                             reference_ms=ref_ms)
        entries.append({
            'name': m.name,
            'device': m.device,
            'batch': m.batch,
            'hardware': None if spec is None else spec.name,
            'source': {
                'data': m.data,
                'store_device': m.store_device
            },
            'test_mape': out.get('mape'),
            'test_rmse_ms': out.get('rmse_ms'),
        })
        summary.append(f'{m.name}: MAPE {out.get("mape", float("nan")):.2f}%')
    index = zoo_lib.write_index(workdir,
                                entries,
                                reference=reference,
                                resolutions=resolutions,
                                width=float(config.width))
    return {
        'zoo': index,
        'members': [e['name'] for e in entries],
        'reference_resolutions': list(resolutions),
        'reference_arch_keys': [space.arch_key(a) for a in space.unstack(reference)],
        'skipped': skipped,
        'fits': summary,
    }
