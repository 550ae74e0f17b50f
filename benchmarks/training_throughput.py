"""Training throughput: the original README's pipeline against this project's, in every execution
this machine offers, on the same real images.

    python benchmarks/training_throughput.py [--device cuda] [--images 1024] [--rounds 4] [--bf16] [--compile] [--save]

Every row trains the same ResNet18 (helpers.model.resnet18, seed 0) with SGD (lr 0.1, momentum 0.9,
weight decay 5e-4) in batches of 128 on the same real CIFAR-10 training images:

    original README    per-image torchvision transforms with Cutout in a DataLoader (num_workers=2), fp32, NCHW
    this project       uint8 images resident on the device, batched augmentation: helpers.train.new_run, then
                       train_epoch over the images, once per execution: fp32 NCHW, fp32 channels_last, bf16
                       where the hardware computes it natively (or with --bf16), fp16 on CUDA; with --compile,
                       auto's execution also compiled (helpers.machinery.compiled: CUDA graphs on a GPU)

The row that precision="auto" resolves to here (on a CPU with native bf16 measured once and remembered,
helpers/machinery/autotune.py; else helpers.machinery.execution.AUTO) is marked *. Throughput,
not latency: each row is timed over blocks of many steps (--images / --rounds images a block), with no
wait between its steps, as train_epoch runs them; on CUDA between two CUDA events and one synchronisation
of that GPU at the end of each block. After one untimed block each (warm-up, compilation), the rows take
their timed blocks in turn, --rounds rounds, so that other load on the machine slows them alike. On CUDA
every row, the original's included, runs with the switches helpers.machinery.execution sets (cuDNN
autotuning, TF32).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from report import Report
from torch.utils.data import DataLoader

from helpers import augment, config, data, train
from helpers.data import Split
from helpers.machinery.compiled import mode_for
from helpers.machinery.device import DeviceError, resolve_device
from helpers.machinery.execution import Execution, resolve
from helpers.model import resnet18

BATCH = 128  # images per SGD step, every pipeline
WORKERS = 2  # DataLoader processes of the original README's pipeline
BASELINE = "original README (fp32, NCHW)"


def real_subset(size: int) -> Split:
    """`size` CIFAR-10 training images chosen with seed 0; exit with a message where the data is absent."""
    try:
        images = data.load_raw(config.data_source())["train"]
    except data.DataError as exc:
        sys.exit(f"error: {exc}")
    return images.subset(torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:size])


class Stopwatch:
    """Seconds of a block of work as the device sees it: CUDA events on that GPU's stream and one
    synchronisation of that GPU at the end; on a CPU, wall time."""

    def __init__(self, device: torch.device):
        self.device = device

    def time(self, block: Callable[[], object]) -> float:
        if self.device.type != "cuda":
            start = time.perf_counter()
            block()
            return time.perf_counter() - start
        with torch.cuda.device(self.device):
            torch.cuda.synchronize(self.device)  # nothing of an earlier block is still running
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            block()
            end.record()
            torch.cuda.synchronize(self.device)
            return begin.elapsed_time(end) / 1000


def executions(device: torch.device, bf16: bool) -> list[Execution]:
    """The executions to measure: fp32 in both layouts, bf16 where native or asked for, fp16 on CUDA."""
    fp32 = resolve(device, "fp32")
    offered = [dataclasses.replace(fp32, channels_last=False), fp32]
    if fp32.hardware.native_bf16 or bf16:
        offered.append(resolve(device, "bf16"))
    if device.type == "cuda":
        offered.append(resolve(device, "fp16"))
    return offered


# ---------------------------------------------------------------- a block of SGD steps of each pipeline


def endless(batches):
    """Epoch after epoch of an iterable of batches."""
    while True:
        yield from batches


def loader_block(split: Split, mean, std, device):
    """len(split) / BATCH fp32 NCHW SGD steps of a plain training loop on a per-image DataLoader."""
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

    def block():
        for _ in range(len(split) // BATCH):
            step()

    return block


def project_run(mean, std, execution: Execution, compile_model: bool) -> train.Run:
    cfg = config.RECIPE.replace(batch_size=BATCH, precision=execution.precision, compile=compile_model)
    return train.new_run(cfg, execution, mean, std)


def project_block(split: Split, run: train.Run):
    """One helpers.train.train_epoch over the split, resident on the run's device: shuffled, augmented in
    batches, len(split) / BATCH steps with no wait between them."""
    resident = Split(split.images.to(run.device), split.labels.to(run.device))
    return lambda: train.train_epoch(run, resident)


def project_name(execution: Execution, compile_model: bool) -> str:
    compiled = f", compiled: {mode_for(execution.device)}" if compile_model else ""
    return f"this project ({execution.label}{compiled})"


def interleaved_seconds(blocks: dict[str, Callable], rounds: int, stopwatch: Stopwatch) -> dict[str, float]:
    """Seconds each pipeline spends on its `rounds` timed blocks, taken in turn after one untimed block
    each, so that a change in background load slows every pipeline alike and their ratios stay meaningful."""
    for block in blocks.values():
        stopwatch.time(block)  # warm-up: autotuning, allocations, compilation, CUDA-graph capture
    seconds = dict.fromkeys(blocks, 0.0)
    for _ in range(rounds):
        for name, block in blocks.items():
            seconds[name] += stopwatch.time(block)
    return seconds


# ---------------------------------------------------------------- report


def report(out: Report, results: dict[str, float], images: int, auto: str, compiled: bool, rounds: int) -> dict:
    """Print the table (auto's eager row marked *) and return the same figures for JSON."""
    baseline = images / results[BASELINE]
    out(
        f"{images:,} training images timed per pipeline, in {rounds} blocks taken in turn; batch size {BATCH}; "
        f"precision auto resolves to {auto} here{', also compiled' if compiled else ''}\n"
    )
    width = max(map(len, results)) + 2
    out(f"{'pipeline':<{width}} {'images/s':>9} {'seconds':>8} {'speed-up':>9}")
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
        out(
            f"{name + (' *' if rows[-1]['auto'] else ''):<{width}} {rate:>9.1f} {seconds:>8.2f} {rate / baseline:>8.2f}x"
        )
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
        "rounds": rounds,
        "compile": compiled,
        "auto": auto,
        "results": rows,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    parser.add_argument("--images", type=int, default=1024, help="real training images each pipeline trains on (timed)")
    parser.add_argument("--rounds", type=int, default=4, help="timed blocks of each pipeline, taken in turn")
    parser.add_argument("--bf16", action="store_true", help="measure bf16 even where the hardware only emulates it")
    parser.add_argument("--compile", action="store_true", help="also measure auto's execution compiled")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--save", action="store_true", help="keep the output in benchmarks/results/, named by machine")
    args = parser.parse_args(argv)
    os.environ.setdefault("CIFAR10_PROGRESS", "off")  # no progress bars between the table's lines
    steps = args.images // (BATCH * args.rounds)  # SGD steps in each timed block
    if steps < 1:
        parser.error(f"--images must be at least --rounds x the batch size ({args.rounds * BATCH})")
    try:
        device = resolve_device(args.device)
    except DeviceError as exc:  # CUDA asked for but absent, or an index this machine lacks
        sys.exit(f"error: {exc}")
    out = Report(device)
    split = real_subset(steps * BATCH)
    mean, std = data.channel_stats(split.images)
    blocks = {BASELINE: loader_block(split, mean, std, device)}
    auto = resolve(device)
    for execution in executions(device, args.bf16):
        compiled_too = args.compile and execution == auto  # compiling takes minutes: the execution runs use
        for compile_model in (False, True) if compiled_too else (False,):
            run = project_run(mean, std, execution, compile_model)
            blocks[project_name(execution, compile_model)] = project_block(split, run)
    results = interleaved_seconds(blocks, args.rounds, Stopwatch(device))
    summary = report(out, results, len(split) * args.rounds, auto.label, args.compile, args.rounds)
    if auto.measured:
        out(f"auto's own measurement ({'remembered' if auto.measured.remembered else 'timed now'}): {auto.measured}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if args.save:
        out.save("training_throughput")


if __name__ == "__main__":
    main()
