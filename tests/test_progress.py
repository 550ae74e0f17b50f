"""Progress in a notebook leaves nothing stale: widgets while work runs, plain lines once it has ended, in
notebooks executed by a real kernel; learning curves redrawn at most every few seconds and always at the end."""

import base64
import io
import re
import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from helpers import plots, train
from helpers.machinery import progress
from tiny import TINY
from tiny import fit_tiny as fit

TESTS = Path(__file__).resolve().parent
WIDGET = "application/vnd.jupyter.widget-view+json"
A_BAR = re.compile(r"\d+%\|")  # tqdm's text form of a bar, e.g. "0%|          | 0/2"

SETUP = """\
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from helpers import plots, train
from helpers.machinery.progress import progress
from tiny import TINY, tiny_datasets
"""
TRAIN = """\
history = train.fit(TINY.replace(epochs=2), tiny_datasets(), device="cpu", checkpoint_path=Path({path!r}))
"""
BROKEN_OFF = """\
for step in progress(range(5), desc="kept", unit="step"):  # leave=True, tqdm's default
    for batch in progress(range(5), desc="not kept", unit="batch", leave=False):
        if step == 2 and batch == 3:
            raise RuntimeError("a loop that fails half way")
"""
OPEN_WIDGETS = """\
from ipywidgets.widgets.widget import _instances  # every widget model the kernel still holds
print(len(_instances))
"""


def executed(cells: list[str], folder: Path) -> tuple[nbformat.NotebookNode, NotebookClient]:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    client = NotebookClient(
        notebook, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": folder}}
    )
    client.execute()
    return notebook, client


def outputs(cell) -> list[dict]:
    return list(cell.outputs)


def text_of(output) -> str:
    return output.get("text", "") + output.get("data", {}).get("text/plain", "")


