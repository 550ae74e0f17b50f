"""Which device to run on, and how results name it."""
import torch


class DeviceError(RuntimeError):
    """The device asked for is not available."""


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without it is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise DeviceError(f"Device '{name}' was asked for, but no CUDA GPU is available to torch "
                          f"{torch.__version__} ({build}). Use --device cpu, or --device auto.")
    return device


def device_name(device: torch.device) -> str:
    """The hardware a figure was measured on, as results state it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"
