"""The recipe, the quick configuration, and where things live.

Every hyperparameter of the series is here, once. Notebooks and the command line ask this
module for sizes and paths instead of hard-coding them. Environment variables choose between
configurations, so that `pytest --nbval` (whose kernels inherit the environment) runs quickly:

    CIFAR10_QUICK=1        the quick configuration (a small real subset, 2 epochs)
    CIFAR10_DATA=PATH      an image-folder tree or a .tar/.tar.gz of one (see data_source for the default)
    CIFAR10_OUTPUT=DIR     where figs/ and runs/ are written (default: the repository)
    CIFAR10_PROGRESS=MODE  progress bars: auto (default), terminal (the launching terminal), off
    CIFAR10_FRESH=1        training starts again, keeping the old checkpoint aside (`make series FRESH=1`)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "data"  # torchvision downloads and the decoded-tensor cache
# The project's own machines cannot download: a JPEG copy of CIFAR-10 lies beside the checkout there.
SHARED_COPY = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@dataclass(frozen=True)
class Config:
    """One training configuration; the defaults are the original README's recipe."""

    name: str = "recipe"
    # Data
    val_size: int = 5000  # images held out of the 50,000 training images for the plateau schedule
    val_from_test: bool = False  # True: the original README's protocol, the test set doubles as validation
    train_limit: int | None = None  # use only this many training images (stratified); None: all
    test_limit: int | None = None  # use only this many test images (stratified); None: all 10,000
    # Augmentation (pixels)
    crop_padding: int = 4  # RandomCrop(32, padding=4): zero padding on each side
    flip_p: float = 0.5  # RandomHorizontalFlip probability
    cutout_holes: int = 1  # Cutout(n_holes=1, ...)
    cutout_length: int = 16  # side of each square hole
    # Model
    width: int = 64  # channels of the first stage, doubled by each later one: ResNet18's 64 (narrower: tests only)
    # Optimisation
    epochs: int = 50
    batch_size: int = 128  # images per SGD step
    lr: float = 0.1  # initial learning rate
    momentum: float = 0.9
    weight_decay: float = 5e-4  # L2 penalty, applied by SGD to every parameter
    plateau_factor: float = 0.5  # ReduceLROnPlateau: lr *= factor ...
    plateau_patience: int = 10  # ... after more than this many epochs in a row without a lower validation loss
    # Execution: how the arithmetic runs, not what is computed (a run may resume under another)
    precision: str = "auto"  # auto (from the hardware: execution.AUTO), bf16, fp16 (CUDA only) or fp32
    compile: bool = False  # torch.compile the model
    seed: int = 0  # model init, validation split, shuffling and augmentation
    eval_batch_size: int = 1000  # images per forward pass when evaluating
    checkpoint_every_s: float = 60.0  # write the checkpoint at most this often (and at the end)

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


RECIPE = Config()
# A small real subset and 2 epochs: the whole series runs under nbval on 2 CPU cores in minutes.
# lr 0.1 suits the recipe's 350 steps an epoch; with 40 it spends the run recovering from its first
# steps. Validation accuracy after 3 epochs on 5,000 images (CIFAR-10 JPEG copy, 2 CPU cores), lr 0.1
# against 0.02: 13.4% against 30.9% in fp32 (Intel Xeon, AVX-512 without BF16), 14.9% against 33.1% in
# bf16 (AMD Zen 4 with AVX512-BF16). So the quick configuration uses 0.02 to show learning. Reproduce with
# `python -m helpers.train --quick --epochs 3 --lr 0.1 --checkpoint runs/quick-lr0.1/checkpoint.pt` and the
# same without --lr (another --checkpoint each: runs/quick/ is the series' quick run).
QUICK = RECIPE.replace(name="quick", epochs=2, train_limit=5000, val_size=1000, test_limit=2000, lr=0.02)


def quick_mode() -> bool:
    return os.environ.get("CIFAR10_QUICK", "").lower() in {"1", "true", "yes"}


def active_config() -> Config:
    """The quick configuration when CIFAR10_QUICK is set, else the recipe."""
    return QUICK if quick_mode() else RECIPE


def data_source() -> str | None:
    """Where every command and notebook finds CIFAR-10, in this order: CIFAR10_DATA (image folders or an
    archive; --data on the command line overrides it), else the JPEG copy at ../shared/data/ beside the
    checkout when it is there, else None: torchvision's download into data/."""
    if os.environ.get("CIFAR10_DATA"):
        return os.environ["CIFAR10_DATA"]
    return str(SHARED_COPY) if SHARED_COPY.exists() else None


def data_label(source: str | Path | None = None) -> str:
    """How results name the data (default: data_source()), by its content: "CIFAR-10", "CIFAR-10 (JPEG
    copy)" (its pixels differ from the original's) or "image folders: NAME". See data.label_of."""
    from .data import label_of  # data imports this module

    return label_of(source)


def fresh_start() -> bool:
    """CIFAR10_FRESH: train.fit starts again (keeping the old checkpoint aside) unless told otherwise."""
    return os.environ.get("CIFAR10_FRESH", "").lower() in {"1", "true", "yes"}


def output_root() -> Path:
    """CIFAR10_OUTPUT (relative paths count from the repository, wherever the kernel starts), or the repository."""
    return (REPO_ROOT / os.environ.get("CIFAR10_OUTPUT", "")).resolve()


def figs_dir(config: Config | None = None) -> Path:
    """figs/<configuration>/: figures of different configurations never overwrite each other."""
    return output_root() / "figs" / (config or active_config()).name


def run_dir(config: Config | None = None) -> Path:
    """runs/<configuration>/: checkpoint, history CSV and metrics JSON of one configuration."""
    return output_root() / "runs" / (config or active_config()).name


def checkpoint_path(config: Config | None = None) -> Path:
    return run_dir(config) / "checkpoint.pt"


def shown_path(path: Path) -> str:
    """A path as printed in outputs: relative to the output root, never a machine path."""
    path = Path(path).resolve()
    for root in (output_root(), REPO_ROOT):
        if path.is_relative_to(root):
            return str(path.relative_to(root))
    return path.name


def progress_mode() -> str:
    mode = os.environ.get("CIFAR10_PROGRESS", "auto")
    if mode not in {"auto", "terminal", "off"}:
        raise ValueError(f"CIFAR10_PROGRESS must be auto, terminal or off, not {mode!r}")
    return mode
