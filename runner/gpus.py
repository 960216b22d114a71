"""The GPU catalog: one place for GPU names, memory, features, provider names and prices.

Backends translate `resources.gpu` through this table instead of keeping their own
spellings (Modal's `A10G` is vast.ai's `A10`), so a new provider is one more column.
Prices are US$ per GPU-hour as published by each provider on PRICES_READ_ON.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PRICES_READ_ON = "2026-11-24"
# Where each provider's price comes from, for `gpujob gpus` and the plan.
PRICE_SOURCES = {
    "modal": f"Modal's published per-second GPU price (modal.com/pricing), read {PRICES_READ_ON}",
    "kaggle": "free within Kaggle's weekly GPU quota (a T4 x2 notebook, `gpujob export kaggle`)",
    "vast": "a market: offers change by the minute; `gpujob submit --backend vast --dry-run` shows today's",
}
# The images gpujob ships (Docker, vast.ai, Modal) carry the pinned torch, a CUDA 13 build, whose
# kernels start at compute capability 7.5 (Turing): older cards (V100's 7.0) cannot run it.
IMAGE_MIN_CAPABILITY = 7.5
IMAGE_TORCH = "torch 2.15 (CUDA 13)"
# bf16 is hardware from Ampere (8.0) on. Below it torch.cuda.is_bf16_supported() still says True
# (its default counts emulation), but cuDNN has no bf16 convolutions there: a T4 or V100 fails.
BF16_MIN_CAPABILITY = 8.0


@dataclass(frozen=True)
class GpuType:
    name: str  # canonical, as written in specs (Modal's spelling where Modal has it)
    memory_gb: int
    provider_names: dict[str, str | tuple[str, ...]] = field(default_factory=dict)  # a tuple: several names for one card
    price_per_hour: dict[str, float] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    # How CUDA names this card (torch.cuda.get_device_name), and the memory that tells apart
    # two cards of one name (A100 40 GB / 80 GB): how `backend: auto` knows it is here.
    device_pattern: str = ""
    min_memory_gb: float = 0
    compute_capability: float = 0.0  # CUDA's sm_XY as X.Y: which torch builds have kernels for it
    bandwidth_gbs: float = 0.0  # memory bandwidth, GB/s
    tensor_tflops: float = 0.0  # dense tensor-core peak at bf16 (fp16 where the card has no bf16), no sparsity
    fp32_tflops: float = 0.0  # dense fp32 peak without tensor cores
    link_gbs: float = 25.0  # GPU-to-GPU bandwidth per direction in a multi-GPU machine: PCIe 4 x16, or NVLink

    @property
    def bf16(self) -> bool:
        return has_bf16(self.compute_capability)

    def peak_tflops(self, precision: str) -> float:
        """The dense peak a job at `precision` can reach on one of these cards."""
        return self.tensor_tflops if precision in ("bf16", "fp16") else self.fp32_tflops

    def is_device(self, device_name: str, memory_gb: float) -> bool:
        return bool(re.search(self.device_pattern, device_name, re.I)) and memory_gb >= self.min_memory_gb


# Peaks and bandwidths: NVIDIA's datasheets (SXM where a card comes in two forms; dense, no
# sparsity; A10G from AWS's G5 figures), read on PRICES_READ_ON.
CATALOG: tuple[GpuType, ...] = (
    GpuType("T4", 16, {"modal": "T4", "vast": "Tesla T4", "kaggle": "T4"}, {"modal": 0.59, "kaggle": 0.0}, device_pattern=r"\bT4\b",
            compute_capability=7.5,
            bandwidth_gbs=320, tensor_tflops=65, fp32_tflops=8.1, link_gbs=12),
    GpuType("L4", 24, {"modal": "L4", "vast": "L4"}, {"modal": 0.80}, device_pattern=r"\bL4\b",
            compute_capability=8.9,
            bandwidth_gbs=300, tensor_tflops=121, fp32_tflops=30.3),
    GpuType("A10G", 24, {"modal": "A10G", "vast": "A10"}, {"modal": 1.10}, ("A10",),
            device_pattern=r"\bA10G?\b", compute_capability=8.6,
            bandwidth_gbs=600, tensor_tflops=70, fp32_tflops=31.2),
    # vast.ai sells A100s of both memory sizes as PCIE and SXM4: the memory tells them apart.
    GpuType("A100-40GB", 40, {"modal": "A100-40GB", "vast": ("A100 PCIE", "A100 SXM4")}, {"modal": 2.10},
            ("A100",), device_pattern=r"\bA100\b", min_memory_gb=35, compute_capability=8.0,
            bandwidth_gbs=1555, tensor_tflops=312, fp32_tflops=19.5, link_gbs=300),
    GpuType("A100-80GB", 80, {"modal": "A100-80GB", "vast": ("A100 SXM4", "A100 PCIE")}, {"modal": 2.50},
            device_pattern=r"\bA100\b", min_memory_gb=70, compute_capability=8.0,
            bandwidth_gbs=2039, tensor_tflops=312, fp32_tflops=19.5, link_gbs=300),
    GpuType("L40S", 48, {"modal": "L40S", "vast": "L40S"}, {"modal": 1.95}, device_pattern=r"\bL40S\b",
            compute_capability=8.9,
            bandwidth_gbs=864, tensor_tflops=362, fp32_tflops=91.6),
    GpuType("H100", 80, {"modal": "H100", "vast": ("H100 SXM", "H100 PCIE", "H100 NVL")}, {"modal": 3.95},
            device_pattern=r"\bH100\b", compute_capability=9.0,
            bandwidth_gbs=3350, tensor_tflops=989, fp32_tflops=67, link_gbs=450),
    GpuType("H200", 141, {"modal": "H200", "vast": "H200"}, {"modal": 4.54}, device_pattern=r"\bH200\b",
            compute_capability=9.0,
            bandwidth_gbs=4800, tensor_tflops=989, fp32_tflops=67, link_gbs=450),
    GpuType("B200", 180, {"modal": "B200", "vast": "B200"}, {"modal": 6.25}, device_pattern=r"\bB200\b",
            compute_capability=10.0,
            bandwidth_gbs=8000, tensor_tflops=2250, fp32_tflops=80, link_gbs=900),
    GpuType("RTX4090", 24, {"vast": "RTX 4090"}, {}, ("RTX-4090",), device_pattern=r"\b4090\b",
            compute_capability=8.9,
            bandwidth_gbs=1008, tensor_tflops=165, fp32_tflops=82.6),
    GpuType("RTX3090", 24, {"vast": "RTX 3090"}, {}, ("RTX-3090",), device_pattern=r"\b3090\b",
            compute_capability=8.6,
            bandwidth_gbs=936, tensor_tflops=71, fp32_tflops=35.6),
    GpuType("V100", 16, {"vast": "Tesla V100"}, {}, device_pattern=r"\bV100\b", compute_capability=7.0,
            bandwidth_gbs=900, tensor_tflops=125, fp32_tflops=15.7, link_gbs=150),
)

_BY_NAME = {key.upper(): gpu for gpu in CATALOG for key in (gpu.name, *gpu.aliases)}
_REQUEST = re.compile(r"^\s*([A-Za-z0-9-]+)\s*(?::\s*(\d+))?\s*$")


@dataclass(frozen=True)
class GpuRequest:
    type: GpuType
    count: int

    def __str__(self) -> str:
        return f"{self.type.name}:{self.count}"

    def on(self, provider: str) -> str:
        """This GPU's name at a provider, or a ValueError listing the ones it offers."""
        return self.names_on(provider)[0]

    def names_on(self, provider: str) -> tuple[str, ...]:
        """Every name the provider sells this GPU under (vast.ai: A100 PCIE and SXM4)."""
        if provider not in self.type.provider_names:
            offered = ", ".join(g.name for g in CATALOG if provider in g.provider_names)
            raise ValueError(f"{provider} does not offer {self.type.name}; it offers: {offered}")
        names = self.type.provider_names[provider]
        return (names,) if isinstance(names, str) else names

    def runs_the_image(self) -> bool:
        return self.type.compute_capability >= IMAGE_MIN_CAPABILITY

    def image_refusal(self) -> str:
        return (f"resources.gpu: {self.type.name} (compute capability {self.type.compute_capability}) is too old for "
                f"the image's {IMAGE_TORCH}, whose kernels need {IMAGE_MIN_CAPABILITY} or newer; "
                "pick T4 or a newer card")


