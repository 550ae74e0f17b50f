"""Re-running never loses a run: a finished run is reused, a partial one resumed exactly, another
configuration refused and never overwritten, a fresh start keeps the old checkpoint aside. Real
processes are killed (SIGKILL) and interrupted (SIGINT) mid-run and started again the same way."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import nbformat
import pandas as pd
import pytest
import torch

from helpers import config, evaluate, series, train
from helpers.machinery import checkpoint, execution, resume
from helpers.machinery.checkpoint import CheckpointError
from tiny import MEASURED, TINY
from tiny import fit_tiny as fit

TESTS = Path(__file__).resolve().parent


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def no_training(*args):
    raise AssertionError("a training epoch ran")


# ---------------------------------------------------------------- the rule


def test_a_finished_run_of_the_same_configuration_is_reused_not_retrained(tiny, tmp_path, monkeypatch, capsys):
    path = tmp_path / "run" / "checkpoint.pt"
    first = fit(tiny, checkpoint_path=path)
    before = digest(path)
    capsys.readouterr()
    monkeypatch.setattr(train, "train_epoch", no_training)
    again = fit(tiny, checkpoint_path=path)
    pd.testing.assert_frame_equal(again, first, check_exact=True)
    assert digest(path) == before
    said = capsys.readouterr().out
    assert said.count("\n") == 1
    assert "checkpoint.pt holds a finished run of this configuration (2 epochs): reusing it" in said
    assert "To train again: --fresh, which keeps the old checkpoint aside." in said and "fit(" not in said


def test_a_partial_run_of_the_same_configuration_is_resumed_exactly_saying_from_where(tiny, tmp_path, capsys):
    straight = fit(tiny, TINY.replace(epochs=3), checkpoint_path=tmp_path / "a.pt")
    fit(tiny, TINY.replace(epochs=1), checkpoint_path=tmp_path / "b.pt")
    capsys.readouterr()
    resumed = fit(tiny, TINY.replace(epochs=3), checkpoint_path=tmp_path / "b.pt")
    assert capsys.readouterr().out == "Resuming b.pt from epoch 1 of 3.\n"
    pd.testing.assert_frame_equal(resumed, straight, check_exact=True)


def test_a_run_of_another_configuration_is_refused_and_left_as_it_was(tiny, tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    fit(tiny, TINY.replace(epochs=1), checkpoint_path=path)
    before = digest(path)
    monkeypatch.setattr(train, "train_epoch", no_training)
    with pytest.raises(CheckpointError) as refused:
        fit(tiny, TINY.replace(lr=0.05, seed=3), checkpoint_path=path)
    message = str(refused.value)
    assert (
        "c.pt holds a run of another configuration (lr: 0.02 in the checkpoint, 0.05 now, seed: 0 in the "
        "checkpoint, 3 now); it is left as it is." in message
    )
    assert message.endswith(
        "To keep both, give another --checkpoint PATH; to start again, --fresh, which keeps the old checkpoint aside."
    )
    assert digest(path) == before and not list(tmp_path.glob("*before*"))


def test_in_a_notebook_the_messages_name_fits_arguments_and_break_between_words(tiny, tmp_path):
    """JupyterLab breaks long output lines anywhere, even mid-word: a notebook gets lines of whole words."""
    path = tmp_path / "a-checkpoint-with-a-long-name-that-must-stay-whole.pt"
    fit(tiny, TINY.replace(epochs=1), checkpoint_path=path)
    terminal = resume.decide(TINY.replace(epochs=1), path, tiny.label, "cpu").message
    notebook = resume.decide(TINY.replace(epochs=1), path, tiny.label, "cpu", notebook=True).message
    assert terminal is not None and notebook is not None
    assert "--fresh" in terminal and "fit(" not in terminal and "\n" not in terminal
    assert "fit(..., fresh=True)" in notebook and "--" not in notebook
    lines = notebook.splitlines()
    assert len(lines) > 1 and all(len(line) <= 88 for line in lines if " " in line)
    assert notebook.split() == terminal.replace("--fresh", "fit(..., fresh=True)").split()  # no word cut in two
    with pytest.raises(CheckpointError) as refused:
        resume.decide(TINY.replace(epochs=1, lr=0.05), path, tiny.label, "cpu", notebook=True)
    assert "fit(..., checkpoint_path=PATH)" in str(refused.value) and "--" not in str(refused.value)
    assert all(len(line) <= 88 for line in str(refused.value).splitlines() if " " in line)


def test_a_run_on_other_data_is_refused(tiny, tmp_path):
    fit(tiny, TINY.replace(epochs=1), checkpoint_path=tmp_path / "c.pt")
    other = train.Datasets(tiny.train, tiny.val, tiny.test, tiny.mean, tiny.std, label="CIFAR-10 (JPEG copy)")
    with pytest.raises(CheckpointError, match="data: 'CIFAR-10' in the checkpoint, 'CIFAR-10 \\(JPEG copy\\)' now"):
        train.fit(TINY, other, device="cpu", checkpoint_path=tmp_path / "c.pt")


def test_execution_settings_and_length_may_change(tiny, tmp_path, capsys):
    fit(tiny, TINY.replace(epochs=1), checkpoint_path=tmp_path / "c.pt")
    fit(
        tiny,
        TINY.replace(epochs=2, precision="fp32", eval_batch_size=7, checkpoint_every_s=5),
        checkpoint_path=tmp_path / "c.pt",
    )
    assert "Resuming c.pt from epoch 1 of 2." in capsys.readouterr().out


def test_a_fresh_start_trains_again_and_keeps_the_old_checkpoint_aside(tiny, tmp_path, capsys, monkeypatch):
    path = tmp_path / "c.pt"
    straight = fit(tiny, checkpoint_path=tmp_path / "straight.pt")
    fit(tiny, TINY.replace(lr=0.05, epochs=1), checkpoint_path=path)
    old = digest(path)
    capsys.readouterr()
    again = fit(tiny, checkpoint_path=path, fresh=True)
    kept = sorted(tmp_path.glob("c.before-*.pt"))
    assert len(kept) == 1 and digest(kept[0]) == old
    assert capsys.readouterr().out == f"Fresh start; the previous checkpoint is kept as {kept[0].name}.\n"
    pd.testing.assert_frame_equal(again, straight, check_exact=True)
    monkeypatch.setattr(resume, "now", lambda: kept[0].stem.removeprefix("c.before-"))
    fit(tiny, checkpoint_path=path, fresh=True)  # a second fresh start within the same second
    assert {p.name for p in tmp_path.glob("c.before-*.pt")} == {kept[0].name, kept[0].stem + "-1.pt"}


def test_a_checkpoint_longer_than_asked_is_refused_not_cut(tiny, tmp_path):
    fit(tiny, checkpoint_path=tmp_path / "c.pt")
    with pytest.raises(
        CheckpointError,
        match="c.pt holds 2 epochs of this configuration, more than the 1 asked for; it is left as it is. To keep both",
    ):
        fit(tiny, TINY.replace(epochs=1), checkpoint_path=tmp_path / "c.pt")


def test_resume_keeps_working_and_needs_a_checkpoint(tiny, tmp_path):
    with pytest.raises(CheckpointError, match="No checkpoint at missing.pt"):
        fit(tiny, checkpoint_path=tmp_path / "missing.pt", resume=True)
    fit(tiny, TINY.replace(epochs=1), checkpoint_path=tmp_path / "c.pt")
    assert len(fit(tiny, checkpoint_path=tmp_path / "c.pt", resume=True)) == 2


def test_a_corrupt_checkpoint_is_refused_and_fresh_sets_it_aside(tiny, tmp_path):
    path = tmp_path / "c.pt"
    path.write_bytes(b"\x00half a checkpoint")
    with pytest.raises(CheckpointError, match="c.pt is not a readable checkpoint"):
        fit(tiny, checkpoint_path=path)
    fit(tiny, TINY.replace(epochs=1), checkpoint_path=path, fresh=True)
    assert [p.read_bytes() for p in tmp_path.glob("c.before-*.pt")] == [b"\x00half a checkpoint"]


def test_a_checkpoint_from_before_widths_is_a_full_width_run(full_width_checkpoint, tiny, tmp_path, monkeypatch):
    """Checkpoints written before Config had a width (commit 6960a31) hold ResNet18 at width 64: they are
    evaluated, reused and refused as runs of width 64."""
    state = checkpoint.load(full_width_checkpoint)
    del state["config"]["width"]
    checkpoint.save(state, tmp_path / "old.pt")
    model, _ = evaluate.load_model(tmp_path / "old.pt", execution.resolve(torch.device("cpu")))
    assert model.conv1.out_channels == 64
    monkeypatch.setattr(train, "train_epoch", no_training)
    full_width = TINY.replace(width=64, epochs=1)
    assert len(fit(tiny, full_width, checkpoint_path=tmp_path / "old.pt")) == 1  # reused
    with pytest.raises(CheckpointError, match="width: 64 in the checkpoint, 8 now"):
        fit(tiny, TINY.replace(epochs=1), checkpoint_path=tmp_path / "old.pt")


@pytest.mark.slow
def test_the_command_line_reuses_a_finished_run(quick_run, real_source, capsys, monkeypatch):
    before, open_figures = digest(quick_run), plt.get_fignums()
    monkeypatch.setattr(train, "train_epoch", no_training)
    assert train.main(["--quick", "--data", str(real_source), "--device", "cpu", "--checkpoint", str(quick_run)]) == 0
    out = capsys.readouterr().out
    assert "holds a finished run of this configuration (2 epochs): reusing it" in out
    assert digest(quick_run) == before
    assert "learning_curves.png" in out and plt.get_fignums() == open_figures  # drawn to its file, none left open


# ---------------------------------------------------------------- real processes, stopped for real


class Process:
    """A child process in its own session (signals for it reach it alone), its output in files beside `log`."""

    def __init__(self, arguments: list[str], log: Path):
        self.out, self.err = log.with_suffix(".out"), log.with_suffix(".err")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.popen = subprocess.Popen(
                arguments,
                cwd=TESTS.parent,
                env={**os.environ, "CIFAR10_PROGRESS": "off"},
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    def wait(self, timeout: float = 300) -> int:
        return self.popen.wait(timeout=timeout)

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()


def start_tiny_run(path: Path, epochs: int, hold: Path | None = None) -> Process:
    """`python tests/tiny.py`, which restores Ctrl-C's default handler itself (a background job may ignore it);
    with `hold`, the run waits in epoch 2 to be stopped, once it has created that file."""
    arguments = [sys.executable, str(TESTS / "tiny.py"), str(path), str(epochs)] + ([f"hold={hold}"] if hold else [])
    return Process(arguments, path.with_name("log"))


def wait_for(condition, seconds: float = 120):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


STOPPED_EPOCHS = 3  # the signal comes once epoch 1 is saved, during epoch 2 (tiny.hold_in_epoch)


@pytest.fixture(scope="module")
def uninterrupted_tiny_run(tiny, tmp_path_factory) -> pd.DataFrame:
    """The history of the same run never stopped: fit in this process (a process of its own gives the same)."""
    return fit(tiny, TINY.replace(epochs=STOPPED_EPOCHS), checkpoint_path=tmp_path_factory.mktemp("straight") / "c.pt")


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_a_process_stopped_mid_run_and_started_again_gives_the_uninterrupted_history(
    uninterrupted_tiny_run, tmp_path, stop
):
    path, held = tmp_path / "c.pt", tmp_path / "held"
    run = start_tiny_run(path, STOPPED_EPOCHS, hold=held)
    wait_for(lambda: held.exists() or run.popen.poll() is not None)  # epoch 2's steps done, epoch 1 written
    run.popen.send_signal(stop)
    code = run.wait(timeout=120)
    stopped_at = checkpoint.load(path)["epoch"]
    assert stopped_at == 1, "the signal came too late to test anything"
    if stop == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == 130 and f"Stopped; c.pt holds epoch {stopped_at}." in run.stderr()
    again = start_tiny_run(path, STOPPED_EPOCHS)
    assert again.wait() == 0, again.stderr()
    assert f"Resuming c.pt from epoch {stopped_at} of {STOPPED_EPOCHS}." in again.stdout()
    pd.testing.assert_frame_equal(
        pd.read_csv(path.with_name("c.history.csv"))[MEASURED], uninterrupted_tiny_run, check_exact=True
    )


TRAINING_NOTEBOOK = """\
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from helpers import train
from tiny import TINY, hold_in_epoch, tiny_datasets

