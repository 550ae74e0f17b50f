"""CIFAR-10 as uint8 tensors: from torchvision's download or from image folders, cached once decoded.

The cache is the data or nothing (machinery/cache.py): it is used only while the source holds what it
held when the cache was made and the tensors match their checksum; otherwise one line says why and the
source is decoded again, so that its counts and images are checked again.

The whole data set is 60,000 x 3 x 32 x 32 bytes (184 MB), small enough to keep on the training
device and augment there in batches (see augment.py), so there is no DataLoader here.
"""

from __future__ import annotations

import io
import sys
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
from .machinery import cache, fingerprint
from .machinery.faults import reason
from .machinery.progress import progress

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PER_CLASS = {"train": 5000, "test": 1000}  # CIFAR-10's images per class in each split
IMAGE_SHAPE = (3, 32, 32)


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
    fingerprint: str | None = None  # checksum of the whole decoded data set, train and test (Raw.fingerprint)
    classes: tuple[str, ...] = CLASSES


# ---------------------------------------------------------------- loading the raw splits

ENTRIES = ("train/images", "train/labels", "test/images", "test/labels")  # what a cache must hold


@dataclass
class Raw:
    """CIFAR-10's train and test splits as loaded, what they are called and what they hold."""

    splits: dict[str, Split]
    label: str  # "CIFAR-10", "CIFAR-10 (JPEG copy)" or "image folders: NAME", from the content
    fingerprint: str  # checksum of the tensors: equal for equal pixels and labels


def source_listing(held: Path) -> list[str] | None:
    """What the source holds now (fingerprint.contents), None where nothing is there yet; a source that
    cannot be read is one line, as its decoding would be."""
    if not held.exists():
        return None
    try:
        return fingerprint.contents(held)
    except OSError as exc:
        raise DataError(f"{held.name} cannot be read ({reason(exc)}).") from exc


def load(
    source: str | Path | None = None, data_dir: Path | None = None, per_class: dict[str, int] | None = None
) -> Raw:
    """The splits of `source` (image folders or an archive; None: torchvision's download into data_dir),
    from the cache when it is of the source as it is now and intact, else decoded and cached anew
    (with one line saying why, when a cache was there)."""
    data_dir = config.DATA_DIR if data_dir is None else Path(data_dir)
    held = where_held(source, data_dir)
    path = cache_path(source, data_dir)
    listing = source_listing(held)
    if listing is not None:
        try:
            cached = cache.read(path, listing, ENTRIES)
        except cache.Unusable as why:
            print(f"{why}; decoding the source again.", file=sys.stderr, flush=True)
            path.unlink(missing_ok=True)
        else:
            if cached is not None:
                splits = {
                    name: Split(cached.tensors[f"{name}/images"], cached.tensors[f"{name}/labels"])
                    for name in ("train", "test")
                }
                return Raw(splits, cached.label, cached.checksum)
    if source is None:
        splits, label = read_torchvision(data_dir), "CIFAR-10"
    else:
        splits, label = read_image_folders(Path(source), per_class or PER_CLASS)
    listing = listing or fingerprint.contents(held)  # taken before decoding: a change meanwhile shows next time
    tensors = {
        f"{name}/{part}": getattr(split, part) for name, split in splits.items() for part in ("images", "labels")
    }
    return Raw(splits, label, cache.write(path, tensors, label, listing, held))


def load_raw(
    source: str | Path | None = None, data_dir: Path | None = None, per_class: dict[str, int] | None = None
) -> dict[str, Split]:
    """CIFAR-10's train and test splits: `source` is image folders or an archive; None downloads."""
    return load(source, data_dir, per_class).splits


def where_held(source: str | Path | None, data_dir: Path) -> Path:
    """The folder or archive whose contents the cache must match."""
    if source is None:
        return data_dir / "cifar-10-batches-py"
    source = Path(source)
    if not source.exists():
        raise DataError(f"CIFAR-10 source {source} does not exist (set by CIFAR10_DATA or --data).")
    return source


def cache_path(source: str | Path | None, data_dir: Path) -> Path:
    """One cache file per source: data/cache/<name>-<hash of its path>-v<version>.pt."""
    if source is None:
        return cache.path_for(data_dir / "cache", "torchvision")
    return cache.path_for(data_dir / "cache", source_name(Path(source)), Path(source))


