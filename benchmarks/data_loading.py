"""Data loading time: the first load of CIFAR-10 (decoding every image) against a load from the cache.

    python benchmarks/data_loading.py     # the source is CIFAR10_DATA, else torchvision's download

The first load decodes into a fresh temporary folder (with torchvision's source it downloads there too),
so the project's own cache in data/ is left alone.
"""
import os
import tempfile
import time
from pathlib import Path

import torch

from helpers import config, data


def timed_load(cache_dir: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    splits = data.load_raw(config.data_source(), cache_dir)
    return time.perf_counter() - start, splits


def main() -> None:
    os.environ.setdefault("CIFAR10_PROGRESS", "off")
    with tempfile.TemporaryDirectory() as scratch:
        first, splits = timed_load(Path(scratch))
        cached, _ = timed_load(Path(scratch))
    images = sum(len(split) for split in splits.values())
    print(f"data: {config.data_label()}, {images:,} images; CPU: {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"first load (decode and cache): {first:6.2f} s")
    print(f"second load (from the cache):  {cached:6.2f} s")


if __name__ == "__main__":
    main()
