"""A predictor zoo: one base latency predictor per (device, batch size), and its index.

A zoo is a folder written by ``python -m experiments.build_zoo``::

    DIR/zoo.json                  the index (format ``ofa_jax.zoo/1``)
    DIR/<member>/checkpoint/      an ordinary predictor (:func:`predictors.checkpoint.load`)
    DIR/<member>/hardware.json    datasheet facts (:mod:`ofa_jax.hardware`), or ``null``
    DIR/<member>/reference.csv    the member's predicted latencies of the reference archs
                                  (OFA CSV, :mod:`ofa_jax.csvio`)
    DIR/<member>/metrics.json     its training metrics (the fit job's ``metrics.json``)

:func:`load` reads the index and every member's small files at once and
refuses, with a :class:`ZooError` naming the file and what is wrong, a missing
folder or file, bad JSON, another format, a missing or ill-typed field, a
member whose reference archs are not the zoo's, or two members with one name.
Checkpoints are loaded on first use (:attr:`Member.predictor`), so a zoo of many
members opens in milliseconds; a corrupt checkpoint raises the
:class:`~predictors.checkpoint.CheckpointError` of :func:`checkpoint.load`,
which names its file.

The reference archs
-------------------
HELP (Lee et al., NeurIPS 2021) embeds a device by its latencies on 10 fixed
reference archs; their indices into HELP's files are external data, so the zoo
defines its own set here, once: :func:`reference_archs` is the 10-arch design
of :func:`design_archs` with seed :data:`REFERENCE_SEED`. The design spreads
archs over size and resolution at once: arch ``i`` of ``n`` has size level
``t_i = (i + 0.5) / n`` and every gene (kernel, expand, depth) takes its
choice index from Binomial(2, t_i), so small levels give small networks and
large levels large ones; resolutions are a seeded permutation of the same
strata over the given resolutions, so size and resolution are not tied. The
zoo records the resolutions it used and the archs' keys in ``zoo.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from ofa_jax import csvio
from ofa_jax import files
from ofa_jax import space
from predictors import checkpoint

FORMAT = 'ofa_jax.zoo/1'
INDEX_FILE = 'zoo.json'
CHECKPOINT_DIR = 'checkpoint'
HARDWARE_FILE = 'hardware.json'
REFERENCE_FILE = 'reference.csv'
METRICS_FILE = 'metrics.json'
NUM_REFERENCES = 10
REFERENCE_SEED = 20211210  # HELP's NeurIPS 2021 date: any fixed value; never change it.


class ZooError(ValueError):
    """A zoo folder is missing, incomplete or holds bad values; names the file."""


def design_archs(n: int,
                 resolutions: Sequence[int] = space.RESOLUTIONS,
                 *,
                 seed: int = REFERENCE_SEED) -> space.Arch:
    """``n`` distinct archs spread over size and resolution (see the module docstring).

    Args:
      n: how many archs (>= 1).
      resolutions: resolutions to spread over (validated).
      seed: the design's seed; equal arguments give equal archs.

    Returns:
      A batched numpy ``Arch`` of ``n`` canonical, distinct archs, in level order
      (arch 0 the smallest level).
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f'design_archs: n={n!r}; allowed: an integer >= 1')
    res = sorted(set(space.parse_resolutions(resolutions)))
    rng = np.random.default_rng(seed)
    res_level = (rng.permutation(int(n)) + 0.5) / n
    out: list[space.Arch] = []
    seen: set[str] = set()
    for i in range(int(n)):
        t = (i + 0.5) / n
        r = res[min(int(res_level[i] * len(res)), len(res) - 1)]
        for _ in range(1000):  # A repeat is rare; draw again until new.
            pick = lambda choices, size: np.asarray(choices)[rng.binomial(2, t, size)]
            arch = space.make_arch(pick(space.KERNEL_CHOICES, space.NUM_BLOCKS),
                                   pick(space.EXPAND_CHOICES, space.NUM_BLOCKS),
                                   pick(space.DEPTH_CHOICES, space.NUM_STAGES), r)
            if space.arch_key(arch) not in seen:
                break
        seen.add(space.arch_key(arch))
        out.append(arch)
    return space.stack(out)


def reference_archs(resolutions: Sequence[int] = space.RESOLUTIONS) -> space.Arch:
    """The zoo's :data:`NUM_REFERENCES` reference archs over ``resolutions``."""
    return design_archs(NUM_REFERENCES, resolutions, seed=REFERENCE_SEED)