hold_in_epoch(3, Path({held!r}))  # the first run waits in epoch 3 for Ctrl-C; the run started again never waits
real_capture = train.capture
def counted(run):  # marks every finished epoch once captured, so that the test knows when to press Ctrl-C
    state = real_capture(run)
    with open({marks!r}, "a") as marks:
        marks.write("epoch\\n")
    return state
train.capture = counted
history = train.fit(TINY.replace(epochs={epochs}, checkpoint_every_s=1e9), tiny_datasets(), device="cpu",
                    checkpoint_path=Path({path!r}))
"""


def training_notebook(tmp_path: Path, epochs: int) -> tuple[Path, Path, Path, Path]:
    """A one-cell notebook that trains the tiny run and waits in epoch 3 to be interrupted, the first time
    it runs: (notebook, checkpoint, the file that marks every captured epoch, the file that says it waits)."""
    path, marks, held = tmp_path / "run" / "checkpoint.pt", tmp_path / "marks.txt", tmp_path / "held"
    code = TRAINING_NOTEBOOK.format(tests=str(TESTS), marks=str(marks), epochs=epochs, path=str(path), held=str(held))
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)]), tmp_path / "training.ipynb")
    return tmp_path / "training.ipynb", path, marks, held


def run_series(notebook: Path) -> Process:
    """helpers.series.run on one notebook, in a child process with Ctrl-C at its default handler."""
    code = (
        "import pathlib, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
        f"from helpers import series; sys.exit(series.run([pathlib.Path({str(notebook)!r})]))"
    )
    return Process([sys.executable, "-c", code], notebook.with_name("series-log"))


def signal_masks(pid: int) -> str:
    """The blocked, ignored and caught signal masks of a process (Linux), for a failure message."""
    status = Path(f"/proc/{pid}/status")
    return (
        " ".join(line for line in status.read_text().splitlines() if line.startswith("Sig")) if status.exists() else ""
    )


def figure_outputs(notebook: Path) -> list:
    cell = nbformat.read(notebook, as_version=4).cells[0]
    return [output for output in cell.outputs if "image/png" in output.get("data", {})]


@pytest.mark.slow
def test_ctrl_c_in_the_series_saves_the_last_epoch_and_the_series_carries_on(tiny, tmp_path):
    """checkpoint_every_s is huge, so the only write before the end is the one Ctrl-C causes in the kernel."""
    epochs = 4  # Ctrl-C once two epochs are saved, in the third
    straight = fit(tiny, TINY.replace(epochs=epochs), checkpoint_path=tmp_path / "straight.pt")
    notebook, path, marks, held = training_notebook(tmp_path, epochs)
    series_run = run_series(notebook)
    wait_for(lambda: held.exists() or series_run.popen.poll() is not None)
    signals = signal_masks(series_run.popen.pid)
    series_run.popen.send_signal(signal.SIGINT)
    assert series_run.wait(timeout=120) == 130, (signals, series_run.stdout(), series_run.stderr())
    assert "Interrupted in training.ipynb" in series_run.stderr()
    stopped_at = checkpoint.load(path)["epoch"]
    assert stopped_at == 2 and marks.read_text().count("\n") == stopped_at  # every finished epoch was saved
    again = run_series(notebook)
    assert again.wait() == 0, again.stderr()
    pd.testing.assert_frame_equal(pd.read_csv(path.with_name("history.csv"))[MEASURED], straight, check_exact=True)
    stored = nbformat.read(notebook, as_version=4).cells[0].outputs
    assert f"Resuming checkpoint.pt from epoch {stopped_at} of {epochs}." in "".join(
        output.get("text", "") for output in stored
    )
    assert len(figure_outputs(notebook)) == 1  # the live curves: one figure, updated in place


# ---------------------------------------------------------------- notebook 03, twice


@pytest.mark.slow
def test_notebook_03_run_again_trains_nothing(quick_run, real_source, tmp_path, monkeypatch):
    """The quick run the command line trained is what notebook 03 would have trained: running the notebook
    over it reuses it, and the checkpoint is not written again."""
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    target = out / "runs" / "quick" / "checkpoint.pt"
    target.parent.mkdir()
    target.write_bytes(quick_run.read_bytes())
    (target.parent / "history.csv").write_bytes(quick_run.with_name("history.csv").read_bytes())
    before = digest(target)
    copy = tmp_path / "03_training.ipynb"
    copy.write_text((config.REPO_ROOT / "notebooks" / "03_training.ipynb").read_text())
    monkeypatch.setenv("CIFAR10_OUTPUT", str(out))
    monkeypatch.setenv("CIFAR10_QUICK", "1")
    monkeypatch.setenv("CIFAR10_DATA", str(real_source))
    series.execute(copy)
    said = "".join(
        output.get("text", "")
        for cell in nbformat.read(copy, as_version=4).cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    said = " ".join(said.split())  # a notebook breaks long messages between words
    assert "runs/quick/checkpoint.pt holds a finished run of this configuration (2 epochs): reusing it" in said
    assert "To train again: fit(..., fresh=True)" in said  # the notebook's words, not the command line's
    assert digest(target) == before
