"""Normalisation and batch augmentation: whole-batch tensor ops, no per-image Python.

Owns the transforms between stored uint8 images and what the network sees. It neither loads
data nor decides batches (see `inception.data.loader`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Images up to this side are CIFAR-like: too small to lose pixels to a resized crop, so they
# get the padded crop (a shift of a few pixels); larger ones get the paper's resized crop.
SMALL_SIDE = 64
CROPS = ("auto", "pad", "resized")


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


def default_crop(side: int) -> str:
    """The training crop for images of this side: 'pad' up to `SMALL_SIDE`, else 'resized'."""
    return "pad" if side <= SMALL_SIDE else "resized"


def resized_crop(images: Tensor, boxes: Tensor, size: int | tuple[int, int],
                 flip: Tensor | None = None) -> Tensor:
    """Each image's own box, resized to `size` (bilinear) and optionally mirrored.

    `boxes` is (N, 4) float pixels (top, left, height, width), `flip` (N,) bool. One
    `affine_grid` + `grid_sample` for the whole batch, so no per-image Python, and the same
    pixels as torchvision's `resized_crop` (bilinear, no antialias): samples are clamped to the
    box's outer pixel centres, so no pixel outside the box blends in. `size` is a side or
    (height, width). Returns float32 in the images' value range. Without antialiasing it suits
    boxes no larger than `size`.
    """
    n, c, h, w = images.shape
    out_h, out_w = (size, size) if isinstance(size, int) else size
    top, left, height, width = boxes.to(torch.float32).unbind(1)
    theta = torch.zeros(n, 2, 3, device=images.device)
    theta[:, 0, 0] = width / w * (1 - 2 * flip.float() if flip is not None else 1)
    theta[:, 0, 2] = (2 * left + width) / w - 1
    theta[:, 1, 1] = height / h
    theta[:, 1, 2] = (2 * top + height) / h - 1
    grid = F.affine_grid(theta, [n, c, out_h, out_w], align_corners=False)
    for axis, start, extent, side in ((0, left, width, w), (1, top, height, h)):
        low = ((2 * start + 1) / side - 1).view(n, 1, 1)  # the box's first and last pixel centres
        high = ((2 * (start + extent) - 1) / side - 1).view(n, 1, 1)
        grid[..., axis] = torch.minimum(torch.maximum(grid[..., axis], low), high)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def random_resized_crop_flip(images: Tensor, scale: tuple[float, float] = (0.25, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True,
                             generator: torch.Generator | None = None,
                             share: tuple[int, int] = (0, 1)) -> Tensor:
    """The paper's crop for large images, per sample: a box of random area and aspect ratio,
    resized back to the images' size, and a random horizontal flip (float32 out).

    Area is uniform in `scale` of the image, the log aspect ratio uniform in `ratio`, as in
    torchvision's RandomResizedCrop; where a box would not fit, its sides are clipped to the
    image rather than redrawn. The lower bound 0.25 is milder than the paper's 0.08
    (torchvision's default), which suits 90-epoch ImageNet runs more than short runs on a
    small folder (not tuned here). `share` as in `random_crop_flip`.
    """
    b, _, h, w = images.shape
    dev = images.device
    n, mine = _slice_of(share, b)
    draws = torch.rand(n, 5, device=dev, generator=generator)[mine]
    area = (scale[0] + (scale[1] - scale[0]) * draws[:, 0]) * h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * draws[:, 1])
    width = (area * aspect).sqrt().clamp(max=w)
    height = (area / aspect).sqrt().clamp(max=h)
    top, left = draws[:, 2] * (h - height), draws[:, 3] * (w - width)
    flipped = draws[:, 4] < 0.5 if flip else None
    return resized_crop(images, torch.stack([top, left, height, width], 1), (h, w), flipped)


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

