"""Our Flax supernet and sub-networks against OFA's own PyTorch code, weight for weight.

Needs PyTorch and MIT Han Lab's ``ofa`` package next to this project, in a
separate environment (CI does not install them)::

    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.13.0 numpy pillow
    /tmp/tv/bin/pip install --no-deps ofa && /tmp/tv/bin/pip install -e .
    /tmp/tv/bin/python -m benchmarks.ofa_torch_parity [--width=1.2] [--num_archs=8]

OFA's package imports torchvision for its data loaders only; torchvision is
not importable beside that torch build, so this script registers empty
stand-ins for it before importing ``ofa`` (nothing here calls them).

What it does, per width:

1. builds OFA's ``OFAMobileNetV3`` (ks 3/5/7, expand 3/4/6, depth 2/3/4)
   with random weights that keep the input visible at the output (see
   :func:`_randomized_ofa`; the ``between_images`` figure says how much two
   images' logits differ), random BatchNorm scales, shifts and statistics,
   SE biases and 7->5 / 5->3 kernel transform matrices;
2. writes its state dict with ``torch.save`` the way OFA publishes its
   checkpoints (``{'state_dict': ...}``);
3. reads that file back with :func:`ofa_jax.ofa_weights.load_pth` (our
   restricted unpickler, no PyTorch) and, for random archs at random
   resolutions, compares the logits of OFA's supernet
   (``set_active_subnet``) and OFA's extracted sub-network
   (``get_active_subnet``) with our :class:`~ofa_jax.supernet.SuperNet`
   (``depthwise='conv'``) and our extracted static sub-network
   (``depthwise='auto'``: shifted slices on CPU), all in inference mode,
   and, as a control, our supernet with one kernel size changed;
4. re-calibrates BatchNorm on the same two calibration batches (sizes 3
   and 2) with OFA's ``set_running_statistics`` and with
   :func:`ofa_jax.accuracy_data.recalibrate_bn`, and compares the logits
   after it (the accuracy-dataset path);
5. compares parameter counts and MACs (OFA's ``count_parameters`` and
   ``count_net_flops``) with :mod:`ofa_jax.counts`; OFA's profiler sums
   its per-layer counts in float32 tensors, so above 2^24 its MACs are
   rounded (by 8-16 near 5e8 here) and ours count as equal within 1e-6.

Writes ``benchmarks/results/ofa_torch_parity.json``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from unittest import mock

from absl import app
from absl import flags
import jax
import numpy as np

from ofa_jax import accuracy_data
from ofa_jax import counts
from ofa_jax import extract
from ofa_jax import ofa_weights
from ofa_jax import space
from ofa_jax import supernet

_WIDTHS = flags.DEFINE_list('width', ['1.0', '1.2'], 'supernet widths to check')
_NUM_ARCHS = flags.DEFINE_integer('num_archs', 8, 'random archs per width')
_RESOLUTIONS = flags.DEFINE_list('resolutions', ['128', '160', '192', '224'],
                                 'resolutions drawn from')
_BATCH = flags.DEFINE_integer('batch', 2, 'images per forward pass')
_SEED = flags.DEFINE_integer('seed', 0, 'seed of weights, archs and inputs')
_OUT = flags.DEFINE_string('out', os.path.join(os.path.dirname(__file__), 'results'),
                           'output folder')


def _import_ofa():
    """OFA's model code, with torchvision stood in for (only its data loaders use it)."""
    for name in ('torchvision', 'torchvision.transforms', 'torchvision.transforms.functional',
                 'torchvision.datasets'):
        sys.modules.setdefault(name, mock.MagicMock(name=name))
    # pylint: disable=g-import-not-at-top
    import torch
    from ofa.imagenet_classification.elastic_nn import networks
    from ofa.imagenet_classification.elastic_nn import utils as elastic_utils
    from ofa.utils import pytorch_utils
    return torch, networks.OFAMobileNetV3, pytorch_utils, elastic_utils.set_running_statistics


