"""A trained run carried off a machine in small files, and put back together as a checkpoint.

    python benchmarks/model_parts.py split CHECKPOINT OUTDIR    -> OUTDIR/model.part1.pt, model.part2.pt
    python benchmarks/model_parts.py join OUTDIR CHECKPOINT     -> a checkpoint notebook 04 and helpers.evaluate read

A checkpoint holds the weights in fp32 and the optimizer's momentum (about 90 MB); a lent GPU machine
returns files of at most 16 MiB. The parts hold the weights in fp16 (22 MB, in two halves) and everything
else the checkpoint holds (history, configuration, statistics, random states, the scheduler) but the
momentum buffers. Joined, the checkpoint is a finished run: reused as it is, evaluated, drawn. Its weights
are the fp16 values (a relative rounding of at most 2^-11: a prediction can change only where two classes'
scores were about that close); a run continued from it (more epochs) starts its momentum from zero.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from helpers.machinery import checkpoint

PARTS = ("model.part1.pt", "model.part2.pt")


def split(path: Path, outdir: Path) -> list[Path]:
    state = checkpoint.load(path)
    weights = state.pop("model")
    optimizer = state.pop("optimizer")
    state["optimizer"] = {"state": {}, "param_groups": optimizer["param_groups"]}  # no momentum buffers
    names = list(weights)
    halves = halves_by_size(weights)
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (part, keys) in enumerate(zip(PARTS, halves, strict=True)):
        content = {key: as_fp16(weights[key]) for key in keys}
        torch.save({"order": names, "weights": content, **({"rest": state} if index == 0 else {})}, outdir / part)
        written.append(outdir / part)
    return written


def halves_by_size(weights: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """The names in order, cut where half the bytes are behind: the last stage alone holds most of them."""
    total, running = sum(t.numel() for t in weights.values()), 0
    first = []
    for name, tensor in weights.items():
        if running + tensor.numel() / 2 > total / 2:
            break
        first.append(name)
        running += tensor.numel()
    return first, [name for name in weights if name not in set(first)]


def as_fp16(tensor: torch.Tensor) -> torch.Tensor:
    """Floating weights in fp16; integer buffers (BatchNorm's batch counters) as they are."""
    return tensor.half() if tensor.is_floating_point() else tensor


def join(outdir: Path, path: Path) -> dict:
    parts = [torch.load(outdir / part, map_location="cpu", weights_only=True) for part in PARTS]
    weights = {key: value for part in parts for key, value in part["weights"].items()}
    state = dict(parts[0]["rest"])
    state["model"] = {key: to_fp32(weights[key]) for key in parts[0]["order"]}
    checkpoint.save(state, path)
    return checkpoint.load(path)  # checked as any checkpoint is


def to_fp32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.is_floating_point() else tensor


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("split", "join"))
    parser.add_argument("source", type=Path, help="split: the checkpoint; join: the folder of the parts")
    parser.add_argument("target", type=Path, help="split: the folder for the parts; join: the checkpoint to write")
    args = parser.parse_args(argv)
    try:
        if args.action == "split":
            for written in split(args.source, args.target):
                print(f"wrote {written.name} ({written.stat().st_size / 2**20:.1f} MiB)")
        else:
            state = join(args.source, args.target)
            print(f"wrote {args.target}: {state['config']['name']}, epoch {state['epoch']}")
    except checkpoint.CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(
            f"error: {Path(str(exc.filename)).name} is missing: split writes both parts into one folder",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
