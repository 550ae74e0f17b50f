"""The recipe's augmentation, batched on the device, and the per-image version it must match.

Order, as in the original README and the Cutout paper's code:
    RandomCrop(32, padding=4) -> RandomHorizontalFlip() -> ToTensor() -> Normalize(mean, std) -> Cutout(1, 16)
The crop pads with zeros (black) before normalising, as torchvision does. Cutout comes after
normalising, so a hole is 0 in normalised units: the training set's mean colour, not black.

`augment` draws every random choice for the whole batch at once and applies them with tensor
indexing and masks: no Python loop over samples, on whatever device the batch is on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.data
from torchvision import transforms
from torchvision.transforms import functional as TF

from .config import RECIPE


@dataclass
class AugmentParams:
    """The random choices for one batch: crop offsets into the padded image, flips, hole centres."""

    offsets: torch.Tensor  # (N, 2) int64, (top, left) in [0, 2 * padding]
    flips: torch.Tensor  # (N,) bool
    centres: torch.Tensor  # (N, holes, 2) int64, (row, col) in [0, 32)


def sample_params(
    n: int,
    padding: int = 4,
    flip_p: float = 0.5,
    holes: int = 1,
    size: int = 32,
    device=None,
    generator: torch.Generator | None = None,
) -> AugmentParams:
    """Uniform crop offsets, Bernoulli(flip_p) flips, uniform hole centres (clipped at the border later)."""
    randint = dict(device=device, generator=generator)
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), **randint)
    flips = torch.rand(n, device=device, generator=generator) < flip_p
    centres = torch.randint(0, size, (n, holes, 2), **randint)
    return AugmentParams(offsets, flips, centres)


def crop(
    images: torch.Tensor, offsets: torch.Tensor, padding: int = 4, flips: torch.Tensor | None = None
) -> torch.Tensor:
    """Zero-pad every image, cut each one's window at its own (top, left), and mirror those flagged
    in `flips`: one gather for the whole batch."""
    n, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    rows = offsets[:, 0, None] + torch.arange(h, device=images.device)  # (N, H)
    cols = offsets[:, 1, None] + torch.arange(w, device=images.device)  # (N, W)
    if flips is not None:
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    index = (rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]).flatten(1)  # (N, H*W) into the padded image
    return padded.flatten(2).gather(2, index[:, None].expand(n, c, -1)).view(n, c, h, w)


def flip(images: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images whose flag is set."""
    return torch.where(flips[:, None, None, None], images.flip(-1), images)


def normalize(images: torch.Tensor, mean, std, dtype=torch.float32) -> torch.Tensor:
    """uint8 -> float in normalised units: (x / 255 - mean) / std, per channel."""
    mean = torch.as_tensor(mean, dtype=dtype, device=images.device)[:, None, None]
    std = torch.as_tensor(std, dtype=dtype, device=images.device)[:, None, None]
    return (images.to(dtype) / 255 - mean) / std


def cutout_mask(centres: torch.Tensor, length: int, size: int = 32) -> torch.Tensor:
    """(N, 1, size, size) bool, True inside any hole: a length x length square clipped at the border."""
    coords = torch.arange(size, device=centres.device)
    lo, hi = centres - length // 2, centres + length // 2  # (N, holes, 2); the paper's y1 = y - L // 2
    inside_rows = (coords >= lo[..., 0, None]) & (coords < hi[..., 0, None])  # (N, holes, size)
    inside_cols = (coords >= lo[..., 1, None]) & (coords < hi[..., 1, None])
    return (inside_rows[..., :, None] & inside_cols[..., None, :]).any(1)[:, None]


def apply(
    images: torch.Tensor, params: AugmentParams, mean, std, padding: int = 4, cutout_length: int = 16
) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> augmented, normalised float32, following the module's order."""
    x = crop(images, params.offsets, padding, params.flips)
    x = normalize(x, mean, std)
    return x.masked_fill_(cutout_mask(params.centres, cutout_length, x.shape[-1]), 0.0)


