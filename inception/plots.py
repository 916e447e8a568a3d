"""Figures for the course: data, augmentation, training curves and error analysis.

Owns drawing only, every figure titled with its data source; it never trains or evaluates. No
other package module imports it, and figures live outside pyplot, so a notebook shows each once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Imported for its side effect: in Jupyter, pyplot loads the inline backend, so the Figures
# returned below display as images even in a notebook that never imports pyplot itself.
import matplotlib.pyplot  # noqa: F401
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from inception.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    cutout,
    denormalize,
    normalize,
    random_crop_flip,
)

_RGB = (("R", "tab:red"), ("G", "tab:green"), ("B", "tab:blue"))
_WRONG, _RIGHT = "tab:red", "black"


def _figure(width: float, height: float) -> Figure:
    """A Figure outside pyplot (no double display, no leak) with constrained layout."""
    return Figure(figsize=(width, height), layout="constrained")


def _title(fig: Figure, title: str, source: str | None = None) -> None:
    fig.suptitle(f"{title}\n{source}" if source else title, fontsize=12)


def _to_display(images: Tensor, mean: Sequence[float] | None,
                std: Sequence[float] | None) -> np.ndarray:
    """uint8 or normalised float images (N, 3, H, W) to an (N, H, W, 3) float array in [0, 1]."""
    if images.dtype == torch.uint8:
        x = images.float() / 255
    elif mean is None or std is None:
        raise ValueError("float images are taken to be normalised: pass the mean and std they "
                         "were normalised with (e.g. data.mean, data.std), or pass uint8 images")
    else:
        x = denormalize(images, tuple(mean), tuple(std))
    return x.detach().cpu().permute(0, 2, 3, 1).numpy()


def _show(ax: Axes, image: np.ndarray) -> None:
    ax.imshow(image, interpolation="nearest")  # 32x32: show the real pixels, not a blur
    ax.set_xticks([])
    ax.set_yticks([])


def _cells(fig: Figure, n: int, ncols: int) -> list[Axes]:
    """n image cells in rows of ncols; the empty slots of the last row stay blank."""
    nrows = max(1, math.ceil(n / ncols))
    axes = fig.subplots(nrows, ncols, squeeze=False).flatten()
    for ax in axes[n:]:
        ax.set_axis_off()
    return list(axes[:n])


def image_grid(images: Tensor, labels: Sequence[int] | Tensor, classes: Sequence[str], *,
               source: str, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, ncols: int = 8,
               preds: Sequence[int] | Tensor | None = None, title: str = "Examples") -> Figure:
    """Images with their class names; with `preds`, also the prediction, in red when wrong."""
    pixels = _to_display(images, mean, std)
    labels = [int(v) for v in labels]
    preds = None if preds is None else [int(v) for v in preds]
    n, ncols = len(pixels), max(1, min(ncols, len(pixels)))
    cell_h = 1.75 if preds is not None else 1.5
    fig = _figure(1.4 * ncols, cell_h * math.ceil(n / ncols) + 0.7)
    for i, ax in enumerate(_cells(fig, n, ncols)):
        _show(ax, pixels[i])
        if preds is None:
            ax.set_title(classes[labels[i]], fontsize=9)
        else:
            wrong = preds[i] != labels[i]
            ax.set_title(f"{classes[labels[i]]}\npred: {classes[preds[i]]}", fontsize=8,
                         color=_WRONG if wrong else _RIGHT)
    _title(fig, title, source)
    return fig


def examples_per_class(images: Tensor, labels: Tensor, classes: Sequence[str], *, source: str,
                       per_class: int = 8) -> Figure:
    """The first `per_class` uint8 images of every class, one row per class."""
    labels = torch.as_tensor(labels)
    fig = _figure(1.1 * per_class + 1.2, 1.1 * len(classes) + 0.7)
    axes = fig.subplots(len(classes), per_class, squeeze=False)
    for c, row in enumerate(axes):
        picks = (labels == c).nonzero().flatten()[:per_class]
        pixels = _to_display(images[picks], None, None) if len(picks) else []
        for j, ax in enumerate(row):
            if j < len(pixels):
                _show(ax, pixels[j])
            else:  # fewer images than cells: keep the cell blank but the row label visible
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_frame_on(False)
        row[0].set_ylabel(classes[c], rotation=0, ha="right", va="center", fontsize=10)
    _title(fig, f"{per_class} examples per class", source)
    return fig


def class_balance(splits: dict[str, Tensor], classes: Sequence[str], *, source: str) -> Figure:
    """Grouped bars: how many images of each class every split holds."""
    rows = []
    for split, labels in splits.items():
        counts = torch.bincount(torch.as_tensor(labels).cpu(), minlength=len(classes)).tolist()
        rows += [{"class": c, "split": split, "images": n}
                 for c, n in zip(classes, counts, strict=True)]
    fig = _figure(min(24.0, max(8.0, 0.3 * len(classes) * len(splits))), 4.5)
    with sns.axes_style("whitegrid"):
        ax = fig.subplots()
        sns.barplot(pd.DataFrame(rows), x="class", y="images", hue="split", ax=ax)
    ax.set_xlabel("class")
    ax.set_ylabel("images")
    ax.tick_params(axis="x", rotation=90 if len(classes) > 20 else 30)
    ax.legend(title="split", loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    _title(fig, "Images per class and split", source)
    return fig


def channel_histograms(images: Tensor, *, source: str) -> Figure:
    """Histograms of the 0-255 values of each colour channel of uint8 images."""
    if images.dtype != torch.uint8:
        raise ValueError(f"channel_histograms wants uint8 images, got {images.dtype}")
    fig = _figure(8, 4)
    with sns.axes_style("whitegrid"):
        ax = fig.subplots()
    levels = np.arange(256)
    for c, (name, colour) in enumerate(_RGB):
        counts = torch.bincount(images[:, c].flatten().cpu(), minlength=256).double()
        share = (counts / counts.sum()).numpy()
        mean = float((share * levels).sum())
        ax.plot(levels, share, color=colour, lw=1.5, label=f"{name} (mean {mean:.1f})")
    ax.set_xlim(-4, 259)  # keep the spikes of saturated pixels at 0 and 255 off the frame
    ax.set_ylim(bottom=0)
    ax.set_xlabel("pixel value")
    ax.set_ylabel("fraction of pixels")
    ax.legend(title="channel", loc="upper center")
    _title(fig, f"Pixel values per channel ({len(images):,} images)", source)
    return fig


def augmentation_preview(image: Tensor, *, source: str, n: int = 16, crop_padding: int = 4,
                         flip: bool = True, cutout_size: int = 8, seed: int = 0) -> Figure:
    """One uint8 image and `n` training-time augmentations of it (crop, flip, cutout)."""
    if image.dtype != torch.uint8 or image.dim() != 3:
        raise ValueError(f"augmentation_preview wants one uint8 image (3, H, W), got "
                         f"{image.dtype} {tuple(image.shape)}")
    g = torch.Generator().manual_seed(seed)
    batch = image.cpu().unsqueeze(0).repeat(n, 1, 1, 1)
    if crop_padding or flip:
        batch = random_crop_flip(batch, crop_padding, flip, generator=g)
    # Cutout acts on normalised images, so its hole shows the dataset's mean colour, as in
    # training; the published CIFAR-10 statistics stand in for the training split's.
    x = normalize(batch, CIFAR10_MEAN, CIFAR10_STD)
    if cutout_size:
        x = cutout(x, cutout_size, generator=g)
    variants = _to_display(x, CIFAR10_MEAN, CIFAR10_STD)

    rows = 2 if n > 4 else 1
    cols = math.ceil(n / rows)
    fig = _figure(1.2 * (cols + rows) + 0.3, 1.3 * rows + 0.9)
    grid = fig.add_gridspec(rows, rows + cols)  # the original fills a rows x rows square
    original = fig.add_subplot(grid[:, :rows])
    _show(original, _to_display(image.unsqueeze(0), None, None)[0])
    original.set_title("original", fontsize=10)
    for i in range(n):
        _show(fig.add_subplot(grid[i // cols, rows + i % cols]), variants[i])
    recipe = [f"crop ±{crop_padding}px" if crop_padding else "", "flip" if flip else "",
              f"cutout {cutout_size}×{cutout_size}" if cutout_size else ""]
    _title(fig, f"{n} augmented views ({', '.join(r for r in recipe if r) or 'none'})", source)
    return fig


def _plot_series(ax: Axes, epochs: pd.Series, values: pd.Series, label: str, **style) -> None:
    """Plot one curve, skipping epochs where it was not measured (NaN)."""
    keep = values.notna()
    if keep.any():
        ax.plot(epochs[keep], values[keep], marker="o", ms=3, label=label, **style)


def training_curves(history: pd.DataFrame, *, source: str) -> Figure:
    """Loss, accuracy (%) and learning rate per epoch, from a training run's history table."""
    fig = _figure(14, 4)
    with sns.axes_style("whitegrid"):
        loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)
    epoch = history["epoch"]
    # Not the same quantity: training adds the aux heads (x0.3 each) and label smoothing.
    _plot_series(loss_ax, epoch, history["train_loss"], "train (with aux + smoothing)")
    _plot_series(loss_ax, epoch, history["val_loss"], "val (main head)")
    _plot_series(acc_ax, epoch, 100 * history["train_acc"], "train")
    val_acc = history["val_acc"]
    if val_acc.notna().any():
        best = val_acc.idxmax()
        label = f"val (best {100 * val_acc[best]:.2f}% at epoch {epoch[best]})"
        _plot_series(acc_ax, epoch, 100 * val_acc, label)
    _plot_series(lr_ax, epoch, history["lr"], "lr", color="tab:purple")
    for ax, name in ((loss_ax, "loss"), (acc_ax, "accuracy (%)"), (lr_ax, "learning rate")):
        ax.set_title(name.split(" (")[0].capitalize())
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(name)
    loss_ax.legend()
    acc_ax.legend(loc="lower right")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    minutes = history["seconds"].sum() / 60
    _title(fig, f"Training curves ({len(history)} epochs, {minutes:.1f} min)", source)
    return fig


