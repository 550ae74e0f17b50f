"""torch.compile for the model (`--compile`): CUDA graphs on a GPU, and each batch shape compiled once.

At batch 128 a large GPU finishes a ResNet18 step's arithmetic faster than eager PyTorch can launch
its ~280 kernels. Compiling fuses kernels; on CUDA the mode "reduce-overhead" also captures the
forward and backward passes as CUDA graphs, replayed with one launch each. On a CPU there are no
graphs to capture, so the default mode.

Shapes are static (`dynamic=False`): the full batch, the last batch of an epoch (45,000 mod 128 = 72
images with the recipe) and the evaluation chunks are each compiled once, in the first epoch, and then
reused, so that nothing compiles again epoch after epoch and every image is still seen each epoch.
Dynamic shapes would instead recompile once more with a symbolic batch and give slower kernels.
"""

from __future__ import annotations

import torch
from torch import nn

MODES = {"cuda": "reduce-overhead"}  # device type -> torch.compile mode; others: torch's default
BACKEND = "inductor"  # torch's compiler; the CPU tests swap in "aot_eager" (the same graphs, not code-generated)


def mode_for(device: torch.device) -> str:
    return MODES.get(device.type, "default")


def uses_cuda_graphs(device: torch.device) -> bool:
    return mode_for(device) in ("reduce-overhead", "max-autotune")


class Compiled(nn.Module):
    """The model compiled for `device`; each call is one step of training or one evaluation chunk.

    With CUDA graphs, each call starts a new graph-replay step (`cudagraph_mark_step_begin`): the
    outputs of the previous call may then be overwritten, so callers use a call's outputs before the
    next call or copy them (evaluate.logits does)."""

    def __init__(self, model: nn.Module, device: torch.device):
        super().__init__()
        mode = mode_for(device) if BACKEND == "inductor" else None  # modes are the inductor's
        self.compiled = torch.compile(model, backend=BACKEND, mode=mode, dynamic=False)
        self.graphs = uses_cuda_graphs(device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(images)