@dataclasses.dataclass
class Member:
    """One base predictor of a zoo.

    Attributes:
      name: folder name inside the zoo.
      device: device name (a CSV's device label or a store's device kind).
      batch: batch size of its latencies.
      hardware: datasheet facts (``dataclasses.asdict`` of an
        :class:`ofa_jax.hardware.HardwareSpec`), or None for an unknown device.
      reference_ms: float64[R] its predictions of the zoo's reference archs.
      metrics: its training metrics (the fit job's ``metrics.json``).
      path: its folder.
      source: the data it was trained on (file, and store device id).
    """

    name: str
    device: str
    batch: int
    hardware: dict[str, Any] | None
    reference_ms: np.ndarray
    metrics: dict[str, Any]
    path: str
    source: dict[str, Any] = dataclasses.field(default_factory=dict)

    @functools.cached_property
    def predictor(self) -> checkpoint.Predictor:
        """The member's checkpoint, loaded on first use (CheckpointError names the file)."""
        return checkpoint.load(os.path.join(self.path, CHECKPOINT_DIR))


@dataclasses.dataclass
class Zoo:
    """A loaded zoo: its members and the reference archs they were scored on.

    Attributes:
      path: the zoo folder.
      members: the members, in index order.
      reference: batched numpy ``Arch`` of the reference archs.
      reference_resolutions: the resolutions the reference design spread over.
      width: supernet width of every member's archs.
    """

    path: str
    members: tuple[Member, ...]
    reference: space.Arch
    reference_resolutions: tuple[int, ...]
    width: float

    @property
    def names(self) -> tuple[str, ...]:
        """The members' names, in index order."""
        return tuple(m.name for m in self.members)

    def member(self, name: str) -> Member:
        """The member called ``name`` (KeyError listing the names)."""
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(f'zoo {self.path}: no member {name!r}; members: {", ".join(self.names)}')

    def reference_ms(self) -> np.ndarray:
        """float64[M, R]: every member's predicted latencies of the reference archs."""
        return np.stack([m.reference_ms for m in self.members])

    def predict(self, archs: space.Arch) -> np.ndarray:
        """float64[M, N]: every member's predicted latency (ms) of ``archs``."""
        return np.stack([np.asarray(m.predictor(archs), np.float64) for m in self.members])


def write_member(directory: str, *, hardware: Mapping[str, Any] | None, reference: space.Arch,
                 reference_ms: Sequence[float]) -> None:
    """Writes a member's ``hardware.json`` and ``reference.csv`` into its folder.

    The folder already holds ``checkpoint/`` and ``metrics.json`` (the fit job's).
    """
    os.makedirs(directory, exist_ok=True)
    files.write_json(os.path.join(directory, HARDWARE_FILE),
                     None if hardware is None else dict(hardware))
    csvio.write_ofa_csv(os.path.join(directory, REFERENCE_FILE), reference,
                        [float(v) for v in reference_ms])


def write_index(directory: str, members: Sequence[Mapping[str, Any]], *, reference: space.Arch,
                resolutions: Sequence[int], width: float) -> str:
    """Writes ``zoo.json``; each member is ``{name, device, batch, source}``. Returns its path."""
    path = os.path.join(directory, INDEX_FILE)
    files.write_json(
        path, {
            'format': FORMAT,
            'width': float(width),
            'reference': {
                'seed': REFERENCE_SEED,
                'resolutions': [int(r) for r in resolutions],
                'arch_keys': [space.arch_key(a) for a in space.unstack(reference)],
            },
            'members': [dict(m) for m in members],
        })
    return path


