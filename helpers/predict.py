"""Classify your own images with a trained checkpoint: the top classes and their probabilities.

    python -m helpers.predict --checkpoint runs/recipe/checkpoint.pt cat.jpg holiday/

Images of any size and mode (RGB, RGBA, grayscale, palette; JPEG, PNG, ...) become what the network
was trained on, the way torchvision users expect: converted to RGB as torchvision's ImageFolder
loads images (transparency is dropped), the shorter side resized to 32 pixels and the centre cropped
to 32x32 (torchvision's Resize(32) and CenterCrop(32)), then normalised with the training statistics
stored in the checkpoint. A folder stands for every image file directly in it.

It computes in fp32 (a handful of images needs no fast arithmetic), which on a CUDA GPU of compute
capability 8.0 or newer means TF32 convolutions and matmuls (execution.resolve turns them on there):
the output names the execution actually used, and the data the checkpoint was trained on.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision import transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from . import config
from .data import CLASSES
from .evaluate import load_model, logits
from .machinery.checkpoint import CheckpointError
from .machinery.device import DeviceError, resolve_device
from .machinery.execution import Execution, resolve
from .machinery.provenance import trained_on

TO_NETWORK_INPUT = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.PILToTensor()])


class PredictError(RuntimeError):
    """An image argument cannot be classified; the message names it."""


@dataclass
class Classified:
    """Images as the network sees them, and its class probabilities for each."""

    files: list[Path]
    images: torch.Tensor  # (N, 3, 32, 32) uint8, after conversion, resizing and cropping
    probs: torch.Tensor  # (N, classes), fp32 softmax
    execution: Execution  # how the forward pass computed (fp32, or fp32 (TF32) on Ampere and newer GPUs)
    trained_on: str  # the data the checkpoint was trained on

    def top(self, k: int = 3) -> pd.DataFrame:
        """One row per image: its k most probable classes with their probabilities."""
        probs, indices = self.probs.topk(k, dim=1)
        rows: dict[str, object] = {}
        for rank in range(k):
            rows[f"class {rank + 1}"] = [CLASSES[i] for i in indices[:, rank]]
            rows[f"p {rank + 1}"] = probs[:, rank].numpy()
        return pd.DataFrame(rows, index=pd.Index([shown(f) for f in self.files], name="image"))


def shown(path: Path) -> str:
    """An image's name in the table: the path as given, or for an absolute one, what shown_path makes of it."""
    return config.shown_path(path) if path.is_absolute() else str(path)


def image_files(arguments) -> list[Path]:
    """The files named, with every image file directly inside each folder named (sorted)."""
    files = []
    for argument in map(Path, arguments):
        if argument.is_dir():
            found = sorted(p for p in argument.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
            if not found:
                raise PredictError(f"{argument} holds no image files ({', '.join(IMG_EXTENSIONS)}).")
            files += found
        elif argument.is_file():
            files.append(argument)
        else:
            raise PredictError(f"{argument} does not exist.")
    return files


def network_input(path: Path) -> torch.Tensor:
    """One image file as the (3, 32, 32) uint8 tensor the network is given."""
    try:
        with Image.open(path) as image:
            upright = ImageOps.exif_transpose(image)  # photos stored sideways with an orientation tag
            rgb = (upright.convert("RGBA") if upright.mode == "P" else upright).convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as exc:
        raise PredictError(f"{path} is not an image that can be read ({type(exc).__name__}).") from exc
    return TO_NETWORK_INPUT(rgb)


def classify(paths, checkpoint_path: Path | None = None, device: str = "auto") -> Classified:
    """Class probabilities of image files (or folders of them) under a checkpoint's weights, in fp32
    (TF32 on GPUs that have it; the result's execution says which): a handful of images needs no fast
    arithmetic."""
    files = image_files(paths)
    images = torch.stack([network_input(path) for path in files])
    execution = resolve(resolve_device(device), "fp32")
    model, state = load_model(Path(checkpoint_path or config.checkpoint_path()), execution)
    probs = logits(model, images, state["mean"], state["std"], execution).softmax(1).cpu()
    return Classified(files, images, probs, execution, str(trained_on(state)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.predict",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("images", nargs="+", help="image files, or folders of them")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: runs/<configuration>/checkpoint.pt")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    try:
        result = classify(args.images, args.checkpoint, args.device)
    except (PredictError, CheckpointError, DeviceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        "Each image: RGB, shorter side resized to 32 px, centre-cropped to 32x32, normalised as in training; "
        f"classified in {result.execution} by a model trained on {result.trained_on}."
    )
    print(result.top().reset_index().to_string(index=False, float_format=lambda p: f"{p:.1%}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
