"""The CIFAR ResNet18 against hand counts and against torchvision's unmodified ResNet18."""

import pytest
import torch
from torchvision.models import resnet18 as torchvision_resnet18

from helpers import model

# (in channels, out channels, stride) of the eight BasicBlocks
BLOCKS = [
    (64, 64, 1),
    (64, 64, 1),
    (64, 128, 2),
    (128, 128, 1),
    (128, 256, 2),
    (256, 256, 1),
    (256, 512, 2),
    (512, 512, 1),
]


def conv(cin, cout, k):
    return cin * cout * k * k


def bn(c):
    return 2 * c  # weight and bias (running statistics are buffers, not parameters)


def block_parameters(cin, cout, stride):
    main = conv(cin, cout, 3) + bn(cout) + conv(cout, cout, 3) + bn(cout)
    shortcut = conv(cin, cout, 1) + bn(cout) if stride != 1 or cin != cout else 0
    return main + shortcut


def test_parameter_count_matches_a_hand_count_from_the_layer_shapes():
    by_hand = conv(3, 64, 3) + bn(64) + sum(block_parameters(*b) for b in BLOCKS) + 512 * 10 + 10
    assert by_hand == 11_173_962
    assert sum(p.numel() for p in model.resnet18().parameters()) == by_hand


def test_a_narrower_width_scales_every_stage_and_keeps_torchvisions_layers():
    """Width 8 (the tests' tiny runs): every channel count divided by 8, the same layers and keys as ResNet18."""
    w = 8
    narrow = [(cin // w, cout // w, stride) for cin, cout, stride in BLOCKS]
    by_hand = conv(3, w, 3) + bn(w) + sum(block_parameters(*b) for b in narrow) + 8 * w * 10 + 10
    net = model.resnet18(width=w)
    assert sum(p.numel() for p in net.parameters()) == by_hand == 176_402
    table = model.stage_table({"narrow": net})
    assert table["narrow"].tolist() == ["8x32x32", "8x32x32", "16x16x16", "32x8x8", "64x4x4"]
    assert net.state_dict().keys() == torchvision_resnet18(num_classes=10).state_dict().keys()
    assert isinstance(net.maxpool, torch.nn.Identity) and net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_macs_match_a_hand_count():
    size, total = 32, conv(3, 64, 3) * 32 * 32
    for cin, cout, stride in BLOCKS:
        size //= stride
        total += (conv(cin, cout, 3) + conv(cout, cout, 3)) * size * size
        total += conv(cin, cout, 1) * size * size if stride != 1 or cin != cout else 0
    total += 512 * 10
    assert model.macs_per_image(model.resnet18()) == total  # 555,422,720: about 0.56 GMACs


def test_output_shape_and_feature_map_sizes_per_stage():
    net = model.resnet18().eval()
    sizes = {}
    for name in ("conv1", "layer1", "layer2", "layer3", "layer4"):
        getattr(net, name).register_forward_hook(lambda m, i, out, name=name: sizes.__setitem__(name, out.shape[-1]))
    with torch.no_grad():
        out = net(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert list(sizes.values()) == [32, 32, 16, 8, 4]


def test_only_the_stem_differs_from_torchvision_resnet18():
    ours, theirs = model.resnet18().state_dict(), torchvision_resnet18(num_classes=10).state_dict()
    assert ours.keys() == theirs.keys()
    differing = [k for k in ours if ours[k].shape != theirs[k].shape]
    assert differing == ["conv1.weight"]
    assert ours["conv1.weight"].shape == (64, 3, 3, 3) and theirs["conv1.weight"].shape == (64, 3, 7, 7)
    assert isinstance(model.resnet18().maxpool, torch.nn.Identity)


def test_runs_in_channels_last_under_bf16_autocast_close_to_fp32():
    torch.manual_seed(0)
    net = model.resnet18().eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        reference = net(x)
        net = net.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = net(x.contiguous(memory_format=torch.channels_last))
    assert fast.dtype == torch.bfloat16
    torch.testing.assert_close(fast.float(), reference, rtol=0.1, atol=0.1)


def test_stage_table_shows_the_imagenet_stem_shrinking_cifar_images():
    table = model.stage_table({"cifar": model.resnet18(), "imagenet": model.imagenet_resnet18()})
    assert table["cifar"].tolist() == ["64x32x32", "64x32x32", "128x16x16", "256x8x8", "512x4x4"]
    assert table["imagenet"].tolist() == ["64x8x8", "64x8x8", "128x4x4", "256x2x2", "512x1x1"]


def test_receptive_field_matches_the_gradient_footprint_of_one_output():
    """The analytic receptive field after layer1 equals the input region that one unit's gradient reaches."""
    net = model.resnet18().eval()
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    stem = net.relu(net.bn1(net.conv1(x)))
    net.layer1(stem)[0, :, 32, 32].sum().backward()
    rows = (x.grad[0].abs().sum(0).sum(1) > 0).nonzero().flatten()
    assert rows.max() - rows.min() + 1 == model.receptive_fields(net).loc["layer1", "receptive field (px)"] == 11


@pytest.mark.slow
def test_torch_compile_gives_the_eager_outputs():
    torch.manual_seed(0)
    net = model.resnet18().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(net)(x), net(x), rtol=1e-3, atol=1e-3)
