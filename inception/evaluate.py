"""Judging a trained model: predictions, accuracy, confusion matrix, per-class metrics, errors.

Owns turning a model and a split into numbers and tables (plus the branch-ablation experiment).
It does not plot (see `plots`) and does not train; torch and pandas only, no scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor, nn

from inception.data import DeviceLoader, ImageData
from inception.errors import ConfigError, ModelInputError
from inception.explain import BRANCHES, branch_path, forward_hooks
from inception.model import Inception, fold_batchnorm, out_channels
from inception.runtime import (
    autocast_dtype,
    choose_precision,
    eval_batch_size,
    resolve_device,
)


@dataclass(repr=False)
class Predictions:
    """True labels (N,) int64 and softmax probabilities (N, C) float32 of one split, on the CPU.

    Only these two are stored; predicted class, confidence and correctness derive from them.
    """

    labels: Tensor
    probs: Tensor

    def __post_init__(self) -> None:
        if self.probs.dim() != 2 or self.labels.shape != self.probs.shape[:1]:
            raise ValueError(f"need labels (N,) and probs (N, C); got {tuple(self.labels.shape)} "
                             f"and {tuple(self.probs.shape)}")

    @property
    def preds(self) -> Tensor:
        """The predicted class of each image (argmax of the probabilities)."""
        return self.probs.argmax(dim=1)

    @property
    def confidence(self) -> Tensor:
        """The probability the model gave its own prediction."""
        return self.probs.max(dim=1).values

    @property
    def correct(self) -> Tensor:
        """Boolean mask of the images the model got right."""
        return self.preds == self.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (f"Predictions({len(self):,} images, {self.probs.shape[1]} classes, "
                f"accuracy {accuracy(self):.2%})")


def predict(model: nn.Module, images: Tensor, labels: Tensor, *, mean: Sequence[float],
            std: Sequence[float], batch_size: int | None = None, tta: bool = False,
            device: torch.device | str | None = None, precision: str = "auto",
            channels_last: bool = True) -> Predictions:
    """Softmax probabilities of a model on uint8 images, in eval mode, batched on `device`.

    The model is moved to `device` (and to channels_last when asked), as `nn.Module.to` does, in
    place; the forward passes run on a copy with BatchNorm folded into the convolutions
    (`model.fold_batchnorm`), which computes the same function faster. `batch_size` defaults
    to `runtime.eval_batch_size(device)`. `tta=True` averages the softmax of each image and of
    its horizontal mirror.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ModelInputError(f"predict wants uint8 images (N, C, H, W), got {images.dtype} "
                              f"{tuple(images.shape)}")
    channels = getattr(model, "arch", {}).get("in_channels", len(mean))
    if images.shape[1] != channels or len(mean) != channels:
        raise ModelInputError(
            f"predict got images with {images.shape[1]} channel(s) and a mean of {len(mean)} "
            f"value(s) for a model of {channels} input channels: convert the images to "
            f"{'RGB' if channels == 3 else f'{channels} channels'} (for a grey batch, "
            "images.expand(-1, 3, -1, -1)) and pass one mean and std per channel")
    if len(images) != len(labels):
        raise ModelInputError(f"{len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise ModelInputError("predict got no images")
    device = resolve_device(device)
    batch_size = eval_batch_size(device) if batch_size is None else batch_size
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    dtype = autocast_dtype(choose_precision(device, precision))
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    # The same device-resident batching as training (mean/std cached on the device, so no
    # host-to-device copy, and no host sync, inside the loop).
    loader = DeviceLoader(images, labels, batch_size=batch_size, mean=tuple(mean),
                          std=tuple(std), device=device, channels_last=channels_last)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    probs = []
    net = fold_batchnorm(model)  # an eval-mode copy: the caller's model keeps its mode
    with torch.inference_mode(), autocast:
        for x, _ in loader:
            p = net(x).float().softmax(dim=1)
            if tta:
                p = (p + net(x.flip(3)).float().softmax(dim=1)) / 2
            probs.append(p)  # stays on the device: no host sync until the loop is done
    return Predictions(labels=labels.to("cpu", torch.int64), probs=torch.cat(probs).cpu())


def accuracy(predictions: Predictions) -> float:
    """Fraction of images classified correctly, in [0, 1]."""
    return predictions.correct.double().mean().item()


def confusion_matrix(labels: Tensor, preds: Tensor, num_classes: int) -> Tensor:
    """Counts (C, C) int64: row = true class, column = predicted class."""
    labels, preds = torch.as_tensor(labels).cpu(), torch.as_tensor(preds).cpu()
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if labels.dim() != 1 or labels.shape != preds.shape:
        raise ValueError(f"labels and preds must be 1-D and the same length; got shapes "
                         f"{tuple(labels.shape)} and {tuple(preds.shape)}")
    for name, t in (("labels", labels), ("preds", preds)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{name} must be integer class indices, got {t.dtype}")
        if len(t) and (t.min() < 0 or t.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}); found values from "
                             f"{t.min().item()} to {t.max().item()}")
    # Each (true, predicted) pair gets one bin of a flat C*C histogram.
    flat = labels.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes ** 2).view(num_classes, num_classes)


