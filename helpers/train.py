"""Training with the recipe: SGD with momentum, ReduceLROnPlateau on the validation loss.

Fast by construction: the uint8 data set lives on the training device, each batch is augmented
there in one go (augment.py), the arithmetic runs in the precision and layout that suit the
hardware (machinery/execution.py), and the loop never waits for the device inside an epoch: losses and
accuracies accumulate as tensors and are read once per epoch.

Safe to run again: whether fit trains, resumes or reuses a finished run is resume.decide's rule, and
resuming from a checkpoint gives the same history as never stopping.

    python -m helpers.train --help
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import cast

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import config
from .augment import augment
from .config import Config
from .data import DataError, Datasets, Split, prepare
from .evaluate import logits
from .machinery import checkpoint
from .machinery.device import DeviceError, resolve_device
from .machinery.execution import CHOICES, Execution, resolve
from .machinery.progress import live_curves, progress
from .machinery.resume import capture, decide, restore
from .model import resnet18


class TrainingError(RuntimeError):
    """Training cannot start or go on as asked; the message says why."""


# ---------------------------------------------------------------- set-up


def check_config(cfg: Config) -> None:
    """Refuse hyperparameters that make no sense, all of them in one message."""
    rules = [
        (cfg.epochs >= 1, f"epochs must be at least 1 (got {cfg.epochs})"),
        (cfg.batch_size >= 1, f"batch_size must be at least 1 (got {cfg.batch_size})"),
        (cfg.lr > 0 and math.isfinite(cfg.lr), f"lr must be a positive number (got {cfg.lr})"),
        (0 <= cfg.momentum < 1, f"momentum must be in [0, 1) (got {cfg.momentum})"),
        (cfg.weight_decay >= 0, f"weight_decay must be at least 0 (got {cfg.weight_decay})"),
        (0 < cfg.plateau_factor < 1, f"plateau_factor must be in (0, 1) (got {cfg.plateau_factor})"),
        (cfg.plateau_patience >= 0, f"plateau_patience must be at least 0 (got {cfg.plateau_patience})"),
        (0 <= cfg.flip_p <= 1, f"flip_p must be in [0, 1] (got {cfg.flip_p})"),
        (
            cfg.crop_padding >= 0 and cfg.cutout_length >= 0 and cfg.cutout_holes >= 0,
            "crop_padding, cutout_length and cutout_holes must be at least 0",
        ),
    ]
    problems = [message for ok, message in rules if not ok]
    if problems:
        raise ValueError("Nonsense hyperparameters: " + "; ".join(problems) + ".")


@dataclass
class Run:
    """Everything a checkpoint holds, and how it computes."""

    cfg: Config
    execution: Execution
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: torch.amp.GradScaler
    generator: torch.Generator  # shuffling and augmentation
    mean: tuple
    std: tuple
    data: str = "CIFAR-10"  # the data's label: a run is continued only on the data it started on
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    forward: nn.Module = field(init=False)  # the model, compiled when asked

    def __post_init__(self) -> None:
        # torch.compile of a module returns a module (OptimizedModule); its annotation only says Callable
        self.forward = cast(nn.Module, torch.compile(self.model)) if self.cfg.compile else self.model

    @property
    def device(self) -> torch.device:
        return self.execution.device


def new_run(cfg: Config, execution: Execution, mean, std, data: str = "CIFAR-10") -> Run:
    """A freshly initialised model with the recipe's optimizer, scheduler and seeded generators."""
    torch.manual_seed(cfg.seed)
    model = resnet18().to(execution.device, memory_format=execution.memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience
    )
    generator = torch.Generator(execution.device).manual_seed(cfg.seed)
    return Run(
        cfg, execution, model, optimizer, scheduler, execution.grad_scaler(), generator, tuple(mean), tuple(std), data
    )


# ---------------------------------------------------------------- one epoch


