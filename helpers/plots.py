"""Every figure of the series, drawn one way and saved as PNG: the notebooks' to figs/<configuration>/,
the command line's beside the run they show."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

from . import config

sns.set_theme(context="notebook", style="whitegrid")


def save(fig: plt.Figure, name: str, cfg: config.Config | None = None, folder: Path | None = None) -> Path:
    """<folder>/<name>.png, by default figs/<configuration>/ (the series' figures); returns the path.
    The command line passes the run's folder: figs/ changes only through the notebooks."""
    path = (folder or config.figs_dir(cfg)) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight", metadata={"Software": None})
    return path


def to_hwc(image: torch.Tensor) -> np.ndarray:
    """A (3, H, W) uint8 tensor as an (H, W, 3) array for imshow."""
    return image.permute(1, 2, 0).cpu().numpy()


def denormalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised float images back to uint8, for showing what the network is given."""
    mean = torch.as_tensor(mean, device=images.device)[:, None, None]
    std = torch.as_tensor(std, device=images.device)[:, None, None]
    return ((images.float() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)


def image_grid(images: torch.Tensor, titles=None, columns: int = 10, size: float = 1.2, suptitle=None) -> plt.Figure:
    """uint8 images (N, 3, H, W) in a grid, each with an optional title."""
    rows = -(-len(images) // columns)
    title_lines = max((str(t).count("\n") + 1 for t in titles), default=0) if titles is not None else 0
    fig, axes = plt.subplots(
        rows, columns, figsize=(columns * size, rows * size * (1 + 0.2 * title_lines)), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, image) in enumerate(zip(axes.flat, images, strict=False)):  # a grid may have spare axes
        ax.imshow(to_hwc(image), interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def class_counts(counts: pd.DataFrame) -> plt.Figure:
    """Images per class in each split, as grouped bars."""
    long = counts.reset_index().melt(id_vars="class", var_name="split", value_name="images")
    fig, ax = plt.subplots(figsize=(10, 3.5))
    sns.barplot(data=long, x="class", y="images", hue="split", ax=ax)
    ax.set(xlabel="", title="Images per class")
    ax.tick_params(axis="x", rotation=30)
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1, 1))
    return fig


def channel_histograms(images: torch.Tensor, mean, std) -> plt.Figure:
    """Distribution of pixel values per colour channel, with the mean and one std marked."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3), sharey=True)
    for c, (ax, name, colour) in enumerate(
        zip(axes, ("red", "green", "blue"), ("tab:red", "tab:green", "tab:blue"), strict=True)
    ):
        counts = torch.bincount(images[:, c].flatten(), minlength=256).numpy()
        ax.fill_between(np.arange(256) / 255, counts / counts.sum(), color=colour, alpha=0.5, step="mid")
        ax.axvline(mean[c], color="k")
        ax.axvspan(mean[c] - std[c], mean[c] + std[c], color="k", alpha=0.08)
        ax.set(title=f"{name}: mean {mean[c]:.3f}, std {std[c]:.3f}", xlabel="pixel value / 255")
    axes[0].set_ylabel("share of pixels")
    fig.tight_layout()
    return fig


def learning_curves(history: pd.DataFrame, figure: plt.Figure | None = None) -> plt.Figure:
    """Loss and accuracy (train and validation) and the learning rate, per epoch; drawn anew into
    `figure` when given (live curves redraw one figure), else into a new one."""
    fig = figure or plt.figure()
    fig.clear()
    fig.set_size_inches(15, 3.8)
    axes = fig.subplots(1, 3)
    history[["train_loss", "val_loss"]].plot(ax=axes[0], marker=".", title="cross-entropy loss")
    (history[["train_acc", "val_acc"]] * 100).plot(ax=axes[1], marker=".", title="accuracy (%)")
    history["lr"].plot(ax=axes[2], marker=".", logy=True, title="learning rate", color="tab:purple")
    mark_chance_and_lr_drops(axes, history)
    label_learning_rates(axes[2], history["lr"])
    first, last = history.index.min(), history.index.max()
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(first - 0.5, last + 0.5)  # whole epochs, and one point (after epoch 1) sits in the middle
    fig.tight_layout()
    return fig


def mark_chance_and_lr_drops(axes, history: pd.DataFrame, classes: int = 10) -> None:
    """What makes learning curves readable: the chance level (a uniform guess: loss ln(classes),
    accuracy 1/classes) and a dotted line before each epoch that starts with a lower learning rate."""
    axes[0].axhline(math.log(classes), color="grey", linestyle="--", linewidth=1, label=f"chance: ln {classes}")
    axes[1].axhline(100 / classes, color="grey", linestyle="--", linewidth=1, label="chance")
    drops = history.index[history["lr"].diff() < 0]
    for ax in axes:
        for i, epoch in enumerate(drops):
            ax.axvline(epoch - 0.5, color="tab:purple", linestyle=":", label="lr drop" if i == 0 else None)
        ax.legend(fontsize=8)


def label_learning_rates(ax: plt.Axes, lr: pd.Series) -> None:
    """Ticks at the learning rates the run used, written out (0.02, 0.01), instead of the log axis's decades
    alone; a long schedule keeps matplotlib's ticks, with plain numbers."""
    used = np.unique(lr.to_numpy())
    ax.yaxis.set_minor_locator(NullLocator())
    if len(used) <= 8:
        ax.set_yticks(used)
        ax.set_ylim(used.min() / 1.5, used.max() * 1.5)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


def confusion_matrix(cm: pd.DataFrame, normalize: bool = False, data_label: str | None = None) -> plt.Figure:
    """A confusion matrix heatmap, in counts or as the share of each true class; `data_label` (what it was
    measured on, e.g. "trained on A, evaluated on B") goes under the title."""
    data = cm.div(cm.sum(axis=1), axis=0) if normalize else cm
    fig, ax = plt.subplots(figsize=(8, 6.5))
    sns.heatmap(
        data, annot=True, fmt=".2f" if normalize else "d", cmap="Blues", cbar=False, ax=ax, annot_kws={"fontsize": 8}
    )
    title = "share of each true class" if normalize else "test images"
    ax.set(title=f"{title}\n{data_label}" if data_label else title, xlabel="predicted", ylabel="true")
    fig.tight_layout()
    return fig


def per_class_bars(report: pd.DataFrame, column: str = "recall") -> plt.Figure:
    """One bar per class, e.g. recall (= per-class accuracy)."""
    fig, ax = plt.subplots(figsize=(9, 3.2))
    sns.barplot(x=report.index, y=report[column] * 100, ax=ax, color="tab:blue")
    ax.set(xlabel="", ylabel=f"{column} (%)", ylim=(0, 100), title=f"per-class {column}")
    ax.tick_params(axis="x", rotation=30)
    return fig


def reliability_diagram(table: pd.DataFrame, ece: float) -> plt.Figure:
    """Accuracy against confidence per bin; a calibrated model sits on the diagonal."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    draw_reliability(ax, table, f"reliability (ECE {ece:.3f})")
    return fig


def reliability_diagrams(tables: dict[str, pd.DataFrame], eces: dict[str, float]) -> plt.Figure:
    """Reliability diagrams side by side (before and after a remedy, say), each titled with its ECE."""
    fig, axes = plt.subplots(1, len(tables), figsize=(4.5 * len(tables), 4.5), squeeze=False)
    for ax, (name, table) in zip(axes[0], tables.items(), strict=True):
        draw_reliability(ax, table, f"{name} (ECE {eces[name]:.3f})")
    fig.tight_layout()
    return fig


def draw_reliability(ax, table: pd.DataFrame, title: str) -> None:
    """One reliability diagram: a bar per used bin at its accuracy, and the diagonal of perfect calibration."""
    used = table[table["count"] > 0]
    ax.bar(
        used.low,
        used.accuracy,
        width=used.high - used.low,
        align="edge",
        edgecolor="k",
        alpha=0.7,
        label="accuracy in bin",
    )
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="upper left")


def gradcam_grid(images: torch.Tensor, maps: torch.Tensor, titles=None, size: float = 1.5) -> plt.Figure:
    """uint8 images (N, 3, H, W) in the top row and, below each, its Grad-CAM map (N, H, W) in [0, 1]
    laid over it: red where the evidence for the class was found."""
    fig, axes = plt.subplots(2, len(images), figsize=(len(images) * size, 2.5 * size), squeeze=False)
    for i, (image, cam) in enumerate(zip(images, maps, strict=True)):
        top, bottom = axes[0, i], axes[1, i]
        top.imshow(to_hwc(image), interpolation="nearest")
        bottom.imshow(to_hwc(image), interpolation="nearest")
        bottom.imshow(cam.cpu(), cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
        if titles is not None:
            top.set_title(titles[i], fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def beside(originals, seen: torch.Tensor, titles=None, size: float = 1.8) -> plt.Figure:
    """Each original picture (PIL images, any size) above the 32x32 uint8 image the network sees of it."""
    fig, axes = plt.subplots(2, len(seen), figsize=(len(seen) * size, 2.3 * size), squeeze=False)
    for i, (original, image) in enumerate(zip(originals, seen, strict=True)):
        axes[0, i].imshow(original, cmap="gray" if original.mode == "L" else None)
        axes[0, i].set_title(f"{original.width}x{original.height} {original.mode}", fontsize=8)
        axes[1, i].imshow(to_hwc(image), interpolation="nearest")
        axes[1, i].set_title(titles[i] if titles is not None else "32x32 seen", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def feature_maps(maps: torch.Tensor, count: int = 16, columns: int = 8, title=None) -> plt.Figure:
    """The first `count` channels of one image's (C, H, W) feature maps."""
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.2, rows * 1.2))
    for ax, channel in zip(axes.flat, maps[:count], strict=False):  # a grid may have spare axes
        ax.imshow(channel.float().cpu(), cmap="viridis")
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def residual_block_diagram() -> plt.Figure:
    """torchvision's BasicBlock as boxes and arrows: the identity shortcut (layer1.0) beside the 1x1-conv
    shortcut of a block that halves the size and doubles the channels (layer2.0)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 6))
    draw_block(axes[0], "layer1.0: shapes kept", "64x32x32", "64x32x32", "identity", 1)
    draw_block(
        axes[1],
        "layer2.0: size halved, channels doubled",
        "64x32x32",
        "128x16x16",
        "1x1 conv, stride 2\n+ batch norm",
        2,
    )
    fig.tight_layout()
    return fig


def draw_block(ax, title: str, shape_in: str, shape_out: str, shortcut: str, stride: int) -> None:
    """One residual block, bottom to top: x, the main path F(x), the shortcut beside it, the sum and the ReLU."""
    channels = shape_out.split("x")[0]
    main = [
        (f"3x3 conv, {channels} channels, stride {stride}", "tab:blue"),
        ("batch norm", "tab:orange"),
        ("ReLU", "tab:green"),
        (f"3x3 conv, {channels} channels, stride 1", "tab:blue"),
        ("batch norm", "tab:orange"),
    ]
    ax.set(xlim=(-0.5, 10), ylim=(-0.5, 10.5), title=title)
    ax.axis("off")
    x_main, x_short, height = 3.5, 8.0, 0.8

    def box(x, y, text, colour, width=5.6):
        ax.add_patch(
            FancyBboxPatch(
                (x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.05", fc=colour, alpha=0.25, ec="k"
            )
        )
        ax.text(x, y, text, ha="center", va="center", fontsize=8.5)

    def arrow(start, end, head=True, **style):
        ax.add_patch(
            FancyArrowPatch(start, end, arrowstyle="-|>" if head else "-", mutation_scale=12, color="k", **style)
        )

    ax.text(x_main, 0, f"x  ({shape_in})", ha="center", va="center", fontsize=10)
    ys = [1.4 + 1.25 * i for i in range(len(main))]
    for (text, colour), y in zip(main, ys, strict=True):
        box(x_main, y, text, colour)
    for y0, y1 in zip([0.3, *ys], ys, strict=False):
        arrow((x_main, y0 + (height / 2 if y0 != 0.3 else 0)), (x_main, y1 - height / 2))
    y_sum = ys[-1] + 1.3
    ax.add_patch(plt.Circle((x_main, y_sum), 0.35, fc="white", ec="k"))
    ax.text(x_main, y_sum, "+", ha="center", va="center", fontsize=14)
    arrow((x_main, ys[-1] + height / 2), (x_main, y_sum - 0.35))
    ax.plot([x_main - 3.1] * 2, [ys[0] - height / 2, ys[-1] + height / 2], color="k", linewidth=1)
    ax.text(x_main - 3.3, (ys[0] + ys[-1]) / 2, "F(x)", ha="right", va="center", fontsize=12)
    y_short, identity = (ys[0] + ys[-1]) / 2, shortcut == "identity"
    if identity:
        ax.plot([x_short] * 2, [y_short - height / 2, y_short + height / 2], color="k", linewidth=1.2)
        ax.text(x_short + 0.2, y_short, "identity", ha="left", va="center", fontsize=9, style="italic")
    else:
        box(x_short, y_short, shortcut, "tab:red", width=3.0)
    arrow((x_main + 0.4, 0.2), (x_short, y_short - height / 2), head=not identity, connectionstyle="arc3,rad=0.25")
    arrow((x_short, y_short + height / 2), (x_main + 0.35, y_sum), connectionstyle="arc3,rad=0.25")
    box(x_main, y_sum + 1.1, "ReLU", "tab:green")
    arrow((x_main, y_sum + 0.35), (x_main, y_sum + 1.1 - height / 2))
    ax.text(x_main, y_sum + 2.1, f"y = ReLU(F(x) + shortcut(x))  ({shape_out})", ha="center", va="center", fontsize=10)
    arrow((x_main, y_sum + 1.1 + height / 2), (x_main, y_sum + 1.85))
