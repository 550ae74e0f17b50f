"""The faults a learner's machine produces: two trainers of one run (real processes, started together),
a trainer killed with SIGKILL, two writers of one file, and files that cannot be read (empty, truncated,
a folder, no permission, weights that are not finite), each one line and exit 2 for every command."""

import builtins
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from helpers import evaluate, predict, train
from helpers.machinery import checkpoint, lock
from helpers.machinery.checkpoint import CheckpointError
from helpers.machinery.faults import reason
from tiny import MEASURED, TINY, fit_tiny

TESTS = Path(__file__).resolve().parent
EPOCHS = 2  # the trainers are killed or refused during the second
PATIENCE_S = 900  # for a tiny run on a busy machine: 3 epochs took 285 s on 2 cores shared by 8 test runs


@pytest.fixture(scope="module")
def undisturbed(tiny, tmp_path_factory) -> pd.DataFrame:
    """The history of a tiny run of EPOCHS epochs that nothing disturbed."""
    return fit_tiny(tiny, TINY.replace(epochs=EPOCHS), checkpoint_path=tmp_path_factory.mktemp("alone") / "c.pt")


def history(path: Path) -> pd.DataFrame:
    return pd.read_csv(checkpoint.companion(path, "history.csv"))[MEASURED]


# ---------------------------------------------------------------- real processes

# A trainer as `python tests/tiny.py` runs it, started only once the test says go, after its imports and its
# data (seconds on a busy machine): "together" then means together. It prints how long tiny.main took.
TRAINER = """\
import functools, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
import tiny
tiny.tiny_datasets = functools.cache(tiny.tiny_datasets)
tiny.tiny_datasets()
Path({ready!r}).touch()
while not Path({go!r}).exists():
    time.sleep(0.005)
start = time.perf_counter()
code = tiny.main({path!r}, "{epochs}")
print(f"main took {{time.perf_counter() - start:.3f}} s", flush=True)
sys.exit(code)
"""


class Trainer:
    def __init__(self, path: Path, name: str, go: Path):
        self.ready = path.with_name(f"{name}.ready")
        self.out, self.err = path.with_name(f"{name}.out"), path.with_name(f"{name}.err")
        code = TRAINER.format(tests=str(TESTS), ready=str(self.ready), go=str(go), path=str(path), epochs=EPOCHS)
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-c", code],
                cwd=TESTS.parent,
                env={**os.environ, "CIFAR10_PROGRESS": "off"},
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    def main_seconds(self) -> float:
        return float(self.out.read_text().split("main took ")[1].split()[0])


def wait_for(condition, seconds: float = PATIENCE_S):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_two_trainers_of_one_run_started_together_the_second_is_refused_at_once(undisturbed, tmp_path):
    path, go = tmp_path / "c.pt", tmp_path / "go"
    trainers = [Trainer(path, name, go) for name in ("a", "b")]
    wait_for(lambda: all(t.ready.exists() or t.popen.poll() is not None for t in trainers))
    go.touch()
    wait_for(lambda: any(t.popen.poll() is not None for t in trainers))
    first_done = next(t for t in trainers if t.popen.poll() is not None)
    other = trainers[1 - trainers.index(first_done)]
    still_training = other.popen.poll() is None  # the refused one did not wait for the lock
    codes = [t.popen.wait(timeout=PATIENCE_S) for t in trainers]
    assert sorted(codes) == [0, 2], [t.err.read_text() for t in trainers]
    refused, winner = (first_done, other) if first_done.popen.returncode == 2 else (other, first_done)
    assert refused is first_done and still_training
    said = refused.err.read_text()
    assert said.count("\n") == 1 and said.startswith("error: c.pt is being trained by another process:")
    assert f"`python -c` in a terminal (pid {winner.popen.pid}, since {time.strftime('%Y-%m-%d')}" in said
    assert f"Ctrl-C in its terminal or run `kill {winner.popen.pid}`" in said and "--checkpoint PATH" in said
    assert refused.main_seconds() < 1.0
    assert winner.err.read_text() == ""
    pd.testing.assert_frame_equal(history(path), undisturbed, check_exact=True)


def test_a_trainer_killed_with_sigkill_leaves_nothing_that_stops_the_next_run(undisturbed, tmp_path):
    path, go = tmp_path / "c.pt", tmp_path / "go"
    go.touch()
    killed = Trainer(path, "killed", go)
    wait_for(lambda: path.exists() or killed.popen.poll() is not None)  # epoch 1 saved, epoch 2 under way
    holder = json.loads(lock.lock_path(path).read_text())
    assert holder["pid"] == killed.popen.pid
    killed.popen.send_signal(signal.SIGKILL)
    assert killed.popen.wait(timeout=60) == -signal.SIGKILL
    stopped_at = checkpoint.load(path)["epoch"]
    assert 1 <= stopped_at < EPOCHS, "the signal came too late to test anything"
    assert lock.lock_path(path).exists()  # the file stays; the lock went with the process
    again = Trainer(path, "again", go)
    assert again.popen.wait(timeout=PATIENCE_S) == 0, again.err.read_text()
    assert f"Resuming c.pt from epoch {stopped_at} of {EPOCHS}." in again.out.read_text()
    pd.testing.assert_frame_equal(history(path), undisturbed, check_exact=True)


