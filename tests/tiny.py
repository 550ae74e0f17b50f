"""Tiny runs for tests, importable from test files, subprocesses and notebook kernels alike.

python tests/tiny.py CHECKPOINT EPOCHS [LR]     train the tiny configuration, as helpers.train's CLI would
"""

import signal
import sys
from pathlib import Path

import torch

from helpers import config, data, train
from helpers.data import Datasets, Split

TINY = config.QUICK.replace(name="tiny", epochs=2, batch_size=32, plateau_patience=0, checkpoint_every_s=0)
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


def main(checkpoint: str, epochs: str, lr: str | None = None) -> int:
    """The tiny configuration trained on CPU as `python -m helpers.train` trains: exit 130 on Ctrl-C."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if started with SIGINT ignored
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # or blocked
    try:
        cfg = TINY.replace(epochs=int(epochs), lr=float(lr) if lr else TINY.lr)
        train.fit(cfg, tiny_datasets(), device="cpu", checkpoint_path=Path(checkpoint))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
