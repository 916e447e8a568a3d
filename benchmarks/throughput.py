"""Training throughput of `inception.train.fit` against a plain PyTorch reference loop.

The reference is what a typical tutorial writes: torchvision-style PIL images through a
DataLoader with RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor and Normalize,
num_workers = the core count, fp32, NCHW, and `.item()` on every step. Both run the same model
at the same batch size, alternating in one process so machine noise hits both alike.

    python benchmarks/throughput.py --models googlenet_cifar_small --rounds 2
    python benchmarks/throughput.py --models googlenet_cifar_small --width 0.25 --batch-size 64
                                    (the cpu preset's network and batch)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from dataclasses import replace

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from inception.data import load_cifar
from inception.evaluate import predict
from inception.train import TrainConfig, fit


class PILCifar(Dataset):
    """CIFAR images handed out one PIL image at a time, as torchvision.datasets.CIFAR10 does."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images = images.permute(0, 2, 3, 1).numpy()  # HWC uint8, as the dataset stores
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def reference_img_per_s(model_name: str, data, batch_size: int, steps: int,
                        width: float | None = None) -> float:
    """Images per second of the tutorial-style loop, after one warm-up step."""
    tf = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(data.mean, data.std)])
    loader = DataLoader(PILCifar(data.train_images, data.train_labels, tf),
                        batch_size=batch_size, shuffle=True, drop_last=True,
                        num_workers=os.cpu_count(), persistent_workers=False)
    torch.manual_seed(0)
    model = TrainConfig(model=model_name, width=width).build_model(len(data.classes)).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    done, start = 0, None
    for x, y in loader:
        out = model(x)
        loss = F.cross_entropy(out.logits, y) + 0.3 * (
            F.cross_entropy(out.aux_logits1, y) + F.cross_entropy(out.aux_logits2, y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # the per-step host sync tutorials do for logging
        done += 1
        if done == 1:
            start = time.perf_counter()  # excludes worker start-up and the first step
        if done == steps + 1:
            break
    return steps * batch_size / (time.perf_counter() - start)


def ours_img_per_s(model_name: str, data, batch_size: int, steps: int,
                   width: float | None = None) -> float:
    """Images per second of inception.train.fit (its own measurement, training steps only)."""
    config = replace(TrainConfig(model=model_name, width=width), batch_size=batch_size, epochs=1,
                     max_steps=steps + 1, train_limit=(steps + 1) * batch_size, eval_limit=0)
    torch.manual_seed(0)
    model = config.build_model(len(data.classes))
    result = fit(model, data, config, progress=False)
    return float(result.history.img_per_s.iloc[-1])


def eval_img_per_s(model_name: str, data, n: int, width: float | None = None) -> float:
    """Inference images per second of inception.evaluate.predict."""
    model = TrainConfig(model=model_name, width=width).build_model(len(data.classes))
    images, labels = data.test_images[:n], data.test_labels[:n]
    predict(model, images[:200], labels[:200], mean=data.mean, std=data.std)  # warm-up
    start = time.perf_counter()
    predict(model, images, labels, mean=data.mean, std=data.std)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+",
                        default=["googlenet_cifar_small", "googlenet_cifar"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=float, help="width multiplier (default: the registry's)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per loop")
    parser.add_argument("--eval-images", type=int, default=2000)
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)  # the unofficial-copy notice, once is enough
    data = load_cifar()
    print(f"data: {data.title} | torch {torch.__version__} | {torch.get_num_threads()} threads "
          f"| {os.cpu_count()} cores | width {args.width or 'the registry default'} | batch "
          f"{args.batch_size}")
    print(f"{'model':<24}{'reference img/s':>16}{'ours img/s':>12}{'ratio':>8}{'eval img/s':>12}")
    for name in args.models:
        steps = args.steps if name.endswith("small") else max(3, args.steps // 5)
        ref, ours = [], []
        for _ in range(args.rounds):
            ref.append(reference_img_per_s(name, data, args.batch_size, steps, args.width))
            ours.append(ours_img_per_s(name, data, args.batch_size, steps, args.width))
        r, o = statistics.median(ref), statistics.median(ours)
        e = eval_img_per_s(name, data, args.eval_images, args.width)
        print(f"{name:<24}{r:>16.1f}{o:>12.1f}{o / r:>7.2f}x{e:>12.1f}", flush=True)


if __name__ == "__main__":
    main()
