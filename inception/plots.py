"""Figures for the course: architecture, data, augmentation, training curves and error analysis.

Owns drawing only, every data figure titled with its data source; it never trains or evaluates
(the network diagram runs one blank image through a model, only to trace its shapes). Only the
command line's `evaluate` imports it, inside the command, so training never needs matplotlib;
figures live outside pyplot, so a notebook shows each once.
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
from matplotlib.patches import FancyBboxPatch, Patch
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from inception.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    cutout,
    denormalize,
    normalize,
    random_crop_flip,
    shard_indices,
)
from inception.model import eval_mode, out_channels

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


def _log_x(ax: Axes, ticks: Sequence[float], labels: Sequence[str], xlabel: str,
           ylabel: str) -> None:
    """A log-scale x axis ticked only at the measured points, axis labels, legend bottom right."""
    ax.set_xscale("log")
    ax.set_xticks(ticks, labels)
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc="lower right")


def accuracy_against_time(runs: Sequence[dict], *, source: str) -> Figure:
    """Validation accuracy against training minutes, one curve per run of another budget.

    Each run is a record of `benchmarks/time_to_accuracy.py --record` (its `config`, `history`
    and test accuracies). A budget-limited run lays its whole schedule over its budget, so a
    longer run is not a shorter one continued: each is drawn whole, ending at its own budget.
    """
    fig = _figure(8, 4.5)
    with sns.axes_style("whitegrid"):
        ax = fig.subplots()
    for run in sorted(runs, key=lambda r: r["config"]["budget_min"]):
        history = pd.DataFrame(run["history"])
        minutes = history["seconds"].cumsum() / 60
        label = (f"{run['config']['budget_min']:g}-min budget: {history.val_acc.iloc[-1]:.1%} "
                 f"val, {run['test_acc_tta']:.1%} test (flip TTA)")
        ax.plot(minutes, 100 * history["val_acc"], marker="o", ms=4, label=label)
    ticks = sorted({float(r["config"]["budget_min"]) for r in runs})
    _log_x(ax, ticks, [f"{t:g}" for t in ticks],
           "training minutes (log scale; validation after each epoch)", "validation accuracy (%)")
    _title(fig, "What more CPU time buys: the same recipe under three budgets", source)
    return fig


def transfer_curves(results: pd.DataFrame, *, chance: float, source: str) -> Figure:
    """Test accuracy against labelled training images per class, one line per way of starting.

    `results` has one row per run: `method`, `per_class` and `test_acc` (a fraction).
    """
    fig = _figure(8, 4.5)
    with sns.axes_style("whitegrid"):
        ax = fig.subplots()
    for method, rows in results.groupby("method", sort=False):
        rows = rows.sort_values("per_class")
        ax.plot(rows["per_class"], 100 * rows["test_acc"], marker="o", label=method)
    ax.axhline(100 * chance, color="grey", ls=":", label=f"chance ({chance:.0%})")
    sizes = sorted(results["per_class"].unique())
    _log_x(ax, sizes, [f"{n:,}" for n in sizes],
           "labelled training images per class (log scale)", "test accuracy (%)")
    _title(fig, "Little data: training from scratch against starting from another task", source)
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


def reliability_diagram(curves: dict[str, tuple[float, pd.DataFrame]], *, source: str) -> Figure:
    """Accuracy against confidence per bin, one line per named (ECE, table) from `calibration`.

    Left: points on the diagonal are honest, below it overconfident, above it underconfident.
    Right: how many images each bin holds, so a reader can see which bins the ECE weighs most.
    """
    fig = _figure(11, 4.6)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
    left.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    for (name, (ece, table)), colour in zip(curves.items(), sns.color_palette(), strict=False):
        left.plot(table.confidence, table.accuracy, marker="o", color=colour,
                  label=f"{name} (ECE {ece:.2%})")
        width = 1 / max(len(table), 1) * 0.9 if len(table) else 0.05
        right.bar(table.confidence, table.images, width=min(width, 0.06), alpha=0.6,
                  color=colour, label=name)
    left.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="mean confidence in the bin",
             ylabel="accuracy in the bin")
    left.legend(loc="upper left", fontsize=9)
    right.set(xlim=(0, 1.02), xlabel="confidence", ylabel="images")
    right.set_yscale("log")
    right.legend(loc="upper left", fontsize=9)
    _title(fig, "Reliability diagram: is the model as sure as it is right?", source)
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


# ---------------------------------------------------------------------------------------------
# Architecture diagrams, drawn from a model's own modules so they stay true for every width and
# stem. They read names and weights only (duck typing), so a hand-built copy draws the same way.

_FILL = dict(io="#e6e6e6", reduce="#ffe08a", conv1="#a9c5eb", conv3="#f7b267", conv5="#f4845f",
             pool="#9ad1d4", inception="#f7b267", aux="#ffe08a", head="#d9d9d9", input="white")


def _box(ax: Axes, x: float, y: float, text: str, fill: str, width: float = 2.2,
         height: float = 0.8, gid: str | None = None, **text_style) -> tuple[float, float]:
    """A rounded box centred on (x, y) with a centred label; returns its (bottom, top)."""
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height, gid=gid,
                                boxstyle="round,pad=0.02,rounding_size=0.12", fc=fill, ec="0.2"))
    if text:
        ax.text(x, y, text, ha="center", va="center", **{"fontsize": 10, **text_style})
    return y - height / 2, y + height / 2


def _arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float]) -> None:
    ax.annotate("", xy=end, xytext=start,
                arrowprops=dict(arrowstyle="-|>", color="0.25", lw=1.2, shrinkA=0, shrinkB=0))


def inception_module_diagram(module: torch.nn.Module, side: int, *,
                             name: str = "inception3a") -> Figure:
    """One Inception module as the paper draws it, with the widths read from its convolutions."""
    b1, (r3, c3), (r5, c5), (_, proj) = (module.branch1, module.branch2, module.branch3,
                                         module.branch4)
    k = c5.conv.kernel_size[0]
    in_channels = b1.conv.weight.shape[1]
    concatenated = sum(out_channels(b) for b in (b1, c3, c5, proj))
    fig = _figure(11, 5.9)
    ax = fig.subplots()
    xs, low, high = (1.5, 4.2, 6.9, 9.6), 1.6, 3.1
    _, prev_top = _box(ax, 5.55, 0, f"Previous layer\n{side}x{side}x{in_channels}", _FILL["io"],
                       3.2)
    cat_bottom, _ = _box(ax, 5.55, 4.6, f"Filter concatenation\n{side}x{side}x{concatenated}",
                         _FILL["io"], 10.4)
    lower = [None,
             _box(ax, xs[1], low, f"1x1 conv, {out_channels(r3)}\n(3x3 reduce)", _FILL["reduce"]),
             _box(ax, xs[2], low, f"1x1 conv, {out_channels(r5)}\n({k}x{k} reduce)",
                  _FILL["reduce"]),
             _box(ax, xs[3], low, "3x3 max pool\nstride 1", _FILL["pool"])]
    upper = [_box(ax, xs[0], high, f"1x1 conv, {out_channels(b1)}", _FILL["conv1"]),
             _box(ax, xs[1], high, f"3x3 conv, {out_channels(c3)}", _FILL["conv3"]),
             _box(ax, xs[2], high, f"{k}x{k} conv, {out_channels(c5)}", _FILL["conv5"]),
             _box(ax, xs[3], high, f"1x1 conv, {out_channels(proj)}\n(pool proj)",
                  _FILL["reduce"])]
    for i, x in enumerate(xs):
        first = upper[i] if lower[i] is None else lower[i]
        _arrow(ax, (4.55 + 0.66 * i, prev_top), (x, first[0]))
        if lower[i] is not None:
            _arrow(ax, (x, lower[i][1]), (x, upper[i][0]))
        _arrow(ax, (x, upper[i][1]), (x, cat_bottom))
    ax.set(xlim=(0, 11.1), ylim=(-0.6, 5.2), aspect="equal")
    ax.set_axis_off()
    _legend(ax, [("reduce", "1x1 reduction / projection"), ("conv1", "1x1 branch"),
                 ("conv3", "3x3 convolution"), ("conv5", f"{k}x{k} convolution"),
                 ("pool", "max pooling")])
    _title(fig, f"Inception module with dimension reductions (widths of {name})")
    return fig


def data_parallel_diagram(world_size: int = 2, batch_size: int = 4, *, n_images: int = 40,
                          seed: int = 0) -> Figure:
    """One step of data-parallel training, with the batches `inception.data.shard_indices` deals.

    The top row is one process's global batch of world_size x batch_size images (their indices
    in a shuffled epoch), coloured by the rank that trains each one; the rows below follow the
    step through DDP: each rank's forward and backward pass, the gradient all-reduce, and the
    identical optimizer step. The indices come from the loader's own sharding, so the picture
    shows what the code does.
    """
    order = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed))
    shares = [shard_indices(order, batch_size, rank, world_size)[0].tolist()
              for rank in range(world_size)]
    colours = sns.color_palette("pastel", world_size).as_hex()
    span = max(world_size * 3.2, world_size * batch_size * 0.62)
    fig = _figure(1.1 * span + 1.0, 6.2)
    ax = fig.add_subplot()
    ax.set_xlim(-0.5, span + 0.5)
    ax.set_ylim(-0.6, 5.4)
    ax.set_axis_off()
    cell = span / (world_size * batch_size)
    ax.text(span / 2, 5.15, f"one global batch of {world_size} × {batch_size} images (indices "
            "in the epoch's shuffled order)", ha="center", fontsize=10)
    for rank, share in enumerate(shares):
        for i, index in enumerate(share):
            _box(ax, (rank * batch_size + i + 0.5) * cell, 4.55, str(index), colours[rank],
                 width=0.9 * cell, height=0.6, gid=f"rank{rank}", fontsize=9)
    rank_x = [(rank + 0.5) * span / world_size for rank in range(world_size)]
    for rank, x in enumerate(rank_x):
        _arrow(ax, ((rank + 0.5) * batch_size * cell, 4.2), (x, 3.55))
        _box(ax, x, 3.05, f"rank {rank}: forward + backward\non its {batch_size} images "
             f"→ gradient g{rank}", colours[rank], width=0.85 * span / world_size, height=0.95,
             fontsize=9)
        _arrow(ax, (x, 2.55), (x, 2.05))
    terms = " + ".join(f"g{rank}" for rank in range(world_size))
    _box(ax, span / 2, 1.65, f"all-reduce (DDP, overlapped with backward): every rank gets "
         f"g = ({terms}) / {world_size}", _FILL["reduce"], width=span, height=0.75, fontsize=9)
    for rank, x in enumerate(rank_x):
        _arrow(ax, (x, 1.25), (x, 0.8))
        _box(ax, x, 0.3, f"rank {rank}: the same SGD step\n→ the same weights",
             colours[rank], width=0.85 * span / world_size, height=0.95, fontsize=9)
    _title(fig, f"Data-parallel training on {world_size} ranks: one step "
           f"(global batch {world_size * batch_size} = {world_size} × {batch_size})")
    return fig


def _legend(ax: Axes, entries: Sequence[tuple[str, str]], ncol: int | None = None) -> None:
    """Colour swatches below the axes, one per (fill key, label)."""
    handles = [Patch(fc=_FILL[key], ec="0.2", label=label) for key, label in entries]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0),
              ncol=ncol or len(handles), frameon=False, fontsize=9)


# Where the auxiliary heads attach (the paper's and torchvision's GoogLeNet).
_AUX_SOURCES = {"aux1": "inception4a", "aux2": "inception4d"}


def _trace_layers(model: torch.nn.Module, image_size: int) -> list[tuple[str, torch.nn.Module,
                                                                         tuple[int, ...]]]:
    """(name, layer, output shape without the batch) for every top-level layer, in forward order.

    Forward hooks record the eval-mode pass of one blank image; the aux heads, which run only in
    training, are then fed the traced output of the module they attach to. Identity placeholders
    (a stem's missing layers) are left out. The model's training mode is restored afterwards.
    """
    records = []

    def record(name: str):
        return lambda mod, args, out: records.append((name, mod, tuple(out.shape[1:])))

    hooks = [child.register_forward_hook(record(name)) for name, child in model.named_children()
             if not isinstance(child, torch.nn.Identity) and name not in _AUX_SOURCES]
    first = next(model.parameters())
    in_channels = getattr(model, "in_channels", None) or first.shape[1]
    try:
        with eval_mode(model), torch.no_grad():
            model(torch.zeros(1, in_channels, image_size, image_size, device=first.device))
            shapes = {name: shape for name, _, shape in records}
            for aux, source in _AUX_SOURCES.items():
                head = getattr(model, aux, None)
                if head is not None and source in shapes:
                    out = head(torch.zeros(1, *shapes[source], device=first.device))
                    records.append((aux, head, tuple(out.shape[1:])))
    finally:
        for hook in hooks:
            hook.remove()
    return records


def _describe_layer(layer: torch.nn.Module) -> tuple[str, str]:
    """A short description of one top-level layer and the colour key it is drawn with."""
    def first(v) -> int:
        return v[0] if isinstance(v, tuple) else v

    if hasattr(layer, "branch1"):  # widths: 1x1 | 3x3 reduce -> 3x3 | 5x5 reduce -> 5x5 | proj
        b1, (r3, c3), (r5, c5), (_, proj) = (layer.branch1, layer.branch2, layer.branch3,
                                             layer.branch4)
        widths = (f"{out_channels(b1)} | {out_channels(r3)}→{out_channels(c3)} | "
                  f"{out_channels(r5)}→{out_channels(c5)} | {out_channels(proj)}")
        return widths, "inception"
    if hasattr(layer, "fc2"):
        return (f"pool to 4×4, 1×1 conv {out_channels(layer.conv)}, "
                f"fc {layer.fc1.out_features}, fc {layer.fc2.out_features}"), "aux"
    if hasattr(layer, "conv"):
        k, s = first(layer.conv.kernel_size), first(layer.conv.stride)
        return f"conv {k}×{k}/{s}", "conv1"
    if isinstance(layer, torch.nn.MaxPool2d):
        k, s = first(layer.kernel_size), first(layer.stride)
        return f"max pool {k}×{k}/{s}", "pool"
    if isinstance(layer, torch.nn.AdaptiveAvgPool2d):
        return "global average pool", "head"
    if isinstance(layer, torch.nn.Dropout):
        return f"dropout {layer.p:.0%}", "head"
    if isinstance(layer, torch.nn.Linear):
        return f"linear {layer.in_features}→{layer.out_features}", "head"
    return type(layer).__name__, "head"


def _size_text(shape: Sequence[int]) -> str:
    """'channels×height×width' for a map, the length for a vector."""
    return "×".join(str(n) for n in shape)


def network_diagram(model: torch.nn.Module, image_size: int = 32, *,
                    title: str | None = None) -> Figure:
    """The whole network, top to bottom, with every layer's output size traced from the model.

    Stem, the nine Inception modules, the pools between stages, the aux heads beside inception4a
    and inception4d (when the model has them), global average pooling and the classifier. Sizes
    are channels×height×width of one image, recorded by forward hooks.
    """
    records = _trace_layers(model, image_size)
    main = [r for r in records if r[0] not in _AUX_SOURCES]
    rows = [("input", None, (getattr(model, "in_channels", 3), image_size, image_size))] + main
    pitch, height, main_w, aux_x, aux_w = 1.0, 0.74, 8.0, 4.8, 7.2
    left = -main_w / 2
    ys = {name: -pitch * i for i, (name, *_) in enumerate(rows)}
    heads = [r for r in records if r[0] in _AUX_SOURCES]
    right = aux_x + aux_w + 0.2 if heads else -left + 0.2
    fig = _figure(12 if heads else 8, 0.34 * len(rows) + 1.6)
    ax = fig.subplots()
    for i, (name, layer, shape) in enumerate(rows):
        kind, key = ("image", "input") if layer is None else _describe_layer(layer)
        y = ys[name]
        _box(ax, 0, y, "", _FILL[key], main_w, height, gid=name)
        ax.text(left + 0.2, y, name, ha="left", va="center", fontsize=9, fontweight="bold")
        ax.text(left + 2.2, y, kind, ha="left", va="center", fontsize=9)
        ax.text(-left - 0.2, y, _size_text(shape), ha="right", va="center", fontsize=9,
                gid=f"{name}:size")
        if i:
            _arrow(ax, (0, y + pitch - height / 2), (0, y + height / 2))
    for aux, layer, shape in heads:
        y = ys[_AUX_SOURCES[aux]]
        kind, key = _describe_layer(layer)
        _box(ax, aux_x + aux_w / 2, y, "", _FILL[key], aux_w, height, gid=aux)
        ax.text(aux_x + 0.2, y, aux, ha="left", va="center", fontsize=9, fontweight="bold")
        ax.text(aux_x + 1.0, y, kind, ha="left", va="center", fontsize=8.5)
        ax.text(aux_x + aux_w - 0.2, y, _size_text(shape), ha="right", va="center",
                fontsize=9, gid=f"{aux}:size")
        _arrow(ax, (-left, y), (aux_x, y))
    _stage_brackets(ax, rows, ys, left - 0.3)
    ax.set(xlim=(left - 2.4, right), ylim=(ys[rows[-1][0]] - 0.7, 0.7))
    ax.set_axis_off()
    legend = [("conv1", "convolution (+BN, ReLU)"), ("pool", "max pooling"),
              ("inception", "Inception: 1×1 | 3×3 reduce→3×3 | 5×5 reduce→5×5 | pool proj"),
              ("aux", "aux head (training only)"), ("head", "classifier head")]
    _legend(ax, legend if heads else [e for e in legend if e[0] != "aux"], ncol=3 if heads else 2)
    arch = getattr(model, "arch", {})
    name = getattr(model, "name", type(model).__name__)
    detail = f", {arch['stem']} stem, width {arch['width']:g}" if "stem" in arch else ""
    params = sum(p.numel() for p in model.parameters())
    aux_params = sum(p.numel() for aux in _AUX_SOURCES if getattr(model, aux, None) is not None
                     for p in getattr(model, aux).parameters())
    counted = f"{params:,} parameters" + (f" ({params - aux_params:,} without the aux heads)"
                                          if aux_params else "")
    _title(fig, title or f"{name} on {image_size}×{image_size} input{detail}: {counted}",
           "output sizes (channels×height×width) traced from the model with forward hooks")
    return fig


def _stage_brackets(ax: Axes, rows: list, ys: dict, x: float) -> None:
    """A bracket left of each stage (stem, 3, 4, 5, head), labelled with its map size."""
    def stage(name: str) -> str:
        if name.startswith("inception"):
            return f"stage {name[len('inception')]}"
        return "head" if name in ("avgpool", "dropout", "fc") else ""

    groups: dict[str, list] = {}
    seen_module = False
    for name, _, shape in rows[1:]:
        seen_module = seen_module or name.startswith("inception")
        label = stage(name) or ("stem" if not seen_module else "")
        if label:
            groups.setdefault(label, []).append((name, shape))
    for label, members in groups.items():
        top, bottom = ys[members[0][0]] + 0.35, ys[members[-1][0]] - 0.35
        ax.plot([x, x - 0.15, x - 0.15, x], [top, top, bottom, bottom], color="0.35", lw=1)
        shape = members[-1][1]
        size = f"\n{shape[1]}×{shape[2]}" if label.startswith("stage") and len(shape) == 3 else ""
        ax.text(x - 0.3, (top + bottom) / 2, f"{label}{size}", ha="right", va="center",
                fontsize=9, color="0.25")


# ---------------------------------------------------------------------------------------------
# What the network learned (notebook 06): filters, branch maps and energy, dataset examples,
# attribution overlays, effective receptive fields and the feature space. The measurements come
# from `inception.explain`; these functions only draw them.


def first_layer_filters(weight: Tensor, *, source: str, ncols: int = 8) -> Figure:
    """Each first-layer filter (out, 3, k, k) as a small RGB image, grey where the weight is 0.

    Every filter is scaled by its own largest weight: BatchNorm follows the convolution, so a
    filter's shape (which colours and directions it weighs) matters, not its size.
    """
    w = weight.detach().float().cpu()
    scale = w.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-12)
    pixels = (0.5 + 0.5 * w / scale).permute(0, 2, 3, 1).numpy()
    n, ncols = len(pixels), max(1, min(ncols, len(pixels)))
    fig = _figure(1.1 * ncols, 1.15 * math.ceil(n / ncols) + 0.8)
    for i, ax in enumerate(_cells(fig, n, ncols)):
        _show(ax, pixels[i])
        ax.set_title(str(i), fontsize=8)
    k = w.shape[-1]
    _title(fig, f"The {n} first-layer filters ({k}×{k}, RGB; grey = 0, each scaled to its own "
                "largest weight)", source)
    return fig


def branch_feature_maps(images: Tensor, maps: dict[str, Tensor], *, source: str,
                        module: str = "inception3a") -> Figure:
    """Per image (a row): the image, then for each branch its most active channel's map.

    `maps` holds one (N, C, h, w) output per branch, keyed by the label to show ('1x1', ...).
    The most active channel is the one with the largest mean activation on that image.
    """
    pixels = _to_display(images, None, None)
    fig = _figure(1.7 * (len(maps) + 1), 1.75 * len(pixels) + 0.8)
    axes = fig.subplots(len(pixels), len(maps) + 1, squeeze=False)
    for row, image in zip(axes, pixels, strict=True):
        _show(row[0], image)
    axes[0, 0].set_title("image", fontsize=9)
    for col, (label, out) in enumerate(maps.items(), start=1):
        out = out.detach().float().cpu()
        strongest = out.mean(dim=(2, 3)).argmax(dim=1)
        for i, ax in enumerate(axes[:, col]):
            ax.imshow(out[i, strongest[i]].numpy(), cmap="viridis", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"channel {strongest[i].item()}", fontsize=7)
        axes[0, col].set_title(f"{label}\n({out.shape[1]} ch, {out.shape[2]}×{out.shape[3]})",
                               fontsize=9)
    _title(fig, f"The four branches of {module}: each one's most active channel", source)
    return fig


_BRANCH_COLOURS = dict(zip(("branch1", "branch2", "branch3", "branch4"),
                           sns.color_palette("deep", 4), strict=True))


def branch_energy_chart(table: pd.DataFrame, *, source: str) -> Figure:
    """Left: each branch's share of every module's activation energy (stacked to 100%).

    Right: that share over the branch's share of the channels, so 1 means an average channel;
    above 1 the branch's channels carry more than their number suggests.
    """
    modules = list(dict.fromkeys(table.module))
    fig = _figure(12, 4.8)
    with sns.axes_style("whitegrid"):
        left, right = fig.subplots(1, 2)
    y = np.arange(len(modules))[::-1]
    start = np.zeros(len(modules))
    for branch, rows in table.groupby("branch", sort=True):
        share = rows.set_index("module").share.reindex(modules).to_numpy()
        ratio = (rows.set_index("module").share / rows.set_index("module").channel_share)
        label = f"{branch} ({rows.path.iloc[0]})"
        left.barh(y, 100 * share, left=100 * start, color=_BRANCH_COLOURS.get(branch),
                  label=label, height=0.7)
        start += share
        right.plot(ratio.reindex(modules).to_numpy(), y, marker="o",
                   color=_BRANCH_COLOURS.get(branch), label=label)
    left.set_yticks(y, modules)
    left.set(xlim=(0, 100), xlabel="share of the module's activation energy (%)",
             ylabel="Inception module (network order, top to bottom)")
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False,
                fontsize=9)
    right.axvline(1, color="grey", lw=1, ls="--")
    right.set_yticks(y, modules)
    right.set(xlabel="energy share ÷ channel share", ylabel="Inception module")
    _title(fig, "Which branch carries the activation energy, module by module", source)
    return fig


def top_activating_grid(images: Tensor, indices: Tensor, channels: Sequence[int], *,
                        labels: Tensor, classes: Sequence[str], layer: str,
                        source: str) -> Figure:
    """One row per channel: the images (uint8) that activate it most, most active first."""
    indices = torch.as_tensor(indices).cpu()
    rows, k = indices.shape
    fig = _figure(1.0 * k + 1.0, 1.15 * rows + 0.8)
    axes = fig.subplots(rows, k, squeeze=False)
    for r, (channel, picks) in enumerate(zip(channels, indices, strict=True)):
        pixels = _to_display(images[picks], None, None)
        for j, ax in enumerate(axes[r]):
            _show(ax, pixels[j])
            ax.set_title(classes[int(labels[picks[j]])], fontsize=7, pad=2)
        axes[r, 0].set_ylabel(f"channel {channel}", rotation=0, ha="right", va="center",
                              fontsize=9)
    _title(fig, f"The {k} test images that activate each channel of {layer} most", source)
    return fig


def attribution_overlays(images: Tensor, maps: dict[str, Tensor], *, labels: Sequence[int],
                         preds: Sequence[int], classes: Sequence[str], source: str,
                         title: str = "Where the network looks") -> Figure:
    """Per image (a row): the image, then each named (N, H, W) map laid over it.

    Maps are scaled per image. A column with negative values (occlusion: covering the region
    raised the score) uses a diverging map, red for support and blue for the opposite; a
    non-negative column (Grad-CAM) uses one colour ramp. Rows of wrong predictions are red.
    """
    pixels = _to_display(images, None, None)
    labels, preds = [int(v) for v in labels], [int(v) for v in preds]
    fig = _figure(1.6 * (len(maps) + 1), 1.65 * len(pixels) + 0.8)
    axes = fig.subplots(len(pixels), len(maps) + 1, squeeze=False)
    for i, row in enumerate(axes):
        _show(row[0], pixels[i])
        wrong = labels[i] != preds[i]
        row[0].set_ylabel(f"{classes[labels[i]]}\n→ {classes[preds[i]]}", fontsize=8,
                          color=_WRONG if wrong else _RIGHT, rotation=0, ha="right",
                          va="center")
    axes[0, 0].set_title("image", fontsize=9)
    for col, (name, values) in enumerate(maps.items(), start=1):
        values = values.detach().float().cpu()
        signed = bool((values < 0).any())
        for i, ax in enumerate(axes[:, col]):
            m = values[i]
            top = m.abs().max().clamp(min=1e-12).item()
            _show(ax, pixels[i])
            ax.imshow(m.numpy(), cmap="RdBu_r" if signed else "inferno", alpha=0.6,
                      vmin=-top if signed else 0, vmax=top, interpolation="bilinear")
        axes[0, col].set_title(name, fontsize=9)
    _title(fig, f"{title} (row labels: true → predicted, red when wrong)", source)
    return fig


def _square(ax: Axes, cy: float, cx: float, side: float, **style) -> None:
    """The outline of a side x side pixel square centred on (cy, cx), in image coordinates."""
    h = side / 2
    ys = [cy - h, cy - h, cy + h, cy + h, cy - h]
    xs = [cx - h, cx + h, cx + h, cx - h, cx - h]
    ax.plot(xs, ys, **style)


def erf_heatmaps(erfs: dict[str, Tensor], *, rfs: dict[str, int], extents: dict[str, int],
                 source: str, mass: float = 0.95, ncols: int = 5) -> Figure:
    """Each effective receptive field as a heatmap, with two squares around its centre of mass.

    Dashed: the theoretical receptive field (often larger than the image, then only noted).
    Solid: the smallest square holding `mass` of the ERF. Keys of the three dicts match.
    """
    n, ncols = len(erfs), max(1, min(ncols, len(erfs)))
    fig = _figure(2.5 * ncols, 2.7 * math.ceil(n / ncols) + 0.9)
    for ax, (name, erf) in zip(_cells(fig, n, ncols), erfs.items(), strict=True):
        e = erf.detach().double().cpu()
        h, w = e.shape
        weights = e / e.sum()
        cy = (weights.sum(dim=1) * torch.arange(h)).sum().item()
        cx = (weights.sum(dim=0) * torch.arange(w)).sum().item()
        ax.imshow(e.numpy(), cmap="magma", interpolation="nearest")
        rf, extent = rfs[name], extents[name]
        _square(ax, cy, cx, rf, color="white", ls="--", lw=1.2)
        _square(ax, cy, cx, extent, color="tab:cyan", lw=1.5)
        ax.set(xlim=(-0.5, w - 0.5), ylim=(h - 0.5, -0.5))
        ax.set_xticks([])
        ax.set_yticks([])
        beyond = " (> image)" if rf > max(h, w) else ""
        ax.set_title(f"{name}\n{mass:.0%} in {extent} px; RF {rf} px{beyond}", fontsize=9)
    _title(fig, "Effective receptive fields: |gradient| of the centre unit (solid: "
                f"{mass:.0%} of the mass; dashed: theoretical field)", source)
    return fig


def feature_scatter(points: Tensor, labels: Tensor, classes: Sequence[str], *,
                    explained: Tensor, source: str, max_points: int = 3000) -> Figure:
    """2-D projection of the features, coloured by class, each class's name at its centroid."""
    points, labels = torch.as_tensor(points).cpu(), torch.as_tensor(labels).cpu()
    shown = torch.arange(len(points))[:max_points]  # the first ones: a fixed, seed-free subset
    fig = _figure(8.5, 6.5)
    with sns.axes_style("whitegrid"):
        ax = fig.subplots()
    palette = sns.color_palette("tab10", len(classes))
    for c, name in enumerate(classes):
        mine = shown[labels[shown] == c]
        ax.scatter(points[mine, 0], points[mine, 1], s=6, alpha=0.5, color=palette[c],
                   label=name, linewidths=0)
        if (labels == c).any():
            centre = points[labels == c].mean(dim=0)
            ax.text(centre[0].item(), centre[1].item(), name, fontsize=9, ha="center",
                    va="center", fontweight="bold",
                    bbox=dict(boxstyle="round,pad=0.2", fc="white", ec=palette[c], alpha=0.85))
    share = [float(v) for v in explained]
    ax.set(xlabel=f"principal axis 1 ({share[0]:.0%} of the variance)",
           ylabel=f"principal axis 2 ({share[1]:.0%} of the variance)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, markerscale=3)
    drawn = f"{len(shown):,} of {len(points):,}" if len(shown) < len(points) else f"{len(points):,}"
    _title(fig, f"Pooled features of {drawn} images, projected to 2-D (PCA); class names at "
                "the centre of all their images", source)
    return fig
