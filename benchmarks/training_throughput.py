"""Training throughput: the original README's pipeline against this project's, in every execution
this machine offers, on the same real images.

    python benchmarks/training_throughput.py [--device cuda] [--images 1024] [--bf16] [--compile] [--save]

Every row trains the same ResNet18 (helpers.model.resnet18, seed 0) with SGD (lr 0.1, momentum 0.9,
weight decay 5e-4) in batches of 128 on the same real CIFAR-10 training images:

    original README    per-image torchvision transforms with Cutout in a DataLoader (num_workers=2), fp32, NCHW
    this project       uint8 images resident on the device, batched augmentation (helpers.train.new_run +
                       train_epoch), once per execution: fp32 NCHW, fp32 channels_last, bf16 where the
                       hardware computes it natively (or with --bf16), fp16 on CUDA

The row that precision="auto" resolves to here (on a CPU with native bf16 measured once and remembered,
helpers/machinery/autotune.py; else helpers.machinery.execution.AUTO) is marked *. After WARMUP
untimed steps each, the rows take their timed steps in turn (one step of each, then the next round),
--images / 128 steps each, so that other load on the machine slows them alike. On CUDA every row,
the original's included, runs with the switches helpers.machinery.execution sets (cuDNN autotuning, TF32).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from report import Report
from torch.utils.data import DataLoader

from helpers import augment, config, data, train
from helpers.data import Split
from helpers.machinery.device import DeviceError, resolve_device
from helpers.machinery.execution import Execution, resolve
from helpers.model import resnet18

BATCH = 128  # images per SGD step, every pipeline
WARMUP = 2  # untimed steps before each measurement
WORKERS = 2  # DataLoader processes of the original README's pipeline
BASELINE = "original README (fp32, NCHW)"


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


def executions(device: torch.device, bf16: bool) -> list[Execution]:
    """The executions to measure: fp32 in both layouts, bf16 where native or asked for, fp16 on CUDA."""
    fp32 = resolve(device, "fp32")
    offered = [dataclasses.replace(fp32, channels_last=False), fp32]
    if fp32.hardware.native_bf16 or bf16:
        offered.append(resolve(device, "bf16"))
    if device.type == "cuda":
        offered.append(resolve(device, "fp16"))
    return offered


# ---------------------------------------------------------------- one SGD step of each pipeline


def endless(batches):
    """Epoch after epoch of an iterable of batches."""
    while True:
        yield from batches


def loader_step(split: Split, mean, std, device):
    """One fp32 NCHW SGD step of a plain training loop on the next batch of a per-image DataLoader."""
    dataset = augment.ReferenceDataset(split.images, split.labels, mean, std)
    loader = DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        num_workers=WORKERS,
        persistent_workers=True,
        pin_memory=device.type == "cuda",
    )
    batches = endless(loader)
    torch.manual_seed(0)
    model = resnet18().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def step():
        images, labels = (tensor.to(device, non_blocking=True) for tensor in next(batches))
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def project_step(split: Split, mean, std, execution: Execution, compile_model: bool):
    """One SGD step of helpers.train: train_epoch over the next batch of the shuffled, device-resident images."""
    cfg = config.RECIPE.replace(batch_size=BATCH, precision=execution.precision, compile=compile_model)
    run = train.new_run(cfg, execution, mean, std)
    device = execution.device
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


def report(out: Report, results: dict[str, float], images: int, auto: str, compiled: bool) -> dict:
    """Print the table (auto's row marked *) and return the same figures for JSON."""
    baseline = images / results[BASELINE]
    out(
        f"{images:,} training images; batch size {BATCH}; precision auto resolves to {auto} here"
        f"{'; this project compiled' if compiled else ''}\n"
    )
    out(f"{'pipeline':<44} {'images/s':>9} {'seconds':>8} {'speed-up':>9}")
    rows = []
    for name, seconds in results.items():
        rate = images / seconds
        rows.append(
            {
                "pipeline": name,
                "auto": name.endswith(f"({auto})"),
                "images_per_s": round(rate, 1),
                "seconds": round(seconds, 2),
                "speedup": round(rate / baseline, 2),
            }
        )
        out(f"{name + (' *' if rows[-1]['auto'] else ''):<44} {rate:>9.1f} {seconds:>8.2f} {rate / baseline:>8.2f}x")
    chosen = next(row for row in rows if row["auto"])
    fastest = max(rows, key=lambda row: row["images_per_s"])
    out(
        f"\n* auto ({auto}) / original README: {chosen['speedup']:.1f}x; "
        f"auto / fastest row ({fastest['pipeline']}): {chosen['images_per_s'] / fastest['images_per_s']:.2f}x"
    )
    return {
        "hardware": str(out.hardware),
        "torch": torch.__version__,
        "data": config.data_label(),
        "images": images,
        "batch_size": BATCH,
        "compile": compiled,
        "auto": auto,
        "results": rows,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda")
    parser.add_argument("--images", type=int, default=1024, help="real training images each pipeline trains on (timed)")
    parser.add_argument("--bf16", action="store_true", help="measure bf16 even where the hardware only emulates it")
    parser.add_argument("--compile", action="store_true", help="torch.compile this project's model")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--save", action="store_true", help="keep the output in benchmarks/results/, named by machine")
    args = parser.parse_args(argv)
    os.environ.setdefault("CIFAR10_PROGRESS", "off")  # no progress bars between the table's lines
    count = args.images // BATCH  # timed steps of each pipeline
    if count < 1:
        parser.error(f"--images must be at least the batch size, {BATCH}")
    try:
        device = resolve_device(args.device)
    except DeviceError as exc:  # CUDA asked for but absent
        sys.exit(f"error: {exc}")
    out = Report(device)
    split = real_subset(count * BATCH)
    mean, std = data.channel_stats(split.images)
    steps = {BASELINE: loader_step(split, mean, std, device)}
    for execution in executions(device, args.bf16):
        steps[f"this project ({execution.label})"] = project_step(split, mean, std, execution, args.compile)
    results = interleaved_seconds(steps, count, synchronizer(device))
    auto = resolve(device)
    summary = report(out, results, len(split), auto.label, args.compile)
    if auto.measured:
        out(f"auto's own measurement ({'remembered' if auto.measured.remembered else 'timed now'}): {auto.measured}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if args.save:
        out.save("training_throughput")


if __name__ == "__main__":
    main()
