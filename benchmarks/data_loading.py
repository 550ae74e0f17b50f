"""Data loading time: the first load of CIFAR-10 (decoding every image) against a load from the cache, and
what checking the cache costs on every load: listing the source and the checksum of the tensors.

    python benchmarks/data_loading.py [--as-folder] [--save]   # the source: as every command finds it

The first load decodes into a fresh temporary folder (with torchvision's source it downloads there too),
so the project's own cache in data/ is left alone. --as-folder extracts an archive source into a
temporary folder first and loads that: the listing is then a walk over every image file.
"""

import argparse
import os
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from report import Report

from helpers import config, data
from helpers.machinery import fingerprint


def timed(work, rounds: int = 1):
    """((wall seconds, CPU seconds) of the fastest of `rounds` runs, the last result). CPU time is what a
    busy machine cannot inflate much: it counts only the time this process ran."""
    best, result = (float("inf"), float("inf")), None
    for _ in range(rounds):
        start, cpu = time.perf_counter(), time.process_time()
        result = work()
        best = min(best, (time.perf_counter() - start, time.process_time() - cpu))
    return best, result


def seconds(measured: tuple[float, float]) -> str:
    return f"{measured[0]:6.2f} s ({measured[1]:.2f} s of CPU)"


def extracted(archive: Path, scratch: Path) -> Path:
    """The archive's image-folder tree, extracted under scratch: the folder holding train/ and test/."""
    with tarfile.open(archive) as tar:
        tar.extractall(scratch / "folder", filter="data")
    return next(path.parent for path in (scratch / "folder").rglob("train") if (path.parent / "test").is_dir())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--as-folder", action="store_true", help="extract an archive source and load the folder")
    parser.add_argument("--save", action="store_true", help="keep the output in benchmarks/results/, named by machine")
    args = parser.parse_args(argv)
    os.environ.setdefault("CIFAR10_PROGRESS", "off")
    source = config.data_source()
    with tempfile.TemporaryDirectory() as scratch:
        if args.as_folder and source and Path(source).is_file():
            source = str(extracted(Path(source), Path(scratch)))
        first, raw = timed(lambda: data.load(source, Path(scratch)))
        cached, _ = timed(lambda: data.load(source, Path(scratch)), rounds=3)
        held = data.where_held(source, Path(scratch))
        listing_s, listing = timed(lambda: fingerprint.contents(held), rounds=5)
        what = f"a folder of {len(listing):,} files" if held.is_dir() else "an archive"
    tensors = {
        f"{name}/{part}": getattr(split, part) for name, split in raw.splits.items() for part in ("images", "labels")
    }
    checksum_s, _ = timed(lambda: fingerprint.checksum(tensors), rounds=5)
    out = Report(torch.device("cpu"))  # decoding and the cache run on the CPU
    out(f"{sum(len(split) for split in raw.splits.values()):,} images from {what}, decoded by one process")
    out(f"first load (decode and cache):            {seconds(first)}")
    out(f"second load (from the cache, checked):    {seconds(cached)}, of which")
    out(f"  listing the source (manifest or hash):  {seconds(listing_s)}")
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values()) / 1e6
    out(f"  checksum of the tensors (SHA-256):      {seconds(checksum_s)}, {nbytes:.0f} MB")
    if args.save:
        out.save("data_loading_folder" if args.as_folder else "data_loading")


if __name__ == "__main__":
    main()
