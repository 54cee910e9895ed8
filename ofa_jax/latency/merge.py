"""Merging latency stores (shards of one campaign, hosts of a fleet) into one.

:func:`merge_stores` copies every row, device fingerprint and gauge baseline
of several stores into one output store. It builds on
:meth:`ofa_jax.latency.store.LatencyStore.merge_from` (read-only opening of
each input, validation of every row before any is written, ``INSERT OR
IGNORE`` on the store's unique key) and adds what a merge of shards needs:

* Nothing that contradicts itself is merged. Before anything is written
  (before the output is even created) every input and the output are read
  and compared: a protocol id defined by two different protocols (each row's
  provenance records the protocol it was timed with; the id is a hash of
  it), a fingerprint id whose identity fields differ between stores or do not
  hash to that id, is a :class:`MergeConflict` naming the store, the protocol
  or fingerprint and both definitions; the output is left unchanged.
* An arch measured in two shards (same device, protocol and key) is kept
  once: the first copy wins, the others are counted as ``duplicates``.
* Provenance is kept as measured (host, pid, fingerprint, protocol of each
  row); the devices table keeps each fingerprint, the meta table each gauge
  baseline (the first one recorded wins; a different baseline for the same
  gauge in a later input is reported, see :func:`merge_stores`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from ofa_jax.latency import fingerprint as fp_lib
from ofa_jax.latency import measure
from ofa_jax.latency import store as store_lib

# Meta keys copied by a merge (see ofa_jax.latency.gauges.gauge_meta_key).
GAUGE_PREFIX = 'gauge_baseline_ms/'


class MergeConflict(store_lib.StoreError):
    """Two stores disagree on what a protocol or device id means; nothing was merged."""


def _brief(d: dict[str, Any]) -> str:
    return json.dumps(d, sort_keys=True, default=str)


class _Definitions:
    """Protocol and fingerprint definitions seen so far, with the store that gave each."""

    def __init__(self):
        self.protocols: dict[str, tuple[dict[str, Any], str]] = {}
        self.identities: dict[str, tuple[dict[str, Any], str]] = {}

    def add_store(self, st: store_lib.LatencyStore, what: str) -> None:
        """Adds (and checks) every definition in ``st``; ``what`` names it in errors."""
        for fid, fp in st.devices().items():
            self._add_device(fid, fp, what)
        for row in st.rows():
            given = row.provenance.get('protocol')
            if isinstance(given, dict):
                self._add_protocol(row.key.protocol, given, what)

    def _add_device(self, fid: str, fp: dict[str, Any], what: str) -> None:
        identity = {k: fp.get(k) for k in fp_lib.IDENTITY_FIELDS}
        if all(k in fp for k in fp_lib.IDENTITY_FIELDS):
            own = fp_lib.fingerprint_id(identity)
            if own != fid:
                raise MergeConflict(f'merge: store {what}: device fingerprint {fid} conflicts: its '
                                    f'identity fields {_brief(identity)} hash to {own}, not {fid}; '
                                    'nothing was merged and the output was left unchanged')
        seen = self.identities.setdefault(fid, (identity, what))
        if seen[0] != identity:
            diff = sorted(k for k in identity if identity[k] != seen[0].get(k))
            raise MergeConflict(
                f'merge: store {what}: device fingerprint {fid} conflicts with store {seen[1]}: '
                f'identity fields {diff} differ ({_brief({k: identity[k] for k in diff})} vs '
                f'{_brief({k: seen[0].get(k) for k in diff})}); nothing was merged and the output '
                'was left unchanged')

    def _add_protocol(self, name: str, given: dict[str, Any], what: str) -> None:
        try:
            own = measure.Protocol(**given).name
        except (TypeError, ValueError) as err:
            own = f'unreadable ({err})'
        if own != name:
            raise MergeConflict(f'merge: store {what}: protocol {name} conflicts: its rows record '
                                f'the protocol {_brief(given)}, whose id is {own}; nothing was '
                                'merged and the output was left unchanged')
        seen = self.protocols.setdefault(name, (given, what))
        if seen[0] != given:
            raise MergeConflict(f'merge: store {what}: protocol {name} conflicts with store '
                                f'{seen[1]}: {_brief(given)} vs {_brief(seen[0])}; nothing was '
                                'merged and the output was left unchanged')


def merge_stores(paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict[str, Any]:
    """Merges the latency stores ``paths`` into the store ``out`` (created if absent).

    Every input is opened read-only (a file that is not a latency store is
    refused, untouched). All inputs, and ``out`` if it exists, are checked
    against each other before anything is written; then each input is merged
    with :meth:`LatencyStore.merge_from` under ``out``'s writer lease. Merging
    a store a second time adds nothing.

    Args:
      paths: the input stores, merged in this order (the first copy of a
        row wins).
      out: the output store; must not be one of ``paths``.

    Returns:
      a summary: ``inputs`` (per input: ``store``, ``rows``, ``added``,
      ``duplicates``, ``devices``), totals ``added`` and ``duplicates``,
      ``rows`` (in ``out`` after the merge), ``devices``, ``gauges_added``
      and ``gauge_mismatches`` (gauge baselines of a later input that differ
      from the one kept: ``{'key', 'kept', 'other', 'store'}``).

    Raises:
      ValueError: no inputs, or ``out`` is one of them; or a row of an input
        is invalid (that input then merges nothing; see ``merge_from``).
      MergeConflict: a protocol or fingerprint conflict, naming the store;
        nothing was merged and ``out`` was left unchanged.
      StoreError: an input or ``out`` is not a usable latency store, or
        another process holds ``out``'s writer lease.
    """
    paths = [os.fspath(p) for p in paths]
    out = os.fspath(out)
    if not paths:
        raise ValueError('merge: no input stores given; give at least one')
    real_out = os.path.realpath(out)
    for p in paths:
        if os.path.realpath(p) == real_out:
            raise ValueError(f'merge: input store {p} is the output store {out}; give another '
                             'output path')
    defs = _Definitions()
    if os.path.exists(out) and os.path.getsize(out) > 0:
        # What the output already holds is checked too, before it is opened to write.
        with store_lib.LatencyStore(out, readonly=True) as dst:
            defs.add_store(dst, out)
    gauges: list[tuple[str, str, str]] = []  # (key, value, store)
    counts = []
    for p in paths:
        with store_lib.LatencyStore(p, readonly=True) as src:
            defs.add_store(src, p)
            gauges += [(k, v, p) for k, v in src.meta_items(GAUGE_PREFIX)]
            counts.append({'store': p, 'rows': len(src), 'devices': len(src.devices())})
    summary: dict[str, Any] = {'out': out, 'inputs': counts, 'gauge_mismatches': []}
    with store_lib.LatencyStore(out) as dst, dst.writer_lease(f'merge_stores into {out}'):
        added_gauges = 0
        for key, value, p in gauges:
            kept = dst.get_meta(key)
            if kept is None:
                dst.set_meta(key, value)
                added_gauges += 1
            elif kept != value:
                summary['gauge_mismatches'].append({
                    'key': key,
                    'kept': float(kept),
                    'other': float(value),
                    'store': p
                })
        for entry in counts:
            entry['added'] = dst.merge_from(entry['store'])
            entry['duplicates'] = entry['rows'] - entry['added']
        summary.update({
            'added': sum(e['added'] for e in counts),
            'duplicates': sum(e['duplicates'] for e in counts),
            'rows': len(dst),
            'devices': len(dst.devices()),
            'gauges_added': added_gauges,
        })
    return summary