def _randomized_ofa(torch, ofa_cls, width: float, seed: int):
    """OFA's supernet with random weights through which an input still shows at the output.

    PyTorch's default initialisation shrinks activations ~6x per layer, so
    after 50 layers the logits would not depend on the input and any two
    implementations would agree. Instead: He-normal kernels, a classifier
    with unit-variance logits, BatchNorm statistics measured on random
    images at the largest sub-network (as OFA recalibrates BN), then random
    BN scales and shifts, SE biases and 7->5 / 5->3 kernel transform matrices
    (identity plus noise), so no layer is an identity and a swapped or
    mis-transposed tensor shows.
    """
    torch.manual_seed(seed)
    net = ofa_cls(n_classes=1000,
                  dropout_rate=0.0,
                  width_mult=width,
                  ks_list=[3, 5, 7],
                  expand_ratio_list=[3, 4, 6],
                  depth_list=[2, 3, 4])
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in)**0.5)
            elif isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / m.in_features**0.5)
                m.bias.zero_()
        state = net.state_dict()
        for name, t in state.items():
            if name.endswith('_matrix'):
                state[name] = torch.eye(t.shape[0]) + 0.1 * torch.randn(t.shape, generator=gen)
            elif name.endswith('se.fc.reduce.bias') or name.endswith('se.fc.expand.bias'):
                state[name] = 0.1 * torch.randn(t.shape, generator=gen)
        net.load_state_dict(state)
        net.set_active_subnet(ks=7, e=6, d=4)
        bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # a plain average over the calibration batches
        net.train()
        for _ in range(4):
            net(torch.randn((8, 3, 128, 128), generator=gen))
        for m in bns:
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            m.running_var.mul_(0.8 + 0.4 * torch.rand(m.running_var.shape, generator=gen))
            m.momentum = 0.1
    return net.eval()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|."""
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def check_width(width: float, rng: np.random.Generator, torch, ofa_cls, pytorch_utils,
                set_running_statistics) -> dict:
    """All comparisons for one width."""
    net = _randomized_ofa(torch, ofa_cls, width, int(rng.integers(1 << 30)))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f'ofa_mbv3_d234_e346_k357_w{width}.pth')
        torch.save({'state_dict': net.state_dict()}, path)
        t0 = time.perf_counter()
        got_width, variables = ofa_weights.load_pth(path)
        load_s = time.perf_counter() - t0
    model = supernet.build_supernet(width, depthwise='conv')
    super_fwd = jax.jit(lambda v, x, a: model.apply(v, x, a))
    resolutions = [int(r) for r in _RESOLUTIONS.value]
    archs = space.unstack(space.sample_np(rng, _NUM_ARCHS.value, resolutions=resolutions))
    rows = []
    for arch in archs:
        d = space.to_ofa_dict(arch, with_wid=False)
        r = d['r'][0]
        x = rng.standard_normal((_BATCH.value, r, r, 3)).astype(np.float32)
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        net.set_active_subnet(ks=d['ks'], e=d['e'], d=d['d'])
        with torch.no_grad():
            ofa_super = net(xt).numpy()
            sub = net.get_active_subnet(preserve_weight=True).eval()
            ofa_sub = sub(xt).numpy()
        ours_super = np.asarray(super_fwd(variables, x, arch))
        # Control: the same, with the first block's kernel size changed; an error of
        # this size is what a wrong tensor would look like.
        other = arch.replace(kernel=arch.kernel.copy())
        other.kernel[0] = 3 if arch.kernel[0] != 3 else 7
        control = np.asarray(super_fwd(variables, x, other))
        sub_model, sub_vars = extract.extract_subnet(variables, arch, width)
        sub_fwd = jax.jit(sub_model.apply)  # one compile for both calls below
        ours_sub = np.asarray(sub_fwd(sub_vars, x))
        # BatchNorm re-calibration (OFA's set_running_statistics vs ours) on the
        # same calibration batches, of unequal sizes, then logits in inference mode.
        calib = [rng.standard_normal((n, r, r, 3)).astype(np.float32) for n in (3, 2)]
        set_running_statistics(sub, [
            (torch.from_numpy(np.ascontiguousarray(c.transpose(0, 3, 1, 2))), None) for c in calib
        ])
        with torch.no_grad():
            ofa_recal = sub(xt).numpy()
        recal_vars = accuracy_data.recalibrate_bn(sub_model, sub_vars, calib)
        ours_recal = np.asarray(sub_fwd(recal_vars, x))
        ofa_params = int(pytorch_utils.count_parameters(sub))
        ofa_macs = int(pytorch_utils.count_net_flops(sub, (1, 3, r, r)))
        rows.append({
            'arch': d,
            'logit_scale': float(np.max(np.abs(ofa_sub))),
            # How much the logits depend on the image (else any two nets would agree).
            'between_images': _rel(ofa_sub[0], ofa_sub[1]),
            'control_one_kernel_changed': _rel(control, ofa_sub),
            'ofa_super_vs_ofa_sub': _rel(ofa_super, ofa_sub),
            'ours_super_vs_ofa_sub': _rel(ours_super, ofa_sub),
            'ours_sub_vs_ofa_sub': _rel(ours_sub, ofa_sub),
            'recalibrated_ours_vs_ofa': _rel(ours_recal, ofa_recal),
            'recalibration_moved': _rel(ofa_recal, ofa_sub),
            'same_top1': bool(np.all(ours_sub.argmax(-1) == ofa_sub.argmax(-1))),
            'params': [int(counts.count_params(arch, width)), ofa_params],
            'macs': [int(counts.count_macs(arch, width)), ofa_macs],
            'depthwise': sub_model.depthwise,
        })
        print(f'w{width} r{r} d{d["d"]}: ours (supernet / sub-network) vs OFA sub-network '
              f'{rows[-1]["ours_super_vs_ofa_sub"]:.1e} / {rows[-1]["ours_sub_vs_ofa_sub"]:.1e} '
              f'(OFA supernet vs its own sub-network {rows[-1]["ofa_super_vs_ofa_sub"]:.1e}, '
              f'image 1 vs image 2 {rows[-1]["between_images"]:.2f}, control '
              f'{rows[-1]["control_one_kernel_changed"]:.2f}); after BN re-calibration '
              f'{rows[-1]["recalibrated_ours_vs_ofa"]:.1e} (it moved the logits by '
              f'{rows[-1]["recalibration_moved"]:.2f}); '
              f'params {rows[-1]["params"][0]:,} vs {ofa_params:,}, MACs '
              f'{rows[-1]["macs"][0]:,} vs {ofa_macs:,}')
    return {
        'width_inferred': got_width,
        'load_seconds': load_s,
        'max_rel_ours_super': max(r['ours_super_vs_ofa_sub'] for r in rows),
        'max_rel_ours_sub': max(r['ours_sub_vs_ofa_sub'] for r in rows),
        'max_rel_ofa_super': max(r['ofa_super_vs_ofa_sub'] for r in rows),
        'max_rel_recalibrated': max(r['recalibrated_ours_vs_ofa'] for r in rows),
        'params_equal': all(r['params'][0] == r['params'][1] for r in rows),
        # OFA's profiler sums in float32 (spacing 32 near 5e8): equal up to its rounding.
        'macs_equal': all(abs(r['macs'][0] - r['macs'][1]) <= 1e-6 * r['macs'][1] for r in rows),
        'macs_max_abs_diff': max(abs(r['macs'][0] - r['macs'][1]) for r in rows),
        'same_top1': all(r['same_top1'] for r in rows),
        'min_between_images': min(r['between_images'] for r in rows),
        'min_control': min(r['control_one_kernel_changed'] for r in rows),
        'rows': rows,
    }


def main(argv):
    del argv
    torch, ofa_cls, pytorch_utils, set_running_statistics = _import_ofa()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rng = np.random.default_rng(_SEED.value)
    out = {
        'command': 'python -m benchmarks.ofa_torch_parity ' + ' '.join(sys.argv[1:]),
        'torch': torch.__version__,
        'jax': jax.__version__,
        'widths': {}
    }
    for w in _WIDTHS.value:
        out['widths'][w] = check_width(float(w), rng, torch, ofa_cls, pytorch_utils,
                                       set_running_statistics)
    print('\nwidth  archs  max rel. error vs OFA: our supernet / our sub-network / after BN '
          're-calibration  images differ by  control  params equal  MACs equal  same top-1')
    for w, res in out['widths'].items():
        print(f'{w:>5}  {len(res["rows"]):5d}  {res["max_rel_ours_super"]:24.1e} / '
              f'{res["max_rel_ours_sub"]:.1e} / {res["max_rel_recalibrated"]:.1e}'
              f'{"":17s}{res["min_between_images"]:>11.2f}  '
              f'{res["min_control"]:7.2f}  '
              f'{str(res["params_equal"]):>12}  {str(res["macs_equal"]):>10}  '
              f'{str(res["same_top1"]):>10}')
    os.makedirs(_OUT.value, exist_ok=True)
    with open(os.path.join(_OUT.value, 'ofa_torch_parity.json'), 'w') as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == '__main__':
    app.run(main)
