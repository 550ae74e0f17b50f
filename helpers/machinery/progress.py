"""Progress that suits where the code runs: bars in a notebook, a terminal, a CI log, or nowhere;
and, in a notebook, learning curves redrawn in place after every epoch.

CIFAR10_PROGRESS=auto uses tqdm.auto (widgets in Jupyter, text elsewhere). `make series`, which
runs the notebooks headless, sets `terminal` so the bars appear in the terminal that launched it
rather than inside the stored notebooks; the test command sets `off`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from ..config import progress_mode

if TYPE_CHECKING:  # IPython and matplotlib load only where curves are drawn
    from IPython.display import DisplayHandle
    from matplotlib.figure import Figure


def progress(iterable=None, **kwargs):
    """tqdm over `iterable`, shown where CIFAR10_PROGRESS says."""
    mode = progress_mode()
    if mode == "off":
        kwargs["disable"] = True
    elif mode == "terminal":
        from tqdm.std import tqdm as text_tqdm

        return text_tqdm(iterable, file=sys.__stderr__, dynamic_ncols=True, **kwargs)
    return tqdm(iterable, dynamic_ncols=True, **kwargs)


def in_notebook() -> bool:
    """True inside a Jupyter kernel, where a figure can be redrawn in place; False in a terminal or CI."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython else None
    return shell is not None and hasattr(shell, "kernel")


class LiveCurves:
    """One learning-curve figure, shown once and then redrawn in place through an IPython display
    handle, so that a notebook holds the latest curves and not a pile of figures. Outside a notebook
    it draws nothing: the text progress bar says enough there."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.figure: Figure | None = None  # made on the first epoch
        self.handle: DisplayHandle | None = None

    def show(self, history) -> None:
        if not self.enabled:
            return
        from IPython.display import display
        from matplotlib.figure import Figure  # noqa: F811 (at run time; the module-level import is for types)

        from ..plots import learning_curves

        if self.figure is None or self.handle is None:
            # A figure outside pyplot: the inline backend does not show it a second time when the cell ends.
            self.figure = learning_curves(history, Figure())
            self.handle = display(self.figure, display_id=True)
        else:
            self.handle.update(learning_curves(history, self.figure))


def live_curves() -> LiveCurves:
    return LiveCurves(in_notebook())
