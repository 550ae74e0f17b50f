"""Whether a run starts, resumes, is reused or is refused; and the state that makes resuming exact.

One rule for every caller (train.fit, notebook 03, `make series`, `python -m helpers.train`):

    no checkpoint                              a new run
    a finished run of this configuration       reused: its history comes from the checkpoint, nothing trains
    a partial run of this configuration        resumed exactly, from its last saved epoch
    a run of another configuration             refused, naming the differences: never overwritten

`fresh=True` (`--fresh`) starts again and keeps the old checkpoint aside under a dated name. The
state captured at an epoch boundary holds model, optimizer, scheduler, scaler and every random
state, so that training on from it gives the same history as never stopping.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config import Config, shown_path
from . import checkpoint
from .checkpoint import CheckpointError
from .progress import wrapped

if TYPE_CHECKING:
    from ..train import Run

# Settings a run may change and still continue: names, length and how the arithmetic runs.
CONTINUABLE = {"name", "epochs", "precision", "compile", "eval_batch_size", "checkpoint_every_s"}


def ways_on(notebook: bool) -> str:
    """What to do instead, in the words of the one asking: a notebook's fit(...) or the command line."""
    if notebook:
        return (
            "To keep both, pass another path: fit(..., checkpoint_path=PATH); to start again, "
            "fit(..., fresh=True), which keeps the old checkpoint aside."
        )
    return (
        "To keep both, give another --checkpoint PATH; to start again, --fresh, which keeps the old checkpoint aside."
    )


def fresh_start(notebook: bool) -> str:
    return "fit(..., fresh=True)" if notebook else "--fresh"


def worded(message: str, notebook: bool) -> str:
    """One line for a terminal; lines broken between words for a notebook, which breaks long lines mid-word."""
    return wrapped(message) if notebook else message


@dataclass
class Plan:
    """What fit does with a checkpoint path (decide's answer), and the line that tells the user."""

    action: str  # "new", "resume" or "reuse"
    state: dict | None  # the checkpoint's contents, for resume and reuse
    message: str | None  # one line, or None when there is nothing to say


def decide(
    cfg: Config,
    path: Path,
    data: str,
    device_type: str,
    fresh: bool = False,
    required: bool = False,
    fingerprint: str | None = None,
    notebook: bool = False,
) -> Plan:
    """Apply the rule to the checkpoint at `path` for a run of `cfg` on `data` (a data label, and the
    data's content fingerprint when known) on a device of `device_type`. `required` (the old --resume)
    makes a missing checkpoint an error. `notebook` says who asks: messages name fit(...)'s arguments
    there, the command line's flags elsewhere."""
    path = Path(path)
    if fresh:
        kept = set_aside(path) if path.exists() else None
        said = f"Fresh start; the previous checkpoint is kept as {shown_path(kept)}." if kept else None
        return Plan("new", None, said)
    if not path.exists() and not required:
        return Plan("new", None, None)
    state = checkpoint.load(path)
    refuse_another_configuration(cfg, data, state, path, fingerprint, notebook)
    if state["epoch"] > cfg.epochs:
        raise CheckpointError(
            worded(
                f"{shown_path(path)} holds {state['epoch']} epochs of this configuration, more than "
                f"the {cfg.epochs} asked for; it is left as it is. {ways_on(notebook)}",
                notebook,
            )
        )
    if state["epoch"] == cfg.epochs:
        return Plan(
            "reuse",
            state,
            worded(
                f"{shown_path(path)} holds a finished run of this configuration "
                f"({state['epoch']} epochs): reusing it, nothing is trained. To train again: "
                f"{fresh_start(notebook)}, which keeps the old checkpoint aside.",
                notebook,
            ),
        )
    if state["device_type"] != device_type:
        raise CheckpointError(
            worded(
                f"{shown_path(path)} was trained on {state['device_type']}; resume it there (its "
                f"random states do not carry over to {device_type}), or start again with {fresh_start(notebook)}.",
                notebook,
            )
        )
    return Plan("resume", state, f"Resuming {shown_path(path)} from epoch {state['epoch']} of {cfg.epochs}.")


