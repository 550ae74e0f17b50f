"""Test-set evaluation of a checkpoint: accuracy, confusion matrix, per-class metrics, calibration.

A checkpoint is scored on the data it was trained on: `check_data` compares the two (by content
fingerprint, or by name for checkpoints that predate fingerprints) and refuses other data unless asked
(`--other-data`, allow_other_data=True); then every result says "trained on A, evaluated on B".

python -m helpers.evaluate --help
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import config
from .augment import normalize
from .config import Config
from .data import CLASSES, DataError, Datasets, prepare
from .machinery import checkpoint, provenance
from .machinery.device import DeviceError, resolve_device
from .machinery.execution import CHOICES, Execution, SlowPrecisionWarning, resolve
from .machinery.progress import progress
from .model import resnet18


@torch.no_grad()
def logits(
    model: nn.Module,
    images: torch.Tensor,
    mean,
    std,
    execution: Execution,
    batch_size: int = 1000,
    flip_tta: bool = False,
    shown_as: str | None = None,
) -> torch.Tensor:
    """float32 class scores of uint8 images, on the execution's device; with flip_tta, log of the mean
    softmax of each image and its mirror image (so cross_entropy on the result stays meaningful).
    `shown_as` names a progress bar over the batches (validation during training); None shows none."""
    model.eval()
    device = execution.device
    mean, std = (torch.tensor(v).to(device, non_blocking=True) for v in (mean, std))  # once, without a sync
    scores = []
    for chunk in progress(images.split(batch_size), desc=shown_as, unit="batch", leave=False, disable=shown_as is None):
        x = normalize(chunk.to(device, non_blocking=True), mean, std).contiguous(memory_format=execution.memory_format)
        with execution.autocast():
            out = model(x).float()
            if flip_tta:
                out = ((out.softmax(1) + model(x.flip(-1)).float().softmax(1)) / 2).log()
        scores.append(out.clone())  # a compiled model's next CUDA-graph replay would overwrite its output
    return torch.cat(scores)


@dataclass
class Predictions:
    labels: torch.Tensor  # (N,) true classes
    probs: torch.Tensor  # (N, classes) softmax probabilities

    @property
    def predicted(self) -> torch.Tensor:
        return self.probs.argmax(1)

    @property
    def confidence(self) -> torch.Tensor:
        return self.probs.max(1).values


def load_model(path: Path, execution: Execution) -> tuple[nn.Module, dict]:
    """The model of a checkpoint, on the execution's device and in its layout, and the checkpoint's contents."""
    state = checkpoint.load(path)
    model = resnet18(width=state["config"].get("width", Config.width))  # checkpoints before widths: 64
    checkpoint.load_weights(model, state["model"], config.shown_path(path))
    return model.to(execution.device, memory_format=execution.memory_format), state


def checkpoint_config(state: dict) -> Config:
    """The configuration a checkpoint was trained with."""
    try:
        return Config(**state["config"])
    except TypeError as exc:
        raise checkpoint.CheckpointError(f"The checkpoint's configuration is not this version's ({exc}).") from exc


def check_data(state: dict, datasets: Datasets, allow_other_data: bool = False) -> provenance.DataCheck:
    """The checkpoint's training data against `datasets`: other data raises provenance.OtherDataError
    unless allow_other_data, and then the check's description reads "trained on A, evaluated on B".
    Where only the names could be compared, it says so, once."""
    found = provenance.check(
        provenance.trained_on(state),
        provenance.DataIdentity(datasets.label, datasets.fingerprint),
        allow_other=allow_other_data,
    )
    if found.note:
        print(found.note)
    return found


def predict(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean,
    std,
    execution: Execution,
    batch_size: int = 1000,
    flip_tta: bool = False,
) -> Predictions:
    out = logits(model, images, mean, std, execution, batch_size, flip_tta)
    return Predictions(labels.cpu(), out.softmax(1).cpu())


def test_loss(p: Predictions) -> float:
    return F.nll_loss(p.probs.clamp_min(1e-12).log(), p.labels).item()


def accuracy(labels: torch.Tensor, predicted: torch.Tensor) -> float:
    return (labels == predicted).double().mean().item()


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, classes=None) -> pd.DataFrame:
    """Counts, rows the true class and columns the predicted one."""
    classes = list(classes or CLASSES)
    n = len(classes)
    counts = torch.bincount(labels * n + predicted, minlength=n * n).reshape(n, n)
    return pd.DataFrame(
        counts.numpy(), index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="predicted")
    )


def per_class_report(cm: pd.DataFrame) -> pd.DataFrame:
    """Precision, recall, F1 and support of every class, from a confusion matrix."""
    hits = pd.Series(cm.values.diagonal(), index=cm.index)
    support = cm.sum(axis=1)
    precision = hits / cm.sum(axis=0).to_numpy()
    recall = hits / support
    f1 = 2 * precision * recall / (precision + recall)
    return pd.DataFrame({"precision": precision, "recall": recall, "f1": f1, "support": support}).fillna(0.0)


def most_confused(cm: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """The k largest off-diagonal cells: which class is most often taken for which."""
    cells = pd.MultiIndex.from_product([cm.index, cm.columns])  # (true, predicted), row by row as stack() gives
    pairs = pd.Series(cm.to_numpy().ravel(), index=cells, name="count").reset_index()
    pairs = pairs[pairs["true"] != pairs["predicted"]]
    pairs["share of true class"] = pairs["count"] / pairs["true"].map(cm.sum(axis=1))
    return pairs.sort_values("count", ascending=False, kind="stable").head(k).reset_index(drop=True)


def misclassified(p: Predictions, classes=None, k: int | None = None) -> pd.DataFrame:
    """Misclassified test images, most confident mistakes first."""
    classes = list(classes or CLASSES)
    wrong = (p.predicted != p.labels).nonzero().flatten()
    frame = pd.DataFrame(
        {
            "index": wrong.numpy(),
            "true": [classes[i] for i in p.labels[wrong]],
            "predicted": [classes[i] for i in p.predicted[wrong]],
            "confidence": p.confidence[wrong].numpy(),
        }
    )
    frame = frame.sort_values("confidence", ascending=False, kind="stable").reset_index(drop=True)
    return frame.head(k) if k else frame


def reliability_table(p: Predictions, bins: int = 15) -> pd.DataFrame:
    """Per confidence bin: how many predictions, their mean confidence and their accuracy."""
    edges = torch.linspace(0, 1, bins + 1)
    which = torch.bucketize(p.confidence, edges[1:-1])  # bin b holds (edges[b], edges[b+1]]
    correct = (p.predicted == p.labels).double()
    rows = []
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        rows.append(
            {
                "low": edges[b].item(),
                "high": edges[b + 1].item(),
                "count": count,
                "confidence": p.confidence[members].double().mean().item() if count else float("nan"),
                "accuracy": correct[members].mean().item() if count else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def expected_calibration_error(table: pd.DataFrame) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over the bins."""
    used = table[table["count"] > 0]
    return float(((used.confidence - used.accuracy).abs() * used["count"]).sum() / used["count"].sum())


