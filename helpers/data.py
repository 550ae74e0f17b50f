"""CIFAR-10 as uint8 tensors: from torchvision's download or from image folders, cached once decoded.

The whole data set is 60,000 x 3 x 32 x 32 bytes (184 MB), small enough to keep on the training
device and augment there in batches (see augment.py), so there is no DataLoader here.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError

from . import config
from .machinery.progress import progress

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PER_CLASS = {"train": 5000, "test": 1000}  # CIFAR-10's images per class in each split
IMAGE_SHAPE = (3, 32, 32)
CACHE_VERSION = 1  # bump when the cached format changes


class DataError(RuntimeError):
    """CIFAR-10 could not be loaded as asked; the message says what is wrong and how to fix it."""


@dataclass
class Split:
    images: torch.Tensor  # uint8, (N, 3, 32, 32)
    labels: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index])


@dataclass
class Datasets:
    """The three splits of one configuration and the statistics used to normalise them."""

    train: Split
    val: Split
    test: Split
    mean: tuple[float, float, float]  # per channel, in [0, 1], of the training split
    std: tuple[float, float, float]
    label: str = "CIFAR-10"  # how results name the data, e.g. "CIFAR-10 (JPEG copy)"
    fingerprint: str | None = None  # the data's content key; None where unknown (then checks go by label)
    classes: tuple[str, ...] = CLASSES


# ---------------------------------------------------------------- loading the raw splits


def load_raw(
    source: str | Path | None = None, data_dir: Path = config.DATA_DIR, per_class: dict[str, int] = PER_CLASS
) -> dict[str, Split]:
    """CIFAR-10's train and test splits: `source` is image folders or an archive; None downloads."""
    cache = cache_path(source, data_dir)
    if cache.exists():
        return read_cache(cache)
    splits = read_torchvision(data_dir) if source is None else read_image_folders(Path(source), per_class)
    write_cache(splits, cache)
    return splits


