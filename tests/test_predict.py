"""Classifying image files: the top class equals an independent fp32 forward pass, preprocessing equals
torchvision's, any mode and size is accepted, folders are expanded, and bad input is a one-line error."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.models import resnet18 as torchvision_resnet18

from helpers import predict
from helpers.data import CLASSES
from helpers.machinery import checkpoint


@pytest.fixture
def pngs(tiny, tmp_path):
    """Six 32x32 RGB PNGs of the tiny test images: (paths, the uint8 pixels)."""
    images = tiny.test.images[:6]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[-1])
    return paths, images


def independent_probabilities(path, images: torch.Tensor) -> torch.Tensor:
    """fp32, NCHW: torchvision's ResNet18 with the CIFAR stem built here, the checkpoint's weights, and
    normalisation written out by hand."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = torchvision_resnet18(num_classes=10)
    net.conv1 = torch.nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = torch.nn.Identity()
    net.load_state_dict(state["model"])
    mean, std = torch.tensor(state["mean"])[:, None, None], torch.tensor(state["std"])[:, None, None]
    with torch.no_grad():
        return net.eval()((images.float() / 255 - mean) / std).softmax(1)


def test_on_32x32_rgb_pngs_the_top_class_equals_an_independent_fp32_forward_pass(full_width_checkpoint, pngs):
    paths, images = pngs
    result = predict.classify(paths, full_width_checkpoint, device="cpu")
    expected = independent_probabilities(full_width_checkpoint, images)
    assert torch.equal(result.images, images)  # a 32x32 RGB image passes through unchanged
    assert result.probs.argmax(1).tolist() == expected.argmax(1).tolist()
    torch.testing.assert_close(result.probs, expected, rtol=1e-4, atol=1e-6)
    top = result.top(3)
    assert list(top.columns) == ["class 1", "p 1", "class 2", "p 2", "class 3", "p 3"]
    assert top["class 1"].tolist() == [CLASSES[i] for i in expected.argmax(1)]
    assert (top["p 1"] >= top["p 2"]).all() and (top["p 2"] >= top["p 3"]).all()


def test_any_size_and_mode_becomes_what_torchvision_makes_of_it(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (90, 150, 4), dtype=np.uint8)
    reference = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.PILToTensor()])
    files = {
        "wide_rgba.png": Image.fromarray(pixels, "RGBA"),
        "gray.jpg": Image.fromarray(pixels[..., 0], "L"),
        "palette.png": Image.fromarray(pixels[..., :3], "RGB").convert("P", palette=Image.Palette.ADAPTIVE),
        "tall.jpg": Image.fromarray(pixels[..., :3].transpose(1, 0, 2).copy(), "RGB"),
    }
    for name, image in files.items():
        image.save(tmp_path / name)
        seen = predict.network_input(tmp_path / name)
        assert seen.shape == (3, 32, 32) and seen.dtype == torch.uint8
        assert torch.equal(seen, reference(Image.open(tmp_path / name).convert("RGB")))
    gray = predict.network_input(tmp_path / "gray.jpg")
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_a_folder_stands_for_every_image_file_in_it(tiny_checkpoint, pngs, tmp_path, capsys):
    paths, _ = pngs
    (tmp_path / "notes.txt").write_text("not an image")
    assert predict.image_files([tmp_path]) == sorted(paths)
    assert predict.main(["--checkpoint", str(tiny_checkpoint), "--device", "cpu", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Each image: RGB, shorter side resized to 32 px, centre-cropped to 32x32")
    rows = [line.split() for line in out[2:]]
    assert [row[0] for row in rows] == [p.name for p in sorted(paths)]
    assert all(len(row) == 7 and row[1] in CLASSES and row[2].endswith("%") for row in rows)


def run_cli(capsys, *arguments) -> str:
    assert predict.main(list(map(str, arguments))) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "Traceback" not in captured.err
    return captured.err


def test_bad_input_is_a_one_line_error_and_exit_2(tiny_checkpoint, pngs, tmp_path, capsys):
    good = pngs[0][0]
    assert "missing.png does not exist" in run_cli(capsys, "--checkpoint", tiny_checkpoint, tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("hello")
    assert "text.png is not an image that can be read" in run_cli(
        capsys, "--checkpoint", tiny_checkpoint, tmp_path / "text.png"
    )
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    assert "empty holds no image files" in run_cli(capsys, "--checkpoint", tiny_checkpoint, tmp_path / "empty")
    state = checkpoint.load(tiny_checkpoint)
    state["model"] = torchvision_resnet18(num_classes=10).state_dict()
    checkpoint.save(state, tmp_path / "imagenet.pt")
    assert "holds weights of another architecture" in run_cli(capsys, "--checkpoint", tmp_path / "imagenet.pt", good)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "plain.pt")
    assert "not a checkpoint of this project" in run_cli(capsys, "--checkpoint", tmp_path / "plain.pt", good)
    assert "No checkpoint at" in run_cli(capsys, "--checkpoint", tmp_path / "none.pt", good)