def compare_precisions(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean,
    std,
    device: torch.device,
    batch_size: int = 1000,
    precisions: tuple[str, ...] = ("fp32", "bf16"),
) -> pd.DataFrame:
    """The same weights on the same images in each precision (one row each, named by its execution):
    accuracy and loss, and against the first row, the share of predictions that changed class and the
    largest change of a probability. What precision changes in a result, measured rather than assumed."""
    rows, reference = {}, None
    for precision in precisions:
        with warnings.catch_warnings():  # emulated bf16 is slow, not wrong: measuring it is the point here
            warnings.simplefilter("ignore", SlowPrecisionWarning)
            execution = resolve(device, precision)
        model = model.to(memory_format=execution.memory_format)
        p = predict(model, images, labels, mean, std, execution, batch_size)
        if reference is None:
            reference = p
        rows[execution.label] = {
            "accuracy": accuracy(p.labels, p.predicted),
            "loss": test_loss(p),
            "predictions changed": (p.predicted != reference.predicted).double().mean().item(),
            "max probability change": (p.probs - reference.probs).abs().max().item(),
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("execution")


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 that minimises the cross-entropy of
    softmax(logits / T) on these labels, by LBFGS. Fit it on the validation split, never on the test set.
    Log-probabilities do as well as logits: they differ by a constant per image, which softmax ignores."""
    logits, labels = logits.detach().double().cpu(), labels.cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays positive
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return log_t.exp().item()


def with_temperature(p: Predictions, temperature: float) -> Predictions:
    """The same predictions with probabilities softmax(log p / T): softer for T > 1, sharper for T < 1.
    Dividing by a positive T keeps every image's order of classes, so the argmax (and accuracy) is unchanged."""
    log_p = p.probs.double().clamp_min(torch.finfo(torch.float64).tiny).log()
    return Predictions(p.labels, (log_p / temperature).softmax(1))


# ---------------------------------------------------------------- command line


def main(argv=None) -> int:
    import matplotlib.pyplot as plt  # matplotlib: only the command line draws here

    from . import plots

    parser = argparse.ArgumentParser(
        prog="python -m helpers.evaluate",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Evaluate a checkpoint on the CIFAR-10 test set.",
    )
    parser.add_argument("--quick", action="store_true", help="the quick configuration's run (runs/quick/)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: runs/<configuration>/checkpoint.pt")
    parser.add_argument("--data", default=None, help="as for helpers.train (default: the same lookup)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=CHOICES, default="auto", help="as for helpers.train")
    parser.add_argument("--tta", action="store_true", help="average each image with its mirror image")
    parser.add_argument(
        "--other-data",
        action="store_true",
        help="evaluate even on data other than the checkpoint's; results say 'trained on A, evaluated on B'",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument(
        "--compare-precisions",
        action="store_true",
        help="evaluate in fp32 and in bf16 on --device and print what bf16 changes (accuracy, predictions)",
    )
    args = parser.parse_args(argv)
    path = args.checkpoint or config.checkpoint_path(config.QUICK if args.quick else None)
    try:
        execution = resolve(resolve_device(args.device), args.precision)
        model, state = load_model(path, execution)
        cfg = checkpoint_config(state)
        datasets = prepare(cfg, args.data)
        data = check_data(state, datasets, allow_other_data=args.other_data)
    except (ValueError, DataError, DeviceError, checkpoint.CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    test = datasets.test
    if args.compare_precisions:
        print_precision_comparison(model, test, state, resolve_device(args.device), cfg, data)
        return 0
    p = predict(model, test.images, test.labels, state["mean"], state["std"], execution, cfg.eval_batch_size, args.tta)
    cm = confusion_matrix(p.labels, p.predicted)
    print(
        f"test accuracy {accuracy(p.labels, p.predicted):.2%} and loss {test_loss(p):.4f} on {len(test)} "
        f"images ({cfg.name} configuration, epoch {state['epoch']}{', flip TTA' if args.tta else ''}; {execution})"
    )
    print(f"data: {data.description}")
    print(per_class_report(cm).round(3).to_string())
    for name, as_shares in (("confusion_matrix", False), ("confusion_matrix_normalized", True)):
        fig = plots.confusion_matrix(cm, normalize=as_shares, data_label=data.description)
        written = plots.save(fig, figure_name(path, name, data), folder=path.parent)  # beside the run
        plt.close(fig)  # drawn for the file: nothing left open in a notebook or test that calls main()
        print("wrote", config.shown_path(written))
    if args.json:
        results = {
            "checkpoint": config.shown_path(path),
            "configuration": cfg.name,
            "epoch": state["epoch"],
            **data.as_dict(),
            "test_images": len(test),
            "flip_tta": args.tta,
            "test_accuracy": round(accuracy(p.labels, p.predicted), 4),
            "test_loss": round(test_loss(p), 4),
            "evaluated_as": execution.as_dict() | {"label": execution.label},
        }
        args.json.write_text(json.dumps(results, indent=2))
        print("wrote", config.shown_path(args.json))
    return 0


def print_precision_comparison(model: nn.Module, test, state: dict, device: torch.device, cfg: Config, data) -> None:
    table = compare_precisions(
        model, test.images, test.labels, state["mean"], state["std"], device, cfg.eval_batch_size
    )
    fp32, bf16 = table.iloc[0], table.iloc[1]
    print(
        f"{len(test)} test images of {data.description}, {cfg.name} configuration, epoch {state['epoch']}, "
        f"on {resolve(device, 'fp32').hardware}:"
    )
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    print(
        f"bf16 - fp32: test accuracy {100 * (bf16.accuracy - fp32.accuracy):+.2f} points; "
        f"{bf16['predictions changed']:.2%} of predictions changed class "
        f"({round(bf16['predictions changed'] * len(test))} of {len(test)})"
    )


def figure_name(path: Path, name: str, data: provenance.DataCheck) -> str:
    """A figure's file name: the checkpoint's own (checkpoint.companion) and, on other data, that data's."""
    named = checkpoint.companion(Path(path), name).name
    return named if data.same else f"{named}.on-{data.evaluated.slug}"


if __name__ == "__main__":
    sys.exit(main())