def augment(images: torch.Tensor, mean, std, cfg=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The recipe's augmentation of a uint8 batch, drawn and applied on the batch's device."""
    cfg = cfg or RECIPE
    params = sample_params(
        len(images), cfg.crop_padding, cfg.flip_p, cfg.cutout_holes, images.shape[-1], images.device, generator
    )
    return apply(images, params, mean, std, cfg.crop_padding, cfg.cutout_length)


def apply_one(
    image: torch.Tensor,
    top: int,
    left: int,
    flipped: bool,
    centres,
    mean,
    std,
    padding: int = 4,
    cutout_length: int = 16,
) -> torch.Tensor:
    """The same steps for one uint8 (3, H, W) image with torchvision's functional ops: the per-image
    reference that the batched `apply` is checked against (tests, notebook 01)."""
    size = image.shape[-1]
    x = TF.crop(TF.pad(image, [padding]), top, left, size, size)
    x = TF.normalize((TF.hflip(x) if flipped else x).float() / 255, mean, std)
    half = cutout_length // 2
    for y, c in centres:  # zero a square around each centre, clipped at the border
        x[:, max(y - half, 0) : y + half, max(c - half, 0) : c + half] = 0
    return x


def apply_per_image(
    images: torch.Tensor, params: AugmentParams, mean, std, padding: int = 4, cutout_length: int = 16
) -> torch.Tensor:
    """`apply_one` image by image, with the batch's drawn choices."""
    return torch.stack(
        [
            apply_one(image, top, left, flipped, centres, mean, std, padding, cutout_length)
            for image, (top, left), flipped, centres in zip(
                images, params.offsets.tolist(), params.flips.tolist(), params.centres.tolist(), strict=True
            )
        ]
    )


class Cutout:
    """Cutout(n_holes, length) for one (C, H, W) tensor, the original README's per-image transform.

    Hole centres are uniform over the image and the square is clipped at the border, as in the
    Cutout paper's code; random numbers come from torch's global generator (seed it with
    torch.manual_seed).
    """

    def __init__(self, n_holes: int = 1, length: int = 16):
        self.n_holes, self.length = n_holes, length

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        mask = torch.ones(h, w, dtype=image.dtype)
        for _ in range(self.n_holes):
            y, x = torch.randint(h, ()).item(), torch.randint(w, ()).item()
            y1, y2 = max(y - self.length // 2, 0), min(y + self.length // 2, h)
            x1, x2 = max(x - self.length // 2, 0), min(x + self.length // 2, w)
            mask[y1:y2, x1:x2] = 0
        return image * mask

    def __repr__(self) -> str:
        return f"Cutout(n_holes={self.n_holes}, length={self.length})"


def reference_pipeline(mean, std, cfg=None) -> transforms.Compose:
    """The original README's per-image training transform, for PIL images (tests and benchmarks)."""
    cfg = cfg or RECIPE
    return transforms.Compose(
        [
            transforms.RandomCrop(32, padding=cfg.crop_padding),
            transforms.RandomHorizontalFlip(cfg.flip_p),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
            Cutout(n_holes=cfg.cutout_holes, length=cfg.cutout_length),
        ]
    )


class ReferenceDataset(torch.utils.data.Dataset):
    """(augmented image, label) pairs the original README's way: one uint8 image at a time becomes a
    PIL image (as torchvision's CIFAR10 hands it over) and goes through `reference_pipeline`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, cfg=None):
        self.images, self.labels, self.transform = images, labels, reference_pipeline(mean, std, cfg)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(to_pil(self.images[i])), self.labels[i]


def to_pil(image: torch.Tensor):
    """A uint8 (3, H, W) tensor as the PIL image torchvision's CIFAR10 would hand to a transform."""
    from PIL import Image

    return Image.fromarray(image.permute(1, 2, 0).numpy())