def lr_schedule(lrs: Sequence[float] | Tensor | np.ndarray, *,
                title: str = "Learning-rate schedule") -> Figure:
    """The learning rate at every optimizer step."""
    lrs = np.asarray(torch.as_tensor(lrs, dtype=torch.float64))
    fig = _figure(7, 3.5)
    with sns.axes_style("whitegrid"):
        ax = fig.subplots()
    ax.plot(np.arange(len(lrs)), lrs, color="tab:purple")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_xlim(0, max(1, len(lrs) - 1))
    ax.set_ylim(bottom=0)
    if len(lrs):
        peak = int(lrs.argmax())
        ax.set_title(f"{len(lrs):,} steps, peak {lrs[peak]:.3g} at step {peak:,}", fontsize=10)
    _title(fig, title)
    return fig


def confusion_heatmap(confusion: Tensor, classes: Sequence[str], *, source: str) -> Figure:
    """Counts and row-normalised percentages side by side (rows true, columns predicted)."""
    counts = torch.as_tensor(confusion).cpu().long().numpy()
    percent = 100 * counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    many = len(classes) > 20  # 100 classes: numbers would be unreadable, so name every 10th
    side = 7.5 if not many else 9
    fig = _figure(2 * side, side - 0.5)
    axes = fig.subplots(1, 2)
    names = 10 if many else list(classes)
    style = dict(xticklabels=names, yticklabels=names, annot=not many,
                 linewidths=0 if many else 0.5, cbar_kws={"shrink": 0.8},
                 annot_kws={"fontsize": 9})
    sns.heatmap(counts, ax=axes[0], cmap="Blues", fmt="d", **style)
    sns.heatmap(percent, ax=axes[1], cmap="Blues", fmt=".0f", vmin=0, vmax=100, **style)
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    for ax, name in zip(axes, ("Counts", "Row-normalised (% of each true class)"), strict=True):
        ax.set_title(name)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        if not many:
            for label in ax.get_xticklabels():
                label.set(rotation=45, ha="right")
            ax.tick_params(axis="y", rotation=0)
    _title(fig, f"Confusion matrix ({counts.sum():,} images, accuracy {accuracy:.2%})", source)
    return fig