def differences(cfg: Config, data: str, state: dict, fingerprint: str | None = None) -> dict[str, tuple]:
    """{setting: (value in the checkpoint, value now)} for every setting that must match, and the data:
    its label, and its fingerprint where both the checkpoint and the data have one. A setting the
    checkpoint does not hold (it was written before the setting existed) had its default."""
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    saved = {**defaults, **state["config"], "data": state.get("data")}
    current = {**cfg.as_dict(), "data": data}
    if fingerprint is not None and state.get("data_fingerprint") is not None:
        saved["data_fingerprint"], current["data_fingerprint"] = state["data_fingerprint"], fingerprint
    return {
        key: (saved.get(key), value)
        for key, value in current.items()
        if key not in CONTINUABLE and saved.get(key) != value
    }


def refuse_another_configuration(
    cfg: Config, data: str, state: dict, path: Path, fingerprint: str | None = None, notebook: bool = False
) -> None:
    found = differences(cfg, data, state, fingerprint)
    if found:
        listed = ", ".join(f"{key}: {old!r} in the checkpoint, {new!r} now" for key, (old, new) in found.items())
        raise CheckpointError(
            worded(
                f"{shown_path(path)} holds a run of another configuration ({listed}); it is left as it is. "
                + ways_on(notebook),
                notebook,
            )
        )


def set_aside(path: Path) -> Path:
    """Rename the checkpoint to <name>.before-<date>-<time>.pt beside it, never over another file, and
    its history and metrics with it (checkpoint.companion's names for the new name)."""
    stamp = now()
    kept, n = path.with_name(f"{path.stem}.before-{stamp}{path.suffix}"), 1
    while kept.exists():
        kept, n = path.with_name(f"{path.stem}.before-{stamp}-{n}{path.suffix}"), n + 1
    os.rename(path, kept)
    for name in checkpoint.COMPANIONS:
        if checkpoint.companion(path, name).exists():
            os.rename(checkpoint.companion(path, name), checkpoint.companion(kept, name))
    return kept


def now() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


# ---------------------------------------------------------------- the state of a run


def to_cpu(obj):
    """A copy of nested state with every tensor on the CPU (a snapshot, never a view)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: to_cpu(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(value) for value in obj)
    return obj


def capture(run: Run) -> dict:
    """The run's complete state at an epoch boundary."""
    return to_cpu(
        {
            "architecture": checkpoint.ARCHITECTURE,
            "format": checkpoint.FORMAT,
            "device_type": run.device.type,  # the generator's state is of this device type
            "execution": run.execution.as_dict(),  # of the latest epoch; the history has each epoch's
            "config": run.cfg.as_dict(),
            "data": run.data,
            "data_fingerprint": run.fingerprint,  # None where the data's content was not fingerprinted
            "epoch": run.epoch,
            "history": run.history,
            "mean": list(run.mean),
            "std": list(run.std),
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "generator": run.generator.get_state()},  # all the run draws from
        }
    )


def restore(run: Run, state: dict) -> None:
    """Continue `run` from a checkpoint that decide() found to be of its configuration and device type."""
    note_another_gpu(run, state)
    checkpoint.load_weights(run.model, state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler.is_enabled() and state["scaler"]:  # fp16 before and now; other executions keep no scale
        run.scaler.load_state_dict(state["scaler"])
    run.generator.set_state(state["rng"]["generator"])
    torch.set_rng_state(state["rng"]["torch"])
    run.epoch, run.history = state["epoch"], list(state["history"])
    run.mean, run.std = tuple(state["mean"]), tuple(state["std"])


def note_another_gpu(run: Run, state: dict) -> None:
    """Say so when a GPU run resumes on another GPU model: it continues, but not as it would have gone on
    there, because a CUDA generator's state draws other shuffles and augmentations on another GPU."""
    trained_on = state.get("execution", {}).get("hardware")
    if run.device.type == "cuda" and trained_on and gpu_name(trained_on) != run.execution.hardware.name:
        print(
            f"Note: this run was trained on {gpu_name(trained_on)} and resumes on {run.execution.hardware.name}: "
            "it continues, but its later epochs are not those it would have had there (other random draws).",
            file=sys.stderr,
        )


def gpu_name(hardware: str) -> str:
    """'NVIDIA H200' of 'NVIDIA H200 (compute capability 9.0, native bf16)', as Hardware's str writes it."""
    return hardware.rsplit(" (", 1)[0]
