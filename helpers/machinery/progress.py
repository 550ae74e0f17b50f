"""Progress that suits where the code runs: bars in a notebook, a terminal, a CI log, or nowhere;
and, in a notebook, learning curves redrawn in place while training runs.

CIFAR10_PROGRESS=auto shows widgets in Jupyter and text elsewhere. `make series`, which runs the
notebooks headless, sets `terminal` so the bars appear in the terminal that launched it rather than
inside the stored notebooks; the test command sets `off`.

In a notebook a bar is a widget only while its work runs. When it closes it becomes one plain line
(what ran, how long, the final figures), or nothing for a bar that does not stay (leave=False), and
whatever a cell leaves open is closed when the cell ends. A saved notebook then holds no widget, which
would read "Error displaying widget: model not found" once the kernel is gone, and no text fallback
frozen at "0%".
"""

from __future__ import annotations

import functools
import importlib.util
import multiprocessing
import os
import signal
import sys
import textwrap
import threading
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import TYPE_CHECKING

from tqdm.std import tqdm as text_tqdm

from ..config import progress_mode

if TYPE_CHECKING:  # IPython, pandas and matplotlib load only where curves are drawn
    import pandas as pd
    from IPython.display import DisplayHandle

NOTEBOOK_COLUMNS = 88  # JupyterLab breaks longer output lines anywhere, even mid-word
REDRAW_EVERY_S = 5.0  # live curves: at most one redraw this often, and always one after the last epoch


def progress(iterable=None, **kwargs):
    """tqdm over `iterable`, shown where CIFAR10_PROGRESS says."""
    mode = progress_mode()
    if mode == "off":
        kwargs["disable"] = True
        return text_tqdm(iterable, **kwargs)
    if mode == "terminal":
        return text_tqdm(iterable, file=sys.__stderr__, dynamic_ncols=True, **kwargs)
    if in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        return notebook_bar()(iterable, **kwargs)
    return text_tqdm(iterable, dynamic_ncols=True, **kwargs)


def in_notebook() -> bool:
    """True inside a Jupyter kernel, where a figure can be redrawn in place; False in a terminal or CI."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython else None
    return shell is not None and hasattr(shell, "kernel")


def tell(message: str, file=None) -> None:
    """Print a message: one line in a terminal; in a notebook, broken between words."""
    print(for_here(message), file=file or sys.stdout, flush=True)


def for_here(message: str) -> str:
    """`message` as it should appear where the code runs (see tell)."""
    return wrapped(message) if in_notebook() else message


def wrapped(message: str) -> str:
    """`message` in lines of at most NOTEBOOK_COLUMNS, broken only between words (paths stay whole, and so
    does a call such as `fit(..., fresh=True)`)."""
    glued = message.replace("(..., ", "(...,\x00")  # textwrap breaks at spaces only, not at this one
    return textwrap.fill(glued, NOTEBOOK_COLUMNS, break_long_words=False, break_on_hyphens=False).replace("\x00", " ")


# ---------------------------------------------------------------- bars in a notebook

OPEN_BARS: set = set()  # notebook bars not yet closed, closed at the latest when their cell ends
FREE_SLOTS: list[DisplayHandle] = []  # outputs of this cell's closed bars, blank, for its next bars
NOTEBOOK_BAR: type | None = None


def notebook_bar() -> type:
    """The widget bar class (defined on first use: it imports ipywidgets)."""
    global NOTEBOOK_BAR
    if NOTEBOOK_BAR is None:
        from tqdm.notebook import tqdm as widget_tqdm

        class Bar(widget_tqdm):
            """tqdm's widget bar, in an output of its own that it replaces with plain text when it closes."""

            def __init__(self, iterable=None, **kwargs):
                super().__init__(iterable, display=False, **kwargs)
                self.slot: DisplayHandle | None = None
                if not self.disable:
                    self.slot = take_slot(self.container)
                    self.displayed = True
                    OPEN_BARS.add(self)

            def close(self):
                slot, self.slot = getattr(self, "slot", None), None
                if slot is None:
                    return super().close()
                OPEN_BARS.discard(self)
                line = finished_line(self) if self.leave else ""
                slot.update({"text/plain": line}, raw=True)  # first, so the widget is never shown closed
                if not line:
                    FREE_SLOTS.append(slot)
                super().close()
                for widget in (*self.container.children, self.container):
                    for model in (getattr(widget, "style", None), widget.layout, widget):
                        if model is not None:
                            model.close()  # it leaves the kernel: nothing can show or save it any more

        NOTEBOOK_BAR = Bar
    return NOTEBOOK_BAR


def take_slot(widget) -> DisplayHandle:
    """Show `widget` in a blank output a closed bar of this cell left, or in a new output."""
    from IPython import get_ipython
    from IPython.display import display

    events = get_ipython().events
    if close_what_the_cell_left not in events.callbacks["post_run_cell"]:
        events.register("post_run_cell", close_what_the_cell_left)
    if FREE_SLOTS:
        slot = FREE_SLOTS.pop()
        slot.update(widget)
        return slot
    return display(widget, display_id=True)


def close_what_the_cell_left(result=None) -> None:
    """IPython's post_run_cell event: a bar left open (an exception, a loop broken off) closes now."""
    for bar in list(OPEN_BARS):
        bar.close()
    FREE_SLOTS.clear()


