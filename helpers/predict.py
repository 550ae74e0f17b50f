"""Classify your own images with a trained checkpoint: the top classes and their probabilities.

    python -m helpers.predict --checkpoint runs/recipe/checkpoint.pt cat.jpg holiday/

Images of any size and mode become what the network was trained on, the way torchvision users
expect: converted to RGB as torchvision's ImageFolder loads images (grey is repeated in the three
channels, a palette is looked up, transparency is dropped), the shorter side resized to 32 pixels
and the centre cropped to 32x32 (torchvision's Resize(32) and CenterCrop(32)), then normalised with
the training statistics stored in the checkpoint. Grey images of more than 8 bits (16-bit PNG or
TIFF, 32-bit integer TIFF, floating-point TIFF with values in [0, 1]) are first brought to 8 bits
as torchvision's ToDtype(torch.uint8, scale=True) does: integers keep their top 8 bits, floats are
multiplied by 256 less a little. What cannot be read that way (negative or out-of-range values, a
colour space Pillow cannot convert to RGB) is refused, not guessed. A folder stands for every image
file directly in it. One unreadable image costs its own row, not the others'.

It computes in fp32 (a handful of images needs no fast arithmetic), which on a CUDA GPU of compute
capability 8.0 or newer means TF32 convolutions and matmuls (execution.resolve turns them on there):
the output names the execution actually used, and the data the checkpoint was trained on.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision import transforms
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.v2.functional import to_dtype

from . import config
from .data import CLASSES
from .evaluate import load_model, logits
from .machinery.checkpoint import CheckpointError
from .machinery.device import DeviceError, resolve_device
from .machinery.execution import Execution, resolve
from .machinery.faults import reason
from .machinery.provenance import trained_on

TO_NETWORK_INPUT = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.PILToTensor()])
DEEP_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # Pillow's one-channel modes of more than 8 bits
EXIT_CODES = """exit status:
  0  every image was classified
  2  nothing was classified: the checkpoint or the device cannot be used, or no image could be read
  3  some images could not be read (one line each on stderr); every other image has its row"""


class PredictError(RuntimeError):
    """An image argument cannot be classified; the message names it."""


class NothingToClassify(PredictError):
    """No image named could be read: one line for each, in `problems`."""

    def __init__(self, problems: list[str]):
        super().__init__(
            problems[0] if len(problems) == 1 else f"none of the images could be read: {'; '.join(problems)}"
        )
        self.problems = problems


class Unfaithful(ValueError):
    """The pixels hold values that no 8-bit image means."""


@dataclass
class Classified:
    """Images as the network sees them, and its class probabilities for each."""

    files: list[Path]
    images: torch.Tensor  # (N, 3, 32, 32) uint8, after conversion, resizing and cropping
    probs: torch.Tensor  # (N, classes), fp32 softmax
    execution: Execution  # how the forward pass computed (fp32, or fp32 (TF32) on Ampere and newer GPUs)
    trained_on: str  # the data the checkpoint was trained on
    problems: list[str] = field(default_factory=list)  # one line for each image named that could not be read

    def top(self, k: int = 3) -> pd.DataFrame:
        """One row per image: its k most probable classes with their probabilities."""
        probs, indices = self.probs.topk(k, dim=1)
        rows: dict[str, object] = {}
        for rank in range(k):
            rows[f"class {rank + 1}"] = [CLASSES[i] for i in indices[:, rank]]
            rows[f"p {rank + 1}"] = probs[:, rank].numpy()
        return pd.DataFrame(rows, index=pd.Index(distinct_names(self.files), name="image"))


def shown(path: Path) -> str:
    """A path as given, or for an absolute one, what shown_path makes of it: never a machine path."""
    return config.shown_path(path) if path.is_absolute() else str(path)


def distinct_names(files: list[Path]) -> list[str]:
    """Each file's shortest trailing part of its path that no other file shares: `cat.png`, or
    `a/cat.png` and `b/cat.png`. The same file named twice keeps one name."""
    full = [path.absolute().parts for path in files]
    depth = dict.fromkeys(full, 1)
    while True:
        sharing: dict[tuple, set] = defaultdict(set)
        for parts, k in depth.items():
            sharing[parts[-k:]].add(parts)
        longer = [parts for group in sharing.values() if len(group) > 1 for parts in group if depth[parts] < len(parts)]
        if not longer:
            return [str(Path(*parts[-depth[parts] :])) for parts in full]
        for parts in longer:
            depth[parts] += 1


def image_files(arguments) -> tuple[list[Path], list[str]]:
    """The files named, with every image file directly inside each folder named (sorted); and one
    line for each argument that names none."""
    files, problems = [], []
    for argument in map(Path, arguments):
        if argument.is_dir():
            found = sorted(p for p in argument.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
            if not found:
                problems.append(f"{shown(argument)} holds no image files ({', '.join(IMG_EXTENSIONS)}).")
            files += found
        elif argument.is_file():
            files.append(argument)
        else:
            problems.append(f"{shown(argument)} does not exist.")
    return files, problems


def network_input(path: Path) -> torch.Tensor:
    """One image file as the (3, 32, 32) uint8 tensor the network is given."""
    try:
        with Image.open(path) as image:
            upright = ImageOps.exif_transpose(image)  # photos stored sideways with an orientation tag
            rgb = as_rgb(upright, image.format)
    except Unfaithful as exc:
        raise PredictError(f"{shown(path)} cannot be read faithfully: {exc}.") from exc
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise PredictError(f"{shown(path)} is not an image that can be read ({reason(exc)}).") from exc
    return TO_NETWORK_INPUT(rgb)


def as_rgb(image: Image.Image, file_format: str | None) -> Image.Image:
    """8-bit RGB as torchvision's ImageFolder makes it; deeper grey brought to 8 bits first."""
    if image.mode in DEEP_GREY:
        return Image.fromarray(eight_bit(image, file_format), "L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")  # Pillow's advice for palettes with transparency
    return image.convert("RGB")


