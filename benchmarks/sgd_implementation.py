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


def resnet18_parameters():
    from helpers.model import resnet18

    return resnet18().parameters()


def optimizer_steps(device: torch.device, rounds: int, stopwatch: Stopwatch) -> dict[str, float]:
    """Seconds of `rounds` optimizer steps alone on the ResNet18's parameters (gradients fixed, fp32 as
    autocast keeps them), fused and default taken in turn: what the choice costs or saves in each step."""
    from helpers.machinery.optimizer import sgd
    from helpers.model import resnet18

    torch.manual_seed(0)
    models = {"fused SGD (now)": resnet18().to(device), "torch's default SGD (before)": resnet18().to(device)}
    hyper = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    optimizers = {
        "fused SGD (now)": sgd(models["fused SGD (now)"].parameters(), device, **hyper),
        "torch's default SGD (before)": torch.optim.SGD(models["torch's default SGD (before)"].parameters(), **hyper),
    }
    for model in models.values():
        for param in model.parameters():
            param.grad = torch.randn_like(param) * 1e-3
    blocks = {name: optimizer.step for name, optimizer in optimizers.items()}
    return interleaved_seconds(blocks, rounds, stopwatch)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    parser.add_argument("--images", type=int, default=1024, help="real training images each row trains on (timed)")
    parser.add_argument("--rounds", type=int, default=4, help="timed blocks of each row, taken in turn")
    parser.add_argument("--optimizer-only", action="store_true", help="time the optimizer steps alone")
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
    if args.optimizer_only:
        rounds = 10 * args.rounds
        seconds = optimizer_steps(device, rounds, Stopwatch(device))
        out(
            f"ResNet18's {sum(p.numel() for p in resnet18_parameters()) / 1e6:.2f} M parameters, fp32; {rounds} steps each, taken in turn\n"
        )
        for name, taken in seconds.items():
            out(f"optimizer step alone, {name}: {1000 * taken / rounds:.1f} ms")
        names = list(seconds)
        out(f"fused / default = {seconds[names[1]] / seconds[names[0]]:.2f}x")
        if args.save:
            out.save("sgd_implementation_step")
        return
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