def source_name(source: Path) -> str:
    """A folder's name, or an archive's without .tar, .tar.gz, .tgz."""
    name = source.name
    for suffix in (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def label_of(source: str | Path | None = None, data_dir: Path | None = None) -> str:
    """How results name the data of `source` (default: config.data_source()), by its content: recorded in
    the cache when that is of the source as it is now, else found by loading it."""
    source = config.data_source() if source is None else source
    if source is None:
        return "CIFAR-10"
    data_dir = config.DATA_DIR if data_dir is None else Path(data_dir)
    held = where_held(source, data_dir)
    return cache.label(cache_path(source, data_dir), fingerprint.contents(held)) or load(source, data_dir).label


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


def read_image_folders(source: Path, per_class: dict[str, int] = PER_CLASS) -> tuple[dict[str, Split], str]:
    """Decode <root>/{train,test}/<class>/<image> from a folder or a .tar/.tar.gz of one; the splits and
    their label: "CIFAR-10 (JPEG copy)" when every image is a JPEG, else "image folders: <name>"."""
    if source.is_file() and source.stat().st_size == 0:
        raise DataError(f"{source.name} is empty (0 bytes): a download or copy that failed; copy it again.")
    files = archive_files(source) if source.is_file() else folder_files(source)
    grouped = group_by_split_and_class(files, source)
    check_counts(grouped, per_class, source)
    decoded = {split: decode_split(grouped[split], split) for split in ("train", "test")}
    formats = set().union(*(found for _, found in decoded.values()))
    label = "CIFAR-10 (JPEG copy)" if formats == {"JPEG"} else f"image folders: {source_name(source)}"
    return {split: images for split, (images, _) in decoded.items()}, label


def archive_files(path: Path):
    """(name, bytes) of every file in a tar archive, streamed; errors name the archive."""
    try:
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                file = archive.extractfile(member) if member.isfile() else None  # None for links and folders
                if file is not None:
                    yield member.name, file.read()
    except PermissionError as exc:
        raise DataError(f"{path.name} cannot be read ({reason(exc)}): ask for read permission.") from exc
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{path.name} is truncated or not a tar archive ({reason(exc)}): copy it again.") from exc


def folder_files(root: Path):
    if not root.is_dir():
        raise DataError(f"CIFAR-10 source {root} is neither a folder nor an archive.")
    for path in sorted(root.rglob("*")):
        if path.is_file():
            name = str(path.relative_to(root))
            try:
                yield name, path.read_bytes()
            except OSError as exc:
                raise DataError(f"{root.name}: {name} cannot be read ({reason(exc)}).") from exc


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


def decode_split(by_class: dict[str, list[tuple[str, bytes]]], split: str) -> tuple[Split, set[str]]:
    """Decode in CIFAR-10's label order, files sorted by name within a class; the file formats found."""
    items = [(label, item) for label, cls in enumerate(CLASSES) for item in sorted(by_class[cls])]
    images = np.empty((len(items), 32, 32, 3), dtype=np.uint8)
    formats = set()
    for i, (_, (name, data)) in enumerate(progress(items, desc=f"decoding {split}", unit="img", leave=False)):
        images[i], found = decode_image(name, data)
        formats.add(found)
    labels = torch.tensor([label for label, _ in items], dtype=torch.int64)
    return Split(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels), formats


def decode_image(name: str, data: bytes) -> tuple[np.ndarray, str]:
    """(32, 32, 3) RGB pixels of one image file, and its format as PIL names it (JPEG, PNG, ...)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.size != (32, 32):
                raise DataError(f"{name} is {image.size[0]}x{image.size[1]}; CIFAR-10 images are 32x32.")
            return np.asarray(image.convert("RGB")), str(image.format)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{name} could not be decoded as an image ({reason(exc)}).") from exc


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
    cfg: config.Config | None = None, source: str | Path | None = None, data_dir: Path | None = None
) -> Datasets:
    """The train / validation / test splits of a configuration, and the training split's statistics."""
    cfg = cfg or config.active_config()
    source = config.data_source() if source is None else source
    raw = load(source, data_dir)
    train, test = raw.splits["train"], raw.splits["test"]
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
    return Datasets(train, val, test, mean, std, raw.label, raw.fingerprint)


def class_counts(datasets: Datasets) -> pd.DataFrame:
    """Images per class in each split, one row per class."""
    splits = {"train": datasets.train, "validation": datasets.val, "test": datasets.test}
    counts = {name: Counter(split.labels.tolist()) for name, split in splits.items()}
    return pd.DataFrame(
        {name: [c[i] for i in range(len(CLASSES))] for name, c in counts.items()}, index=pd.Index(CLASSES, name="class")
    )
