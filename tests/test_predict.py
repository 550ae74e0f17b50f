"""Classifying image files: the top class equals an independent fp32 forward pass, preprocessing equals
torchvision's, any mode and size is accepted, folders are expanded, and bad input is a one-line error."""

import shutil
from pathlib import Path

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
    assert predict.image_files([tmp_path]) == (sorted(paths), [])
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


# ---------------------------------------------------------------- names, depths, and one bad file among good ones


def test_names_are_the_shortest_distinct_ends_of_the_paths():
    files = [Path(p) for p in ("x/a/cat.png", "y/a/cat.png", "b/cat.png", "dog.png", "b/cat.png")]
    assert predict.distinct_names(files) == ["x/a/cat.png", "y/a/cat.png", "b/cat.png", "dog.png", "b/cat.png"]


def test_two_images_with_one_name_are_told_apart(tiny_checkpoint, pngs, tmp_path, monkeypatch, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(pngs[0][int(folder == "b")], tmp_path / folder / "cat.png")
    monkeypatch.chdir(tmp_path)
    for arguments in (["a/cat.png", "b/cat.png"], [str(tmp_path / "a" / "cat.png"), str(tmp_path / "b")]):
        assert predict.main(["--checkpoint", str(tiny_checkpoint), "--device", "cpu", *arguments]) == 0
        rows = capsys.readouterr().out.splitlines()[2:]
        assert [row.split()[0] for row in rows] == ["a/cat.png", "b/cat.png"]


def grey_pixels() -> np.ndarray:
    """A 40x48 grey image with every 8-bit value in it: resized and cropped on the way in."""
    return np.random.default_rng(1).permutation(np.arange(40 * 48) % 256).reshape(40, 48).astype(np.uint8)


def test_one_grey_image_at_any_depth_gets_the_same_probabilities(tiny_checkpoint, tmp_path):
    grey = grey_pixels()
    versions = {
        "8-bit.png": Image.fromarray(grey, "L"),
        "16-bit.png": Image.fromarray(grey.astype(np.uint16) * 257),  # 0..255 -> 0..65535, as an image editor does
        "float.tiff": Image.fromarray(grey.astype(np.float32) / 255),
        "int32.tiff": Image.fromarray(grey.astype(np.int32) << 23),  # the top 8 of 31 value bits
    }
    for name, image in versions.items():
        image.save(tmp_path / name)
    assert Image.open(tmp_path / "16-bit.png").mode in ("I;16", "I") and Image.open(tmp_path / "float.tiff").mode == "F"
    result = predict.classify([tmp_path / name for name in versions], tiny_checkpoint, device="cpu")
    assert len(result.probs) == 4 and result.problems == []
    for probs in result.probs[1:]:
        assert (probs - result.probs[0]).abs().max() < 0.01  # within one point
    reference = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.PILToTensor()])
    assert torch.equal(result.images[0], reference(Image.fromarray(grey, "L").convert("RGB")))


def test_deeper_images_are_scaled_as_torchvisions_todtype_scales_them(tmp_path):
    """By hand: an integer keeps its top 8 bits (v >> 8 for 16 bits); a float v in [0, 1] becomes
    floor(v * 255.999) (torchvision multiplies by 256 less 1e-3)."""
    rng = np.random.default_rng(2)
    deep = rng.integers(0, 65536, (32, 32), dtype=np.uint16)
    unit = rng.random((32, 32), dtype=np.float32)
    Image.fromarray(deep).save(tmp_path / "16-bit.png")
    Image.fromarray(deep.astype(">u2")).save(tmp_path / "big-endian.tiff")
    Image.fromarray(unit).save(tmp_path / "float.tiff")
    expected = {
        "16-bit.png": deep >> 8,
        "big-endian.tiff": deep >> 8,
        "float.tiff": np.floor(unit * np.float32(255.999)),
    }
    for name, eight_bit in expected.items():
        seen = predict.network_input(tmp_path / name)
        assert torch.equal(seen, torch.from_numpy(eight_bit.astype(np.uint8)).expand(3, 32, 32)), name


def test_what_cannot_be_read_faithfully_is_refused_in_one_line(tmp_path):
    Image.fromarray(grey_pixels().astype(np.float32)).save(tmp_path / "0-255.tiff")  # floats, but not in [0, 1]
    Image.fromarray(grey_pixels().astype(np.int32) - 128).save(tmp_path / "negative.tiff")
    for name, said in (
        ("0-255.tiff", "0-255.tiff cannot be read faithfully: its floating-point values run from 0 to 255, not within"),
        ("negative.tiff", "negative.tiff cannot be read faithfully: it holds negative pixel values (down to -128)"),
    ):
        with pytest.raises(predict.PredictError) as refused:
            predict.network_input(tmp_path / name)
        assert said in str(refused.value) and "\n" not in str(refused.value)


def test_a_broken_file_between_two_good_ones_leaves_both_good_rows(full_width_checkpoint, pngs, tmp_path, capsys):
    paths, images = pngs
    (tmp_path / "broken.png").write_bytes(paths[1].read_bytes()[:60])  # a PNG cut short
    arguments = [paths[0], tmp_path / "broken.png", tmp_path / "missing.png", paths[2]]
    assert predict.main(["--checkpoint", str(full_width_checkpoint), "--device", "cpu", *map(str, arguments)]) == 3
    captured = capsys.readouterr()
    said = captured.err.splitlines()
    assert len(said) == 2 and "error: missing.png does not exist." in said
    assert any(line.startswith("error: broken.png is not an image that can be read (") for line in said)
    rows = [line.split() for line in captured.out.splitlines()[2:]]
    expected = independent_probabilities(full_width_checkpoint, images[[0, 2]]).argmax(1)
    assert [row[0] for row in rows] == ["0.png", "2.png"]
    assert [row[1] for row in rows] == [CLASSES[i] for i in expected]
