"""Spec table of known accelerators, for hardware-conditioned latency predictors.

Each :class:`HardwareSpec` holds vendor datasheet values (peak numbers, not
measurements): CUDA cores (TensorCores for TPUs), SM count, memory size,
memory bandwidth and peak dense FP32 throughput (TPUs: ``fp32_tflops`` is
``None`` and ``bf16_tflops`` holds the MXU peak). Every entry names its source;
where the figures were checked against public pages the source string cites
them, and entries nobody has checked say so (``'figures not checked against a
cited page'``).

Names resolve through normalised aliases: lower case, every non-alphanumeric
character dropped and a leading ``nvidia``/``geforce``/``tesla`` ignored, so
``'2080ti'``, ``'rtx_2080_ti'`` and ``'NVIDIA GeForce RTX 2080 Ti'`` (JAX's
``device.device_kind``) all find the RTX 2080 Ti. A bare family name
(``'v100'``, ``'a100'``, ``'h100'``) resolves to the variant named in its alias
list (the SXM part, which is what most published measurements used).
"""

from __future__ import annotations

import dataclasses
import math
import re

_NVIDIA_DS = 'NVIDIA datasheet'
# Entries whose figures nobody here has checked against a page they cite.
_UNCHECKED = ' (figures not checked against a cited page)'


@dataclasses.dataclass(frozen=True)
class HardwareSpec:
    """Datasheet facts about one accelerator.

    Attributes:
      name: canonical name, e.g. ``'rtx_2080_ti'``.
      aliases: other names it is known by (JAX device kinds included).
      kind: ``'gpu'``, ``'tpu'`` or ``'cpu'``.
      cores: CUDA cores (GPU) or TensorCores per chip (TPU).
      sm_count: streaming multiprocessors (GPU); ``None`` for TPUs.
      memory_gb: device memory in GB.
      bandwidth_gbs: peak memory bandwidth in GB/s.
      fp32_tflops: peak dense FP32 TFLOP/s (boost clock); ``None`` where the
        vendor publishes none (TPUs).
      source: citation of the datasheet the numbers come from.
      bf16_tflops: peak dense BF16 TFLOP/s where relevant (TPUs), else ``None``.
    """

    name: str
    aliases: tuple[str, ...]
    kind: str
    cores: int
    sm_count: int | None
    memory_gb: float
    bandwidth_gbs: float
    fp32_tflops: float | None
    source: str
    bf16_tflops: float | None = None

    @property
    def peak_tflops(self) -> float:
        """FP32 peak where published, else the BF16 peak (TPUs)."""
        return float(self.fp32_tflops if self.fp32_tflops is not None else self.bf16_tflops)


def _gpu(name, aliases, cores, sms, mem, bw, tflops, source):
    return HardwareSpec(name=name,
                        aliases=tuple(aliases),
                        kind='gpu',
                        cores=cores,
                        sm_count=sms,
                        memory_gb=float(mem),
                        bandwidth_gbs=float(bw),
                        fp32_tflops=float(tflops),
                        source=source)


def _tpu(name, aliases, cores, mem, bw, bf16, source):
    return HardwareSpec(name=name,
                        aliases=tuple(aliases),
                        kind='tpu',
                        cores=cores,
                        sm_count=None,
                        memory_gb=float(mem),
                        bandwidth_gbs=float(bw),
                        fp32_tflops=None,
                        source=source,
                        bf16_tflops=float(bf16))


_TPU_DOC = ('Google Cloud TPU system architecture docs '
            '(cloud.google.com/tpu/docs/system-architecture)')

