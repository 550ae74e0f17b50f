"""Data loading time: the first load of CIFAR-10 (decoding every image) against a load from the cache.

    python benchmarks/data_loading.py [--save]    # the source is CIFAR10_DATA, else torchvision's download

The first load decodes into a fresh temporary folder (with torchvision's source it downloads there too),
so the project's own cache in data/ is left alone.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from report import Report

from helpers import config, data


def timed_load(cache_dir: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    splits = data.load_raw(config.data_source(), cache_dir)
    return time.perf_counter() - start, splits


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--save", action="store_true", help="keep the output in benchmarks/results/, named by machine")
    args = parser.parse_args(argv)
    os.environ.setdefault("CIFAR10_PROGRESS", "off")
    with tempfile.TemporaryDirectory() as scratch:
        first, splits = timed_load(Path(scratch))
        cached, _ = timed_load(Path(scratch))
    out = Report(torch.device("cpu"))  # decoding and the cache run on the CPU
    out(f"{sum(len(split) for split in splits.values()):,} images, decoded by one process")
    out(f"first load (decode and cache): {first:6.2f} s")
    out(f"second load (from the cache):  {cached:6.2f} s")
    if args.save:
        out.save("data_loading")


if __name__ == "__main__":
    main()
