"""Training with the recipe: SGD with momentum, ReduceLROnPlateau on the validation loss.

Fast by construction: the uint8 data set lives on the training device, each batch is augmented
there in one go (augment.py), the arithmetic runs in the precision and layout that suit the
hardware (machinery/execution.py), and the loop never waits for the device inside an epoch: losses and
accuracies accumulate as tensors and are read once per epoch.

Safe to run again: whether fit trains, resumes or reuses a finished run is resume.decide's rule, and
resuming from a checkpoint gives the same history as never stopping. A run's history and metrics are
named after its checkpoint (checkpoint.companion), so runs in one folder never share them.

Every epoch's row times training and validation apart: images/s is training images over training seconds.

    python -m helpers.train --help
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import config
from .augment import augment
from .config import Config
from .data import CLASSES, DataError, Datasets, Split, prepare
from .evaluate import logits
from .machinery import checkpoint, lock
from .machinery.compiled import Compiled
from .machinery.device import DeviceError, resolve_device
from .machinery.execution import CHOICES, Execution, resolve
from .machinery.optimizer import sgd
from .machinery.progress import in_notebook, live_curves, progress, tell
from .machinery.resume import Plan, capture, decide, restore
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
        (cfg.width >= 1, f"width must be at least 1 (got {cfg.width})"),
        (0 <= cfg.flip_p <= 1, f"flip_p must be in [0, 1] (got {cfg.flip_p})"),
        (
            cfg.crop_padding >= 0 and cfg.cutout_length >= 0 and cfg.cutout_holes >= 0,
            "crop_padding, cutout_length and cutout_holes must be at least 0",
        ),
        (cfg.val_from_test or cfg.val_size >= len(CLASSES), validation_needed(cfg)),
    ]
    problems = [message for ok, message in rules if not ok]
    if problems:
        raise ValueError("Nonsense hyperparameters: " + "; ".join(problems) + ".")


def validation_needed(cfg: Config) -> str:
    return (
        f"val_size must be at least {len(CLASSES)}, one image per class (got {cfg.val_size}), because the plateau "
        "schedule lowers the learning rate when the validation loss stops improving and so needs a validation "
        "split; to validate on the test set as the original README did, use --val-from-test "
        "(val_from_test=True), knowing that the test accuracy is then no longer an unseen-data estimate, "
        "since the test set chose the learning rates"
    )


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
    fingerprint: str | None = None  # the data's content key, when known (provenance.DataIdentity)
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    forward: nn.Module = field(init=False)  # the model, compiled when asked (CUDA graphs on a GPU)

    def __post_init__(self) -> None:
        self.forward = Compiled(self.model, self.device) if self.cfg.compile else self.model

    @property
    def device(self) -> torch.device:
        return self.execution.device


def new_run(
    cfg: Config, execution: Execution, mean, std, data: str = "CIFAR-10", fingerprint: str | None = None
) -> Run:
    """A freshly initialised model with the recipe's optimizer, scheduler and seeded generators."""
    torch.manual_seed(cfg.seed)
    model = resnet18(width=cfg.width).to(execution.device, memory_format=execution.memory_format)
    optimizer = sgd(
        model.parameters(), execution.device, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience
    )
    generator = torch.Generator(execution.device).manual_seed(cfg.seed)
    return Run(
        cfg,
        execution,
        model,
        optimizer,
        scheduler,
        execution.grad_scaler(),
        generator,
        tuple(mean),
        tuple(std),
        data,
        fingerprint,
    )


# ---------------------------------------------------------------- one epoch


