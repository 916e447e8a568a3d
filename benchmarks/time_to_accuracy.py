"""Train a preset under its wall-clock budget and report test accuracy, time and peak memory.

Training time counts the optimizer steps only (per-epoch validation and the final test pass
are timed separately), which is how the presets' budgets are defined.

    python benchmarks/time_to_accuracy.py --preset cpu              # the 15-minute CPU run
    python benchmarks/time_to_accuracy.py --preset cpu --budget-min 5 --width 0.125
    python benchmarks/time_to_accuracy.py --preset cpu --budget-min 45 --record runs.json

`--record` appends the run (machine, config, per-epoch history, test accuracy) to a JSON list:
the accuracy-against-time table in the README and notebook 04's figure are read from such records.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import sys
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import torch

from inception.data import load_cifar
from inception.evaluate import evaluate
from inception.runtime import describe_machine
from inception.train import fit, get_preset


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", help="quick, cpu, reference, gpu or auto")
    parser.add_argument("--budget-min", type=float, help="override the preset's budget")
    parser.add_argument("--epochs", type=int, help="override the preset's epochs")
    parser.add_argument("--width", type=float, help="override the model's width multiplier")
    parser.add_argument("--batch-size", type=int, help="override the batch size")
    parser.add_argument("--lr", type=float, help="override the peak learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", type=Path, help="append this run to a JSON list in this file")
    args = parser.parse_args()

    config = get_preset(args.preset)
    changes = dict(budget_min=args.budget_min, epochs=args.epochs, width=args.width,
                   batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    config = replace(config, **{k: v for k, v in changes.items() if v is not None})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the unofficial-copy notice
        data = load_cifar(seed=config.seed)
    print(f"{data.title} | torch {torch.__version__} | {torch.get_num_threads()} threads")
    print(config)

    torch.manual_seed(config.seed)
    model = config.build_model(len(data.classes))
    wall = time.perf_counter()
    result = fit(model, data, config)
    fit_wall = time.perf_counter() - wall
    rows, test = [], {}
    for tta in (False, True):
        start = time.perf_counter()
        report = evaluate(result.model, data, "test", tta=tta, device=result.device)
        rows.append((report.summary(), time.perf_counter() - start))
        test["test_acc_tta" if tta else "test_acc"] = report.accuracy

    print(f"\npreset {args.preset}: training {result.train_seconds:.0f} s "
          f"({result.stopped_by}), fit wall time incl. validation {fit_wall:.0f} s, "
          f"{len(result.history)} epochs, precision {result.precision}")
    for summary, seconds in rows:
        print(f"{summary} (evaluated in {seconds:.1f} s)")
    print(f"best val accuracy {result.history.val_acc.max():.2%}; "
          f"peak resident memory {peak_rss_mb():.0f} MB")
    if args.record is not None:
        record = dict(date=datetime.date.today().isoformat(), machine=describe_machine(),
                      torch=torch.__version__, data=data.title, preset=args.preset,
                      config=asdict(config), precision=result.precision,
                      stopped_by=result.stopped_by, train_seconds=round(result.train_seconds, 1),
                      history=result.history.to_dict(orient="records"), **test)
        runs = json.loads(args.record.read_text()) if args.record.exists() else []
        args.record.write_text(json.dumps([*runs, record], indent=1) + "\n")
        print(f"recorded in {args.record} ({len(runs) + 1} runs)")


if __name__ == "__main__":
    main()