# ---------------------------------------------------------------- the lock, in one process


def no_training(*args):
    raise AssertionError("a training epoch ran")


def test_while_another_holds_the_run_training_and_fresh_are_refused_and_reuse_still_reads(tiny, tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    fit_tiny(tiny, checkpoint_path=path)
    monkeypatch.setattr(train, "train_epoch", no_training)
    with lock.exclusive(path):  # flock: a second open file in this process is refused as another process would be
        assert len(fit_tiny(tiny, checkpoint_path=path)) == 2  # a finished run is read, which needs no lock
        for kwargs in ({"cfg": TINY.replace(epochs=3)}, {"fresh": True}, {"cfg": TINY.replace(lr=0.05)}):
            with pytest.raises(lock.RunBusy, match=f"c.pt is being trained by another process: .*pid {os.getpid()}"):
                fit_tiny(tiny, checkpoint_path=path, **kwargs)
        assert [p.name for p in tmp_path.glob("c.before-*")] == []  # fresh set nothing aside
    assert lock.lock_path(path).read_text() == ""  # released: no description left for anyone to misread
    with lock.exclusive(path):  # and free to take again
        pass


def test_in_a_notebook_the_refusal_speaks_of_kernels_and_cells(tmp_path, monkeypatch):
    path = tmp_path / "run" / "checkpoint.pt"
    monkeypatch.setattr(lock, "in_notebook", lambda: True)
    with lock.exclusive(path), pytest.raises(lock.RunBusy) as refused:
        lock.exclusive(path)
    said = str(refused.value)
    assert "\n" not in said
    assert said.startswith("checkpoint.pt is being trained by another Jupyter kernel or terminal: a Jupyter kernel")
    assert f"pid {os.getpid()}" in said and "interrupt that kernel (■)" in said
    assert "then run this cell again" in said and "fit(..., checkpoint_path=PATH)" in said


# ---------------------------------------------------------------- two writers of one file


def test_two_writers_of_one_checkpoint_never_fail_and_a_reader_sees_only_whole_files(tmp_path):
    path = tmp_path / "c.pt"
    state = {"architecture": checkpoint.ARCHITECTURE, "format": checkpoint.FORMAT, "model": {"w": torch.ones(64)}}
    checkpoint.save(state, path)
    failures: list[BaseException] = []

    def write(n: int) -> None:
        for _ in range(n):
            try:
                checkpoint.save(state, path)
            except BaseException as exc:  # every failure is what the test counts
                failures.append(exc)

    writers = [threading.Thread(target=write, args=(50,)) for _ in range(3)]
    for thread in writers:
        thread.start()
    loaded = 0
    while any(thread.is_alive() for thread in writers):
        assert torch.equal(checkpoint.load(path)["model"]["w"], torch.ones(64))
        loaded += 1
    for thread in writers:
        thread.join()
    assert failures == [] and loaded > 0
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


# ---------------------------------------------------------------- files that cannot be read


def deny(path: Path, monkeypatch) -> None:
    """Make `path` unreadable: chmod where that works; as root (which reads anything), the OS's refusal
    is simulated where Python opens files (open, and os.open, which tarfile's streams use)."""
    if os.geteuid() != 0:
        path.chmod(0)
        return
    target = str(path.resolve())

    def refuse(name) -> bool:
        return isinstance(name, (str, os.PathLike)) and os.path.realpath(name) == target

    real_open, real_os_open = builtins.open, os.open

    def guarded_open(name, *args, **kwargs):
        if refuse(name):
            raise PermissionError(13, "Permission denied", str(name))
        return real_open(name, *args, **kwargs)

    def guarded_os_open(name, *args, **kwargs):
        if refuse(name):
            raise PermissionError(13, "Permission denied", str(name))
        return real_os_open(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)


def faulty_copy(kind: str, good: Path, folder: Path, monkeypatch) -> Path:
    """A copy of the file `good` that is empty, truncated, a folder, or unreadable."""
    path = folder / f"{kind}{good.suffix if kind != 'folder' else ''}"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "folder":
        path.mkdir()
    else:
        shutil.copy(good, path)
        deny(path, monkeypatch)
    return path


CHECKPOINT_FAULTS = {
    "empty": "empty.pt is empty (0 bytes)",
    "truncated": "truncated.pt is not a readable checkpoint",
    "folder": "folder is a folder, not a checkpoint",
    "unreadable": "unreadable.pt cannot be read (PermissionError: Permission denied)",
}


def one_line_and_exit_2(code: int, capsys) -> str:
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: ") and "Traceback" not in captured.err
    assert "/tmp" not in captured.err and "/root" not in captured.err  # never a machine path
    return captured.err


@pytest.fixture
def good_png(tiny, tmp_path) -> Path:
    path = tmp_path / "good.png"
    Image.fromarray(tiny.test.images[0].permute(1, 2, 0).numpy()).save(path)
    return path


@pytest.mark.parametrize("kind", CHECKPOINT_FAULTS)
def test_each_unreadable_checkpoint_is_one_line_and_exit_2_for_every_command(
    kind, tiny, tiny_checkpoint, good_png, tmp_path, monkeypatch, capsys
):
    path = str(faulty_copy(kind, tiny_checkpoint, tmp_path, monkeypatch))
    monkeypatch.setattr(train, "prepare", lambda cfg, source=None: tiny)
    commands = {
        "train": lambda: train.main(["--checkpoint", path, "--device", "cpu", "--epochs", "2"]),
        "evaluate": lambda: evaluate.main(["--checkpoint", path, "--device", "cpu"]),
        "predict": lambda: predict.main(["--checkpoint", path, "--device", "cpu", str(good_png)]),
    }
    for name, command in commands.items():
        said = one_line_and_exit_2(command(), capsys)
        assert CHECKPOINT_FAULTS[kind] in said, (name, said)


def small_archive(folder: Path) -> Path:
    """A .tar.gz laid out as CIFAR-10 folders are, with a few images: enough to be truncated."""
    path = folder / "cifar.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for i in range(8):
            image = folder / f"{i}.png"
            Image.fromarray(torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8).numpy()).save(image)
            archive.add(image, f"cifar/train/cat/{i}.png")
    return path


