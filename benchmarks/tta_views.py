"""Does test-time augmentation beyond the flip pay? Score a trained model on sets of shifted views.

`evaluate(..., tta=True)` averages each image's softmax with its mirror's. The fast CIFAR
trainers also average views shifted by a pixel or two, the translations training saw (the random
crop shifts by up to 4 px). This computes every view's softmax once, on the validation split
(where a choice is made) and, with --test, on the test split, then scores sets of views:

    none, flip, flip + 2 px shifts (10 views), flip + 1 px diagonal shifts (10), all 18

Shifted pixels come from reflection at the edges, as in training's crop. The model is the
packaged reference weights unless a checkpoint is named. Accuracy only, so it may run on a busy
machine; 18 views of 15,000 images took 18 minutes on 2 AVX2 cores (machine B).

    python benchmarks/tta_views.py                         # reference weights, validation split
    python benchmarks/tta_views.py CHECKPOINT --test
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import inception
from inception.data import load_cifar, normalize
from inception.model import fold_batchnorm
from inception.runtime import describe_machine

SHIFTS = [(0, 0), (-2, 0), (2, 0), (0, -2), (0, 2), (-1, -1), (1, 1), (-1, 1), (1, -1)]
VIEW_SETS = {
    "none": [(False, 0, 0)],
    "flip": [(False, 0, 0), (True, 0, 0)],
    "flip + 2 px shifts (10)": [(f, dy, dx) for f in (False, True)
                                for dy, dx in SHIFTS[:5]],
    "flip + 1 px diagonals (10)": [(f, dy, dx) for f in (False, True)
                                   for dy, dx in SHIFTS[:1] + SHIFTS[5:]],
    "all (18)": [(f, dy, dx) for f in (False, True) for dy, dx in SHIFTS],
}


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """`x` moved by (dy, dx) pixels, the uncovered border filled by reflection."""
    pad = max(abs(dy), abs(dx))
    if pad == 0:
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    return padded[..., pad + dy:pad + dy + h, pad + dx:pad + dx + w]


def view_probs(net: torch.nn.Module, images: torch.Tensor, mean, std,
               batch_size: int = 500) -> dict[tuple, torch.Tensor]:
    """Softmax of every view in SHIFTS x {as is, mirrored}, for uint8 `images`."""
    views = VIEW_SETS["all (18)"]
    probs = {v: [] for v in views}
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = normalize(images[i:i + batch_size], mean, std)
            for flip, dy, dx in views:
                view = shifted(x.flip(3) if flip else x, dy, dx)
                probs[(flip, dy, dx)].append(
                    net(view.contiguous(memory_format=torch.channels_last)).softmax(1))
    return {v: torch.cat(p) for v, p in probs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", help="default: the packaged reference weights")
    parser.add_argument("--test", action="store_true", help="score the test split too")
    parser.add_argument("--data", default=None, help="CIFAR folder (default: data/)")
    args = parser.parse_args()
    if args.checkpoint is None:  # the packaged weights are a checkpoint too: same metadata
        (model, meta), what = inception.load_reference(), "packaged reference weights"
    else:
        model, meta = inception.load_checkpoint(args.checkpoint, map_location="cpu")
        what = args.checkpoint
    mean, std = meta["data"]["mean"], meta["data"]["std"]
    recorded = meta["data"]  # the data and split seed it trained on: its validation is unseen
    if recorded["name"] not in ("cifar10", "cifar100"):
        parser.error(f"{what} was trained on {recorded['title']}; this script scores CIFAR")
    data = load_cifar(recorded["name"], args.data, seed=recorded["seed"], download=False)
    net = fold_batchnorm(model).to(memory_format=torch.channels_last)
    print(f"{what} on {data.title}; {describe_machine()}")
    for split in ("val", "test") if args.test else ("val",):
        images, labels = data.split(split)
        probs = view_probs(net, images, mean, std)
        for name, views in VIEW_SETS.items():
            correct = (sum(probs[v] for v in views).argmax(1) == labels).float().mean().item()
            print(f"{split:>4} ({len(labels):,} images)  {name:<28} {correct:.2%}")


if __name__ == "__main__":
    main()
