"""precision="auto" on this CPU against every explicit precision, trained through train.fit; and what the
measurement behind auto costs, the first time and once remembered.

    python benchmarks/auto_precision.py [--images 512] [--rounds 3] [--save]

First auto is resolved twice with an empty cache of its own (CIFAR10_CACHE in a temporary folder, so the
user's is left alone): the first call times the training step (machinery/autotune.py), the second reads
what the first remembered. Then each contender trains one epoch on the same real CIFAR-10 training images
through train.fit, a fresh run each time, in rounds (one fit of each contender, then the next round, each
round starting with the next contender), so that other load on the machine, and going first, slow them
alike. The contenders: auto as resolved, fp32 and bf16 (channels_last, as asked for by --precision), and
fp32 with oneDNN's implicit bf16 convolutions
(torch.backends.mkldnn.conv.fp32_precision = "bf16": fp32 tensors, bf16 arithmetic inside convolutions;
no precision name offers it yet). Each contender's median images/s over the rounds is reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from report import Report
from training_throughput import real_subset

from helpers import config, data, train
from helpers.data import Datasets
from helpers.machinery import autotune
from helpers.machinery.execution import Execution, resolve

CPU = torch.device("cpu")
VAL_IMAGES = 128  # fit validates after its epoch: kept small, the same for every contender


class implicit_bf16_convolutions(AbstractContextManager):
    """fp32 convolutions computed by oneDNN in bf16 (inputs rounded to bf16, fp32 accumulation), for a while."""

    def __enter__(self):
        self.saved = torch.backends.mkldnn.conv.fp32_precision
        torch.backends.mkldnn.conv.fp32_precision = "bf16"

    def __exit__(self, *exc):
        torch.backends.mkldnn.conv.fp32_precision = self.saved


def timed_resolve() -> tuple[Execution, float, float]:
    """auto's execution, and the wall and CPU seconds resolving it took (CPU time: this process's threads)."""
    start, cpu = time.perf_counter(), time.process_time()
    execution = resolve(CPU, "auto")
    return execution, time.perf_counter() - start, time.process_time() - cpu


def fit_seconds(datasets: Datasets, execution: Execution, context: Callable, folder: Path) -> float:
    """Wall seconds of one train.fit of one epoch, a fresh run, in `execution`."""
    path = folder / f"{time.monotonic_ns()}" / "checkpoint.pt"
    cfg = config.QUICK.replace(epochs=1, precision=execution.precision)
    start = time.perf_counter()
    with context():
        train.fit(cfg, datasets, execution, checkpoint_path=path)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512, help="real training images each fit trains on")
    parser.add_argument("--rounds", type=int, default=3, help="fits of each contender, taken in turn; 0: the cost only")
    parser.add_argument("--save", action="store_true", help="keep the output in benchmarks/results/, named by machine")
    args = parser.parse_args(argv)
    os.environ.setdefault("CIFAR10_PROGRESS", "off")
    os.environ.pop(autotune.SWITCH_ENV, None)  # measuring on, whatever the shell says
    out = Report(CPU)
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()
    out(f"torch.cpu.get_capabilities(): {', '.join(f'{k}={v}' for k, v in sorted(capabilities.items()))}")
    flags = sorted(autotune.cpu_flags() & {"avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "avx2"})
    out(f"CPU flags (/proc/cpuinfo, those that matter here): {' '.join(flags) or 'none found'}")
    with tempfile.TemporaryDirectory() as scratch:
        os.environ[autotune.CACHE_ENV] = str(Path(scratch) / "cache")
        auto, first, first_cpu = timed_resolve()
        again, second, _ = timed_resolve()
        out(f"\nauto resolves to: {auto.described}")
        out(
            f"measuring, first run (empty cache): {first:.1f} s wall, {first_cpu:.1f} s CPU time; "
            f"second run (remembered): {second * 1000:.1f} ms"
        )
        if not (again.measured and again.measured.remembered):
            out("(not remembered: the machine was busy, so the second run measured again; see machinery/autotune.py)")
        if args.rounds == 0:
            return

        split = real_subset(args.images + VAL_IMAGES)
        mean, std = data.channel_stats(split.images)
        index = torch.arange(len(split))
        train_split, val = split.subset(index[: args.images]), split.subset(index[args.images :])
        datasets = Datasets(train_split, val, val, mean, std)
        contenders: dict[str, tuple[Execution, Callable]] = {
            f"auto ({auto.label})": (auto, nullcontext),
            "fp32, channels_last": (resolve(CPU, "fp32"), nullcontext),
            "bf16, channels_last": (resolve(CPU, "bf16"), nullcontext),
            "fp32 + implicit bf16 convolutions": (resolve(CPU, "fp32"), implicit_bf16_convolutions),
        }
        seconds: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for round_ in range(args.rounds):
            turn = round_ % len(names)  # each round starts with the next contender: no one is always first
            for name in names[turn:] + names[:turn]:
                execution, context = contenders[name]
                seconds[name].append(fit_seconds(datasets, execution, context, Path(scratch)))
            out(f"round {round_ + 1}: " + ", ".join(f"{n} {args.images / s[-1]:.1f}" for n, s in seconds.items()))
    rates = {name: args.images / statistics.median(values) for name, values in seconds.items()}
    out(
        f"\ntrain.fit, one epoch of {args.images} images (+ validation on {VAL_IMAGES}), median of {args.rounds} rounds"
    )
    out(f"{'contender':<40} {'images/s':>9}")
    for name, rate in rates.items():
        out(f"{name:<40} {rate:>9.1f}")
    explicit = {name: rate for name, rate in rates.items() if not name.startswith("auto")}
    fastest = max(explicit, key=lambda name: explicit[name])
    auto_rate = rates[f"auto ({auto.label})"]
    out(f"\nauto / fastest explicit ({fastest}): {auto_rate / explicit[fastest]:.2f}x")
    if args.save:
        out.save("auto_precision")


if __name__ == "__main__":
    main()
