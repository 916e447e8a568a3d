"""Training-step throughput of GoogLeNet variants (stem x width), one fresh process per variant.

Each variant trains on one fixed random batch (channels_last, fp32 unless --precision says
otherwise), so the number is the network's own cost with no data loading. Every variant runs in
its own subprocess: several models alive in one process slowed a step 3-8x on a 2-core CPU.

    python benchmarks/architectures.py                       # the variants the presets weighed
    python benchmarks/architectures.py --variants cifar16:0.5 cifar:0.25 --batch-size 128
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from inception.model import build_model, count_parameters
from inception.runtime import autocast_dtype, choose_precision, describe_machine

DEFAULT_VARIANTS = ["cifar:0.125", "cifar:0.25", "cifar16:0.25", "cifar16:0.375", "cifar16:0.5"]


def measure(stem: str, width: float, batch_size: int, aux: bool, precision: str) -> str:
    """One table row: parameters, forward multiply-adds per image and training images/s."""
    torch.manual_seed(0)
    kwargs = dict(stem=stem, width=width)
    model = build_model("googlenet_cifar", aux_logits=aux, **kwargs)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,))
    dtype = autocast_dtype(choose_precision("cpu", precision))

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            out = model(x)
        if aux:
            loss = F.cross_entropy(out.logits, y) + 0.3 * (
                F.cross_entropy(out.aux_logits1, y) + F.cross_entropy(out.aux_logits2, y))
        else:
            loss = F.cross_entropy(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up: oneDNN picks and caches its kernels
        step()
    steps = max(5, 1500 // batch_size)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    rate = steps * batch_size / (time.perf_counter() - start)
    deployed = build_model("googlenet_cifar", aux_logits=False, **kwargs).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        deployed(x[:1])
    return (f"{stem:8s} {width:>6g} {count_parameters(deployed):>11,} "
            f"{counter.get_total_flops() / 2e6:>10.1f} {rate:>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, metavar="STEM:WIDTH")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-aux", action="store_true", help="train without the aux heads")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--one", metavar="STEM:WIDTH", help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.one:
        stem, width = args.one.split(":")
        print(measure(stem, float(width), args.batch_size, not args.no_aux, args.precision),
              flush=True)
        return
    print(f"{describe_machine()} | torch {torch.__version__} | batch {args.batch_size} | "
          f"aux heads {'off' if args.no_aux else 'on'} | precision "
          f"{choose_precision('cpu', args.precision)}")
    print(f"{'stem':8s} {'width':>6} {'params':>11} {'fwd MMAC':>10} {'img/s':>8}")
    for variant in args.variants:
        child = [sys.executable, __file__, "--one", variant, "--batch-size", str(args.batch_size),
                 "--precision", args.precision] + (["--no-aux"] if args.no_aux else [])
        subprocess.run(child, check=True)


if __name__ == "__main__":
    main()