def _check_confusion(confusion: Tensor, classes: Sequence[str]) -> Tensor:
    confusion = torch.as_tensor(confusion).cpu()
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be square (C, C), got {tuple(confusion.shape)}")
    if len(classes) != len(confusion):
        raise ValueError(f"{len(classes)} class names for a {len(confusion)}-class confusion")
    return confusion


def per_class_report(confusion: Tensor, classes: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class, then a 'macro avg' row (support = total)."""
    cm = _check_confusion(confusion, classes).double()
    tp, predicted, support = cm.diag(), cm.sum(dim=0), cm.sum(dim=1)
    # tp is 0 whenever a denominator is 0, so clamping gives 0 (not NaN) for a class that is
    # never predicted (precision) or never present (recall). F1 = 2TP / (2TP + FP + FN).
    precision = tp / predicted.clamp(min=1)
    recall = tp / support.clamp(min=1)
    f1 = 2 * tp / (predicted + support).clamp(min=1)
    table = pd.DataFrame({"precision": precision.numpy(), "recall": recall.numpy(),
                          "f1": f1.numpy(), "support": support.long().numpy()},
                         index=pd.Index(list(classes), name="class"))
    macro = pd.DataFrame({"precision": [precision.mean().item()],
                          "recall": [recall.mean().item()], "f1": [f1.mean().item()],
                          "support": [int(support.sum().item())]},
                         index=pd.Index(["macro avg"], name="class"))
    return pd.concat([table, macro])


def most_confused(confusion: Tensor, classes: Sequence[str], k: int = 5) -> pd.DataFrame:
    """The k largest off-diagonal cells: which true class is most often taken for which."""
    cm = _check_confusion(confusion, classes).long()
    off = cm.clone()
    off.fill_diagonal_(0)
    counts, flat = off.flatten().sort(descending=True, stable=True)  # ties keep row order
    keep = (counts > 0).sum().item()
    counts, flat = counts[:min(k, keep)], flat[:min(k, keep)]
    true, pred = flat // len(cm), flat % len(cm)
    rate = counts.double() / cm.sum(dim=1)[true].double()
    return pd.DataFrame({"true": [classes[i] for i in true.tolist()],
                         "predicted": [classes[i] for i in pred.tolist()],
                         "count": counts.numpy(), "rate": rate.numpy()})


def misclassified(predictions: Predictions, classes: Sequence[str], k: int = 16) -> pd.DataFrame:
    """The k most confident wrong predictions, most confident first (where label noise shows)."""
    wrong = (~predictions.correct).nonzero().flatten()
    confidence = predictions.confidence[wrong]
    order = confidence.sort(descending=True, stable=True).indices[:k]
    index = wrong[order]
    return pd.DataFrame({
        "index": index.numpy(),
        "true": [classes[i] for i in predictions.labels[index].tolist()],
        "predicted": [classes[i] for i in predictions.preds[index].tolist()],
        "confidence": confidence[order].numpy(),
    })


def calibration(predictions: Predictions, n_bins: int = 15) -> tuple[float, pd.DataFrame]:
    """Expected calibration error and the reliability table behind it.

    Predictions are grouped by confidence into `n_bins` equal-width bins; in each, a calibrated
    model's accuracy equals its mean confidence. The ECE is the image-weighted mean gap
    |accuracy - confidence| (Guo et al., 2017), computed by torchmetrics; the table (one row per
    non-empty bin: lower edge, confidence, accuracy, images) is what a reliability diagram draws.
    """
    from torchmetrics.functional.classification import multiclass_calibration_error

    if n_bins < 1:
        raise ValueError(f"n_bins must be positive, got {n_bins}")
    ece = multiclass_calibration_error(predictions.probs, predictions.labels,
                                       num_classes=predictions.probs.shape[1], n_bins=n_bins,
                                       norm="l1").item()
    conf, right = predictions.confidence, predictions.correct.double()
    # Bin i holds confidences in [i/n, (i+1)/n), with 1.0 in the last bin: torchmetrics' bins.
    edges = torch.linspace(0, 1, n_bins + 1, dtype=conf.dtype)
    bins = (torch.bucketize(conf, edges, right=True) - 1).clamp(0, n_bins - 1)
    conf = conf.double()
    count = torch.bincount(bins, minlength=n_bins)
    keep = count > 0
    size = count.clamp(min=1).double()
    table = pd.DataFrame({
        "bin_lower": (torch.arange(n_bins, dtype=torch.float64) / n_bins)[keep].numpy(),
        "confidence": (torch.bincount(bins, conf, minlength=n_bins) / size)[keep].numpy(),
        "accuracy": (torch.bincount(bins, right, minlength=n_bins) / size)[keep].numpy(),
        "images": count[keep].numpy()})
    return ece, table


def _logits(predictions: Predictions) -> Tensor:
    """Logits up to a per-image constant (which softmax ignores), from stored probabilities."""
    return predictions.probs.double().clamp(min=1e-12).log()


def with_temperature(predictions: Predictions, temperature: float) -> Predictions:
    """The same predictions with every logit divided by `temperature` (Guo et al., 2017).

    log-probabilities are the logits up to a per-image constant, which softmax ignores, so
    the stored probabilities suffice. T > 1 softens them, T < 1 sharpens them; the predicted
    class, and so the accuracy, never changes.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = _logits(predictions)
    return Predictions(predictions.labels, (logits / temperature).softmax(dim=1).float())


def fit_temperature(predictions: Predictions) -> float:
    """The temperature that minimises the cross-entropy of `predictions` (fit it on validation).

    One number says which way a model errs: above 1 it is overconfident (its probabilities need
    softening), below 1 underconfident. A 1-D convex problem, so a bounded search over log T
    (golden section, 0.05 <= T <= 20) finds it exactly enough without an optimiser.
    """
    logits = _logits(predictions)

    def nll(log_t: float) -> float:
        return nn.functional.cross_entropy(logits / math.exp(log_t), predictions.labels).item()

    lo, hi = math.log(0.05), math.log(20.0)
    ratio = (5 ** 0.5 - 1) / 2
    for _ in range(60):  # shrinks the bracket by 0.618^60: far below any meaningful digit
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if nll(a) < nll(b):
            hi = b
        else:
            lo = a
    return math.exp((lo + hi) / 2)


@dataclass(repr=False)
class EvalReport:
    """Everything `evaluate` measured on one split, with the label of the data it came from."""

    predictions: Predictions
    accuracy: float
    confusion: Tensor
    report: pd.DataFrame
    confused: pd.DataFrame
    classes: list[str]
    split: str
    tta: bool
    source: str

    def summary(self) -> str:
        """One line to quote, e.g. 'test accuracy 84.12% (10,000 images, flip TTA) on ...'."""
        how = "flip TTA" if self.tta else "no TTA"
        return (f"{self.split} accuracy {self.accuracy:.2%} ({len(self.predictions):,} images, "
                f"{how}) on {self.source}")

    def __repr__(self) -> str:
        return f"EvalReport({self.summary()})"


def evaluate(model: nn.Module, data: ImageData, split: str = "test", *, tta: bool = False,
             batch_size: int | None = None, device: torch.device | str | None = None,
             precision: str = "auto") -> EvalReport:
    """Predict one split of `data` and compute accuracy, confusion and per-class tables.

    A model with a different number of outputs than `data` has classes is refused (ConfigError)
    rather than scored: its extra outputs would silently cost accuracy, or hide a wrong model.
    """
    num_classes = getattr(model, "arch", {}).get("num_classes")
    if num_classes is not None:  # checked before the work when the model says it
        data.check_num_classes(num_classes)
    images, labels = data.split(split)
    predictions = predict(model, images, labels, mean=data.mean, std=data.std,
                          batch_size=batch_size, tta=tta, device=device, precision=precision)
    data.check_num_classes(predictions.probs.shape[1])  # any model: its actual outputs
    confusion = confusion_matrix(predictions.labels, predictions.preds, len(data.classes))
    return EvalReport(predictions=predictions, accuracy=accuracy(predictions), confusion=confusion,
                      report=per_class_report(confusion, data.classes),
                      confused=most_confused(confusion, data.classes), classes=list(data.classes),
                      split=split, tta=tta, source=data.title)


# ---------------------------------------------------------------------------------------------
# Branch ablation: how much does the trained network rely on each branch of one module?


def _zero_output(_module: nn.Module, _inputs: tuple, output: Tensor) -> Tensor:
    return torch.zeros_like(output)


@contextmanager
def silence_branch(module: Inception, branch: str) -> Iterator[None]:
    """Inside the block, `branch` of an Inception module outputs zeros (its channel slice)."""
    if branch not in BRANCHES:
        raise ValueError(f"branch must be one of {BRANCHES}, got {branch!r}")
    # The same hook mechanism as explain's captures: removed on leaving, even on an error.
    with forward_hooks([(getattr(module, branch), _zero_output)]):
        yield


def _inception_module(model: nn.Module, name: str) -> Inception:
    found = {n: m for n, m in model.named_modules() if isinstance(m, Inception)}
    if name not in found:
        valid = ", ".join(found) or "none"
        raise ValueError(f"{type(model).__name__} has no Inception module {name!r}; "
                         f"valid names: {valid}")
    return found[name]


def branch_ablation(model: nn.Module, data: ImageData, module: str = "inception4c",
                    split: str = "val", *, batch_size: int | None = None,
                    device: torch.device | str | None = None) -> pd.DataFrame:
    """Accuracy with each branch of one Inception module silenced in turn, and the drop.

    Rows: 'none' (the baseline, 0 channels silenced), then one row per branch with the number
    of output channels it contributes. `drop` is baseline accuracy minus accuracy.
    """
    target = _inception_module(model, module)
    device = resolve_device(device)  # a mistyped device is a clear error, not torch's
    images, labels = data.split(split)
    images = images.to(device)  # copied once, shared by the five passes

    def run() -> float:
        return accuracy(predict(model, images, labels, mean=data.mean, std=data.std,
                                batch_size=batch_size, device=device))

    rows = [{"branch": "none", "channels": 0, "accuracy": run()}]
    for name in BRANCHES:
        branch = getattr(target, name)
        with silence_branch(target, name):
            rows.append({"branch": branch_path(branch), "channels": out_channels(branch),
                         "accuracy": run()})
    table = pd.DataFrame(rows)
    table["drop"] = table["accuracy"].iloc[0] - table["accuracy"]
    return table