def has_bf16(capability: float) -> bool:
    return capability >= BF16_MIN_CAPABILITY


def bf16_refusal(card: str, capability: float) -> str | None:
    """Why `card` cannot train in bf16, or None: the one sentence the spec, the dry run, the
    Kaggle export and the device itself refuse it with."""
    if has_bf16(capability):
        return None
    return (f"{card} (compute capability {capability:.1f}) has no bf16, which needs {BF16_MIN_CAPABILITY:.1f} (Ampere) "
            "or newer; use fp16 (gpujob runs it with a gradient scaler) or fp32")


def capability_of(major: int, minor: int) -> float:
    """CUDA's (major, minor), as torch.cuda.get_device_capability gives it, as the catalog writes it."""
    return major + minor / 10


def known_names() -> str:
    return ", ".join(g.name for g in CATALOG)


def parse_gpu(text: str) -> GpuRequest | None:
    """`A10G:2` -> GpuRequest(A10G, 2); `cpu` -> None. ValueError names the known types."""
    if text.strip().lower() in ("cpu", "none", ""):
        return None
    match = _REQUEST.match(text)
    if not match:
        raise ValueError(f"'{text}' is not TYPE[:COUNT], e.g. A10G:2 or cpu")
    gpu = _BY_NAME.get(match.group(1).upper())
    if gpu is None:
        raise ValueError(f"unknown GPU type '{match.group(1)}'; known types: {known_names()}")
    count = int(match.group(2) or 1)
    if not 1 <= count <= 8:
        raise ValueError(f"GPU count must be 1 to 8 per node, got {count}")
    return GpuRequest(gpu, count)
