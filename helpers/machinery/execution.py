"""How the arithmetic runs on a device: precision and memory layout, chosen from its hardware.

Precision is a setting of the machine, not a hyperparameter of the recipe. `resolve` makes the choice,
once; everything that trains or evaluates asks it.

A GPU needs no measurement: its compute capability says what its tensor cores do, and the gap is wide
and the same on every GPU of a capability (bf16 at 8.0 and above, fp16 with a gradient scaler below,
where there are no bf16 convolutions), so the table AUTO decides. A CPU does need one: bf16 autocast
trained 2.5x as fast as fp32 on an AMD Zen 4 and 0.77x as fast on an Intel Xeon, both with AVX512-BF16,
because what oneDNN makes of bf16 depends on more than one flag (AMX, the kernels registered for it). So
on a CPU the table only says what is worth timing, and autotune.py times the training step and remembers.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from . import autotune
from .autotune import Measurement
from .device import Hardware, hardware

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}  # autocast dtype of each setting
CHOICES = ("auto", *PRECISIONS)

# What precision="auto" means: (device type, native bf16) -> (precision, channels_last). On a CPU with native
# bf16 the row names the candidate that autotune times against fp32, not the answer (see the docstring).
# channels_last: faster on every CPU measured (fp32 40.5 vs 34.6 images/s on an AVX2 EPYC, 71.5 vs 65.1
# on an AVX-512 Xeon without BF16; benchmarks/results/), and the layout GPU tensor cores use for convolutions.
AUTO = {
    ("cuda", True): ("bf16", True),  # compute capability >= 8.0 (A100, H100, RTX 30xx/40xx): no loss scaling needed
    ("cuda", False): ("fp16", True),  # T4, V100, RTX 20xx: no bf16 convolutions; fp16 with a GradScaler is standard
    ("cpu", True): ("bf16", True),  # AVX512-BF16 or AMX: bf16 when measured >= 10% faster than fp32, else fp32
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
    measured: Measurement | None = None  # what auto chose from on this CPU; None on a GPU or when asked for

    @property
    def label(self) -> str:
        tf32 = self.precision == "fp32" and self.device.type == "cuda" and self.hardware.native_bf16
        return f"{'fp32 (TF32)' if tf32 else self.precision}, {'channels_last' if self.channels_last else 'NCHW'}"

    @property
    def described(self) -> str:
        """The label and, where auto measured, the figures it chose from: what each history row names."""
        return f"{self.label} ({self.measured})" if self.measured else self.label

    def __str__(self) -> str:
        return f"{self.described} on {self.hardware}"

    def as_dict(self) -> dict:
        found = {"precision": self.precision, "channels_last": self.channels_last, "hardware": str(self.hardware)}
        if self.measured:
            found["measured_images_per_s"] = dict(self.measured.images_per_s)
        return found

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


def resolve(
    device: torch.device,
    precision: str = "auto",
    facts: Hardware | None = None,
    batch_size: int | None = None,
    timer: autotune.Timer | None = None,
) -> Execution:
    """The execution for `device`: on a GPU AUTO's row for its hardware, on a CPU the measured fastest
    (autotune.measured, for this `batch_size`: the recipe's by default), or the precision asked for.

    `facts` replaces the real hardware and `timer` the real timing (tests drive the rule with them). An
    explicit bf16 the CPU only emulates, or that was measured slower than fp32 here, runs with a warning;
    fp16 on a CPU is refused.
    """
    facts = facts or hardware(device)
    if precision not in CHOICES:
        raise ValueError(f"precision must be one of {', '.join(CHOICES)} (got {precision!r})")
    if precision == "fp16" and facts.device_type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; use auto (or fp32) on the CPU.")
    table_precision, channels_last = AUTO[(facts.device_type, facts.native_bf16)]
    measured = (
        autotune.measured(facts, batch_size, timer) if precision == "auto" and facts.device_type == "cpu" else None
    )
    chosen = table_precision if precision == "auto" else precision
    if measured:
        chosen = measured.chosen
    if precision == "bf16":
        warn_if_slow_bf16(facts, batch_size, table_precision)
    if device.type == "cuda":
        use_fast_cuda_kernels()
    return Execution(device, chosen, channels_last, facts, measured)


def warn_if_slow_bf16(facts: Hardware, batch_size: int | None, table_precision: str) -> None:
    """bf16 asked for: warn from this CPU's measurement where one is remembered, else from the flags."""
    known = autotune.remembered_for(facts, batch_size) if facts.device_type == "cpu" else None
    bf16, fp32 = (known.rate("bf16"), known.rate("fp32")) if known else (None, None)
    if known and bf16 is not None and fp32 is not None:
        if bf16 < fp32:
            warnings.warn(
                f"bf16 was asked for, but on {facts} it trained {bf16:.0f} images/s against fp32's {fp32:.0f} "
                f"(measured here): precision 'auto' (--precision auto) picks {known.chosen} here.",
                SlowPrecisionWarning,
                stacklevel=3,
            )
    elif not facts.native_bf16:
        warnings.warn(
            f"bf16 was asked for, but {facts} computes bf16 only by emulation: expect training several "
            f"times slower than fp32 (19x measured on an AVX2 CPU). precision 'auto' (--precision "
            f"auto) picks {table_precision} here.",
            SlowPrecisionWarning,
            stacklevel=3,
        )


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
