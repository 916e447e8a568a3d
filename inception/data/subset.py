"""Smaller datasets carved from a loaded one: some of its classes, or a few images per class.

Owns the two cuts a transfer-learning experiment needs (notebook 07, after Yosinski et al.,
2014): a task made of some of the classes (`select_classes`, with the labels renumbered), and
the same task with only a few labelled training images per class (`few_per_class`). Both
return a new `ImageData` whose statistics are measured on its own training split, as a user
holding only that data would measure them. Neither copies more than the images it keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor

from inception.data.dataset import ImageData, channel_stats
from inception.errors import ConfigError


def select_classes(data: ImageData, classes: Sequence[str], *, name: str) -> ImageData:
    """The images of `classes` only, in every split, relabelled 0..len(classes)-1 in that order.

    `name` labels results from it (its `title`), e.g. "CIFAR-10 task B". The mean and std are
    measured again on the kept training images.
    """
    classes = list(classes)
    unknown = [c for c in classes if c not in data.classes]
    if unknown or not classes or len(set(classes)) != len(classes):
        problem = (f"{', '.join(map(repr, unknown))} not among them" if unknown
                   else "the list is empty" if not classes else "a class is named twice")
        raise ConfigError(f"select_classes takes distinct class names of {data.title} "
                          f"({', '.join(data.classes)}): {problem}")
    # old label -> new label, and -1 for the classes left out
    relabel = torch.full((len(data.classes),), -1, dtype=torch.int64)
    relabel[[data.classes.index(c) for c in classes]] = torch.arange(len(classes))

    def keep(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        new = relabel[labels]
        kept = new >= 0
        return images[kept], new[kept]

    splits = {split: keep(*data.split(split)) for split in ("train", "val", "test")}
    if len(splits["train"][1]) == 0:
        raise ConfigError(f"{data.title} has no training images of {', '.join(classes)}")
    mean, std = channel_stats(splits["train"][0])
    return replace(data, name=name, classes=classes, mean=mean, std=std, load_args=None,
                   **{f"{split}_{part}": tensor for split, pair in splits.items()
                      for part, tensor in zip(("images", "labels"), pair, strict=True)})


def few_per_class(data: ImageData, per_class: int, *, seed: int = 0) -> ImageData:
    """`data` with only `per_class` training images of each class; validation and test unchanged.

    The images are the first `per_class` of one seeded shuffle per class, so the subsets are
    nested: the 50 images of a class are among its 250, and those among its 1,000. Comparisons
    across sizes then differ by the added data, not by a new draw. Mean and std are measured
    on the kept images.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ConfigError(f"per_class must be a whole number of images >= 1, got {per_class!r}")
    generator = torch.Generator().manual_seed(seed)
    labels = data.train_labels
    counts = torch.bincount(labels, minlength=len(data.classes))
    short = [f"{c} ({n})" for c, n in zip(data.classes, counts.tolist(), strict=True)
             if n < per_class]
    if short:
        raise ConfigError(f"{data.title} has fewer than {per_class} training images of "
                          f"{', '.join(short)}: ask for at most {counts.min().item()} per class")
    # One permutation per class, drawn in class order from one generator: the same seed gives
    # the same images whatever per_class is, which is what makes the subsets nested.
    chosen = []
    for label in range(len(data.classes)):
        members = (labels == label).nonzero().flatten()
        order = torch.randperm(len(members), generator=generator)
        chosen.append(members[order[:per_class]])
    index = torch.cat(chosen).sort().values  # file order, as every split keeps it
    images = data.train_images[index]
    mean, std = channel_stats(images)
    return replace(data, train_images=images, train_labels=labels[index], mean=mean, std=std,
                   load_args=None)
