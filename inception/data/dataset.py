"""The in-memory dataset every loader returns, and what all datasets share.

Owns `ImageData` (three splits of uint8 image tensors with their class names and channel
statistics), the seeded hold-out split, where data lives by default, and the statistics. It
reads no files: `inception.data.cifar` and `inception.data.folder` do that.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from inception.errors import ConfigError, DatasetError

_PRETTY = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


@dataclass
class ImageData:
    """Images as uint8 tensors of shape (N, 3, H, W) with int64 labels, for three splits.

    CIFAR and image folders both load into it, so training and evaluation take either.
    """

    name: str  # "cifar10", "cifar100", or an image folder's own name
    source: str  # "official", "unofficial copy", "synthetic" or "image folder"
    classes: list[str]
    train_images: Tensor
    train_labels: Tensor
    val_images: Tensor
    val_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    mean: tuple[float, float, float]  # per channel, measured on this training split
    std: tuple[float, float, float]
    seed: int = 0
    root: str | None = None
    # The loader's keyword arguments that rebuild exactly this data (recorded in checkpoints,
    # so `evaluate` can reload an image folder as it was split); None for CIFAR.
    load_args: dict | None = None

    def __post_init__(self) -> None:
        """Check the splits against each other and against `classes` (also on every `replace`).

        Labels outside the classes or images of the wrong type would otherwise train and
        evaluate without a word, to meaningless numbers.
        """
        n = len(self.classes)
        if n < 1:
            raise DatasetError(f"{self._kind} needs at least one class name in `classes`")
        for split in ("train", "val", "test"):
            images, labels = self.split(split)
            if (not isinstance(images, Tensor) or images.dtype != torch.uint8
                    or images.dim() != 4 or images.shape[1] != 3):
                got = (f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor)
                       else type(images).__name__)
                raise DatasetError(f"{self._kind}.{split}_images must be a uint8 tensor "
                                   f"(N, 3, H, W), got {got}")
            if (not isinstance(labels, Tensor) or labels.dtype != torch.int64
                    or labels.shape != images.shape[:1]):
                got = (f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, Tensor)
                       else type(labels).__name__)
                raise DatasetError(f"{self._kind}.{split}_labels must be an int64 tensor with one "
                                   f"label per image ({len(images)}), got {got}")
            if len(labels) and (labels.min() < 0 or labels.max() >= n):
                raise DatasetError(
                    f"{self._kind}.{split}_labels run from {labels.min().item()} to "
                    f"{labels.max().item()}, outside [0, {n}) for its {n} classes")
        _check_stats(self.mean, self.std, self._kind)

    def check_num_classes(self, num_classes: int) -> None:
        """Raise a ConfigError unless a model with `num_classes` outputs fits these classes.

        Without it a 100-class model trains and evaluates on CIFAR-10 silently (90 outputs
        simply never win), and its numbers look plausible.
        """
        if num_classes != len(self.classes):
            raise ConfigError(
                f"the model has {num_classes} outputs but {self.title} has "
                f"{len(self.classes)} classes: build it with num_classes={len(self.classes)} "
                "(len(data.classes)), or use data with as many classes as the model")

    @property
    def _kind(self) -> str:
        return type(self).__name__

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of every image."""
        return tuple(self.train_images.shape[-2:])

    @property
    def title(self) -> str:
        """How results from this data should be labelled, e.g. 'CIFAR-10 (unofficial copy)'."""
        if self.source == "synthetic":
            return f"synthetic stand-in for {_PRETTY.get(self.name, self.name)} (random images)"
        if self.name in _PRETTY:
            return f"{_PRETTY[self.name]} ({self.source})"
        height, width = self.image_size
        return f"{self.name} ({self.source}, {height}x{width})"

    def split(self, split: str) -> tuple[Tensor, Tensor]:
        """The (images, labels) of 'train', 'val' or 'test'."""
        if split not in ("train", "val", "test"):
            raise ConfigError(f"split must be 'train', 'val' or 'test', got {split!r}")
        return getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")

    def describe(self) -> dict:
        """Plain-data description stored in checkpoints (no tensors of images)."""
        return dict(name=self.name, source=self.source, title=self.title, root=self.root,
                    seed=self.seed, classes=list(self.classes), mean=list(self.mean),
                    std=list(self.std), n_train=len(self.train_labels),
                    n_val=len(self.val_labels), n_test=len(self.test_labels),
                    image_size=list(self.image_size),
                    load_args=dict(self.load_args) if self.load_args is not None else None)

    def __repr__(self) -> str:
        return (f"{self._kind}({self.title}: {len(self.train_labels)} train, "
                f"{len(self.val_labels)} val, {len(self.test_labels)} test)")