def train_epoch(run: Run, train: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over the shuffled training split; returns (mean loss, accuracy) as device tensors."""
    run.model.train()
    loss_sum = torch.zeros((), device=run.device)
    correct = torch.zeros((), device=run.device, dtype=torch.int64)
    order = torch.randperm(len(train), device=run.device, generator=run.generator)
    batches = order.split(run.cfg.batch_size)
    # copied once, not per step, and without waiting (an ordinary host-to-device copy is a sync)
    mean, std = (torch.tensor(v).to(run.device, non_blocking=True) for v in (run.mean, run.std))
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
    out = logits(
        run.forward,
        val.images,
        run.mean,
        run.std,
        run.execution,
        run.cfg.eval_batch_size,
        shown_as=f"validation {run.epoch + 1}",
    )
    return F.cross_entropy(out, val.labels), (out.argmax(1) == val.labels).float().mean()


# ---------------------------------------------------------------- checkpoints


def write_outputs(state: dict, path: Path) -> None:
    """The checkpoint, and beside it its history as CSV."""
    checkpoint.save(state, path)
    history_frame(state["history"]).to_csv(checkpoint.companion(path, "history.csv"))


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
    While it may write, fit holds the run's lock (machinery/lock.py): a second trainer of the same
    checkpoint is refused at once, naming the first.
    """
    cfg = cfg or config.active_config()
    check_config(cfg)
    execution = (
        device
        if isinstance(device, Execution)
        else resolve(resolve_device(device), cfg.precision, batch_size=cfg.batch_size)
    )
    datasets = datasets or prepare(cfg)
    path = Path(checkpoint_path or config.checkpoint_path(cfg))
    fresh = config.fresh_start() if fresh is None else fresh
    try:
        held = lock.exclusive(path)  # one writer per run, for as long as fit may write
    except lock.RunBusy as busy:
        return reuse_beside_the_writer(busy, cfg, datasets, execution, path, fresh)
    with held:
        return train_or_reuse(cfg, datasets, execution, path, fresh, resume, again)


def train_or_reuse(
    cfg: Config, datasets: Datasets, execution: Execution, path: Path, fresh: bool, resume: bool, again: str | None
) -> pd.DataFrame:
    """resume.decide's rule, applied by the run's one writer."""
    plan = decide(
        cfg,
        path,
        datasets.label,
        execution.device.type,
        fresh=fresh,
        required=resume,
        fingerprint=datasets.fingerprint,
        notebook=in_notebook(),
    )
    if plan.message:
        tell(plan.message)
    if plan.action == "reuse" and plan.state is not None:
        return reused(plan.state)
    run = new_run(cfg, execution, datasets.mean, datasets.std, datasets.label, datasets.fingerprint)
    if plan.action == "resume" and plan.state is not None:
        restore(run, plan.state)
    train_epochs(run, datasets, path, again or how_to_continue(fresh))
    history = history_frame(run.history)
    checkpoint.companion(path, "metrics.json").write_text(json.dumps(summarize(history, datasets.label), indent=2))
    return history


def reused(state: dict) -> pd.DataFrame:
    history = history_frame(state["history"])
    live_curves(live=False).final(history)
    return history


def reuse_beside_the_writer(
    busy: lock.RunBusy, cfg: Config, datasets: Datasets, execution: Execution, path: Path, fresh: bool
) -> pd.DataFrame:
    """Another process holds the run. Reading needs no lock: a finished run of this configuration is
    still reused. Anything else would write (train, resume, set aside), so it is refused."""
    plan: Plan | None = None
    if not fresh:
        with contextlib.suppress(checkpoint.CheckpointError):  # the refusal says more than a mismatch would
            plan = decide(cfg, path, datasets.label, execution.device.type, fingerprint=datasets.fingerprint)
    if plan is None or plan.action != "reuse" or plan.state is None:
        raise busy
    print(plan.message, flush=True)
    return reused(plan.state)


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
        finished epoch is written first. In a notebook the learning curves are redrawn while it trains
    (at most every few seconds, never making an epoch wait) and once at the end."""
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
            curves.update(history_frame(run.history))
            if epoch == cfg.epochs or time.monotonic() - last_write > cfg.checkpoint_every_s:
                write_outputs(snapshot, path)
                written, last_write = epoch, time.monotonic()
    except BaseException:
        if snapshot and snapshot["epoch"] != written:
            write_outputs(snapshot, path)
            written = snapshot["epoch"]
        if written:
            tell(
                f"Stopped; {config.shown_path(path)} holds epoch {written}. {again}",
                file=sys.stderr,
            )
        else:
            tell("Stopped before the first epoch ended; nothing was saved.", file=sys.stderr)
        raise
    finally:
        epochs.close()
        curves.final(history_frame(run.history))


def run_epoch(run: Run, train: Split, val: Split) -> dict:
    """Train one epoch, validate, step the plateau schedule. The host waits for the device twice an
    epoch: once after training, so that training is timed alone, and once for the epoch's figures."""
    start = time.perf_counter()
    lr = run.optimizer.param_groups[0]["lr"]
    train_loss, train_acc = train_epoch(run, train)
    finish_queued_work(run.device)
    trained = time.perf_counter()
    val_loss, val_acc = validate(run, val)
    train_loss, train_acc, val_loss, val_acc = torch.stack([train_loss, train_acc, val_loss, val_acc]).tolist()
    end = time.perf_counter()
    if math.isfinite(val_loss):
        run.scheduler.step(val_loss)
    return {
        "epoch": run.epoch + 1,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "lr": lr,
        "seconds": end - start,  # the epoch: training, validation and reading the figures back
        "train_seconds": trained - start,
        "val_seconds": end - trained,
        "images_per_s": len(train) / (trained - start),  # training throughput: training time alone
        "execution": run.execution.described,  # with the figures auto chose from, where it measured
        "hardware": str(run.execution.hardware),
    }


def finish_queued_work(device: torch.device) -> None:
    """Wait until the device has done the work queued so far (CUDA runs asynchronously; the CPU does not)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    from matplotlib.figure import Figure  # matplotlib: only the command line draws here

    from . import plots

    args = parse_args(argv)
    cfg = args.config
    try:
        check_config(cfg)
        execution = resolve(resolve_device(args.device), cfg.precision, batch_size=cfg.batch_size)  # fail fast
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
    curves = checkpoint.companion(path, "learning_curves").name  # runs of one configuration keep their own
    # A figure outside pyplot, beside the run: nothing is left open in a notebook or test that calls main()
    saved = plots.save(plots.learning_curves(history, Figure()), curves, folder=path.parent)
    print(json.dumps(summarize(history, datasets.label), indent=2))
    history_csv, metrics_json = (checkpoint.companion(path, name).name for name in ("history.csv", "metrics.json"))
    print(
        f"checkpoint: {config.shown_path(path)} ({metrics_json} and {history_csv} beside it); "
        f"curves: {config.shown_path(saved)}"
    )
    return 0


def command_without_fresh(argv=None) -> str:
    """This command as typed, less --fresh: what continues a fresh run after a stop."""
    argv = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", "-m", "helpers.train", *(a for a in argv if a != "--fresh")])


def summarize(history: pd.DataFrame, data_label: str) -> dict:
    """The figures a README reports about a run, with where and how they were measured (every
    execution and hardware its epochs ran on, in order).

    Training throughput comes from the epochs whose training was timed alone (train_seconds). A history
    written before that (commit 6960a31) times whole epochs only: its images/s includes validation, and
    the summary says so instead of passing it off as training speed."""
    last = history.iloc[-1]
    timed = history.dropna(subset=["train_seconds"]) if "train_seconds" in history else history.iloc[:0]
    summary = {
        "hardware": " then ".join(key for key, _ in groupby(history.hardware)),
        "execution": " then ".join(key for key, _ in groupby(history.execution)),
        "data": data_label,
        "epochs": int(history.index[-1]),
        "final_val_acc": round(float(last.val_acc), 4),
        "best_val_acc": round(float(history.val_acc.max()), 4),
        "seconds": round(float(history.seconds.sum()), 1),  # every epoch, training and validation
        "median_epoch_seconds": round(float(history.seconds.median()), 2),
    }
    if len(timed):
        summary |= {
            "train_seconds": round(float(timed.train_seconds.sum()), 1),
            "val_seconds": round(float(timed.val_seconds.sum()), 1),
            "median_images_per_s": round(float(timed.images_per_s.median()), 1),  # training images / training s
            "throughput_epochs": len(timed),
        }
    else:
        summary["median_epoch_images_per_s"] = round(float(history.images_per_s.median()), 1)  # with validation
    return summary


if __name__ == "__main__":
    sys.exit(main())
