"""ResNet18 for 32x32 images: torchvision's ResNet18 with a CIFAR stem.

torchvision's blocks are used as they are; only the ImageNet stem changes. Its 7x7 stride-2 conv
and 3x3 stride-2 max-pool shrink a 224x224 image to 56x56 before the first stage, but would shrink
a 32x32 CIFAR image to 8x8, leaving 1x1 maps in the last stage. One 3x3 stride-1 conv keeps 32x32.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn
from torchvision.models import resnet

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


def resnet18(num_classes: int = 10, width: int = 64) -> resnet.ResNet:
    """ResNet18 with the stem replaced by conv3x3(stride 1) + BN + ReLU and no max-pool.

    `width` is the channel count of the stem and the first stage; each later stage doubles it. 64 is
    ResNet18's, the one the series trains. The tests train narrower ones (config.Config.width) to check
    what does not depend on it (resuming, refusing, signals, the command line) in milliseconds a step.
    """
    model = resnet.resnet18(num_classes=num_classes) if width == 64 else narrow_resnet18(num_classes, width)
    model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision inits convs
    model.maxpool = nn.Identity()
    return model


def narrow_resnet18(num_classes: int, width: int) -> resnet.ResNet:
    """torchvision's ResNet18 with `width`, 2x, 4x and 8x `width` channels in its stages instead of 64..512,
    built by torchvision's own _make_layer and initialised as torchvision initialises (the stem is left to
    the caller)."""
    with torch.device("meta"):  # the full-width layers, about to be replaced: never allocated nor initialised
        model = resnet.resnet18(num_classes=num_classes)
    model.inplanes = width
    model.bn1 = nn.BatchNorm2d(width)
    for i, stage in enumerate(STAGES[1:]):
        setattr(model, stage, model._make_layer(resnet.BasicBlock, width * 2**i, blocks=2, stride=1 if i == 0 else 2))
    model.fc = nn.Linear(8 * width, num_classes)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return model


def imagenet_resnet18(num_classes: int = 10) -> resnet.ResNet:
    """The unmodified torchvision ResNet18, for comparison."""
    return resnet.resnet18(num_classes=num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def stage_outputs(model: resnet.ResNet, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The feature maps after the stem (conv, BN, ReLU, pool) and after each of the four stages."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(images))))
    outputs = {"stem": x}
    for name in STAGES[1:]:
        x = getattr(model, name)(x)
        outputs[name] = x
    return outputs


def stage_table(models: dict[str, nn.Module], image_size: int = 32) -> pd.DataFrame:
    """Feature-map shape (C x H x W) after each stage, one column per model, for one image."""
    images = torch.zeros(1, 3, image_size, image_size)
    with torch.no_grad():
        shapes = {
            name: {stage: "x".join(map(str, out.shape[1:])) for stage, out in stage_outputs(m.eval(), images).items()}
            for name, m in models.items()
        }
    return pd.DataFrame(shapes).rename_axis("after")


def named_layers(model: resnet.ResNet):
    """The stem's layers, each residual block, the pool and the classifier, in forward order."""
    yield from (("conv1", model.conv1), ("bn1", model.bn1), ("relu", model.relu), ("maxpool", model.maxpool))
    for stage in STAGES[1:]:
        for i, block in enumerate(getattr(model, stage)):
            yield f"{stage}.{i}", block
    yield from (("avgpool", model.avgpool), ("fc", model.fc))


def layer_table(model: resnet.ResNet, image_size: int = 32) -> pd.DataFrame:
    """Output shape and parameter count of every stem layer, residual block and head layer."""
    rows = []

    def record(name):
        return lambda module, inputs, out: rows.append(
            (name, type(module).__name__, "x".join(map(str, out.shape[1:])), count_parameters(module))
        )

    hooks = [module.register_forward_hook(record(name)) for name, module in named_layers(model)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, image_size, image_size))
    for hook in hooks:
        hook.remove()
    return pd.DataFrame(rows, columns=["layer", "type", "output shape", "parameters"]).set_index("layer")


def macs_per_image(model: nn.Module, image_size: int = 32) -> int:
    """Multiply-accumulates of one forward pass, counted by torch.utils.flop_counter (FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, image_size, image_size))
    return counter.get_total_flops() // 2


def receptive_fields(model: resnet.ResNet) -> pd.DataFrame:
    """Receptive field (pixels of the input one output unit sees) after the stem and each stage.

    Along the main path each layer adds (kernel - 1) x jump, where jump is the product of the
    strides before it; the shortcuts (1x1 convs) never see more than the main path.
    """
    field, jump, rows = 1, 1, []

    def grow(layer):
        nonlocal field, jump
        kernel = layer.kernel_size if isinstance(layer.kernel_size, int) else layer.kernel_size[0]
        stride = layer.stride if isinstance(layer.stride, int) else layer.stride[0]
        field += (kernel - 1) * jump
        jump *= stride

    grow(model.conv1)
    if isinstance(model.maxpool, nn.MaxPool2d):
        grow(model.maxpool)
    rows.append(("stem", field, jump))
    for name in STAGES[1:]:
        for block in getattr(model, name):
            grow(block.conv1)
            grow(block.conv2)
        rows.append((name, field, jump))
    return pd.DataFrame(rows, columns=["after", "receptive field (px)", "stride so far (px)"]).set_index("after")
