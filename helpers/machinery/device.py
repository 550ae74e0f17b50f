"""Which device to run on, what its hardware can do, and how results name it.

`hardware` reads the facts an execution is chosen from (execution.py): the device's name and
whether it computes bf16 natively. Every reported speed names them, because the same code runs
at very different speeds on different machines.
"""

from __future__ import annotations

import functools
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .progress import tell

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 instructions that compute bf16 natively
CPUINFO = Path("/proc/cpuinfo")  # Linux; elsewhere the fallbacks below apply


class DeviceError(RuntimeError):
    """The device asked for is not available."""


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without it is an error, not a silent CPU run.
    'auto' on a machine whose GPU this torch cannot use says so (once) before choosing the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        say_if_gpu_unused()
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise DeviceError(
            f"Device '{name}' was asked for, but no CUDA GPU is available to torch "
            f"{torch.__version__} ({build}). Use --device cpu, or --device auto."
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise DeviceError(
            f"Device '{name}' was asked for, but this machine has {count} CUDA GPU{'s' if count > 1 else ''} "
            f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}). Use one of those, or --device cuda."
        )
    return device


@functools.cache
def say_if_gpu_unused() -> None:
    """Once per process (a notebook's kernel, `make series`), to stderr."""
    problem = gpu_unused()
    if problem:
        tell(problem, file=sys.stderr)


def gpu_unused() -> str | None:
    """Why this torch cannot use the NVIDIA GPU the machine has, and what to install; None when it can,
    or when nvidia-smi lists no GPU. The usual causes: a CPU-only torch, or a torch built for a newer
    CUDA than the driver supports (pip replaced the environment's own torch, say)."""
    if torch.cuda.is_available() or shutil.which("nvidia-smi") is None:
        return None
    listed = nvidia_smi("--query-gpu=name,driver_version", "--format=csv,noheader")
    if not listed:
        return None
    name, _, driver = listed.splitlines()[0].partition(",")
    found = re.search(r"CUDA Version:\s*([0-9.]+)", nvidia_smi() or "")
    cuda = found.group(1) if found else None
    build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    supports = f", which supports CUDA up to {cuda}" if cuda else ""
    wheel = f"cu{cuda.replace('.', '')}" if cuda else "cuXYZ"
    return (
        f"This machine has an NVIDIA {name.strip()} (driver {driver.strip()}{supports}), but torch "
        f"{torch.__version__} ({build}) cannot use it: everything will run on the CPU. Install a torch built "
        f"for CUDA {cuda or 'your driver supports'} or older, e.g. pip install torch torchvision --index-url "
        f"https://download.pytorch.org/whl/{wheel} (the choices: https://pytorch.org/get-started/locally/), "
        "or update the driver."
    )


def nvidia_smi(*arguments: str) -> str | None:
    """nvidia-smi's output, or None where it fails (no driver loaded, no GPU)."""
    try:
        done = subprocess.run(["nvidia-smi", *arguments], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


@dataclass(frozen=True)
class Hardware:
    """The facts about a device that decide how to run on it, and that every speed figure names."""

    device_type: str  # "cpu" or "cuda"
    name: str  # CPU model or GPU name
    native_bf16: bool  # CUDA: compute capability >= 8.0; CPU: AVX512-BF16 or AMX-BF16
    detail: str  # "compute capability 9.0", "2 threads, AVX512" or "2 threads, AVX512, AMX"

    def __str__(self) -> str:
        return f"{self.name} ({self.detail}, {'native' if self.native_bf16 else 'no native'} bf16)"

    @property
    def slug(self) -> str:
        """A file-name form, e.g. intel-xeon-processor-2-threads-avx512-no-bf16 (benchmark results)."""
        words = re.sub(r"\((r|tm)\)|compute capability", "", f"{self.name} {self.detail}".lower())
        words += "" if self.native_bf16 else " no"
        return re.sub(r"[^a-z0-9]+", "-", f"{words} bf16").strip("-")


def hardware(device: torch.device) -> Hardware:
    """The facts of the real `device`."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return Hardware(
            "cuda", torch.cuda.get_device_name(device), (major, minor) >= (8, 0), f"compute capability {major}.{minor}"
        )
    return Hardware(
        "cpu",
        cpu_model(),
        cpu_native_bf16(),
        f"{torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}{', AMX' if cpu_amx() else ''}",
    )


def cpu_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16: torch's own capability query where this torch has one, else the CPU flags."""
    query = getattr(torch.cpu, "get_capabilities", None)  # torch 2.14 has it; older ones may not
    if query is not None:
        capabilities = query()
        return any(capabilities.get(flag, False) for flag in CPU_BF16_FLAGS)
    return any(flag in cpu_flags() for flag in CPU_BF16_FLAGS)


def cpu_amx() -> bool:
    """AMX tiles for bf16, where torch reports them: what oneDNN's fastest bf16 convolutions need, and a CPU
    kind of its own (a virtual machine may hide AMX on a CPU that has it)."""
    query = getattr(torch.cpu, "get_capabilities", None)
    return bool(query().get("amx_bf16", False)) if query is not None else "amx_bf16" in cpu_flags()


def cpu_flags() -> set[str]:
    """The instruction-set flags the kernel reports (Linux), or an empty set."""
    found = re.search(r"^flags\s*:(.*)$", read_cpuinfo(), flags=re.MULTILINE)
    return set(found.group(1).split()) if found else set()


def cpu_model() -> str:
    """The CPU's marketing name, e.g. 'AMD EPYC 9R14 96-Core Processor'."""
    found = re.search(r"^model name\s*:\s*(.+)$", read_cpuinfo(), flags=re.MULTILINE)
    return found.group(1).strip() if found else (platform.processor() or platform.machine() or "CPU")


def read_cpuinfo() -> str:
    return CPUINFO.read_text() if CPUINFO.exists() else ""
