"""Training throughput: this project's pipeline against the original README's, on the same real images.

    python benchmarks/training_throughput.py [--device cuda] [--images 1024] [--compile] [--json FILE]

All three pipelines train the same ResNet18 (helpers.model.resnet18, seed 0) with SGD (lr 0.1,
momentum 0.9, weight decay 5e-4) in batches of 128 on the same real CIFAR-10 training images:

    original README     per-image torchvision transforms with Cutout in a DataLoader (num_workers=2), fp32, NCHW
    + bf16, chan.-last  the same DataLoader, with bf16 autocast and channels_last: what the compute alone gives
    this project        uint8 images resident on the device, batched augmentation, bf16, channels_last
                        (helpers.train.new_run + train_epoch; --compile compiles its model)

After WARMUP untimed steps each, the pipelines take their timed steps in turn (one step of each, then
the next round), --images / 128 steps each, so that other load on the machine slows them alike.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from helpers import augment, config, data, train
from helpers.data import Split
from helpers.device import DeviceError, device_name, resolve_device
from helpers.model import resnet18

BATCH = 128   # images per SGD step, every pipeline
WARMUP = 2    # untimed steps before each measurement
WORKERS = 2   # DataLoader processes of the original README's pipeline


def real_subset(size: int) -> Split:
    """`size` CIFAR-10 training images chosen with seed 0; exit with a message where the data is absent."""
    try:
        images = data.load_raw(config.data_source())["train"]
    except data.DataError as exc:
        sys.exit(f"error: {exc}")
    return images.subset(torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:size])


def synchronizer(device: torch.device):
    """A function that waits for the device, so that timers see finished work."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


# ---------------------------------------------------------------- one SGD step of each pipeline


def endless(batches):
    """Epoch after epoch of an iterable of batches."""
    while True:
        yield from batches


def loader_step(split: Split, mean, std, device, bf16: bool, channels_last: bool):
    """One SGD step of a plain training loop on the next batch of a per-image DataLoader."""
    dataset = augment.ReferenceDataset(split.images, split.labels, mean, std)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=WORKERS, persistent_workers=True,
                        pin_memory=device.type == "cuda")
    batches = endless(loader)
    torch.manual_seed(0)
    model = resnet18().to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def step():
        images, labels = (tensor.to(device, non_blocking=True) for tensor in next(batches))
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def project_step(split: Split, mean, std, device, compile_model: bool):
    """One SGD step of helpers.train: train_epoch over the next batch of the shuffled, device-resident images."""
    cfg = config.RECIPE.replace(batch_size=BATCH, precision="bf16", channels_last=True, compile=compile_model)
    run = train.new_run(cfg, device, mean, std)
    resident = Split(split.images.to(device), split.labels.to(device))
    order = torch.randperm(len(resident), device=device, generator=torch.Generator(device).manual_seed(0))
    batches = endless([resident.subset(index) for index in order.split(BATCH)])
    return lambda: train.train_epoch(run, next(batches))


def interleaved_seconds(steps: dict, count: int, sync) -> dict[str, float]:
    """Seconds each pipeline spends on `count` steps, taken in turn (after WARMUP each), so that a change
    in background load slows every pipeline alike and their ratios stay meaningful."""
    for step in steps.values():
        for _ in range(WARMUP):
            step()
    seconds = dict.fromkeys(steps, 0.0)
    for _ in range(count):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            seconds[name] += time.perf_counter() - start
    return seconds


# ---------------------------------------------------------------- report


def report(results: dict[str, float], images: int, device: torch.device, compiled: bool) -> dict:
    """Print the table and return the same figures for JSON."""
    baseline = images / results["original README"]
    print(f"device: {device_name(device)}; torch {torch.__version__}; data: {config.data_label()}, "
          f"{images:,} training images; batch size {BATCH}{'; this project compiled' if compiled else ''}\n")
    print(f"{'pipeline':<40} {'images/s':>9} {'seconds':>8} {'speed-up':>9}")
    rows = []
    for name, seconds in results.items():
        rate = images / seconds
        rows.append({"pipeline": name, "images_per_s": round(rate, 1), "seconds": round(seconds, 2),
                     "speedup": round(rate / baseline, 2)})
        print(f"{name:<40} {rate:>9.1f} {seconds:>8.2f} {rate / baseline:>8.2f}x")
    print(f"\nthis project / original README: {rows[-1]['speedup']:.1f}x")
    return {"device": device_name(device), "torch": torch.__version__, "data": config.data_label(),
            "images": images, "batch_size": BATCH, "compile": compiled, "results": rows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda")
    parser.add_argument("--images", type=int, default=1024, help="real training images each pipeline trains on (timed)")
    parser.add_argument("--compile", action="store_true", help="torch.compile this project's model")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    os.environ.setdefault("CIFAR10_PROGRESS", "off")  # no progress bars between the table's lines
    count = args.images // BATCH  # timed steps of each pipeline
    if count < 1:
        parser.error(f"--images must be at least the batch size, {BATCH}")
    try:
        device = resolve_device(args.device)
    except DeviceError as exc:  # CUDA asked for but absent
        sys.exit(f"error: {exc}")
    split = real_subset(count * BATCH)
    mean, std = data.channel_stats(split.images)
    steps = {
        "original README": loader_step(split, mean, std, device, bf16=False, channels_last=False),
        "+ bf16 autocast, channels_last": loader_step(split, mean, std, device, bf16=True, channels_last=True),
        "this project": project_step(split, mean, std, device, args.compile),
    }
    results = interleaved_seconds(steps, count, synchronizer(device))
    summary = report(results, len(split), device, args.compile)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
