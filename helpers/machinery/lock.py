"""One writer per run: whoever may write a checkpoint first holds an exclusive lock beside it.

Two trainers of one run (notebook 03 open twice, a forgotten `python -m helpers.train` in another
terminal, `make series` while a notebook trains) would each save over the other's checkpoint, and
nothing would say so. The second one is refused at once instead, with one line naming the first:
its process id, what it is (a Jupyter kernel, a command in a terminal) and since when.

The lock is `fcntl.flock` on `<checkpoint>.lock`, not the filelock library (which uses the same
call on Linux and macOS), for two reasons:
  * the kernel releases a flock when the process that holds it ends, however it ends (SIGKILL, a
    dead kernel, a machine switched off), so a stale lock cannot exist: there is nothing to time
    out, clean up or ask the learner to delete;
  * the holder writes who it is into the locked file itself, for the refusal to read; filelock opens
    the file with O_TRUNC, so every refused process would erase what it is about to report.
The file stays when the lock is released: removing it would let a process that opened it a moment
earlier lock a file that no longer has a name. The lock is advisory: reading a run (reuse,
evaluation, prediction) takes none, and sees whole checkpoints only (atomic.replacing).
On Windows, which has no flock, training goes on without the lock.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from types import TracebackType

from ..config import shown_path
from .checkpoint import CheckpointError
from .faults import reason
from .progress import in_notebook

KERNEL = "a Jupyter kernel (a notebook open in JupyterLab or Jupyter, or one that `make series` runs)"


class RunBusy(CheckpointError):
    """Another process holds the run: it trains, or may write, this checkpoint."""


class Held:
    """The lock on one run, held until close() (or the end of a `with` block, or of the process)."""

    def __init__(self, fd: int):
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.ftruncate(self.fd, 0)  # no stale description for the next holder's contenders to read
            os.close(self.fd)  # releases the lock
            self.fd = -1

    def __enter__(self) -> Held:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def lock_path(checkpoint: Path) -> Path:
    return Path(checkpoint).with_name(Path(checkpoint).name + ".lock")


def exclusive(checkpoint: Path) -> Held:
    """Take the run's lock now, or raise RunBusy naming the process that holds it: never wait."""
    path = lock_path(checkpoint)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise CheckpointError(
            f"Cannot create {shown_path(path)}, which keeps a second trainer off this run ({reason(exc)}): "
            "train into a folder you can write (--checkpoint PATH, fit(..., checkpoint_path=PATH))."
        ) from exc
    if sys.platform == "win32":
        return Held(fd)
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = read_holder(fd)
        os.close(fd)
        raise RunBusy(refusal(Path(checkpoint), holder)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(describe_this_process()).encode(), 0)
    return Held(fd)


def describe_this_process() -> dict:
    """Who holds the lock, in the words its refusal will use."""
    if in_notebook():
        what, kind = KERNEL, "kernel"
    else:
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        command = f"python -m {spec.name}" if spec else f"python {Path(sys.argv[0]).name}" if sys.argv[0] else "python"
        what, kind = f"`{command}` in a terminal", "command"
    return {"pid": os.getpid(), "since": time.time(), "what": what, "kind": kind}


def read_holder(fd: int, patience_s: float = 0.5) -> dict:
    """The holder's description; it writes it just after taking the lock, so wait a moment for it."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return json.loads(os.pread(fd, 4096, 0).decode())
        except ValueError:  # empty or half written (UnicodeDecodeError and JSONDecodeError are ValueErrors)
            if time.monotonic() > deadline:
                return {}
            time.sleep(0.01)


def refusal(checkpoint: Path, holder: dict) -> str:
    """One line: the run is taken, by whom and since when, and what to do, in the words of where it is read."""
    here_in_a_notebook = in_notebook()
    who = holder.get("what", "another process")
    pid = holder.get("pid")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["since"])) if "since" in holder else None
    details = ", ".join(part for part in (f"pid {pid}" if pid else "", f"since {since}" if since else "") if part)
    stop = {
        "kernel": "interrupt that kernel (■) or shut it down, or press Ctrl-C in the terminal of `make series`",
        "command": f"press Ctrl-C in its terminal{f' or run `kill {pid}`' if pid else ''}",
    }.get(holder.get("kind", ""), f"stop it{f' (`kill {pid}`)' if pid else ''}")
    taken = "another Jupyter kernel or terminal" if here_in_a_notebook else "another process"
    again = "run this cell again" if here_in_a_notebook else "run the same command again"
    elsewhere = "fit(..., checkpoint_path=PATH)" if here_in_a_notebook else "--checkpoint PATH"
    return (
        f"{shown_path(checkpoint)} is being trained by {taken}: {who}{f' ({details})' if details else ''}; "
        f"one run has one writer, so this one was not started. Wait for it to finish or stop it ({stop}), "
        f"then {again}; or train alongside it under another checkpoint path ({elsewhere})."
    )