def eight_bit(image: Image.Image, file_format: str | None) -> np.ndarray:
    """A grey image of more than 8 bits as uint8, scaled by torchvision's ToDtype(scale=True) rule."""
    pixels = np.asarray(image)
    pixels = pixels.astype(pixels.dtype.newbyteorder("="))  # big-endian 16-bit files: torch reads native order
    if pixels.dtype.kind == "f":
        if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
            raise Unfaithful(
                f"its floating-point values run from {np.nanmin(pixels):.4g} to {np.nanmax(pixels):.4g}, not within "
                "[0, 1]; save it as an 8- or 16-bit image, or with values in [0, 1]"
            )
    elif pixels.min() < 0:
        raise Unfaithful(f"it holds negative pixel values (down to {pixels.min()}); save it as an 8- or 16-bit image")
    elif image.mode == "I" and file_format == "PNG":  # a 16-bit PNG that Pillow opened as 32-bit integers
        pixels = pixels.astype(np.uint16)
    return to_dtype(torch.from_numpy(pixels), torch.uint8, scale=True).numpy()


def read_images(files: list[Path]) -> tuple[list[Path], list[torch.Tensor], list[str]]:
    """The files that could be read and their network inputs; one line for each that could not."""
    read, images, problems = [], [], []
    for path in files:
        try:
            images.append(network_input(path))
            read.append(path)
        except PredictError as exc:
            problems.append(str(exc))
    return read, images, problems


def classify(paths, checkpoint_path: Path | None = None, device: str = "auto") -> Classified:
    """Class probabilities of image files (or folders of them) under a checkpoint's weights, in fp32
    (TF32 on GPUs that have it; the result's execution says which): a handful of images needs no fast
    arithmetic. Images that cannot be read are left out, each named in `problems`; NothingToClassify
    when none can."""
    execution = resolve(resolve_device(device), "fp32")
    model, state = load_model(Path(checkpoint_path or config.checkpoint_path()), execution)
    files, unnamed = image_files(paths)
    files, images, unread = read_images(files)
    problems = unnamed + unread
    if not files:
        raise NothingToClassify(problems or ["no image files were named."])
    probs = logits(model, torch.stack(images), state["mean"], state["std"], execution).softmax(1).cpu()
    return Classified(files, torch.stack(images), probs, execution, str(trained_on(state)), problems)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, and the exit codes laid out as written."""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.predict",
        description=__doc__.splitlines()[0],
        epilog=EXIT_CODES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("images", nargs="+", help="image files, or folders of them")
    parser.add_argument("--quick", action="store_true", help="the quick configuration's run (runs/quick/)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: runs/<configuration>/checkpoint.pt")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    try:
        checkpoint = args.checkpoint or config.checkpoint_path(config.QUICK if args.quick else None)
        result = classify(args.images, checkpoint, args.device)
    except NothingToClassify as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except (PredictError, CheckpointError, DeviceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for problem in result.problems:
        print(f"error: {problem}", file=sys.stderr)
    print(
        "Each image: RGB, shorter side resized to 32 px, centre-cropped to 32x32, normalised as in training; "
        f"classified in {result.execution} by a model trained on {result.trained_on}."
    )
    print(result.top().reset_index().to_string(index=False, float_format=lambda p: f"{p:.1%}"))
    return 3 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
