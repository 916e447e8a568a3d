"""Training throughput of `fit` on 1 rank against N ranks, each launched by torchrun.

Each run is `torchrun --standalone --nproc_per_node=N` on this very script, which then trains
a preset's recipe with `inception.train.fit` for two epochs of `--steps` steps each, at the
preset's per-rank batch (so the global batch grows with N, as it does with
`torchrun -m inception train`). The first
epoch is a warm-up; the second epoch's images per second, over all ranks, is the number. The
cores are shared out between the ranks (OMP_NUM_THREADS = cores // N), so 1 rank with 2
threads is compared with 2 ranks of 1 thread each, and the runs alternate over `--rounds` so a
machine's drift hits every N alike. Random images (the synthetic stand-in): only speed matters.

    python benchmarks/distributed.py                  # 1 against 2 ranks, the cpu preset
    python benchmarks/distributed.py --ranks 1 2 4 8 --preset gpu --device cuda

On a CPU, ranks compete for the same cores and memory bandwidth, so expect little or no gain:
the point there is that the code path works. Scaling is for GPUs, one rank per GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _worker(args: argparse.Namespace) -> None:
    """Under torchrun: train and, on rank 0, print one JSON line with the measurement."""
    import torch

    from inception.data import load_cifar
    from inception.train import fit, get_preset

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    preset = get_preset(args.preset)
    global_batch = preset.batch_size * world_size
    config = replace(preset, epochs=2, budget_min=None, max_steps=None,
                     train_limit=args.steps * global_batch, eval_limit=0)
    data = load_cifar(source="synthetic", train_limit=config.train_limit, eval_limit=0)
    torch.manual_seed(0)
    result = fit(config.build_model(len(data.classes)), data, config, device=args.device,
                 progress=False)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(dict(ranks=world_size, threads=torch.get_num_threads(),
                              global_batch=global_batch,
                              img_per_s=float(result.history.img_per_s.iloc[-1]))), flush=True)


def _launch(ranks: int, args: argparse.Namespace) -> dict:
    """One torchrun run on `ranks` processes; its rank 0's measurement."""
    threads = max(1, (os.cpu_count() or 1) // ranks) if args.device == "cpu" else 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={ranks}", __file__, "--worker", "--preset", args.preset,
               "--steps", str(args.steps), "--device", args.device]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"torchrun with {ranks} ranks failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--preset", default="cpu",
                        help="the recipe, with its per-rank batch (default: cpu)")
    parser.add_argument("--steps", type=int, default=30, help="steps per epoch (2 epochs)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per rank)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return

    import torch

    from inception.runtime import describe_machine
    from inception.train import get_preset

    preset = get_preset(args.preset)
    print(f"{describe_machine()} | torch {torch.__version__} | {args.preset} preset: "
          f"{preset.model} at width {preset.width}, batch {preset.batch_size} per rank | "
          f"{args.steps} timed steps")
    runs: dict[int, list[dict]] = {n: [] for n in args.ranks}
    for _ in range(args.rounds):
        for n in args.ranks:
            runs[n].append(_launch(n, args))
    base = statistics.median(r["img_per_s"] for r in runs[args.ranks[0]])
    print(f"{'ranks':>5}{'threads/rank':>14}{'global batch':>14}{'img/s':>10}{'speed-up':>10}"
          f"{'efficiency':>12}")
    for n in args.ranks:
        rate = statistics.median(r["img_per_s"] for r in runs[n])
        speedup = rate / base
        print(f"{n:>5}{runs[n][0]['threads']:>14}{runs[n][0]['global_batch']:>14}{rate:>10.1f}"
              f"{speedup:>9.2f}x{speedup / (n / args.ranks[0]):>12.0%}")
    print(f"medians of {args.rounds} alternating rounds")


if __name__ == "__main__":
    main()