def train_epoch(run: Run, train: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over the shuffled training split; returns (mean loss, accuracy) as device tensors."""
    run.model.train()
    loss_sum = torch.zeros((), device=run.device)
    correct = torch.zeros((), device=run.device, dtype=torch.int64)
    order = torch.randperm(len(train), device=run.device, generator=run.generator)
    batches = order.split(run.cfg.batch_size)
    mean, std = (torch.tensor(v, device=run.device) for v in (run.mean, run.std))  # copied once, not per step
    for index in progress(batches, desc=f"epoch {run.epoch + 1}", unit="batch", leave=False):
        images = augment(train.images[index], mean, std, run.cfg, run.generator)
        images = images.contiguous(memory_format=run.execution.memory_format)
        labels = train.labels[index]
        with run.execution.autocast():
            outputs = run.forward(images)
            loss = F.cross_entropy(outputs, labels)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        loss_sum += loss.detach().float() * len(labels)
        correct += (outputs.argmax(1) == labels).sum()
    return loss_sum / len(train), correct / len(train)


def validate(run: Run, val: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss, accuracy) on the validation split, as device tensors."""
    out = logits(run.forward, val.images, run.mean, run.std, run.execution, run.cfg.eval_batch_size)
    return F.cross_entropy(out, val.labels), (out.argmax(1) == val.labels).float().mean()


# ---------------------------------------------------------------- checkpoints


def write_outputs(state: dict, path: Path) -> None:
    """The checkpoint, and beside it the history as CSV."""
    checkpoint.save(state, path)
    history_frame(state["history"]).to_csv(path.with_name("history.csv"))


def history_frame(history: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(history).set_index("epoch") if history else pd.DataFrame()


# ---------------------------------------------------------------- the loop


def fit(
    cfg: Config | None = None,
    datasets: Datasets | None = None,
    device: str | Execution = "auto",
    checkpoint_path: Path | None = None,
    resume: bool = False,
    fresh: bool | None = None,
    again: str | None = None,
) -> pd.DataFrame:
    """Train a run of `cfg`, or resume it, or reuse it when finished; return its per-epoch history.

    `device` is auto, cpu, cuda or cuda:N, or an execution already resolved for cfg.precision.

    What happens with an existing checkpoint is resume.decide's rule, the same for every caller: a
    finished run of this configuration is reused, a partial one resumed, another one refused;
    `fresh` starts again and keeps the old checkpoint aside (None: CIFAR10_FRESH, set by `make series
    FRESH=1`); `resume` (--resume) requires one. `again`: how the line after a stop says to continue.
    """
    cfg = cfg or config.active_config()
    check_config(cfg)
    execution = device if isinstance(device, Execution) else resolve(resolve_device(device), cfg.precision)
    datasets = datasets or prepare(cfg)
    path = Path(checkpoint_path or config.checkpoint_path(cfg))
    fresh = config.fresh_start() if fresh is None else fresh
    plan = decide(cfg, path, datasets.label, execution.device.type, fresh=fresh, required=resume)
    if plan.message:
        print(plan.message, flush=True)
    if plan.action == "reuse" and plan.state is not None:
        history = history_frame(plan.state["history"])
        live_curves().show(history)
        return history
    run = new_run(cfg, execution, datasets.mean, datasets.std, datasets.label)
    if plan.action == "resume" and plan.state is not None:
        restore(run, plan.state)
    train_epochs(run, datasets, path, again or how_to_continue(fresh))
    history = history_frame(run.history)
    path.with_name("metrics.json").write_text(json.dumps(summarize(history, datasets.label), indent=2))
    return history


def how_to_continue(fresh: bool, command: str | None = None) -> str:
    """The sentence after a stop. After a fresh start, not "the same command": that would start over."""
    if not fresh:
        return "Run the same command or cell again to continue from there."
    if command:
        return f"To continue from there: {command}"
    return "Run it again without starting fresh (no --fresh, fresh=True or FRESH=1) to continue from there."


def train_epochs(run: Run, datasets: Datasets, path: Path, again: str = how_to_continue(False)) -> None:
    """Epochs from run.epoch + 1 to the last, each checkpointed at most every cfg.checkpoint_every_s
    seconds and after the last; on any exception (Ctrl-C, a non-finite loss, out of memory) the last
    finished epoch is written first. The learning curves are redrawn after every epoch in a notebook."""
    cfg, device = run.cfg, run.device
    train = Split(datasets.train.images.to(device), datasets.train.labels.to(device))
    val = Split(datasets.val.images.to(device), datasets.val.labels.to(device))
    snapshot, written, last_write = None, run.epoch, time.monotonic()
    epochs = progress(
        range(run.epoch + 1, cfg.epochs + 1),
        desc=f"training ({cfg.name}, {device.type})",
        unit="epoch",
        initial=run.epoch,
        total=cfg.epochs,
    )
    curves = live_curves()
    try:
        for epoch in epochs:
            record = run_epoch(run, train, val)
            if not all(math.isfinite(record[key]) for key in ("train_loss", "val_loss")):
                kept = snapshot["epoch"] if snapshot else written
                raise TrainingError(
                    f"Epoch {epoch}: the loss became {record['train_loss']} (train) / "
                    f"{record['val_loss']} (validation); training stopped. "
                    + (
                        f"The checkpoint keeps epoch {kept}, the last good one."
                        if kept
                        else "No epoch had finished, so nothing was saved; try a smaller learning rate."
                    )
                )
            run.history.append(record)
            run.epoch = epoch
            snapshot = capture(run)
            epochs.set_postfix(val_acc=f"{record['val_acc']:.3f}", lr=f"{record['lr']:.3g}")
            curves.show(history_frame(run.history))
            if epoch == cfg.epochs or time.monotonic() - last_write > cfg.checkpoint_every_s:
                write_outputs(snapshot, path)
                written, last_write = epoch, time.monotonic()
    except BaseException:
        if snapshot and snapshot["epoch"] != written:
            write_outputs(snapshot, path)
            written = snapshot["epoch"]
        if written:
            print(
                f"Stopped; {config.shown_path(path)} holds epoch {written}. {again}",
                file=sys.stderr,
            )
        else:
            print("Stopped before the first epoch ended; nothing was saved.", file=sys.stderr)
        raise
    finally:
        epochs.close()


def run_epoch(run: Run, train: Split, val: Split) -> dict:
    """Train one epoch, validate, step the plateau schedule; the epoch's one host sync is here."""
    start = time.perf_counter()
    lr = run.optimizer.param_groups[0]["lr"]
    train_loss, train_acc = train_epoch(run, train)
    val_loss, val_acc = validate(run, val)
    train_loss, train_acc, val_loss, val_acc = torch.stack([train_loss, train_acc, val_loss, val_acc]).tolist()
    seconds = time.perf_counter() - start
    if math.isfinite(val_loss):
        run.scheduler.step(val_loss)
    return {
        "epoch": run.epoch + 1,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "lr": lr,
        "seconds": seconds,
        "images_per_s": len(train) / seconds,
        "execution": run.execution.label,
        "hardware": str(run.execution.hardware),
    }


# ---------------------------------------------------------------- command line


def parse_args(argv=None) -> argparse.Namespace:
    quick = "--quick" in (argv if argv is not None else sys.argv[1:]) or config.quick_mode()
    base = config.QUICK if quick else config.RECIPE
    parser = argparse.ArgumentParser(
        prog="python -m helpers.train",
        description="Train the CIFAR-10 ResNet18 with the recipe.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="the quick configuration (5,000 images, 2 epochs, lr 0.02)"
    )
    parser.add_argument("--epochs", type=int, default=base.epochs, help="passes over the training split")
    parser.add_argument("--batch-size", type=int, default=base.batch_size, help="images per SGD step")
    parser.add_argument("--lr", type=float, default=base.lr, help="initial learning rate")
    parser.add_argument("--momentum", type=float, default=base.momentum, help="SGD momentum")
    parser.add_argument("--weight-decay", type=float, default=base.weight_decay, help="L2 penalty")
    parser.add_argument("--factor", type=float, default=base.plateau_factor, help="ReduceLROnPlateau factor")
    parser.add_argument("--patience", type=int, default=base.plateau_patience, help="ReduceLROnPlateau patience")
    parser.add_argument("--seed", type=int, default=base.seed, help="init, split, shuffling, augmentation")
    parser.add_argument(
        "--precision",
        choices=CHOICES,
        default=base.precision,
        help="autocast precision; auto picks the fastest correct one for the hardware",
    )
    parser.add_argument(
        "--val-from-test", action="store_true", help="the original README's protocol: validate on the test set"
    )
    parser.add_argument(
        "--data",
        default=None,
        help="image folders or a .tar/.tar.gz of them; default: CIFAR10_DATA, else ../shared/data/cifar10-jpeg.tar.gz "
        "when there, else torchvision's download into data/",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="require a checkpoint to continue from (one of this configuration is always continued)",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="start again even if a checkpoint exists; the old one is kept aside"
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: runs/<configuration>/checkpoint.pt")
    args = parser.parse_args(argv)
    args.config = base.replace(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        plateau_factor=args.factor,
        plateau_patience=args.patience,
        seed=args.seed,
        precision=args.precision,
        compile=args.compile,
        val_from_test=args.val_from_test or base.val_from_test,
    )
    return args


def main(argv=None) -> int:
    from . import plots  # matplotlib: only the command line draws here

    args = parse_args(argv)
    cfg = args.config
    try:
        check_config(cfg)
        execution = resolve(resolve_device(args.device), cfg.precision)  # before the data: fail fast
        print(f"execution: {execution}", flush=True)
        datasets = prepare(cfg, args.data)
        again = how_to_continue(args.fresh, command_without_fresh(argv))
        history = fit(cfg, datasets, execution, args.checkpoint, resume=args.resume, fresh=args.fresh, again=again)
    except (ValueError, TrainingError, DeviceError, DataError, checkpoint.CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    path = Path(args.checkpoint or config.checkpoint_path(cfg))
    saved = plots.save(plots.learning_curves(history), "learning_curves", folder=path.parent)  # beside the run
    print(json.dumps(summarize(history, datasets.label), indent=2))
    print(
        f"checkpoint: {config.shown_path(path)} (metrics.json and history.csv beside it); "
        f"curves: {config.shown_path(saved)}"
    )
    return 0


def command_without_fresh(argv=None) -> str:
    """This command as typed, less --fresh: what continues a fresh run after a stop."""
    argv = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", "-m", "helpers.train", *(a for a in argv if a != "--fresh")])


def summarize(history: pd.DataFrame, data_label: str) -> dict:
    """The figures a README reports about a run, with where and how they were measured (every
    execution and hardware its epochs ran on, in order)."""
    last = history.iloc[-1]
    return {
        "hardware": " then ".join(key for key, _ in groupby(history.hardware)),
        "execution": " then ".join(key for key, _ in groupby(history.execution)),
        "data": data_label,
        "epochs": int(history.index[-1]),
        "final_val_acc": round(float(last.val_acc), 4),
        "best_val_acc": round(float(history.val_acc.max()), 4),
        "train_seconds": round(float(history.seconds.sum()), 1),
        "median_epoch_seconds": round(float(history.seconds.median()), 2),
        "median_images_per_s": round(float(history.images_per_s.median()), 1),
    }


if __name__ == "__main__":
    sys.exit(main())
