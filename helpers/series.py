"""The main job: run notebooks 01-04 top to bottom in fresh kernels, storing their outputs in place.

    python -m helpers.series            # the full recipe (a GPU job: 50 epochs)
    python -m helpers.series --quick    # the quick configuration (minutes on a CPU)
    python -m helpers.series --fresh    # train again from scratch, keeping the old checkpoint aside

Progress bars inside the notebooks appear in this terminal (CIFAR10_PROGRESS=terminal), and the
stored notebooks keep only their real outputs. Stopped and run again, the series carries on: 01 and
02 run again (they are cheap), 03 resumes or reuses its checkpoint (train.fit's rule), 04 evaluates.
Ctrl-C interrupts the running notebook's kernel, so that training saves its last finished epoch;
a second Ctrl-C stops at once. A cell that fails is reported in one line naming the notebook and
the cell, not with the kernel's traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass

import nbformat
import torch
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError

from . import config
from .machinery.atomic import replacing
from .machinery.device import say_if_gpu_unused
from .machinery.execution import Execution, resolve

NOTEBOOK_DIR = config.REPO_ROOT / "notebooks"


def notebooks(only: list[str] | None = None) -> list:
    found = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    return [nb for nb in found if not only or any(nb.name.startswith(prefix) for prefix in only)]


def timed_execution(cfg: config.Config) -> tuple[Execution, float]:
    """The execution training will use here, and its seconds per training image, from one timed step
    after a small untimed one: seconds, not minutes, even where a step is slow."""
    from .data import Split
    from .machinery.device import resolve_device
    from .train import new_run, train_epoch

    execution = resolve(resolve_device("auto"), cfg.precision, batch_size=cfg.batch_size)
    run = new_run(cfg, execution, (0.5,) * 3, (0.25,) * 3)

    def batch(n: int) -> Split:
        return Split(
            torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=execution.device),
            torch.randint(0, 10, (n,), device=execution.device),
        )

    float(train_epoch(run, batch(16))[0])  # warm-up: allocations, kernel choice
    start = time.perf_counter()
    float(train_epoch(run, batch(cfg.batch_size))[0])
    return execution, (time.perf_counter() - start) / cfg.batch_size


def estimated_hours(cfg: config.Config, seconds_per_image: float) -> float:
    train_images = 50_000 - (0 if cfg.val_from_test else cfg.val_size)
    return cfg.epochs * train_images * seconds_per_image / 3600


def warn_without_gpu(cfg: config.Config) -> None:
    if torch.cuda.is_available() or cfg.name != "recipe":
        return
    print("No CUDA GPU found: timing one training step on this CPU ...", flush=True)
    os.environ["CIFAR10_PROGRESS"], mode = "off", os.environ.get("CIFAR10_PROGRESS", "auto")
    try:
        execution, seconds_per_image = timed_execution(cfg)
    finally:
        os.environ["CIFAR10_PROGRESS"] = mode
    hours = estimated_hours(cfg, seconds_per_image)
    print(
        f"The full recipe ({cfg.epochs} epochs) would take about {hours:.0f} hours here, training alone, as "
        f"{execution} ({1 / seconds_per_image:.0f} images/s).\n"
        "For the quick configuration (a 5,000-image subset, 2 epochs: minutes), stop with Ctrl-C and run\n"
        "    make series QUICK=1      (or: python -m helpers.series --quick)\n",
        flush=True,
    )


KERNEL = "python3"


@dataclass
class CellFailed(Exception):
    """A cell of a notebook raised; str() is one line naming the notebook, the cell and the error."""

    notebook: str
    cell: int | None  # 1-based position among all the notebook's cells, as a reader counts them
    ename: str
    evalue: str

    def __str__(self) -> str:
        where = f"{self.notebook}, cell {self.cell}" if self.cell else self.notebook
        return f"{where}: {self.ename}: {' '.join(self.evalue.split())}"


def execute(path) -> None:
    """Run one notebook in a fresh kernel started in notebooks/, and store it with its outputs;
    CellFailed if a cell raises (the notebook is then left as it was)."""
    notebook = nbformat.read(path, as_version=4)
    failed: list[int] = []
    client: NotebookClient = NotebookClient(
        notebook,
        timeout=None,
        kernel_name=KERNEL,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
        # let the kernel's own stderr (progress bars) reach this terminal, not the notebook
        extra_arguments=["--IPKernelApp.capture_fd_output=False"],
        record_timing=False,  # no timestamps in the stored notebooks
        store_widget_state=False,  # no widget outlives its cell (machinery/progress.py): none to store
        on_notebook_start=lambda notebook: pass_ctrl_c_to_the_kernel(client),
        on_cell_error=lambda cell, cell_index, execute_reply: failed.append(cell_index),
    )
    try:
        client.execute()
    except CellExecutionError as exc:
        raise CellFailed(path.name, failed[-1] + 1 if failed else None, exc.ename, exc.evalue) from None
    notebook.metadata["kernelspec"] = kernelspec()
    with replacing(path, "w", encoding="utf-8") as file:  # a notebook is never left half written
        nbformat.write(notebook, file)


def kernelspec() -> dict:
    """The kernel's entry as JupyterLab writes it ("Python 3 (ipykernel)"), so that a stored notebook
    opens unmodified: JupyterLab rewrites any other display name and then asks to save on closing."""
    spec = KernelSpecManager().get_kernel_spec(KERNEL)
    return {"display_name": spec.display_name, "language": spec.language, "name": KERNEL}


def pass_ctrl_c_to_the_kernel(client: NotebookClient) -> None:
    """The kernel runs in a session of its own, out of reach of the terminal's Ctrl-C, and nbclient's own
    Ctrl-C handler shuts it down: training would lose the epochs since its last checkpoint. Instead, the
    first Ctrl-C interrupts the kernel, as Jupyter's interrupt button does (training saves its last
    finished epoch and the cell fails with KeyboardInterrupt); a second one stops here at once."""
    loop = asyncio.get_running_loop()
    sent: list[asyncio.Future] = []
    manager = client.km
    if not isinstance(manager, AsyncKernelManager):  # nbclient's own kind, there once the kernel has started
        return

    def interrupt() -> None:
        loop.remove_signal_handler(signal.SIGINT)  # back to Python's own: the next Ctrl-C raises KeyboardInterrupt
        sent.append(asyncio.ensure_future(manager.interrupt_kernel()))  # kept, so that it is not collected unrun

    loop.add_signal_handler(signal.SIGINT, interrupt)  # replaces nbclient's, for this notebook's run


def run(paths) -> int:
    """Execute the notebooks in order; 0 when all ran, 130 when interrupted, 1 when one failed."""
    checkpoint_at_start = checkpoint_state()
    for path in paths:
        print(f"running {path.name} ({config.active_config().name} configuration) ...", flush=True)
        start = time.perf_counter()
        try:
            execute(path)
        except CellFailed as failure:
            if failure.ename == "KeyboardInterrupt":
                again = how_to_carry_on(checkpoint_at_start)
                print(
                    f"Interrupted in {path.name}, which was left as it was. {again} to carry on: "
                    "training continues from its checkpoint.",
                    file=sys.stderr,
                )
                return 130
            way_on = " With make series, FRESH=1 starts again." if failure.ename == "CheckpointError" else ""
            print(f"{failure} ({path.name} was left as it was.){way_on}", file=sys.stderr)
            return 1
        except (KeyboardInterrupt, DeadKernelError):  # a second Ctrl-C, or one while the kernel started
            again = how_to_carry_on(checkpoint_at_start)
            print(f"Stopped in {path.name}, which was left as it was. {again} to carry on.", file=sys.stderr)
            return 130
        print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


def checkpoint_state() -> tuple[int, int] | None:
    """Which file the configuration's checkpoint is now (inode, modification time), None if there is none."""
    path = config.checkpoint_path()
    return (path.stat().st_ino, path.stat().st_mtime_ns) if path.exists() else None


def how_to_carry_on(checkpoint_at_start: tuple[int, int] | None) -> str:
    """After a stop: run again, without FRESH=1 once the fresh run has begun (with it, it would begin again)."""
    if not config.fresh_start():
        return "Run the series again"
    if checkpoint_state() != checkpoint_at_start:
        return "Run the series again without FRESH=1"
    return "Run the series again with FRESH=1 (training had not started over yet)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.series", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick configuration")
    parser.add_argument(
        "--fresh", action="store_true", help="train again from scratch; the old checkpoint is kept aside"
    )
    parser.add_argument("--only", nargs="*", help="notebook number prefixes to run, e.g. 01 02")
    args = parser.parse_args(argv)
    if args.quick:
        os.environ["CIFAR10_QUICK"] = "1"
    if args.fresh:
        os.environ["CIFAR10_FRESH"] = "1"  # notebook kernels inherit it: train.fit starts again
    os.environ.setdefault("CIFAR10_PROGRESS", "terminal")
    say_if_gpu_unused()  # the notebooks say it too, in their set-up cells (resolve_device)
    try:
        warn_without_gpu(config.active_config())
    except KeyboardInterrupt:
        return 130
    return run(notebooks(args.only))


if __name__ == "__main__":
    sys.exit(main())
