"""Grad-CAM (Selvaraju et al., 2017): where in an image a network found its evidence for a class.

The gradient of the class score with respect to a layer's feature maps, averaged over the map,
says how much each channel counts for that class; the channels summed with those weights, through
a ReLU, map the evidence. A forward hook on the layer catches its output, a backward hook the
gradient arriving there. On the last stage of this ResNet18 the map is 4x4, upsampled to the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def grad_cam(model: nn.Module, images: torch.Tensor, classes, layer: nn.Module | None = None) -> torch.Tensor:
    """(N, H, W) maps in [0, 1] (each scaled by its own maximum) of normalised float images (N, 3, H, W),
    for one class per image or one class for all; `layer` defaults to the last stage, model.layer4.

    Computed in eval mode, each image's map depends on that image alone, whatever batch it is in.
    The model's parameter gradients are left untouched.
    """
    target = layer if layer is not None else model.get_submodule("layer4")
    caught: dict[str, torch.Tensor] = {}

    def keep_maps(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        caught["maps"] = output

    def keep_gradients(
        module: nn.Module, grad_in: tuple[torch.Tensor, ...], grad_out: tuple[torch.Tensor, ...]
    ) -> None:
        caught["grads"] = grad_out[0]  # the gradient of the class score with respect to the layer's output

    hooks = [target.register_forward_hook(keep_maps), target.register_full_backward_hook(keep_gradients)]
    model.eval()
    try:
        with torch.enable_grad():
            x = images.detach().float().requires_grad_(True)  # a graph to run backward through
            scores = model(x)
            chosen = torch.as_tensor(classes, device=scores.device).expand(len(x))
            torch.autograd.grad(scores.gather(1, chosen[:, None]).sum(), x)  # fires the backward hook
    finally:
        for hook in hooks:
            hook.remove()
    weights = caught["grads"].mean((2, 3), keepdim=True)  # (N, C, 1, 1): each channel's importance
    cam = F.relu((weights * caught["maps"]).sum(1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return cam / cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