# Peak FP32 numbers are at the vendor's boost clock for the reference design.
SPECS: tuple[HardwareSpec, ...] = (
    # Data-centre GPUs.
    _gpu('k80', ['tesla_k80', 'Tesla K80'], 4992, 26, 24, 480, 8.73,
         f'{_NVIDIA_DS}: Tesla K80 (2 x GK210, boost){_UNCHECKED}'),
    _gpu('p4', ['tesla_p4', 'Tesla P4'], 2560, 20, 8, 192, 5.5,
         f'{_NVIDIA_DS}: Tesla P4{_UNCHECKED}'),
    _gpu('p40', ['tesla_p40', 'Tesla P40'], 3840, 30, 24, 347, 12.0,
         f'{_NVIDIA_DS}: Tesla P40{_UNCHECKED}'),
    _gpu('p100_pcie_16gb', ['p100', 'tesla_p100', 'Tesla P100-PCIE-16GB'], 3584, 56, 16, 732, 9.3,
         f'{_NVIDIA_DS}: Tesla P100 PCIe{_UNCHECKED}'),
    _gpu('p100_sxm2', ['Tesla P100-SXM2-16GB'], 3584, 56, 16, 732, 10.6,
         f'{_NVIDIA_DS}: Tesla P100 SXM2{_UNCHECKED}'),
    _gpu('v100_sxm2_16gb', ['v100', 'tesla_v100', 'v100_sxm2', 'Tesla V100-SXM2-16GB'], 5120, 80,
         16, 900, 15.7, f'{_NVIDIA_DS}: Tesla V100 (SXM2){_UNCHECKED}'),
    _gpu('v100_sxm2_32gb', ['Tesla V100-SXM2-32GB', 'v100_32gb'], 5120, 80, 32, 900, 15.7,
         f'{_NVIDIA_DS}: Tesla V100 (SXM2){_UNCHECKED}'),
    _gpu('v100_pcie_16gb', ['v100_pcie', 'Tesla V100-PCIE-16GB'], 5120, 80, 16, 900, 14.0,
         f'{_NVIDIA_DS}: Tesla V100 (PCIe){_UNCHECKED}'),
    _gpu('v100_pcie_32gb', ['Tesla V100-PCIE-32GB'], 5120, 80, 32, 900, 14.0,
         f'{_NVIDIA_DS}: Tesla V100 (PCIe){_UNCHECKED}'),
    _gpu('t4', ['tesla_t4', 'Tesla T4'], 2560, 40, 16, 320, 8.1, f'{_NVIDIA_DS}: T4{_UNCHECKED}'),
    _gpu('a10', ['NVIDIA A10'], 9216, 72, 24, 600, 31.2, f'{_NVIDIA_DS}: A10{_UNCHECKED}'),
    _gpu('a30', ['NVIDIA A30'], 3584, 56, 24, 933, 10.3, f'{_NVIDIA_DS}: A30{_UNCHECKED}'),
    _gpu('a40', ['NVIDIA A40'], 10752, 84, 48, 696, 37.4, f'{_NVIDIA_DS}: A40{_UNCHECKED}'),
    _gpu('a100_pcie_40gb', ['a100_pcie', 'NVIDIA A100-PCIE-40GB'], 6912, 108, 40, 1555, 19.5,
         f'{_NVIDIA_DS}: A100 Tensor Core GPU (PCIe 40GB){_UNCHECKED}'),
    _gpu('a100_pcie_80gb', ['NVIDIA A100 80GB PCIe', 'NVIDIA A100-PCIE-80GB'], 6912, 108, 80, 1935,
         19.5, f'{_NVIDIA_DS}: A100 Tensor Core GPU (PCIe 80GB){_UNCHECKED}'),
    _gpu('a100_sxm4_40gb', ['a100', 'a100_sxm', 'NVIDIA A100-SXM4-40GB'], 6912, 108, 40, 1555, 19.5,
         f'{_NVIDIA_DS}: A100 Tensor Core GPU (SXM4 40GB){_UNCHECKED}'),
    _gpu('a100_sxm4_80gb', ['a100_80gb', 'NVIDIA A100-SXM4-80GB'], 6912, 108, 80, 2039, 19.5,
         f'{_NVIDIA_DS}: A100 Tensor Core GPU (SXM4 80GB){_UNCHECKED}'),
    _gpu('l4', ['NVIDIA L4'], 7424, 58, 24, 300, 30.3,
         f'{_NVIDIA_DS}: L4 Tensor Core GPU{_UNCHECKED}'),
    _gpu('l40s', ['NVIDIA L40S'], 18176, 142, 48, 864, 91.6, f'{_NVIDIA_DS}: L40S{_UNCHECKED}'),
    _gpu('h100_pcie', ['NVIDIA H100 PCIe'], 14592, 114, 80, 2000, 51.0,
         f'{_NVIDIA_DS}: H100 Tensor Core GPU (PCIe){_UNCHECKED}'),
    _gpu('h100_sxm', ['h100', 'NVIDIA H100 80GB HBM3', 'h100_sxm5'], 16896, 132, 80, 3350, 67.0,
         f'{_NVIDIA_DS}: H100 Tensor Core GPU (SXM){_UNCHECKED}'),
    _gpu('h200', ['h200_sxm', 'NVIDIA H200'], 16896, 132, 141, 4800, 67.0,
         f'{_NVIDIA_DS}: H200 Tensor Core GPU (SXM){_UNCHECKED}'),
    # Desktop GPUs. The four below were checked against the pages cited (NVIDIA's
    # launch figures as tabulated by the press; the Turing whitepaper's reference
    # specifications); peak FP32 = 2 x CUDA cores x reference boost clock.
    _gpu(
        'gtx_1080_ti', ['1080ti', 'NVIDIA GeForce GTX 1080 Ti'], 3584, 28, 11, 484, 11.3,
        'NVIDIA GeForce GTX 1080 Ti product specifications; checked: 28 SMs, 3584 cores, '
        '1582 MHz boost (bit-tech.net, "Nvidia\'s Turing architecture explained", spec '
        'table), 11 GB, 484 GB/s (techgage.com, "NVIDIA reveals new top-end TITAN Xp"); '
        '11.3 = 2 x 3584 x 1.582 GHz'),
    _gpu(
        'rtx_2080_ti', ['2080ti', 'NVIDIA GeForce RTX 2080 Ti'], 4352, 68, 11, 616, 13.4,
        'NVIDIA GeForce RTX 2080 Ti product specifications; Turing whitepaper (reference '
        'boost); checked: 68 SMs, 4352 cores, 1545 MHz reference boost (bit-tech.net, '
        '"Nvidia\'s Turing architecture explained", from the whitepaper), 11 GB, 616 GB/s '
        '(techpowerup.com, "NVIDIA Turing GeForce RTX Technology & Architecture", p. 3); '
        '13.4 = 2 x 4352 x 1.545 GHz (Founders Edition, 1635 MHz: 14.2)'),
    _gpu(
        'titan_xp', ['nvidia_titan_xp', 'NVIDIA TITAN Xp'], 3840, 30, 12, 547.6, 12.1,
        'NVIDIA TITAN Xp product specifications; checked: 30 SMs, 3840 cores, 1582 MHz '
        'boost, 547.7 GB/s, "12 TFLOPS" (NVIDIA launch table, gamerevolution.com, "The '
        'Nvidia TITAN Xp is now the world\'s most powerful graphics card"), 12 GB GDDR5X '
        '(techgage.com, "NVIDIA reveals new top-end TITAN Xp"); 12.1 = 2 x 3840 x 1.582 '
        'GHz; 547.6 GB/s as in the HELP data README, 0.02% below the published 547.7'),
    _gpu(
        'titan_rtx', ['nvidia_titan_rtx', 'NVIDIA TITAN RTX'], 4608, 72, 24, 672, 16.3,
        'NVIDIA TITAN RTX product specifications; checked: 4608 cores, 72 RT cores (one per '
        'SM: 72 SMs), 1770 MHz boost, 16.3 TFLOPS FP32, 24 GB, 672 GB/s (tomshardware.com, '
        '"Nvidia Titan RTX specs, pricing", 2018-12-03; the same in hothardware.com\'s '
        'announcement)'),
    _gpu('rtx_3090', ['3090', 'NVIDIA GeForce RTX 3090'], 10496, 82, 24, 936, 35.6,
         'NVIDIA GeForce RTX 3090 product specifications; Ampere GA102 whitepaper' + _UNCHECKED),
    _gpu('rtx_4090', ['4090', 'NVIDIA GeForce RTX 4090'], 16384, 128, 24, 1008, 82.6,
         'NVIDIA GeForce RTX 4090 product specifications; Ada Lovelace whitepaper' + _UNCHECKED),
    # TPUs (per chip).
    # v2: Google's v2 page no longer lists figures; these are Jouppi et al., "A
    # Domain Specific Supercomputer for Training Deep Neural Networks", CACM 2020
    # (16 GiB HBM at 700 GB/s; 45 TFLOPS: Cloud's 180 per 4-chip v2-8 board).
    _tpu('tpu_v2', ['TPU v2', 'v2'], 2, 16, 700, 45.0,
         'Jouppi et al., CACM 2020 (TPUv2); Cloud TPU v2-8: 180 TFLOPS per 4 chips' + _UNCHECKED),
    _tpu('tpu_v3', ['TPU v3', 'v3'], 2, 32, 900, 123.0, _TPU_DOC + _UNCHECKED),
    _tpu('tpu_v4', ['TPU v4', 'v4'], 2, 32, 1200, 275.0, _TPU_DOC + _UNCHECKED),
    _tpu('tpu_v5e', ['TPU v5 lite', 'TPU v5e', 'v5e', 'v5litepod'], 1, 16, 819, 197.0,
         _TPU_DOC + _UNCHECKED),
)

