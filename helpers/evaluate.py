"""Test-set evaluation of a checkpoint: accuracy, confusion matrix, per-class metrics, calibration.

python -m helpers.evaluate --help
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import config
from .augment import normalize
from .config import Config
from .data import CLASSES, DataError, prepare
from .machinery import checkpoint
from .machinery.device import DeviceError, resolve_device
from .machinery.execution import CHOICES, Execution, resolve
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
    mean, std = (torch.tensor(v, device=device) for v in (mean, std))  # copied once, not per chunk
    scores = []
    for chunk in progress(images.split(batch_size), desc=shown_as, unit="batch", leave=False, disable=shown_as is None):
        x = normalize(chunk.to(device, non_blocking=True), mean, std).contiguous(memory_format=execution.memory_format)
        with execution.autocast():
            out = model(x).float()
            if flip_tta:
                out = ((out.softmax(1) + model(x.flip(-1)).float().softmax(1)) / 2).log()
        scores.append(out)
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
    model = resnet18()
    checkpoint.load_weights(model, state["model"], config.shown_path(path))
    return model.to(execution.device, memory_format=execution.memory_format), state


def checkpoint_config(state: dict) -> Config:
    """The configuration a checkpoint was trained with."""
    try:
        return Config(**state["config"])
    except TypeError as exc:
        raise checkpoint.CheckpointError(f"The checkpoint's configuration is not this version's ({exc}).") from exc


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


# ---------------------------------------------------------------- command line


def main(argv=None) -> int:
    from . import plots  # matplotlib: only the command line draws here

    parser = argparse.ArgumentParser(
        prog="python -m helpers.evaluate",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Evaluate a checkpoint on the CIFAR-10 test set.",
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: runs/<configuration>/checkpoint.pt")
    parser.add_argument("--data", default=config.data_source(), help="as for helpers.train")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=CHOICES, default="auto", help="as for helpers.train")
    parser.add_argument("--tta", action="store_true", help="average each image with its mirror image")
    args = parser.parse_args(argv)
    path = args.checkpoint or config.checkpoint_path()
    try:
        execution = resolve(resolve_device(args.device), args.precision)
        model, state = load_model(path, execution)
        cfg = checkpoint_config(state)
        test = prepare(cfg, args.data).test
    except (ValueError, DataError, DeviceError, checkpoint.CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    p = predict(model, test.images, test.labels, state["mean"], state["std"], execution, cfg.eval_batch_size, args.tta)
    cm = confusion_matrix(p.labels, p.predicted)
    print(
        f"test accuracy {accuracy(p.labels, p.predicted):.2%} and loss {test_loss(p):.4f} on {len(test)} "
        f"images ({cfg.name} configuration, epoch {state['epoch']}{', flip TTA' if args.tta else ''}; {execution})"
    )
    print(per_class_report(cm).round(3).to_string())
    for name, fig in (
        ("confusion_matrix", plots.confusion_matrix(cm)),
        ("confusion_matrix_normalized", plots.confusion_matrix(cm, normalize=True)),
    ):
        print("wrote", config.shown_path(plots.save(fig, name, cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
