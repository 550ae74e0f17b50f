"""The recipe's SGD in the implementation that never makes a step wait for the device.

`GradScaler.step` (fp16) reads its inf check back to the host with `.item()` at every step, unless the
optimizer takes the check itself: fused SGD does, on the device, inside its one kernel. So the
optimizer is fused wherever this torch has a fused SGD kernel for the device (CUDA, and the CPU since
torch 2.4), and torch's default (foreach) elsewhere. The arithmetic is the same SGD; only the kernels
differ. On a CPU (an Intel Xeon, 2 shared cores) the fused step alone is 1.19x as fast as the default's
(benchmarks/sgd_implementation.py --optimizer-only; benchmarks/results/).

A checkpoint stores the implementation flags in its param_groups, and `load_state_dict` would bring
back those of the run that wrote it (foreach, before this module): `keep_implementation` puts this
optimizer's own flags back after every load, so an old checkpoint resumes on the fused kernel.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

IMPLEMENTATION_KEYS = ("foreach", "fused")  # how a param_group computes, not what


def fused_sgd_offered(device: torch.device) -> bool:
    """Whether this torch has a fused SGD kernel for the device's type."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices  # torch's own list

    return device.type in _get_fused_kernels_supported_devices()


def sgd(params: Iterable[torch.nn.Parameter], device: torch.device, **hyperparameters) -> torch.optim.SGD:
    """torch.optim.SGD with `hyperparameters` (lr, momentum, weight_decay), fused where offered."""
    fused = fused_sgd_offered(device) or None  # None: torch's default (foreach on GPUs, a loop elsewhere)
    optimizer = torch.optim.SGD(params, fused=fused, **hyperparameters)
    keep_implementation(optimizer)
    return optimizer


def keep_implementation(optimizer: torch.optim.Optimizer) -> None:
    """After each load_state_dict, restore the foreach/fused flags the optimizer was built with."""
    built = [{key: group.get(key) for key in IMPLEMENTATION_KEYS} for group in optimizer.param_groups]

    def restore_flags(loaded: torch.optim.Optimizer) -> None:
        for group, flags in zip(loaded.param_groups, built, strict=True):
            group.update(flags)

    optimizer.register_load_state_dict_post_hook(restore_flags)