# The name the course's notebooks and older code use; CIFAR loads into the same class.
CifarData = ImageData


def default_root() -> Path:
    """`$INCEPTION_DATA`, else `data/` at the repository root, else `./data` (e.g. in Colab)."""
    if os.environ.get("INCEPTION_DATA"):
        return Path(os.environ["INCEPTION_DATA"]).expanduser()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file():
        return checkout / "data"
    return Path.cwd() / "data"


def check_limits(train_limit: int | None, eval_limit: int | None) -> None:
    """The loaders' image limits, checked as TrainConfig checks them. A slice would take -1
    as "all but the last image", and 0 training images as an empty split."""
    for name, value, least in (("train_limit", train_limit, 1), ("eval_limit", eval_limit, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < least):
            raise ConfigError(f"{name} must be a whole number of images, at least {least}, or "
                              f"None for all of them; got {value!r}")


def split_indices(n: int, held_out: Sequence[int], seed: int = 0) -> list[Tensor]:
    """Seeded disjoint parts of range(n): one of each size in `held_out`, then the rest.

    One permutation from `seed` deals them in order (the first held_out[0] indices, the next
    held_out[1], ..., and the remainder), each returned sorted, so images keep their file
    order. CIFAR holds out (val_size,) of its training images this way; an image folder without
    val/ or test/ holds them out of train/ by the same rule.
    """
    if any(k < 0 for k in held_out) or sum(held_out) > n:
        raise ValueError(f"cannot hold out {list(held_out)} of {n} items")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    bounds = [0, *itertools.accumulate(held_out), n]
    return [perm[a:b].sort().values for a, b in itertools.pairwise(bounds)]


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units.

    Computed from each channel's histogram of the 256 pixel values: exact integer counts, and
    ~20x faster than summing 138 million pixels as floats for the CIFAR-10 training split.
    """
    if images.numel() == 0:
        raise ValueError("channel_stats needs at least one image, and got none: is the "
                         "training split empty?")
    levels = torch.arange(256, dtype=torch.float64) / 255
    counts = torch.stack([torch.bincount(images[:, c].reshape(-1), minlength=256)
                          for c in range(images.shape[1])]).to(torch.float64)
    n = counts.sum(dim=1)
    mean = counts @ levels / n
    std = (counts @ levels.square() / n - mean.square()).sqrt()
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())

def _relative(path: Path) -> str:
    """`path` relative to the working directory: shorter, and no home folder in saved outputs."""
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)


def _check_stats(mean, std, owner: str, channels: int = 3) -> None:
    """Per-channel mean and std must be finite, one per channel, and std positive.

    They are the only way a NaN or inf can enter a batch: images are uint8, which cannot hold
    one. So with them checked, the loader never hands the model a non-finite batch (which in
    training mode would poison the BatchNorm running statistics for good).
    """
    for label, values in (("mean", mean), ("std", std)):
        values = tuple(values)
        if len(values) != channels or not all(math.isfinite(float(v)) for v in values):
            raise ConfigError(f"{owner} {label} must be {channels} finite numbers, one per "
                              f"channel, got {values}")
    if min(float(v) for v in std) <= 0:
        raise ConfigError(f"{owner} std must be positive in every channel, got {tuple(std)}: "
                          "a channel with std 0 holds one value only, and normalising it "
                          "divides by zero")

