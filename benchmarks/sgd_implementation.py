"""Training throughput with the fused SGD kernel this project uses against torch's default SGD (what it
used before), in fp32 and bf16, on the same real images, in one run.

    python benchmarks/sgd_implementation.py [--device cuda] [--images 1024] [--rounds 4] [--save]

Fused SGD is chosen because it keeps GradScaler's inf check on the device (fp16 never waits); in fp32 and
bf16 neither implementation waits, so speed decides, and this measures it. Every row is helpers.train's
train_epoch (new_run's model, data and step), timed as benchmarks/training_throughput.py times it: blocks
of steps taken in turn, so that other load on the machine slows every row alike.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from report import Report
from training_throughput import BATCH, Stopwatch, interleaved_seconds, project_block, project_run, real_subset

from helpers import data
from helpers.machinery.device import DeviceError, resolve_device
from helpers.machinery.execution import resolve


def with_default_sgd(run):
    """The run with torch.optim.SGD as this project built it before (torch's default implementation)."""
    group = run.optimizer.param_groups[0]
    run.optimizer = torch.optim.SGD(
        run.model.parameters(), lr=group["lr"], momentum=group["momentum"], weight_decay=group["weight_decay"]
    )
    return run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    parser.add_argument("--images", type=int, default=1024, help="real training images each row trains on (timed)")
    parser.add_argument("--rounds", type=int, default=4, help="timed blocks of each row, taken in turn")
    parser.add_argument("--save", action="store_true", help="keep the output in benchmarks/results/, named by machine")
    args = parser.parse_args(argv)
    os.environ.setdefault("CIFAR10_PROGRESS", "off")
    steps = args.images // (BATCH * args.rounds)
    if steps < 1:
        parser.error(f"--images must be at least --rounds x the batch size ({args.rounds * BATCH})")
    try:
        device = resolve_device(args.device)
    except DeviceError as exc:
        sys.exit(f"error: {exc}")
    out = Report(device)
    split = real_subset(steps * BATCH)
    mean, std = data.channel_stats(split.images)
    blocks = {}
    for precision in ("fp32", "bf16"):
        execution = resolve(device, precision)
        fused = project_run(mean, std, execution, compile_model=False)
        default = with_default_sgd(project_run(mean, std, execution, compile_model=False))
        blocks[f"{execution.label}, fused SGD (now)"] = project_block(split, fused)
        blocks[f"{execution.label}, torch's default SGD (before)"] = project_block(split, default)
    seconds = interleaved_seconds(blocks, args.rounds, Stopwatch(device))
    images = len(split) * args.rounds
    out(f"{images:,} training images timed per row, in {args.rounds} blocks taken in turn; batch size {BATCH}\n")
    width = max(map(len, seconds)) + 2
    out(f"{'execution, optimizer':<{width}} {'images/s':>9} {'seconds':>8}")
    for name, taken in seconds.items():
        out(f"{name:<{width}} {images / taken:>9.1f} {taken:>8.2f}")
    names = list(seconds)
    for now, before in zip(names[::2], names[1::2], strict=True):
        out(f"\n{now.split(', fused')[0]}: fused / default = {seconds[before] / seconds[now]:.3f}x")
    if args.save:
        out.save("sgd_implementation")


if __name__ == "__main__":
    main()