@pytest.mark.slow
def test_a_notebook_run_with_widget_bars_keeps_no_widget_and_no_stale_bar(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR10_PROGRESS", "auto")  # the default: widgets in a kernel
    trained = TRAIN.format(path=str(tmp_path / "run" / "checkpoint.pt"))
    cells = [SETUP.format(tests=str(TESTS)), trained, BROKEN_OFF, OPEN_WIDGETS]
    notebook, client = executed(cells, tmp_path)
    everything = [output for cell in notebook.cells for output in outputs(cell)]
    assert not [output for output in everything if WIDGET in output.get("data", {})]
    assert not [text_of(output) for output in everything if A_BAR.search(text_of(output))]
    shown = {state.get("_model_name") for state in client.widget_state.values()}
    assert "FloatProgressModel" in shown, "no widget bar was shown while the cells ran: the test tests nothing"
    training = [text_of(output) for output in outputs(notebook.cells[1]) if text_of(output)]
    figures = [output for output in outputs(notebook.cells[1]) if "image/png" in output.get("data", {})]
    assert any(
        re.fullmatch(r"training \(tiny, cpu\): 2/2 epochs in \d\d:\d\d, lr=0\.02, val_acc=0\.\d{3}", line)
        for line in training
    ), training
    assert len(figures) == 1  # the learning curves, one figure
    broken = [text_of(output) for output in outputs(notebook.cells[2]) if output.output_type == "display_data"]
    # bars stopped by an error: where it stopped, or nothing (leave=False); no red widget
    assert len(broken) == 2 and re.fullmatch(r"kept: stopped at 2/5 steps after 00:\d\d", broken[0]), broken
    assert broken[1] == "", broken
    assert text_of(outputs(notebook.cells[3])[0]) == "0\n"  # closed: no model left to show, save or leak


def test_units_read_as_plurals():
    assert [progress.plural(unit) for unit in ("epoch", "batch", "img", "it")] == ["epochs", "batches", "imgs", "it"]


def test_a_finished_bar_reads_as_one_line_of_what_ran_how_long_and_its_figures():
    bar = progress.text_tqdm(desc="training (quick, cpu)", unit="epoch", initial=1, total=3, file=io.StringIO())
    bar.n, bar.postfix = 3, "val_acc=0.310, lr=0.02"
    assert re.fullmatch(
        r"training \(quick, cpu\): 3/3 epochs \(2 now\) in 00:\d\d, val_acc=0.310, lr=0.02", progress.finished_line(bar)
    )
    bar.n, bar.initial, bar.postfix = 1, 0, ""
    assert re.fullmatch(r"training \(quick, cpu\): stopped at 1/3 epochs after 00:\d\d", progress.finished_line(bar))


# ---------------------------------------------------------------- live curves


class Handle:
    def __init__(self, shown: list):
        self.shown = shown

    def update(self, picture, raw):
        self.shown.append(picture["text/plain"])


def shown_in_a_notebook(monkeypatch, shown: list) -> None:
    """IPython's display, recording the text of each picture shown or updated."""
    import IPython.display

    def display(picture, raw, display_id):
        shown.append(picture["text/plain"])
        return Handle(shown)

    monkeypatch.setattr(IPython.display, "display", display)


class InPlace:
    """An executor that runs each job at once: what a worker does, without the process."""

    def __init__(self, jobs: list):
        self.jobs = jobs

    def submit(self, function, *args):
        self.jobs.append(len(args[0]) if args else function.__name__)
        future: Future = Future()
        future.set_result(function(*args))
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        self.jobs.append("shutdown")


def epochs_without_arithmetic(monkeypatch, clock: list[float] | None = None) -> None:
    """train.run_epoch returns a made-up record at once (and advances `clock` by a 2-second epoch): what
    happens around the epochs, without their arithmetic."""

    def run_epoch(run, train_split, val_split):
        if clock is not None:
            clock[0] += 2.0
        losses = dict(train_loss=2.0 / (run.epoch + 1), train_acc=0.3, val_loss=2.1, val_acc=0.25)
        return dict(
            epoch=run.epoch + 1, **losses, lr=0.02, seconds=2.0, images_per_s=64.0, execution="fp32", hardware="CPU"
        )

    monkeypatch.setattr(train, "run_epoch", run_epoch)


def test_live_curves_redraw_at_most_every_few_seconds_and_always_after_the_last_epoch(tiny, monkeypatch):
    """2-second epochs, a redraw at most every 5 s: started after epochs 1, 4, 7 and 10, each shown once ready
    (here at once); the last one covers the whole run, so final() draws nothing more."""
    clock, jobs, shown = [0.0], [], []
    epochs_without_arithmetic(monkeypatch, clock)
    monkeypatch.setattr(progress, "now", lambda: clock[0])
    monkeypatch.setattr(progress, "renderer", lambda: InPlace(jobs))
    monkeypatch.setattr(train, "live_curves", lambda live=True: progress.LiveCurves(True, live))  # in a notebook
    monkeypatch.setattr(progress, "render", lambda history: {"text/plain": f"{len(history)} epochs"})
    shown_in_a_notebook(monkeypatch, shown)
    fit(tiny, TINY.replace(epochs=10, checkpoint_every_s=1e9))
    assert jobs == ["warm_up", 1, 4, 7, 10, "shutdown"]
    assert shown == ["1 epochs", "4 epochs", "7 epochs", "10 epochs"]


def test_the_final_figure_is_drawn_where_no_redraw_covers_the_last_epoch(monkeypatch):
    jobs, shown = [], []
    monkeypatch.setattr(progress, "renderer", lambda: InPlace(jobs))
    monkeypatch.setattr(progress, "render", lambda history: {"text/plain": f"{len(history)} epochs"})
    shown_in_a_notebook(monkeypatch, shown)
    curves = progress.LiveCurves(True, live=True)
    curves.update(history_of([0.1]))
    curves.update(history_of([0.1, 0.1]))  # within 5 s of the first: no redraw
    curves.final(history_of([0.1, 0.1]))
    assert jobs == ["warm_up", 1, "shutdown"] and shown == ["1 epochs", "2 epochs"]


def test_outside_a_notebook_no_figure_is_drawn(tiny, monkeypatch):
    import IPython.display

    epochs_without_arithmetic(monkeypatch)
    monkeypatch.setattr(IPython.display, "display", lambda *a, **k: pytest.fail("a figure was displayed"))
    monkeypatch.setattr(progress, "renderer", lambda: pytest.fail("a worker was started"))
    monkeypatch.setattr(progress, "progress_mode", lambda: "auto")
    assert not progress.in_notebook()
    fit(tiny, TINY.replace(epochs=2, checkpoint_every_s=1e9))


def test_the_worker_ignores_ctrl_c_meant_for_the_kernel():
    """Interrupting a kernel signals its process group: the worker must survive it."""
    code = (
        "import os, signal, time; from helpers.machinery.progress import start_worker; start_worker(os.getppid()); "
        "os.kill(os.getpid(), signal.SIGINT); time.sleep(0.2); print('alive')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "alive\n", (done.returncode, done.stderr)


def running(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "\nState:\tZ" not in status.read_text()  # a zombie has exited


@pytest.mark.skipif(not Path("/proc").exists(), reason="reads /proc (Linux)")
def test_the_worker_exits_when_its_kernel_is_killed():
    """A kernel killed (SIGKILL: no clean-up) while its worker has a picture to hand back would leave the worker
    blocked on the pipe for ever, with its memory: here the worker sends 10 MB after the kernel has gone."""
    code = (
        "import os, time; from helpers.machinery.progress import renderer; pool = renderer(); "
        "print(pool.submit(os.getpid).result(), flush=True); "
        "pool.submit(time.sleep, 3); pool.submit(os.urandom, 10**7); time.sleep(600)"
    )
    kernel = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    worker = int(kernel.stdout.readline())
    time.sleep(1)  # the jobs reach the worker
    assert running(worker)
    kernel.kill()
    kernel.wait(timeout=60)
    deadline = time.monotonic() + 60
    while running(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running(worker)


def test_live_curves_render_the_figure_the_notebook_would_show():
    history = pd.DataFrame(
        {"epoch": [1, 2], "train_loss": [2.0, 1.5], "val_loss": [2.1, 1.7], "train_acc": [0.2, 0.4]}
        | {"val_acc": [0.2, 0.35], "lr": [0.02, 0.02]}
    ).set_index("epoch")
    picture = progress.render(history)
    assert picture["text/plain"] == "<Figure size 1500x380 with 3 Axes>"
    assert base64.b64decode(picture["image/png"]).startswith(b"\x89PNG")


def history_of(lrs: list[float]) -> pd.DataFrame:
    epochs = range(1, len(lrs) + 1)
    return pd.DataFrame(
        {"train_loss": [2.0 / e for e in epochs], "val_loss": [2.1 / e for e in epochs]}
        | {"train_acc": [0.3] * len(lrs), "val_acc": [0.25] * len(lrs), "lr": lrs},
        index=pd.Index(epochs, name="epoch"),
    )


def test_after_epoch_1_the_curves_show_epoch_1_and_a_readable_learning_rate():
    figure = plots.learning_curves(history_of([0.02]))
    figure.canvas.draw()
    for ax in figure.axes:
        low, high = ax.get_xlim()
        ticks = [tick for tick in ax.get_xticks() if low <= tick <= high]
        assert ticks == [1] and (low, high) == (0.5, 1.5), (ax.get_title(), ticks, (low, high))
    lr_axis = figure.axes[2]
    assert [label.get_text() for label in lr_axis.get_yticklabels()] == ["0.02"]
    assert not lr_axis.yaxis.get_minorticklocs().size


def test_the_learning_rates_a_run_used_are_written_out_on_their_axis():
    figure = plots.learning_curves(history_of([0.1] * 12 + [0.05] * 11 + [0.025] * 11 + [0.0125] * 6))
    figure.canvas.draw()
    lr_axis = figure.axes[2]
    assert [label.get_text() for label in lr_axis.get_yticklabels()] == ["0.0125", "0.025", "0.05", "0.1"]
    low, high = figure.axes[0].get_xlim()
    assert (low, high) == (0.5, 40.5)
    assert all(float(tick).is_integer() for tick in figure.axes[0].get_xticks())
