"""Official OFA PyTorch weights <-> :class:`ofa_jax.supernet.SuperNet` variables.

OFA's ``OFAMobileNetV3`` state dict (a mapping name -> array; read a
checkpoint with a restricted unpickler, never ``torch.load`` on untrusted
files) names its tensors like::

    first_conv.conv.weight                                   [C, 3, 3, 3]
    first_conv.bn.{weight,bias,running_mean,running_var}
    blocks.0.conv.depth_conv.conv.weight                     fixed expand-1 block
    blocks.<p+1>.conv.inverted_bottleneck.conv.conv.weight   elastic block p (0..19)
    blocks.<p+1>.conv.depth_conv.conv.conv.weight            [max_mid, 1, 7, 7]
    blocks.<p+1>.conv.depth_conv.conv.7to5_matrix            [25, 25]
    blocks.<p+1>.conv.depth_conv.se.fc.reduce.{weight,bias}
    blocks.<p+1>.conv.point_linear.bn.bn.running_var
    final_expand_layer.conv.weight, feature_mix_layer.conv.weight,
    classifier.linear.{weight,bias}

Older checkpoints say ``mobile_inverted_conv`` for ``conv`` and may drop or
add the inner ``.bn``/``.conv``/``.linear`` of dynamic wrappers (OFA's own
``load_state_dict`` accepts both); so does this module. ``num_batches_tracked``
is ignored. Convolutions go from OIHW to HWIO, the 1x1 convs on pooled
vectors (SE, feature mix) and the classifier to ``[in, out]`` Dense kernels;
the kernel transform matrices are used as they are (OFA applies them with
``F.linear``, as :func:`ofa_jax.supernet.transform_kernel` does).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import numpy as np

from ofa_jax import space
from ofa_jax import spec
from ofa_jax import torch_pickle

# (flax collection, path) plus the converters between the two layouts.
_Entry = tuple[str, tuple[str, ...], Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray],
                                                                                  np.ndarray]]


def _oihw_to_hwio(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 1, 0))


def _hwio_to_oihw(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (3, 2, 0, 1))


def _conv1x1_to_dense(w: np.ndarray) -> np.ndarray:
    return np.transpose(w[:, :, 0, 0])


def _dense_to_conv1x1(w: np.ndarray) -> np.ndarray:
    return np.transpose(w)[:, :, None, None]


_same = lambda w: w
_CONV = (_oihw_to_hwio, _hwio_to_oihw)
_DENSE1X1 = (_conv1x1_to_dense, _dense_to_conv1x1)
_LINEAR = (np.transpose, np.transpose)
_SAME = (_same, _same)


def _bn(torch_prefix: str, flax_path: tuple[str, ...]) -> dict[str, _Entry]:
    return {
        f'{torch_prefix}.weight': ('params', flax_path + ('scale',)) + _SAME,
        f'{torch_prefix}.bias': ('params', flax_path + ('bias',)) + _SAME,
        f'{torch_prefix}.running_mean': ('batch_stats', flax_path + ('mean',)) + _SAME,
        f'{torch_prefix}.running_var': ('batch_stats', flax_path + ('var',)) + _SAME,
    }


def name_map(width: float = 1.2) -> dict[str, _Entry]:
    """OFA state-dict name -> (collection, flax path, to_flax, to_torch) for one width."""
    spec.net_spec(width)  # validates the width; the names do not depend on it.
    m: dict[str, _Entry] = {}
    m['first_conv.conv.weight'] = ('params', ('first_conv', 'conv', 'kernel')) + _CONV
    m.update(_bn('first_conv.bn', ('first_conv', 'bn')))
    fb = 'blocks.0.conv'
    m[f'{fb}.depth_conv.conv.weight'] = ('params', ('first_block', 'depth_conv', 'kernel')) + _CONV
    m.update(_bn(f'{fb}.depth_conv.bn', ('first_block', 'depth_bn')))
    m[f'{fb}.point_linear.conv.weight'] = ('params', ('first_block', 'point_linear', 'conv',
                                                      'kernel')) + _CONV
    m.update(_bn(f'{fb}.point_linear.bn', ('first_block', 'point_linear', 'bn')))
    for pos in range(space.NUM_BLOCKS):
        t, f = f'blocks.{pos + 1}.conv', f'blocks_{pos}'
        m[f'{t}.inverted_bottleneck.conv.conv.weight'] = ('params', (f, 'inverted_bottleneck',
                                                                     'conv', 'kernel')) + _CONV
        m.update(_bn(f'{t}.inverted_bottleneck.bn.bn', (f, 'inverted_bottleneck', 'bn')))
        m[f'{t}.depth_conv.conv.conv.weight'] = ('params', (f, 'depth_conv', 'kernel')) + _CONV
        for name in ('7to5_matrix', '5to3_matrix'):
            m[f'{t}.depth_conv.conv.{name}'] = ('params', (f, 'depth_conv', name)) + _SAME
        m.update(_bn(f'{t}.depth_conv.bn.bn', (f, 'depth_bn')))
        if spec.STAGE_SE[pos // space.MAX_DEPTH]:
            for part in ('reduce', 'expand'):
                m[f'{t}.depth_conv.se.fc.{part}.weight'] = ('params',
                                                            (f, 'se', part, 'kernel')) + _DENSE1X1
                m[f'{t}.depth_conv.se.fc.{part}.bias'] = ('params', (f, 'se', part, 'bias')) + _SAME
        m[f'{t}.point_linear.conv.conv.weight'] = ('params',
                                                   (f, 'point_linear', 'conv', 'kernel')) + _CONV
        m.update(_bn(f'{t}.point_linear.bn.bn', (f, 'point_linear', 'bn')))
    m['final_expand_layer.conv.weight'] = ('params', ('final_expand', 'conv', 'kernel')) + _CONV
    m.update(_bn('final_expand_layer.bn', ('final_expand', 'bn')))
    m['feature_mix_layer.conv.weight'] = ('params', ('head', 'feature_mix', 'kernel')) + _DENSE1X1
    m['classifier.linear.weight'] = ('params', ('head', 'classifier', 'kernel')) + _LINEAR
    m['classifier.linear.bias'] = ('params', ('head', 'classifier', 'bias')) + _SAME
    return m


def _collapse(name: str) -> str:
    """One spelling for OFA's optional wrapper levels and old module names."""
    name = name.replace('.mobile_inverted_conv.', '.conv.')
    name = name.replace('.bn.bn.', '.bn.').replace('.linear.linear.', '.linear.')
    return name.replace('.conv.conv.weight', '.conv.weight')


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def from_ofa_state_dict(state_dict: Mapping[str, Any],
                        width: float = 1.2,
                        *,
                        reference: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Converts an OFA ``OFAMobileNetV3`` state dict to SuperNet variables.

    Args:
      state_dict: name -> array (numpy or anything ``np.asarray`` takes).
      width: the checkpoint's width multiplier (1.0 or 1.2).
      reference: optional SuperNet variables whose shapes every converted
        tensor must match (e.g. ``subnet.init_variables(SuperNet(...), ...)``).

    Returns:
      ``{'params': ..., 'batch_stats': ...}`` of float32 numpy arrays.

    Raises:
      ValueError: naming missing or unknown tensors, or a shape mismatch.
    """
    entries = {_collapse(k): (k, v) for k, v in name_map(width).items()}
    out: dict[str, Any] = {'params': {}, 'batch_stats': {}}
    seen, unknown = set(), []
    for key, value in state_dict.items():
        if key.endswith('num_batches_tracked'):
            continue
        hit = entries.get(_collapse(key))
        if hit is None:
            unknown.append(key)
            continue
        canonical, (collection, path, to_flax, _) = hit
        seen.add(canonical)
        array = to_flax(np.asarray(value, np.float32))
        if reference is not None:
            want = tuple(np.shape(_get(reference[collection], path)))
            if array.shape != want:
                raise ValueError(f'{key}: converted shape {array.shape} does not match the '
                                 f'supernet\'s {want} at {collection}/{"/".join(path)} '
                                 f'(wrong width? expected w{width})')
        _set(out[collection], path, array)
    if unknown:
        raise ValueError(f'state_dict: {len(unknown)} unknown tensor(s), e.g. {unknown[:3]}; '
                         'expected OFAMobileNetV3 names such as first_conv.conv.weight')
    missing = sorted(set(name_map(width)) - seen)
    if missing:
        raise ValueError(f'state_dict: {len(missing)} missing tensor(s), e.g. {missing[:3]}')
    return out


def to_ofa_state_dict(variables: Mapping[str, Any], width: float = 1.2) -> dict[str, np.ndarray]:
    """SuperNet variables -> an OFA-named state dict (the inverse conversion)."""
    return {
        name: to_torch(np.asarray(_get(variables[collection], path)))
        for name, (collection, path, _, to_torch) in name_map(width).items()
    }


def checkpoint_width(state_dict: Mapping[str, Any]) -> float:
    """The width (1.0 or 1.2) of an OFA supernet state dict, from its first conv's channels."""
    key = next((k for k in state_dict if _collapse(k) == 'first_conv.conv.weight'), None)
    if key is None:
        raise ValueError('state_dict: no first_conv.conv.weight; expected an OFAMobileNetV3 '
                         'state dict')
    channels = int(np.shape(state_dict[key])[0])
    by_channels = {spec.net_spec(w).first_channels: w for w in space.WIDTHS}
    if channels not in by_channels:
        raise ValueError(f'{key}: {channels} output channels; allowed: '
                         f'{", ".join(f"{c} (w{w})" for c, w in sorted(by_channels.items()))}')
    return float(by_channels[channels])


def load_pth(path: str | os.PathLike, width: float | None = None) -> tuple[float, dict[str, Any]]:
    """Reads an OFA supernet checkpoint (``.pth``) without PyTorch.

    The file is what OFA publishes as ``ofa_mbv3_d234_e346_k357_w1.0`` /
    ``_w1.2`` (a ``{'state_dict': ...}`` dict, or the state dict itself), read
    with :func:`ofa_jax.torch_pickle.load`, which builds arrays only and
    refuses any other object.

    Args:
      path: the checkpoint file.
      width: its width; ``None`` infers it from the first conv.

    Returns:
      ``(width, variables)``: SuperNet variables for
      ``supernet.build_supernet(width)`` and ``extract.extract_subnet``.
    """
    obj = torch_pickle.load(path)
    if isinstance(obj, Mapping) and isinstance(obj.get('state_dict'), Mapping):
        obj = obj['state_dict']
    if not isinstance(obj, Mapping):
        raise ValueError(f'{os.fspath(path)}: holds a {type(obj).__name__}, not a state dict')
    width = checkpoint_width(obj) if width is None else float(width)
    return width, from_ofa_state_dict(obj, width)
