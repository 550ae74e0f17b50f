"""Augmentation throughput: the batched pipeline (helpers.augment) against the original README's
per-image torchvision transforms in a DataLoader, on the same real CIFAR-10 training images.

    python benchmarks/augment_throughput.py [--device cuda] [--images 50000] [--save]

Both pipelines do the same work: RandomCrop(32, padding=4) -> RandomHorizontalFlip -> ToTensor ->
Normalize -> Cutout(1, 16) on shuffled training images. The per-image pipeline starts, like
torchvision's CIFAR10 dataset, from a uint8 array that becomes a PIL image in __getitem__; it
always runs on the CPU. The pipelines take turns (ROUNDS each, warmed up at every turn) for at
least --seconds each in all, so that their ratio holds up under background load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from report import Report
from torch.utils.data import DataLoader

from helpers import augment, config, data
from helpers.machinery.device import DeviceError, resolve_device

BATCH = 128  # the recipe's batch size
EPOCH_BATCH = 512  # a larger batch for the batched pipeline's passes over the whole set
ROUNDS = 4  # the pipelines take turns this often, so that a change in background load hits all alike
WARMUP = 4  # untimed batches at the start of every turn: the DataLoader's prefetch (2 workers x 2)


def real_images(limit: int) -> torch.Tensor:
    """The first `limit` CIFAR-10 training images (uint8); exit with a message where the data is absent."""
    try:
        return data.load_raw(config.data_source())["train"].images[:limit]
    except data.DataError as exc:
        sys.exit(f"error: {exc}")


def interleaved_rates(steps: dict, seconds: float, sync) -> dict[str, float]:
    """Images per second of each step function (one batch per call), timed in ROUNDS turns each."""
    counts, times = dict.fromkeys(steps, 0), dict.fromkeys(steps, 0.0)
    for _ in range(ROUNDS):
        for name, step in steps.items():
            count, elapsed = timed_turn(step, seconds / ROUNDS, sync)
            counts[name] += count
            times[name] += elapsed
    return {name: counts[name] / times[name] for name in steps}


def timed_turn(step, seconds: float, sync) -> tuple[int, float]:
    """(images, seconds) of calling `step` for at least `seconds`, after WARMUP untimed calls."""
    for _ in range(WARMUP):
        step()
    sync()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        count += step()
    sync()
    return count, time.perf_counter() - start


def batched_stream(images: torch.Tensor, mean, std, batch: int):
    """Endless shuffled epochs of batched augmentation on the images' device."""
    generator = torch.Generator(images.device).manual_seed(0)
    mean, std = (torch.tensor(v, device=images.device) for v in (mean, std))  # on the device once
    while True:
        order = torch.randperm(len(images), device=images.device, generator=generator)
        for index in order.split(batch):
            yield augment.augment(images[index], mean, std, generator=generator)


def per_image_stream(images: torch.Tensor, mean, std, workers: int):
    """Endless shuffled epochs of the per-image pipeline in a DataLoader."""
    dataset = augment.ReferenceDataset(images, torch.zeros(len(images), dtype=torch.int64), mean, std)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
    while True:
        yield from (images for images, _ in loader)


def batches_of(stream):
    """A step for `timed_turn`: take the next batch of `stream`, return its size."""
    return lambda: len(next(stream))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="device of the batched pipeline: cpu or cuda")
    parser.add_argument("--images", type=int, default=50_000, help="real training images to draw from")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per pipeline, in all (at least)")
    parser.add_argument("--save", action="store_true", help="keep the output in benchmarks/results/, named by machine")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except DeviceError as exc:  # CUDA asked for but absent
        sys.exit(f"error: {exc}")
    images = real_images(args.images)
    mean, std = data.channel_stats(images)
    on_device = images.to(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)  # that GPU
    steps = {
        f"batched ({device.type}), batch {BATCH}": batches_of(batched_stream(on_device, mean, std, BATCH)),
        f"batched ({device.type}), batch {EPOCH_BATCH}, passes over all {len(images):,}": batches_of(
            batched_stream(on_device, mean, std, EPOCH_BATCH)
        ),
    }
    for workers in (0, 2):
        steps[f"per-image DataLoader, batch {BATCH}, num_workers={workers}"] = batches_of(
            per_image_stream(images, mean, std, workers)
        )
    results = interleaved_rates(steps, args.seconds, sync)
    out = Report(device)
    out(f"{len(images):,} training images; the per-image pipeline always runs on the CPU ({os.cpu_count()} cores)\n")
    out(f"{'pipeline':<56} {'images/s':>10}")
    for name, rate in results.items():
        out(f"{name:<56} {rate:>10,.0f}")
    batched, _, single, workers = results.values()
    out(
        f"\nbatched / per-image: {batched / single:.1f}x  (batch {BATCH}, against num_workers=0; "
        f"{batched / workers:.1f}x against num_workers=2)"
    )
    if args.save:
        out.save("augment_throughput")


if __name__ == "__main__":
    main()
