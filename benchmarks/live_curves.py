"""What the live learning curves cost a training run in a notebook: the time its loop spends in them per epoch.

    python benchmarks/live_curves.py [--epochs 50] [--epoch-seconds 2] [--save]

A Jupyter kernel (started by nbclient, CIFAR10_PROGRESS=auto as in JupyterLab) plays a GPU run: each
epoch the loop waits `--epoch-seconds` (the GPU's work) and then hands the history to the curves, as
train.train_epochs does. Timed on the loop's own thread: every LiveCurves.update, the final drawing after
the last epoch, and, for comparison in the same kernel, the redraw the loop used to make after every epoch
(the figure drawn and rendered in the loop), over the first epochs.
"""

import argparse
import json
import os

import nbformat
import torch
from nbclient import NotebookClient
from report import Report

CELL = """\
import json, time
import pandas as pd
from helpers.machinery import progress

EPOCHS, EPOCH_S, BEFORE = {epochs}, {epoch_seconds}, {before}
rows = [
    dict(epoch=e, train_loss=2 / e, val_loss=2.1 / e, train_acc=1 - 1 / e, val_acc=1 - 1.1 / e,
         lr=0.1 * 0.5 ** (e // 12))
    for e in range(1, EPOCHS + 1)
]
history = pd.DataFrame(rows).set_index("epoch")
shown = []
real_show = progress.LiveCurves.show
progress.LiveCurves.show = lambda self, picture, epochs: (shown.append(epochs), real_show(self, picture, epochs))[1]

def timed(call):
    start = time.perf_counter()
    call()
    return time.perf_counter() - start

before = []  # the old way: the figure drawn and rendered in the loop after every epoch
old = progress.LiveCurves(True)
for epoch in range(1, BEFORE + 1):
    time.sleep(EPOCH_S)
    before.append(timed(lambda: old.show(progress.render(history.iloc[:epoch]), epoch)))

curves = progress.live_curves()
assert curves.live, "live redraws are off: run with CIFAR10_PROGRESS=auto"
shown.clear()
updates = []
for epoch in range(1, EPOCHS + 1):
    time.sleep(EPOCH_S)
    updates.append(timed(lambda: curves.update(history.iloc[:epoch])))
redraws_shown = len(shown)  # shown by the thread that receives them, while the loop runs on
final = timed(lambda: curves.final(history))
print(json.dumps(dict(before=before, updates=updates, final=final, redraws_shown=redraws_shown)))
"""


def measure(epochs: int, epoch_seconds: float, before: int) -> dict:
    os.environ["CIFAR10_PROGRESS"] = "auto"
    source = CELL.format(epochs=epochs, epoch_seconds=epoch_seconds, before=before)
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    NotebookClient(notebook, kernel_name="python3", timeout=None).execute()
    printed = [output["text"] for output in notebook.cells[0].outputs if output.get("name") == "stdout"]
    return json.loads(printed[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=50, help="epochs of the simulated run (the recipe: 50)")
    parser.add_argument("--epoch-seconds", type=float, default=2.0, help="seconds of (GPU) work per epoch")
    parser.add_argument("--before", type=int, default=5, help="epochs timed with the old redraw, for comparison")
    parser.add_argument("--save", action="store_true", help="keep the output in benchmarks/results/, named by machine")
    args = parser.parse_args(argv)
    found = measure(args.epochs, args.epoch_seconds, args.before)
    updates, final, before = found["updates"], found["final"], found["before"]
    per_epoch = (sum(updates) + final) / len(updates)
    out = Report(torch.device("cpu"))  # the curves are drawn on the CPU, whatever trains
    out(f"a Jupyter kernel, {args.epochs} epochs of {args.epoch_seconds:g} s each (waiting, as for a GPU)")
    out(f"old way, the figure redrawn in the loop after every epoch: {sum(before) / len(before):.3f} s an epoch")
    out(
        f"now: update() {sum(updates) / len(updates) * 1000:.1f} ms an epoch on average "
        f"(longest {max(updates) * 1000:.1f} ms), {found['redraws_shown']} redraws shown while training"
    )
    out(f"     final drawing after the last epoch: {final:.3f} s")
    out(
        f"     all of it over the run: {per_epoch * 1000:.1f} ms an epoch, "
        f"{per_epoch / args.epoch_seconds:.1%} of a {args.epoch_seconds:g}-second epoch"
    )
    if args.save:
        out.save("live_curves")


if __name__ == "__main__":
    main()