def _read_json(path: str, what: str) -> Any:
    if not os.path.isfile(path):
        raise ZooError(f'{path}: missing; a zoo member folder holds {what}')
    try:
        with open(path, 'rb') as f:
            return json.loads(f.read().decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ZooError(f'{path}: not JSON ({type(err).__name__}: {str(err)[:200]})') from None


def _field(d: Mapping[str, Any], key: str, kinds: tuple[type, ...], where: str) -> Any:
    if not isinstance(d, Mapping) or key not in d:
        raise ZooError(f'{where}: missing field {key!r}')
    value = d[key]
    if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
        names = ' or '.join(k.__name__ for k in kinds)
        raise ZooError(f'{where}: field {key!r} is {value!r:.80}; expected {names}')
    return value


def load(directory: str | os.PathLike) -> Zoo:
    """Loads the zoo in ``directory`` (checkpoints lazily).

    Raises:
      ZooError: a missing folder or file, bad JSON, another format, a bad
        field, reference latencies that are not the zoo's reference archs or
        not finite, or a repeated member name; the message names the file.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ZooError(f'{directory}: no such folder; build a zoo with python -m '
                       'experiments.build_zoo --workdir=DIR')
    index_path = os.path.join(directory, INDEX_FILE)
    if not os.path.isfile(index_path):
        raise ZooError(f'{index_path}: missing; not a zoo folder (python -m experiments.build_zoo '
                       'writes it)')
    index = _read_json(index_path, 'zoo.json')
    if not isinstance(index, dict):
        raise ZooError(f'{index_path}: holds a JSON {type(index).__name__}, expected an object')
    fmt = index.get('format')
    if fmt != FORMAT:
        raise ZooError(f'{index_path}: format {fmt!r}; allowed: {FORMAT!r}')
    width = float(_field(index, 'width', (int, float), index_path))
    if width not in space.WIDTHS:
        raise ZooError(f'{index_path}: width {width}; allowed: {space.WIDTHS}')
    ref = _field(index, 'reference', (dict,), index_path)
    keys = _field(ref, 'arch_keys', (list,), f'{index_path}: reference')
    resolutions = _field(ref, 'resolutions', (list,), f'{index_path}: reference')
    try:
        reference = space.stack([space.from_key(str(k)) for k in keys])
        resolutions = space.parse_resolutions(resolutions)
    except (ValueError, TypeError) as err:
        raise ZooError(f'{index_path}: reference: {err}') from None
    entries = _field(index, 'members', (list,), index_path)
    if not entries:
        raise ZooError(f'{index_path}: no members')
    members: list[Member] = []
    for i, entry in enumerate(entries):
        where = f'{index_path}: members[{i}]'
        name = _field(entry, 'name', (str,), where)
        if not name or os.sep in name or name in ('.', '..'):
            raise ZooError(f'{where}: name {name!r} is not a folder name')
        if name in [m.name for m in members]:
            raise ZooError(f'{where}: member name {name!r} appears twice')
        folder = os.path.join(directory, name)
        if not os.path.isdir(folder):
            raise ZooError(f'{folder}: missing member folder of {name!r} listed in {index_path}')
        ckpt = os.path.join(folder, CHECKPOINT_DIR, checkpoint.META_FILE)
        if not os.path.isfile(ckpt):
            raise ZooError(f'{ckpt}: missing; member {name!r} has no checkpoint')
        hw = _read_json(os.path.join(folder, HARDWARE_FILE), 'hardware.json')
        if hw is not None and not isinstance(hw, dict):
            raise ZooError(f'{os.path.join(folder, HARDWARE_FILE)}: holds a '
                           f'{type(hw).__name__}; expected an object or null')
        metrics_path = os.path.join(folder, METRICS_FILE)
        metrics = _read_json(metrics_path, 'metrics.json')
        if not isinstance(metrics, dict):
            raise ZooError(f'{metrics_path}: holds a {type(metrics).__name__}; expected an object')
        ref_path = os.path.join(folder, REFERENCE_FILE)
        if not os.path.isfile(ref_path):
            raise ZooError(f'{ref_path}: missing; a zoo member folder holds reference.csv')
        try:
            table = csvio.read_ofa_csv(ref_path)
        except ValueError as err:
            raise ZooError(str(err)) from None
        got = [space.arch_key(a) for a in space.unstack(table.archs)]
        if got != [str(k) for k in keys]:
            raise ZooError(f'{ref_path}: its {len(got)} archs are not the {len(keys)} reference '
                           f'archs of {index_path}')
        batch = _field(entry, 'batch', (int,), where)
        members.append(
            Member(name=name,
                   device=str(_field(entry, 'device', (str,), where)),
                   batch=int(batch),
                   hardware=hw,
                   reference_ms=np.asarray(table.latency_ms, np.float64),
                   metrics=metrics,
                   path=folder,
                   source=dict(entry.get('source') or {})))
    return Zoo(path=directory,
               members=tuple(members),
               reference=reference,
               reference_resolutions=tuple(resolutions),
               width=width)
