"""Checkpoints: written atomically, read without running code, checked against the model they load into.

Every file that cannot be used (missing, a folder, empty, truncated, unreadable, foreign, weights that
are not finite) is a CheckpointError of one line that names it and says what to do.

A checkpoint's history and metrics are files named after it (`companion`), so that two runs never
write each other's: `lr005.pt` keeps `lr005.history.csv` and `lr005.metrics.json` beside it. Why
names and not one folder per run: a checkpoint path is what every command already takes
(`--checkpoint`, `checkpoint_path=`), and the refusal that protects a run advises "another checkpoint
path"; with names, any path the user picks is safe, with no second rule to learn and nothing to refuse.
A checkpoint named `checkpoint.pt` (the default, `runs/<configuration>/checkpoint.pt`) keeps the plain
`history.csv` and `metrics.json`: the layout every earlier run has (commit 6960a31 on), which keeps
resuming, being reused and being evaluated as it is.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import shown_path
from .atomic import replacing
from .faults import reason

ARCHITECTURE = "resnet18-cifar-stem"  # what helpers.model.resnet18 builds; stored in every checkpoint
FORMAT = 2  # what a checkpoint holds: 2 adds the data label and the execution (resume.capture)


DEFAULT_NAME = "checkpoint.pt"  # its companions keep their plain names (history.csv, metrics.json)
COMPANIONS = ("history.csv", "metrics.json")  # the files of a run beside its checkpoint


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or belongs to another model or configuration."""


def save(state: dict, path: Path) -> None:
    """Write to a temporary file of this writer's beside `path`, then rename: a crash never leaves a
    broken file, and a reader never sees half of one."""
    with replacing(Path(path)) as file:
        torch.save(state, file)


def companion(path: Path, name: str) -> Path:
    """The file `name` (history.csv, metrics.json, ...) that belongs to the checkpoint at `path`:
    beside it, named after it (lr005.pt -> lr005.history.csv), plain for checkpoint.pt."""
    path = Path(path)
    return path.with_name(name if path.name == DEFAULT_NAME else f"{path.stem}.{name}")


def load(path: Path) -> dict:
    """The checkpoint's contents, loaded with weights_only=True so that it cannot run code."""
    path = Path(path)
    state = read(path)
    if not isinstance(state, dict) or state.get("architecture") != ARCHITECTURE:
        found = state.get("architecture", "no architecture tag") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{shown_path(path)} is not a checkpoint of this project's {ARCHITECTURE} ({found}).")
    if state.get("format", 1) != FORMAT:
        raise CheckpointError(
            f"{shown_path(path)} was written by another version of this project (format "
            f"{state.get('format', 1)}, this one reads {FORMAT}): train again with --fresh or "
            "fit(..., fresh=True), which keeps it aside, or use that version."
        )
    refuse_weights_that_are_not_finite(state, path)
    return state


AGAIN = "copy it again, or train again with --fresh or fit(..., fresh=True), which keeps it aside"


def read(path: Path) -> object:
    """The file's contents, unpickled without running code; CheckpointError if it cannot be read."""
    shown = shown_path(path)
    try:
        if path.is_dir():
            inside = " (the checkpoint.pt inside it?)" if (path / "checkpoint.pt").is_file() else ""
            raise CheckpointError(f"{shown} is a folder, not a checkpoint: pass the checkpoint file{inside}.")
        if not path.exists():
            raise CheckpointError(
                f"No checkpoint at {shown}: train first (notebook 03 or `python -m helpers.train`), or pass the path of one."
            )
        if not path.is_file():
            raise CheckpointError(f"{shown} is not a file but a device or pipe: pass the path of a checkpoint file.")
        if path.stat().st_size == 0:
            raise CheckpointError(f"{shown} is empty (0 bytes): a disk that filled up or a copy that failed; {AGAIN}.")
        with open(path, "rb") as file:
            return torch.load(file, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except PermissionError as exc:
        raise CheckpointError(
            f"{shown} cannot be read ({reason(exc)}): ask for read permission, or copy it where you can read it."
        ) from exc
    except Exception as exc:
        raise CheckpointError(
            f"{shown} is not a readable checkpoint ({reason(exc)}): it may be truncated or not a checkpoint; {AGAIN}."
        ) from exc


def refuse_weights_that_are_not_finite(state: dict, path: Path) -> None:
    """NaN or infinite weights give NaN probabilities: refuse them where they are loaded, for every command."""
    weights = state.get("model")
    for key, tensor in weights.items() if isinstance(weights, dict) else ():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(
                f"{shown_path(path)} holds weights that are not finite (NaN or infinity in {key}): "
                "the run diverged or the file was damaged; train again with --fresh or fit(..., fresh=True), "
                "which keeps it aside."
            )


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], source: str = "the checkpoint") -> None:
    """Load a state_dict after checking that every key and shape matches, naming the first that doesn't."""
    expected = model.state_dict()
    missing, unexpected = expected.keys() - weights.keys(), weights.keys() - expected.keys()
    if missing or unexpected:
        raise CheckpointError(
            f"{source} holds weights of another architecture: "
            f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}."
        )
    for key, tensor in expected.items():
        if weights[key].shape != tensor.shape:
            raise CheckpointError(
                f"{source} holds weights of another architecture: {key} has shape "
                f"{tuple(weights[key].shape)}, this model's is {tuple(tensor.shape)}."
            )
    model.load_state_dict(weights)
