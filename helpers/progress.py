"""Progress bars that suit where the code runs: a notebook, a terminal, a CI log, or nowhere.

CIFAR10_PROGRESS=auto uses tqdm.auto (widgets in Jupyter, text elsewhere). `make series`, which
runs the notebooks headless, sets `terminal` so the bars appear in the terminal that launched it
rather than inside the stored notebooks; the test command sets `off`.
"""
import sys

from tqdm.auto import tqdm

from .config import progress_mode


def progress(iterable=None, **kwargs):
    """tqdm over `iterable`, shown where CIFAR10_PROGRESS says."""
    mode = progress_mode()
    if mode == "off":
        kwargs["disable"] = True
    elif mode == "terminal":
        from tqdm.std import tqdm as text_tqdm

        return text_tqdm(iterable, file=sys.__stderr__, dynamic_ncols=True, **kwargs)
    return tqdm(iterable, dynamic_ncols=True, **kwargs)