def per_class_bars(report: pd.DataFrame, *, source: str) -> Figure:
    """Precision, recall and F1 per class, with the macro-average F1 as a line."""
    per_class = report.drop(index="macro avg", errors="ignore")
    long = (per_class[["precision", "recall", "f1"]].rename_axis("class").reset_index()
            .melt(id_vars="class", var_name="metric", value_name="score"))
    fig = _figure(min(24.0, max(9.0, 0.9 * len(per_class))), 4.5)
    with sns.axes_style("whitegrid"):
        ax = fig.subplots()
        sns.barplot(long, x="class", y="score", hue="metric", ax=ax)
    macro_f1 = per_class["f1"].mean()  # the 'macro avg' row's F1, also when that row is absent
    ax.axhline(macro_f1, color="black", ls="--", lw=1, label=f"macro F1 = {macro_f1:.3f}")
    ax.set_ylim(0, 1.0)
    ax.set_xlabel("class")
    ax.set_ylabel("score")
    ax.tick_params(axis="x", rotation=90 if len(per_class) > 20 else 30)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    _title(fig, "Precision, recall and F1 per class", source)
    return fig


def _name(value: str | int, classes: Sequence[str]) -> str:
    """A class name, whether the table holds names (as `misclassified` does) or indices."""
    return classes[int(value)] if isinstance(value, (int, np.integer)) else str(value)


