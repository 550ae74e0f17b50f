"""Grad-CAM: concentrated where a constructed model's decision is made, equal to the formula computed
by hand without hooks, at image resolution, and independent of the batch an image is in."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import gradcam, model


class TwoRegions(nn.Module):
    """A model whose class 0 depends only on the top-left 12x12 pixels and class 1 only on the bottom-right
    12x12: each class reads channels that see nothing but its region of the image."""

    REGIONS = {0: (slice(0, 12), slice(0, 12)), 1: (slice(20, 32), slice(20, 32))}

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.convs = nn.ModuleList(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False) for _ in self.REGIONS)
        self.features = nn.Identity()  # the layer Grad-CAM looks at: (N, 16, 16, 16)
        self.fc = nn.Linear(16, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.weight[0, :8] = torch.rand(8) + 0.5  # class 0: the channels of region 0 only
            self.fc.weight[1, 8:] = torch.rand(8) + 0.5  # class 1: the channels of region 1 only

    def forward(self, x):
        seen = []
        for conv, (rows, cols) in zip(self.convs, self.REGIONS.values(), strict=True):
            mask = torch.zeros_like(x)
            mask[..., rows, cols] = 1
            seen.append(F.relu(conv(x * mask)))
        return self.fc(self.features(torch.cat(seen, 1)).mean((2, 3)))


def region_mask(cls: int, margin: int) -> torch.Tensor:
    rows, cols = TwoRegions.REGIONS[cls]
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[max(rows.start - margin, 0) : rows.stop + margin, max(cols.start - margin, 0) : cols.stop + margin] = True
    return mask


@pytest.mark.parametrize("cls", [0, 1])
def test_the_map_lies_where_the_models_decision_is_made(cls):
    net = TwoRegions()
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    maps = gradcam.grad_cam(net, images, cls, layer=net.features)
    assert maps.shape == (6, 32, 32)
    inside = region_mask(cls, margin=3)  # a stride-2 3x3 conv and bilinear upsampling blur the edge by a few pixels
    share_inside = (maps * inside).flatten(1).sum(1) / maps.flatten(1).sum(1)
    assert (share_inside > 0.99).all(), share_inside
    assert maps[:, ~inside].max() < 1e-6  # nothing at all far from the region
    assert (maps[:, region_mask(cls, margin=0)].amax(1) == 1).all()  # the peak is in the region itself
    other = gradcam.grad_cam(net, images, 1 - cls, layer=net.features)
    assert (other[:, region_mask(cls, margin=0)].amax(1) < 0.05).all()  # the other class's map is elsewhere


def reference_cam(net, x, classes):
    """Grad-CAM by hand, without hooks: the last stage's output and its gradient from autograd.grad."""
    a = net.layer4(net.layer3(net.layer2(net.layer1(net.relu(net.bn1(net.conv1(x)))))))
    scores = net.fc(torch.flatten(net.avgpool(a), 1))
    (grad,) = torch.autograd.grad(scores[torch.arange(len(x)), classes].sum(), a)
    cam = F.relu((grad.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return cam / cam.flatten(1).amax(1)[:, None, None]


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return model.resnet18().eval()


def test_on_the_resnet_it_equals_the_formula_by_hand_at_image_resolution(resnet):
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    classes = torch.tensor([0, 3, 7, 9])
    maps = gradcam.grad_cam(resnet, x, classes)
    assert maps.shape == (4, 32, 32) and maps.min() >= 0 and torch.allclose(maps.flatten(1).amax(1), torch.ones(4))
    torch.testing.assert_close(maps, reference_cam(resnet, x, classes), rtol=1e-4, atol=1e-5)


def test_a_map_does_not_depend_on_the_batch_it_is_computed_in(resnet):
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    classes = torch.tensor([1, 1, 4, 2, 8, 5])
    batch = gradcam.grad_cam(resnet, x, classes)
    alone = torch.cat([gradcam.grad_cam(resnet, x[i : i + 1], classes[i : i + 1]) for i in range(6)])
    reordered = gradcam.grad_cam(resnet, x.flip(0), classes.flip(0)).flip(0)
    torch.testing.assert_close(alone, batch, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(reordered, batch, rtol=1e-4, atol=1e-5)


def test_it_leaves_no_hooks_and_no_parameter_gradients(resnet):
    gradcam.grad_cam(resnet, torch.randn(2, 3, 32, 32), 0)
    assert all(p.grad is None for p in resnet.parameters())
    assert not resnet.layer4._forward_hooks and not resnet.layer4._backward_hooks
