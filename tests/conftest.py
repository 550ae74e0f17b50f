"""Shared fixtures: the real CIFAR-10 (JPEG copy) when it is beside the checkout, and isolated outputs."""
import os
from pathlib import Path

import pytest
import torch

from helpers import config, data
from helpers.data import Datasets, Split

SHARED_ARCHIVE = config.REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(scope="session")
def real_source() -> Path:
    """CIFAR10_DATA if set, else the project's shared JPEG copy of CIFAR-10; skipped where absent."""
    source = config.data_source() or (SHARED_ARCHIVE if SHARED_ARCHIVE.exists() else None)
    if not source or not Path(source).exists():
        pytest.skip("real CIFAR-10 is absent: set CIFAR10_DATA or put the JPEG copy in ../shared/data/")
    return Path(source)


@pytest.fixture(scope="session")
def real_raw(real_source):
    """All 60,000 real images (decoded once, then from the cache)."""
    return data.load_raw(real_source)


@pytest.fixture(autouse=True)
def isolated_outputs(tmp_path, monkeypatch):
    """Figures, checkpoints and histories of a test go to its own temporary folder."""
    monkeypatch.setenv("CIFAR10_OUTPUT", str(tmp_path / "out"))
    monkeypatch.setenv("CIFAR10_PROGRESS", os.environ.get("CIFAR10_PROGRESS", "off"))


@pytest.fixture(scope="session")
def tiny() -> Datasets:
    """128 training and 64 validation (= test) images of random pixels, labelled by brightness: fast runs."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (192, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = (images.float().mean((1, 2, 3)) * 10 / 256).long().clamp(0, 9)
    train, held_out = Split(images[:128], labels[:128]), Split(images[128:], labels[128:])
    return Datasets(train, held_out, held_out, *data.channel_stats(train.images))