def misclassified_gallery(images: Tensor, table: pd.DataFrame, classes: Sequence[str], *,
                          source: str, ncols: int = 8) -> Figure:
    """The images listed by `evaluate.misclassified`, each titled 'true → predicted (conf%)'."""
    n, ncols = len(table), max(1, min(ncols, len(table)))
    fig = _figure(1.6 * ncols, 1.9 * math.ceil(n / ncols) + 0.7)
    if n == 0:
        ax = fig.subplots()
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    else:
        index = torch.tensor(table["index"].tolist(), dtype=torch.long)
        pixels = _to_display(images[index], None, None)
        for ax, pix, row in zip(_cells(fig, n, ncols), pixels, table.itertuples(index=False),
                                strict=True):
            _show(ax, pix)
            true, pred = _name(row.true, classes), _name(row.predicted, classes)
            ax.set_title(f"{true} →\n{pred} ({row.confidence:.0%})", fontsize=8)
    _title(fig, f"The {n} most confident mistakes", source)
    return fig


def branch_ablation_bars(table: pd.DataFrame, *, source: str,
                         module: str = "inception4c") -> Figure:
    """Accuracy drop (percentage points) when each branch of one module is silenced."""
    baseline = table.loc[table["branch"] == "none", "accuracy"]
    rows = table[table["branch"] != "none"].reset_index(drop=True)
    drops = 100 * rows["drop"].to_numpy()
    fig = _figure(7, 4.2)
    with sns.axes_style("whitegrid"):
        ax = fig.subplots()
    colours = sns.color_palette("deep", len(rows))
    bars = ax.bar(np.arange(len(rows)), drops, color=colours, width=0.6)
    ax.bar_label(bars, labels=[f"{d:+.1f}" for d in drops], padding=2, fontsize=9)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(np.arange(len(rows)),
                  [f"{b}\n{c} ch" for b, c in zip(rows["branch"], rows["channels"], strict=True)])
    ax.set_xlabel("silenced branch (output channels)")
    ax.set_ylabel("accuracy drop (percentage points)")
    ax.margins(y=0.15)
    if len(baseline):
        ax.set_title(f"baseline accuracy {baseline.iloc[0]:.2%}", fontsize=10)
    _title(fig, f"Silencing one branch of {module}", source)
    return fig
