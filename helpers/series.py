"""The main job: run notebooks 01-04 top to bottom in fresh kernels, storing their outputs in place.

    python -m helpers.series            # the full recipe (a GPU job: 50 epochs)
    python -m helpers.series --quick    # the quick configuration (minutes on a CPU)

Progress bars inside the notebooks appear in this terminal (CIFAR10_PROGRESS=terminal), and the
stored notebooks keep only their real outputs.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import nbformat
import torch
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from . import config

NOTEBOOK_DIR = config.REPO_ROOT / "notebooks"


def notebooks(only: list[str] | None = None) -> list:
    found = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    return [nb for nb in found if not only or any(nb.name.startswith(prefix) for prefix in only)]


def estimated_hours(cfg: config.Config, steps: int = 3) -> float:
    """Time a few real training steps on this machine and extrapolate to the configuration's epochs."""
    from .data import Split
    from .device import resolve_device
    from .train import new_run, train_epoch

    device = resolve_device("auto")
    run = new_run(cfg, device, (0.5,) * 3, (0.25,) * 3)
    n = cfg.batch_size * steps
    fake = Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=device),
                 torch.randint(0, 10, (n,), device=device))
    train_epoch(run, Split(fake.images[: cfg.batch_size], fake.labels[: cfg.batch_size]))  # warm-up
    start = time.perf_counter()
    float(train_epoch(run, fake)[0])
    per_image = (time.perf_counter() - start) / n
    train_images = 50_000 - (0 if cfg.val_from_test else cfg.val_size)
    return cfg.epochs * train_images * per_image / 3600


def warn_without_gpu(cfg: config.Config) -> None:
    if torch.cuda.is_available() or cfg.name != "recipe":
        return
    print("No CUDA GPU found: timing a few training steps on this CPU ...", flush=True)
    os.environ["CIFAR10_PROGRESS"], mode = "off", os.environ.get("CIFAR10_PROGRESS", "auto")
    try:
        hours = estimated_hours(cfg)
    finally:
        os.environ["CIFAR10_PROGRESS"] = mode
    print(f"The full recipe ({cfg.epochs} epochs) would take about {hours:.0f} hours here (training alone).\n"
          "For the quick configuration (a 5,000-image subset, 2 epochs: minutes), stop with Ctrl-C and run\n"
          "    make series QUICK=1      (or: python -m helpers.series --quick)\n", flush=True)


def execute(path) -> None:
    """Run one notebook in a fresh kernel started in notebooks/, and store it with its outputs."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=None, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
                            # let the kernel's own stderr (progress bars) reach this terminal, not the notebook
                            extra_arguments=["--IPKernelApp.capture_fd_output=False"],
                            record_timing=False)  # no timestamps in the stored notebooks
    client.execute()
    nbformat.write(notebook, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.series", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick configuration")
    parser.add_argument("--only", nargs="*", help="notebook number prefixes to run, e.g. 01 02")
    args = parser.parse_args(argv)
    if args.quick:
        os.environ["CIFAR10_QUICK"] = "1"
    os.environ.setdefault("CIFAR10_PROGRESS", "terminal")
    warn_without_gpu(config.active_config())
    for path in notebooks(args.only):
        print(f"running {path.name} ({config.active_config().name} configuration) ...", flush=True)
        start = time.perf_counter()
        try:
            execute(path)
        except CellExecutionError as exc:
            print(f"{path.name} failed; the notebook was left as it was.\n{exc}", file=sys.stderr)
            return 1
        print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
