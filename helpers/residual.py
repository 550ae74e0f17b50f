"""Why shortcuts help: deep stacks of blocks with and without them, and the gradient at their input.

A residual block computes y = ReLU(F(x) + x), so ∂y/∂x = (I + ∂F/∂x) through the ReLU: the identity
carries the gradient back however small or large ∂F/∂x is. A plain block computes y = ReLU(F(x)),
and the gradient through n of them is a product of n Jacobians, which shrinks or grows geometrically.
Notebook 02 measures both at initialisation; the blocks are torchvision's, the init ResNet's.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock


class PlainBlock(BasicBlock):
    """torchvision's BasicBlock without its shortcut: y = ReLU(F(x)), same layers, same weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)))


def block_stack(blocks: int, channels: int = 16, shortcuts: bool = True, seed: int = 0) -> nn.Sequential:
    """`blocks` shape-preserving blocks, initialised as torchvision's ResNet initialises its convolutions;
    the same seed gives the same weights with and without shortcuts."""
    torch.manual_seed(seed)
    block = BasicBlock if shortcuts else PlainBlock
    stack = nn.Sequential(*[block(channels, channels) for _ in range(blocks)])
    for module in stack.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return stack


def gradient_at_each_depth(stack: nn.Sequential, x: torch.Tensor, seed: int = 0) -> list[float]:
    """Gain of the backward pass from the output to the input of every block (the last entry is the
    stack's input): |∂L/∂(block input)| / |∂L/∂(output)| for L = <g, output> with g a seeded random direction."""
    inputs = []

    def keep(module, args):
        args[0].retain_grad()
        inputs.append(args[0])

    hooks = [block.register_forward_pre_hook(keep) for block in stack]
    x = x.clone().requires_grad_(True)
    try:
        out = stack(x)
    finally:
        for hook in hooks:
            hook.remove()
    direction = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    (out * direction).sum().backward()
    return [(tensor.grad.norm() / direction.norm()).item() for tensor in reversed(inputs)]