DATA_FAULTS = {
    "empty": "empty.gz is empty (0 bytes)",
    "truncated": "truncated.gz is truncated or not a tar archive",
    "folder": "folder: class folder 'train/airplane' is missing or empty",
    "unreadable": "unreadable.gz cannot be read (PermissionError: Permission denied)",
}


@pytest.mark.parametrize("kind", DATA_FAULTS)
def test_each_unreadable_data_archive_is_one_line_and_exit_2(kind, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    source = str(faulty_copy(kind, small_archive(tmp_path), tmp_path, monkeypatch))
    commands = {
        "train": lambda: train.main(["--data", source, "--device", "cpu", "--checkpoint", str(tmp_path / "c.pt")]),
        "evaluate": lambda: evaluate.main(["--checkpoint", str(tiny_checkpoint), "--data", source, "--device", "cpu"]),
    }
    for name, command in commands.items():
        said = one_line_and_exit_2(command(), capsys)
        assert DATA_FAULTS[kind] in said, (name, said)


def test_weights_that_are_not_finite_are_refused_by_every_command(tiny_checkpoint, good_png, tmp_path, capsys):
    state = checkpoint.load(tiny_checkpoint)
    state["model"]["fc.weight"][3, 7] = float("nan")
    checkpoint.save(state, tmp_path / "nan.pt")
    with pytest.raises(
        CheckpointError, match=r"nan.pt holds weights that are not finite \(NaN or infinity in fc.weight\)"
    ):
        checkpoint.load(tmp_path / "nan.pt")
    path = str(tmp_path / "nan.pt")
    for command in (
        lambda: evaluate.main(["--checkpoint", path, "--device", "cpu"]),
        lambda: predict.main(["--checkpoint", path, "--device", "cpu", str(good_png)]),
    ):
        assert "holds weights that are not finite" in one_line_and_exit_2(command(), capsys)


def test_an_exception_without_a_message_still_makes_one_line(tmp_path, monkeypatch):
    class Silent(Exception):
        def __str__(self):
            raise RuntimeError("a __str__ that fails")

    assert reason(RuntimeError("")) == "RuntimeError"
    assert reason(ValueError("\n\n  second line\nthird")) == "ValueError: second line"
    assert reason(FileNotFoundError(2, "No such file or directory", "/machine/path")) == (
        "FileNotFoundError: No such file or directory"
    )
    assert reason(Silent()) == "Silent"
    (tmp_path / "c.pt").write_bytes(b"something")

    def fail_silently(*args, **kwargs):
        raise RuntimeError()

    monkeypatch.setattr(torch, "load", fail_silently)
    with pytest.raises(
        CheckpointError, match=r"^c.pt is not a readable checkpoint \(RuntimeError\): it may be truncated"
    ):
        checkpoint.load(tmp_path / "c.pt")
