"""How the arithmetic runs on a device: precision and memory layout, chosen from its hardware.

Precision is a setting of the machine, not a hyperparameter of the recipe. bf16 autocast is the
fastest correct choice where the hardware computes bf16 natively, and far slower than fp32 where
it is emulated; GPUs without bf16 convolutions (T4, V100) train in fp16 with a gradient scaler.
`resolve` makes the choice, once, from the table AUTO; everything that trains or evaluates asks it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .device import Hardware, hardware

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}  # autocast dtype of each setting
CHOICES = ("auto", *PRECISIONS)

# What precision="auto" means: (device type, native bf16) -> (precision, channels_last).
# channels_last: faster on every CPU measured (fp32 40.5 vs 34.6 images/s on an AVX2 EPYC, 71.5 vs 65.1
# on an AVX-512 Xeon without BF16; benchmarks/results/), and the layout GPU tensor cores use for convolutions.
AUTO = {
    ("cuda", True): ("bf16", True),  # compute capability >= 8.0 (A100, H100, RTX 30xx/40xx): no loss scaling needed
    ("cuda", False): ("fp16", True),  # T4, V100, RTX 20xx: no bf16 convolutions; fp16 with a GradScaler is standard
    ("cpu", True): ("bf16", True),  # AVX512-BF16 or AMX: bf16 + channels_last 2.4x fp32 NCHW on a Zen 4
    ("cpu", False): ("fp32", True),  # bf16 emulated: 19x slower than fp32 on an AVX2 EPYC, 3.6x on an AVX-512 Xeon
}


class SlowPrecisionWarning(UserWarning):
    """bf16 was asked for on hardware that only emulates it."""


@dataclass(frozen=True)
class Execution:
    """Where and how one run computes: device, autocast precision, memory layout, and the hardware facts."""

    device: torch.device
    precision: str  # bf16, fp16 or fp32
    channels_last: bool  # NHWC memory layout for the convolutions
    hardware: Hardware

    @property
    def label(self) -> str:
        tf32 = self.precision == "fp32" and self.device.type == "cuda" and self.hardware.native_bf16
        return f"{'fp32 (TF32)' if tf32 else self.precision}, {'channels_last' if self.channels_last else 'NCHW'}"

    def __str__(self) -> str:
        return f"{self.label} on {self.hardware}"

    def as_dict(self) -> dict:
        return {"precision": self.precision, "channels_last": self.channels_last, "hardware": str(self.hardware)}

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> torch.autocast:
        """The autocast context of this precision (a no-op for fp32)."""
        dtype = PRECISIONS[self.precision]
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    @property
    def scales_loss(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 (fp32's range) and fp32 need none."""
        return self.precision == "fp16"

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.scales_loss)


def resolve(device: torch.device, precision: str = "auto", facts: Hardware | None = None) -> Execution:
    """The execution for `device`: AUTO's row for its hardware, or the precision asked for.

    `facts` replaces the real hardware (tests drive the table with it). An explicit bf16 on hardware
    without native bf16 runs, with a warning; fp16 on a CPU is refused.
    """
    facts = facts or hardware(device)
    auto_precision, channels_last = AUTO[(facts.device_type, facts.native_bf16)]
    chosen = auto_precision if precision == "auto" else precision
    if chosen not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(CHOICES)} (got {precision!r})")
    if chosen == "fp16" and facts.device_type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; use auto (or fp32) on the CPU.")
    if chosen == "bf16" and not facts.native_bf16:
        warnings.warn(
            f"bf16 was asked for, but {facts} computes bf16 only by emulation: expect training several "
            f"times slower than fp32 (19x measured on an AVX2 CPU). precision 'auto' (--precision "
            f"auto) picks {auto_precision} here.",
            SlowPrecisionWarning,
            stacklevel=2,
        )
    if device.type == "cuda":
        use_fast_cuda_kernels()
    return Execution(device, chosen, channels_last, facts)


def use_fast_cuda_kernels() -> None:
    """The usual switches for a fixed-shape convolution net on a GPU: cuDNN autotuning picks the fastest
    convolution algorithm for each input shape once, and fp32 matmuls and convolutions use TF32 tensor
    cores where the GPU has them (compute capability >= 8.0; elsewhere these settings change nothing).
    The allow_tf32 flags of the CUDA backends: torch.set_float32_matmul_precision would change CPU
    matmuls too, and torch.compile in recent releases (2.10 reported) refuses the newer fp32_precision
    settings, because its own code still reads these."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
