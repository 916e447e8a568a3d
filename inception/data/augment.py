"""Normalisation and batch augmentation: whole-batch tensor ops, no per-image Python.

Owns the transforms between stored uint8 images and what the network sees. It neither loads
data nor decides batches (see `inception.data.loader`).
"""

from __future__ import annotations

import torch
from torch import Tensor


def normalize(images: Tensor, mean: tuple[float, ...] | Tensor,
              std: tuple[float, ...] | Tensor) -> Tensor:
    """uint8 images (N, 3, H, W) to float32, standardised per channel.

    `mean`/`std` may already be tensors on the images' device (the loader caches them): building
    them from Python floats is a host-to-device copy, which on a GPU would sync every batch.
    """
    m = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.float() - m * 255) / (s * 255)


def denormalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Undo `normalize`, back to floats in [0, 1] for display."""
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() * s + m).clamp(0, 1)


def _reflect(index: Tensor, size: int) -> Tensor:
    """Map out-of-range indices back inside by mirroring at the edges (like reflect padding)."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def _slice_of(share: tuple[int, int], b: int) -> tuple[int, slice]:
    """How many random draws a batch needs, and which of them belong to these `b` images.

    `share` = (rank, world_size): the images are the rank-th of world_size equal slices of one
    global batch. Drawing for the whole global batch and keeping the slice gives each image the
    numbers one process would have drawn for it.
    """
    rank, world_size = share
    return b * world_size, slice(rank * b, (rank + 1) * b)


def random_crop_flip(images: Tensor, padding: int = 4, flip: bool = True,
                     generator: torch.Generator | None = None,
                     share: tuple[int, int] = (0, 1)) -> Tensor:
    """Per-sample random crop (from a reflect-padded image) and horizontal flip, in one gather.

    Each image gets its own shift in [-padding, padding] on both axes and its own coin flip.
    Nothing is padded in memory: the crop is a gather with mirrored indices. `share` (rank,
    world_size) marks the images as one rank's slice of a global batch (see `_slice_of`).
    """
    b, c, h, w = images.shape
    dev = images.device
    n, mine = _slice_of(share, b)
    dy = torch.randint(-padding, padding + 1, (n, 1), device=dev, generator=generator)[mine]
    dx = torch.randint(-padding, padding + 1, (n, 1), device=dev, generator=generator)[mine]
    rows = torch.arange(h, device=dev) + dy
    cols = torch.arange(w, device=dev) + dx
    if flip:
        flipped = torch.rand(n, 1, device=dev, generator=generator)[mine] < 0.5
        cols = torch.where(flipped, cols.flip(1), cols)
    rows, cols = _reflect(rows, h), _reflect(cols, w)
    batch = torch.arange(b, device=dev).view(b, 1, 1, 1)
    chan = torch.arange(c, device=dev).view(1, c, 1, 1)
    return images[batch, chan, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


def cutout(images: Tensor, size: int, generator: torch.Generator | None = None,
           share: tuple[int, int] = (0, 1)) -> Tensor:
    """Zero a size x size square at a random centre of each image (clipped at the borders).

    Applied after normalisation, so zero means "the mean colour" (DeVries & Taylor, 2017).
    `share` as in `random_crop_flip`.
    """
    b, _, h, w = images.shape
    dev = images.device
    n, mine = _slice_of(share, b)
    cy = torch.randint(0, h, (n, 1, 1), device=dev, generator=generator)[mine]
    cx = torch.randint(0, w, (n, 1, 1), device=dev, generator=generator)[mine]
    ys = torch.arange(h, device=dev).view(1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    top, left = cy - size // 2, cx - size // 2
    hole = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return images * (~hole).unsqueeze(1).to(images.dtype)

