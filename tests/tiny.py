"""Tiny runs for tests, importable from test files, subprocesses and notebook kernels alike.

The tiny configuration trains the project's ResNet18 at width 8 (176,402 parameters and 8.9 M
multiply-accumulates an image, against 11.2 M and 555 M at width 64) on 128 random images, through
the same train.fit, checkpoints and commands as the recipe: a step takes milliseconds, so tests of
resuming, refusing and stopping are quick.
What depends on the width (parameter count, shapes, torchvision's layers, a full-width training
step) is tested at width 64 (test_model.py, the full_width_checkpoint fixture).

python tests/tiny.py CHECKPOINT EPOCHS [lr=LR] [hold=MARK]   train the tiny configuration, as helpers.train's
    CLI would; with hold, wait in epoch 2 to be stopped (hold_in_epoch)
"""

import signal
import sys
import time
from pathlib import Path

import torch

from helpers import config, data, train
from helpers.data import Datasets, Split
from helpers.machinery.checkpoint import CheckpointError

TINY = config.QUICK.replace(name="tiny", width=8, epochs=2, batch_size=32, plateau_patience=0, checkpoint_every_s=0)
MEASURED = [
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
]  # a history's columns but timings and hardware


def fit_tiny(datasets: Datasets, cfg=TINY, **kwargs):
    """train.fit on the CPU; the history's MEASURED columns, epochs as a column."""
    return train.fit(cfg, datasets, device="cpu", **kwargs).reset_index()[MEASURED]


def tiny_datasets() -> Datasets:
    """128 training and 64 validation (= test) images of random pixels, labelled by brightness: fast runs."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (192, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = (images.float().mean((1, 2, 3)) * 10 / 256).long().clamp(0, 9)
    train_split, held_out = Split(images[:128], labels[:128]), Split(images[128:], labels[128:])
    return Datasets(train_split, held_out, held_out, *data.channel_stats(train_split.images))


def hold_in_epoch(epoch: int, mark: Path) -> None:
    """From now on, train.fit stops in `epoch` once its steps are done, before the epoch ends: it creates
    `mark` and waits (at most ten minutes) for a signal. Epochs take milliseconds, so a test that stops a
    run mid-epoch stops it here, at a known moment. A run that finds `mark` already there never waits."""
    real_epoch = train.train_epoch

    def held(run, split):
        result = real_epoch(run, split)
        if run.epoch + 1 == epoch and not mark.exists():  # run.epoch counts the finished epochs
            mark.touch()
            time.sleep(600)
        return result

    train.train_epoch = held


def main(checkpoint: str, epochs: str, *options: str) -> int:
    """The tiny configuration trained on CPU as `python -m helpers.train` trains: exit 130 on Ctrl-C, and
    a refusal (another configuration, another trainer of the run) one line and exit 2."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if started with SIGINT ignored
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # or blocked
    given = dict(option.split("=", 1) for option in options)  # lr=LR, hold=MARK
    lr, hold = given.get("lr"), given.get("hold")
    if hold:
        hold_in_epoch(2, Path(hold))
    try:
        cfg = TINY.replace(epochs=int(epochs), lr=float(lr) if lr else TINY.lr)
        train.fit(cfg, tiny_datasets(), device="cpu", checkpoint_path=Path(checkpoint))
    except KeyboardInterrupt:
        return 130
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
