"""Does label smoothing change calibration? Train one recipe with and without it, then compare.

Notebook 05 finds the reference model underconfident and asks (exercise 6) whether label
smoothing caused it. This trains the same network twice, from the same initial weights, seed and
number of steps, with `label_smoothing` at each value given (0.1 and 0 by default), and reports
for each: test accuracy, expected calibration error, mean confidence, and the temperature fitted
on the validation split (above 1: overconfident, below 1: underconfident). A fixed number of
epochs, not a wall-clock budget, so a busy machine cannot give one run more steps than the other.

    python benchmarks/label_smoothing.py                    # cpu preset, 3 epochs per run
    python benchmarks/label_smoothing.py --epochs 1 --values 0.2 0.1 0
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import replace

import pandas as pd
import torch

import inception
from inception.evaluate import calibration, evaluate, fit_temperature, with_temperature
from inception.runtime import describe_machine
from inception.train import fit, get_preset


def measure(config, data) -> dict:
    """Train `config` from the seed's initial weights; its test calibration, before and after T."""
    inception.seed_everything(config.seed)  # the same initial weights for every value
    start = time.perf_counter()
    result = fit(config.build_model(len(data.classes)), data, config, progress=False)
    minutes = (time.perf_counter() - start) / 60
    test = evaluate(result.model, data, "test").predictions
    temperature = fit_temperature(evaluate(result.model, data, "val").predictions)
    return {"label_smoothing": config.label_smoothing, "minutes": round(minutes, 1),
            "test accuracy": test.correct.float().mean().item(),
            "mean confidence": test.confidence.mean().item(), "ECE": calibration(test)[0],
            "fitted T (val)": temperature,
            "ECE after T": calibration(with_temperature(test, temperature))[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", help="the recipe (default: cpu)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default: 3)")
    parser.add_argument("--values", type=float, nargs="+", default=[0.1, 0.0],
                        help="label-smoothing strengths to compare (default: 0.1 0)")
    args = parser.parse_args()

    config = replace(get_preset(args.preset), epochs=args.epochs, budget_min=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the unofficial-copy notice, once below
        data = inception.load_cifar(seed=config.seed)
    print(f"{describe_machine()} | torch {torch.__version__} | {data.title} | {args.preset} "
          f"preset ({config.model}, width {config.width}), {args.epochs} epochs of batch "
          f"{config.batch_size}, seed {config.seed}")
    rows = [measure(replace(config, label_smoothing=eps), data) for eps in args.values]
    table = pd.DataFrame(rows).set_index("label_smoothing")
    n_train = len(data.train_labels[:config.train_limit])
    table.insert(0, "steps", args.epochs * (n_train // config.batch_size))
    with pd.option_context("display.width", 160, "display.max_columns", None,
                           "display.float_format", "{:.4f}".format):
        print(table)


if __name__ == "__main__":
    main()