_PREFIXES = ('nvidia', 'geforce', 'tesla')


def normalize(name: str) -> str:
    """Lower case, alphanumerics only, vendor prefixes removed."""
    key = re.sub(r'[^0-9a-z]', '', str(name).lower())
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix) and len(key) > len(prefix):
                key = key[len(prefix):]
                changed = True
    return key


def _build_index() -> dict[str, HardwareSpec]:
    index: dict[str, HardwareSpec] = {}
    for spec in SPECS:
        for alias in (spec.name,) + spec.aliases:
            key = normalize(alias)
            if key in index and index[key] is not spec:
                raise AssertionError(f'hardware alias {alias!r} is ambiguous')
            index[key] = spec
    return index


_INDEX = _build_index()


def names() -> tuple[str, ...]:
    """Canonical names of every known accelerator."""
    return tuple(s.name for s in SPECS)


def lookup(name_or_device_kind: str) -> HardwareSpec | None:
    """The spec for a name, alias or JAX ``device_kind``; ``None`` if unknown."""
    if name_or_device_kind is None:
        return None
    return _INDEX.get(normalize(name_or_device_kind))


def get(name: str) -> HardwareSpec:
    """Like :func:`lookup` but raises ``ValueError`` listing the known names."""
    spec = lookup(name)
    if spec is None:
        raise ValueError(f'hardware: unknown device {name!r}; known: {", ".join(names())}')
    return spec


FEATURE_NAMES = ('log_cores', 'log_memory_gb', 'log_bandwidth_gbs', 'log_peak_tflops')


def raw_features(spec: HardwareSpec) -> tuple[float, ...]:
    """Log-scaled hardware features (before standardisation), see ``FEATURE_NAMES``.

    Logs because latency scales multiplicatively with throughput; predictors
    standardise these with statistics stored alongside the model.
    """
    return (math.log(spec.cores), math.log(spec.memory_gb), math.log(spec.bandwidth_gbs),
            math.log(spec.peak_tflops))