def cache_path(source: str | Path | None, data_dir: Path) -> Path:
    """Where decoded tensors are cached: keyed by the source's name, size and modification time."""
    if source is None:
        return data_dir / "cache" / f"torchvision-v{CACHE_VERSION}.pt"
    source = Path(source)
    if not source.exists():
        raise DataError(f"CIFAR-10 source {source} does not exist (set by CIFAR10_DATA or --data).")
    stat = source.stat()
    key = hashlib.sha1(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return data_dir / "cache" / f"{source.name.split('.')[0]}-{key}-v{CACHE_VERSION}.pt"


def read_cache(path: Path) -> dict[str, Split]:
    try:
        saved = torch.load(path, weights_only=True)
    except Exception as exc:
        raise DataError(
            f"The decoded-data cache {config.shown_path(path)} is unreadable ({exc}); delete it to rebuild."
        ) from exc
    return {name: Split(*saved[name]) for name in ("train", "test")}


def write_cache(splits: dict[str, Split], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save({name: (s.images, s.labels) for name, s in splits.items()}, partial)
    os.replace(partial, path)  # never a half-written cache


def read_torchvision(data_dir: Path) -> dict[str, Split]:
    """torchvision's CIFAR10 (downloaded into data_dir unless there; md5-checked)."""
    from torchvision.datasets import CIFAR10

    try:
        sets = {name: CIFAR10(data_dir, train=(name == "train"), download=True) for name in ("train", "test")}
    except Exception as exc:  # URLError, socket errors, failed md5 after a partial download
        raise DataError(
            f"CIFAR-10 is not in {config.shown_path(data_dir)}/cifar-10-batches-py and could not be "
            f"downloaded ({type(exc).__name__}: {exc}).\nEither connect to the internet and run again, "
            "place the extracted 'cifar-10-python.tar.gz' there, or point CIFAR10_DATA (or --data) at an "
            "image-folder tree or a .tar/.tar.gz of one laid out as <root>/train/<class>/*.png and "
            "<root>/test/<class>/*.png."
        ) from exc
    return {
        name: Split(
            torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets, dtype=torch.int64)
        )
        for name, ds in sets.items()
    }


# ---------------------------------------------------------------- image folders and archives


def read_image_folders(source: Path, per_class: dict[str, int] = PER_CLASS) -> dict[str, Split]:
    """Decode <root>/{train,test}/<class>/<image> from a folder or a .tar/.tar.gz of one."""
    files = archive_files(source) if source.is_file() else folder_files(source)
    grouped = group_by_split_and_class(files, source)
    check_counts(grouped, per_class, source)
    return {split: decode_split(grouped[split], split) for split in ("train", "test")}


def archive_files(path: Path):
    """(name, bytes) of every file in a tar archive, streamed; errors name the archive."""
    try:
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                file = archive.extractfile(member) if member.isfile() else None  # None for links and folders
                if file is not None:
                    yield member.name, file.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{path.name} is truncated or not a tar archive ({exc}).") from exc


def folder_files(root: Path):
    if not root.is_dir():
        raise DataError(f"CIFAR-10 source {root} is neither a folder nor an archive.")
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield str(path.relative_to(root)), path.read_bytes()


def group_by_split_and_class(files, source: Path) -> dict[str, dict[str, list[tuple[str, bytes]]]]:
    """{split: {class: [(name, bytes), ...]}}; unknown class folders are an error."""
    grouped: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    for name, data in files:
        parts = Path(name).parts
        if len(parts) < 3 or parts[-3] not in grouped or parts[-1].startswith("."):
            continue
        split, cls = parts[-3], parts[-2]
        if cls not in CLASSES:
            raise DataError(
                f"{source.name}: unknown class folder '{split}/{cls}'; CIFAR-10's classes are {', '.join(CLASSES)}."
            )
        grouped[split].setdefault(cls, []).append((name, data))
    return grouped


def check_counts(grouped: dict, per_class: dict[str, int], source: Path) -> None:
    """Never a silently partial data set: every class folder holds exactly the expected count."""
    for split, expected in per_class.items():
        for cls in CLASSES:
            found = len(grouped[split].get(cls, []))
            if found == 0:
                raise DataError(f"{source.name}: class folder '{split}/{cls}' is missing or empty.")
            if found != expected:
                raise DataError(f"{source.name}: '{split}/{cls}' holds {found} images, expected {expected}.")


def decode_split(by_class: dict[str, list[tuple[str, bytes]]], split: str) -> Split:
    """Decode in CIFAR-10's label order, files sorted by name within a class."""
    items = [(label, item) for label, cls in enumerate(CLASSES) for item in sorted(by_class[cls])]
    images = np.empty((len(items), 32, 32, 3), dtype=np.uint8)
    for i, (_, (name, data)) in enumerate(progress(items, desc=f"decoding {split}", unit="img", leave=False)):
        images[i] = decode_image(name, data)
    labels = torch.tensor([label for label, _ in items], dtype=torch.int64)
    return Split(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels)


def decode_image(name: str, data: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.size != (32, 32):
                raise DataError(f"{name} is {image.size[0]}x{image.size[1]}; CIFAR-10 images are 32x32.")
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{name} could not be decoded as an image ({exc}).") from exc


# ---------------------------------------------------------------- splits and statistics


def stratified_split(labels: torch.Tensor, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (rest, held_out): `size` held out, the same share of every class, chosen by `seed`."""
    generator = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    if size % len(classes):
        raise ValueError(f"a stratified split of {size} does not divide among {len(classes)} classes")
    per_class = size // len(classes)
    chosen = []
    for cls in classes:
        members = (labels == cls).nonzero().flatten()
        if per_class > len(members):
            raise ValueError(f"cannot hold out {per_class} of class {int(cls)}: it has {len(members)}")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    held_out = torch.cat(chosen).sort().values
    rest = torch.ones(len(labels), dtype=torch.bool)
    rest[held_out] = False
    return rest.nonzero().flatten(), held_out


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units (exact, from 256-bin histograms)."""
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for channel in images.transpose(0, 1):
        counts = torch.bincount(channel.flatten(), minlength=256).to(torch.float64)
        mean = (counts * values).sum() / counts.sum()
        var = (counts * (values - mean) ** 2).sum() / (counts.sum() - 1)
        means.append(mean.item())
        stds.append(var.sqrt().item())
    if len(means) != 3:
        raise ValueError(f"expected RGB images (N, 3, H, W), got {len(means)} channels")
    return (means[0], means[1], means[2]), (stds[0], stds[1], stds[2])


def prepare(
    cfg: config.Config | None = None, source: str | Path | None = None, data_dir: Path = config.DATA_DIR
) -> Datasets:
    """The train / validation / test splits of a configuration, and the training split's statistics."""
    cfg = cfg or config.active_config()
    source = config.data_source() if source is None else source
    raw = load_raw(source, data_dir)
    train, test = raw["train"], raw["test"]
    if cfg.test_limit:
        test = test.subset(stratified_split(test.labels, cfg.test_limit, cfg.seed)[1])
    if cfg.val_from_test:  # the original README's protocol: validation on the test set
        val = test
    else:
        rest, held_out = stratified_split(train.labels, cfg.val_size, cfg.seed)
        train, val = train.subset(rest), train.subset(held_out)
    if cfg.train_limit:
        train = train.subset(stratified_split(train.labels, cfg.train_limit, cfg.seed + 1)[1])
    mean, std = channel_stats(train.images)
    return Datasets(train, val, test, mean, std, config.data_label(source))


def class_counts(datasets: Datasets) -> pd.DataFrame:
    """Images per class in each split, one row per class."""
    splits = {"train": datasets.train, "validation": datasets.val, "test": datasets.test}
    counts = {name: Counter(split.labels.tolist()) for name, split in splits.items()}
    return pd.DataFrame(
        {name: [c[i] for i in range(len(CLASSES))] for name, c in counts.items()}, index=pd.Index(CLASSES, name="class")
    )
