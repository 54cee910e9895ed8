"""Prints the size of one OFA MobileNetV3 sub-network.

Usage::

    python -m ofa_jax.info --width 1.2 --arch largest --resolution 224
    python -m ofa_jax.info --width 1.0 --arch "{'ks': [3]*20, ...}"

``--arch`` takes ``largest``, ``smallest`` or an OFA dict literal
(``{'ks': [...20], 'e': [...20], 'd': [...5], 'r': [224]}``, ``'wid'``
optional). ``--resolution`` overrides the dict's ``r``. A readable summary is
printed first; the LAST line is always one JSON object with integer
``params`` and ``macs`` (OFA's definitions, see :mod:`ofa_jax.counts`), the
output shape and the architecture. Bad input prints one line naming the
field, the value and the allowed values, and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

import numpy as np

from ofa_jax import counts
from ofa_jax import space
from ofa_jax import spec


def describe(arch: space.Arch, width: float) -> dict[str, Any]:
    """Params, MACs, output shape and block list of one sub-network (no compile).

    Args:
      arch: one validated host-side arch.
      width: 1.0 or 1.2.

    Returns:
      A JSON-serialisable dict.
    """
    net = spec.net_spec(width)
    r = int(arch.resolution)
    return {
        'width': net.width,
        'resolution': r,
        'params': int(counts.count_params(arch, net.width)),
        'macs': int(counts.count_macs(arch, net.width)),
        'input_shape': [1, r, r, 3],
        'output_shape': [1, net.num_classes],
        'num_blocks': len(spec.block_specs(net, arch)),
        'arch_key': space.arch_key(arch),
        'arch': space.to_ofa_dict(arch, with_wid=False),
    }


def parse_arch(text: str, resolution: int | None) -> space.Arch:
    """``largest``/``smallest``/an OFA dict literal -> a validated Arch."""
    if resolution is not None:
        space.parse_resolutions([resolution])
    if text in ('largest', 'smallest'):
        default = 224 if text == 'largest' else 128
        return getattr(space, text)(default if resolution is None else resolution)
    if text.lstrip().startswith('{'):
        arch = space.parse_child_arch(text)
        if resolution is not None:
            arch = arch.replace(resolution=np.asarray(resolution, np.int32))
        return arch
    raise ValueError(f"arch: value {text!r} is not allowed; allowed: 'largest', 'smallest' or "
                     "an OFA dict literal like \"{'ks': [...], 'e': [...], 'd': [...], "
                     "'r': [224]}\"")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m ofa_jax.info', description=__doc__.split('\n')[0])
    p.add_argument('--width', default='1.2', help='1.0 or 1.2 (default 1.2)')
    p.add_argument('--arch', default='largest', help="'largest', 'smallest' or an OFA dict")
    p.add_argument('--resolution',
                   default=None,
                   help='input resolution, 128..224 step 4 (default: the arch\'s)')
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        width = spec.check_width(args.width)
        resolution = None
        if args.resolution is not None:
            try:
                resolution = int(args.resolution)
            except ValueError:
                raise ValueError(f'resolution: value {args.resolution!r} is not an integer; '
                                 f'allowed: a multiple of 4 in [128, 224]') from None
        arch = parse_arch(args.arch, resolution)
        info = describe(arch, width)
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(f"OFA MobileNetV3 w{info['width']} sub-network at {info['resolution']}x"
          f"{info['resolution']}: {info['num_blocks']} elastic blocks")
    print(f"  depth {info['arch']['d']}")
    print(f"  kernel {info['arch']['ks']}")
    print(f"  expand {info['arch']['e']}")
    print(f"  params {info['params']:,}   MACs {info['macs'] / 1e6:.1f}M   "
          f"output {tuple(info['output_shape'])}")
    print(json.dumps(info, sort_keys=True))
    return 0


if __name__ == '__main__':
    sys.exit(main())
