"""Extraction of a static sub-network and its weights from supernet variables.

The static counterpart of OFA's ``get_active_subnet``: for one architecture,
build the :class:`~ofa_jax.subnet.SubNet` and slice the supernet's variables
into its exact shapes (transformed depthwise kernels, first hidden channels,
first SE squeeze channels, BatchNorm scale/bias and running statistics). The
result gives the same logits as the supernet run on that arch.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import space
from ofa_jax import spec
from ofa_jax import subnet
from ofa_jax import supernet

Variables = Mapping[str, Any]


def _bn(params: Mapping[str, Any], stats: Mapping[str, Any] | None, n: int):
    p = {'scale': params['scale'][:n], 'bias': params['bias'][:n]}
    s = None if stats is None else {'mean': stats['mean'][:n], 'var': stats['var'][:n]}
    return p, s


def _block(params: Mapping[str, Any], stats: Mapping[str, Any], b: spec.BlockSpec,
           se_channels: int) -> tuple[dict, dict]:
    m = b.mid_channels
    p, s = {}, {}
    ib = params['inverted_bottleneck']
    bn_p, bn_s = _bn(ib['bn'], stats['inverted_bottleneck']['bn'], m)
    p['inverted_bottleneck'] = {'conv': {'kernel': ib['conv']['kernel'][..., :m]}, 'bn': bn_p}
    s['inverted_bottleneck'] = {'bn': bn_s}
    dc = params['depth_conv']
    kernels = supernet.active_kernels(
        np.asarray(dc['kernel'])[..., :m], np.asarray(dc['7to5_matrix']),
        np.asarray(dc['5to3_matrix']))
    p['depth_conv'] = {'kernel': kernels[b.kernel]}
    p['depth_bn'], s['depth_bn'] = _bn(params['depth_bn'], stats['depth_bn'], m)
    if b.se:
        se = params['se']
        p['se'] = {
            'reduce': {
                'kernel': se['reduce']['kernel'][:m, :se_channels],
                'bias': se['reduce']['bias'][:se_channels]
            },
            'expand': {
                'kernel': se['expand']['kernel'][:se_channels, :m],
                'bias': se['expand']['bias'][:m]
            },
        }
    pl = params['point_linear']
    p['point_linear'] = {'conv': {'kernel': pl['conv']['kernel'][:, :, :m, :]}, 'bn': pl['bn']}
    s['point_linear'] = stats['point_linear']
    return p, s


def extract_subnet(supernet_variables: Variables,
                   arch: space.Arch,
                   width: float = 1.2,
                   *,
                   depthwise: str = 'auto') -> tuple[subnet.SubNet, dict]:
    """Static sub-network of ``arch`` and its weights sliced from the supernet.

    Args:
      supernet_variables: variables of :class:`ofa_jax.supernet.SuperNet` of
        this width (``params`` and ``batch_stats``).
      arch: one host-side architecture (validated).
      width: the supernet's width, 1.0 or 1.2.
      depthwise: depthwise implementation of the static module.

    Returns:
      ``(model, variables)`` with ``model.apply(variables, x)`` equal to the
      supernet's logits for ``arch`` (inference mode).
    """
    # Slice on the host: eager jax slicing compiles one tiny program per shape.
    host = jax.tree_util.tree_map(np.asarray, dict(supernet_variables))
    params = host['params']
    stats = host['batch_stats']
    num_classes = int(np.shape(params['head']['classifier']['kernel'])[-1])
    model = subnet.build_subnet(arch, width, num_classes=num_classes, depthwise=depthwise)
    want = spec.net_spec(width).first_channels
    got = int(np.shape(params['first_conv']['conv']['kernel'])[-1])
    if got != want:
        raise ValueError(f'width: value {width} needs a supernet with {want} first channels, '
                         f'these variables have {got}')
    new_p = {k: params[k] for k in ('first_conv', 'first_block', 'final_expand', 'head')}
    new_s = {k: stats[k] for k in ('first_conv', 'first_block', 'final_expand')}
    for b in model.blocks:
        name = f'blocks_{b.position}'
        new_p[name], new_s[name] = _block(params[name], stats[name], b,
                                          model.net.se_channels(b.mid_channels))
    variables = {'params': new_p, 'batch_stats': new_s}
    return model, jax.tree_util.tree_map(jnp.asarray, variables)