def finished_line(bar) -> str:
    """What a bar ran, how long it took and its final figures, e.g.
    'training (quick, cpu): 2/2 epochs in 00:35, val_acc=0.310, lr=0.02'."""
    units = plural(bar.unit)
    count = f"{bar.n:,}/{bar.total:,} {units}" if bar.total else f"{bar.n:,} {units}"
    if bar.initial:
        count += f" ({bar.n - bar.initial:,} now)"
    took = bar.format_interval(bar.format_dict["elapsed"])
    what = f"stopped at {count} after {took}" if bar.total and bar.n < bar.total else f"{count} in {took}"
    line = f"{bar.desc}: {what}" if bar.desc else what
    return f"{line}, {bar.postfix}" if bar.postfix else line


def plural(unit: str) -> str:
    """epoch -> epochs, batch -> batches; tqdm's default unit, it, stays."""
    if unit == "it":
        return unit
    return unit + ("es" if unit.endswith(("s", "x", "sh", "tch")) else "s")


# ---------------------------------------------------------------- learning curves


class LiveCurves:
    """One learning-curve figure in a notebook, shown once and then updated in place.

    While training runs (`live`), a redraw starts at most every REDRAW_EVERY_S seconds, in a worker
    process: drawing and rendering the figure takes about a second of CPU, which in the training
    process would leave the GPU idle. The loop only hands over the history; the picture is shown as
    soon as it is ready, from the thread that receives it. `final` shows the whole run once training
    has ended (drawn here unless the last redraw covers it) and lets the worker go. Outside a notebook
    nothing is drawn: the text progress bar says enough there."""

    def __init__(self, enabled: bool, live: bool = False):
        self.enabled = enabled
        self.live = enabled and live
        self.handle: DisplayHandle | None = None
        self.pending: Future | None = None  # the latest redraw given to the worker
        self.pending_epochs = 0  # the epochs it draws
        self.shown_epochs = 0  # the epochs of the figure on show
        self.started = -float("inf")  # when the latest redraw started (now())
        self.worker: Executor | None = None
        self.lock = threading.Lock()  # a picture is shown by the loop's thread or the worker's result thread
        if self.live:
            self.submit(warm_up)  # the worker starts and imports while the first epoch runs

    def update(self, history: pd.DataFrame) -> None:
        """After an epoch: start a redraw if none runs and REDRAW_EVERY_S have passed. Never waits."""
        idle = self.pending is None or self.pending.done()
        if self.live and idle and now() - self.started >= REDRAW_EVERY_S:
            self.started, self.pending_epochs = now(), len(history)
            self.pending = self.submit(render, history)
            if self.pending is not None:
                self.pending.add_done_callback(functools.partial(self.redrawn, epochs=len(history)))

    def redrawn(self, done: Future, epochs: int) -> None:
        """A redraw is ready: show it, unless training has ended or a newer one is on show."""
        failed = done.cancelled() or done.exception() is not None
        with self.lock:
            if failed:
                self.live = False  # the worker failed: the final figure still comes
            elif self.live and epochs > self.shown_epochs:
                self.show(done.result(), epochs)

    def final(self, history: pd.DataFrame) -> None:
        """The curves of the whole run: the cell waits for them once training has ended. The redraw of the
        last epoch, if one runs, is waited for rather than drawn twice; otherwise they are drawn here."""
        with self.lock:
            self.live = False  # from now on no redraw is shown
        pending = self.pending if self.pending_epochs == len(history) else None
        # cancel() fails for a redraw already running: that one is waited for (exception() waits)
        waited = pending is not None and not pending.cancel() and pending.exception() is None
        picture = pending.result() if pending is not None and waited else None
        self.stop_redrawing()
        if self.enabled and len(history) and self.shown_epochs != len(history):
            self.show(picture or render(history), len(history))

    def submit(self, function, *args) -> Future | None:
        try:
            self.worker = self.worker or renderer()
            return self.worker.submit(function, *args)
        except Exception:  # no worker process can start here (a sandbox), or it died: no live redraws
            self.stop_redrawing()
            return None

    def stop_redrawing(self) -> None:
        """No more redraws; the worker finishes what it is drawing (never shown) and exits."""
        self.live, self.pending = False, None
        if self.worker is not None:
            self.worker.shutdown(wait=False, cancel_futures=True)
            self.worker = None

    def show(self, picture: dict, epochs: int) -> None:
        from IPython.display import display

        if self.handle is None:
            self.handle = display(picture, raw=True, display_id=True)
        else:
            self.handle.update(picture, raw=True)
        self.shown_epochs = epochs


def now() -> float:
    return time.monotonic()


def live_curves(live: bool = True) -> LiveCurves:
    """Curves in a notebook; redrawn while training only where someone watches (CIFAR10_PROGRESS=auto),
    not under `make series` or the tests, which store only the final figure."""
    return LiveCurves(in_notebook(), live and progress_mode() == "auto")


def render(history: pd.DataFrame) -> dict:
    """The learning curves as the notebook shows a figure: a PNG (as the inline backend makes it) and
    the figure's text form."""
    from IPython.core.pylabtools import print_figure
    from matplotlib.figure import Figure

    from ..plots import learning_curves

    figure = learning_curves(history, Figure())  # outside pyplot: nothing else shows it
    return {"image/png": print_figure(figure, "png", base64=True), "text/plain": repr(figure)}


def warm_up() -> None:
    from .. import plots  # noqa: F401 (imported for its cost: torch, matplotlib, seaborn)


def start_worker(parent: int) -> None:
    """In the worker: ignore Ctrl-C (interrupting a kernel signals its whole process group), and exit once
    the kernel that started it is gone (a kernel that is killed cannot stop it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=exit_after, args=(parent,), daemon=True).start()


def exit_after(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)


def renderer() -> Executor:
    """A worker process for the redraws of one training run ("spawn": no fork of a process that runs threads)."""
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(1, mp_context=context, initializer=start_worker, initargs=(os.getpid(),))
