"""The command line: `python -m inception train | evaluate | models`.

Owns argument parsing and turning errors into one-line messages. All the work is done by
`inception.data`, `inception.train`, `inception.evaluate` and `inception.plots`.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from inception.data import DatasetError, load_cifar
from inception.model import list_models
from inception.runtime import default_device, describe_runtime, seed_everything
from inception.train import PRESETS, fit, get_preset, load_checkpoint


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to render --help)."""
    parser = _Parser(prog="python -m inception",
                     description="Train and evaluate GoogLeNet (Inception v1) on CIFAR-10.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train a model from a preset",
                           description="Train a GoogLeNet from a preset. Prints the device, "
                           "precision, data source, model and parameter count, shows progress, "
                           "and writes OUT/checkpoint.pt and OUT/history.csv every epoch.")
    train.add_argument("--preset", default="auto", choices=["auto", *PRESETS],
                       help="auto picks gpu when CUDA is available, else cpu (default: auto)")
    train.add_argument("--epochs", type=_positive(int), help="override the preset's epochs")
    train.add_argument("--budget-min", type=float, metavar="M",
                       help="wall-clock training budget in minutes; the LR schedule spans it "
                            "(0 removes the preset's budget)")
    train.add_argument("--max-steps", type=_positive(int), metavar="S",
                       help="stop after S optimizer steps")
    train.add_argument("--seed", type=int, help="override the preset's seed")
    train.add_argument("--data", type=Path, metavar="DIR",
                       help="dataset folder (default: $INCEPTION_DATA or data/)")
    train.add_argument("--synthetic", action="store_true",
                       help="train on random stand-in images (offline smoke runs only)")
    train.add_argument("--out", type=Path, default=Path("checkpoints"), metavar="DIR",
                       help="where checkpoint.pt and history.csv go (default: checkpoints/)")
    train.add_argument("--resume", action="store_true",
                       help="continue exactly from OUT/checkpoint.pt")
    train.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")

    evaluate = sub.add_parser("evaluate", help="evaluate a checkpoint on the test split",
                              description="Print accuracy and the per-class table of a "
                              "checkpoint, and write confusion.png next to it.")
    evaluate.add_argument("checkpoint", type=Path, help="path to checkpoint.pt")
    evaluate.add_argument("--tta", action="store_true", help="average with horizontal flips")
    evaluate.add_argument("--split", default="test", choices=["test", "val"],
                          help="which split to score (default: test)")
    evaluate.add_argument("--limit", type=_positive(int), metavar="N",
                          help="score only the first N images of the split, for a quick check "
                               "(default: all of them)")
    evaluate.add_argument("--data", type=Path, metavar="DIR",
                          help="dataset folder (default: $INCEPTION_DATA or data/)")
    evaluate.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")

    sub.add_parser("models", help="list the registered models and their parameter counts")
    return parser


def _train(args: argparse.Namespace) -> None:
    config = get_preset(args.preset)
    changes = {"epochs": args.epochs, "max_steps": args.max_steps, "seed": args.seed}
    config = replace(config, **{k: v for k, v in changes.items() if v is not None})
    if args.budget_min is not None:
        config = replace(config, budget_min=args.budget_min or None)
    device = args.device or default_device()
    print(describe_runtime(device, config.precision))
    data = load_cifar(root=args.data, seed=config.seed, train_limit=config.train_limit,
                      eval_limit=config.eval_limit,
                      source="synthetic" if args.synthetic else "auto")
    print(f"data: {data!r}")
    resume = args.out / "checkpoint.pt" if args.resume else None
    seed_everything(config.seed)  # the initial weights come from the seed too, not only the data
    model = config.build_model(len(data.classes))
    result = fit(model, data, config, device=device, out_dir=args.out, resume=resume)
    result.history.to_csv(args.out / "history.csv", index=False)
    print(f"saved {result.checkpoint} and {args.out / 'history.csv'}")


def _evaluate(args: argparse.Namespace) -> None:
    from inception import evaluate, plots  # plotting only where a figure is written

    model, meta = load_checkpoint(args.checkpoint, map_location="cpu")
    recorded = meta["data"]
    if recorded["source"] == "synthetic":  # regenerate exactly the stand-in it was trained on
        data = load_cifar(recorded["name"], source="synthetic", seed=recorded["seed"],
                          train_limit=recorded["n_train"], eval_limit=recorded["n_test"])
    else:
        data = load_cifar(recorded["name"], root=args.data, seed=recorded["seed"])
    # Normalise exactly as in training: with the statistics stored in the checkpoint.
    data = replace(data, mean=tuple(recorded["mean"]), std=tuple(recorded["std"]))
    if args.limit is not None:
        images, labels = data.split(args.split)
        data = replace(data, **{f"{args.split}_images": images[:args.limit],
                                f"{args.split}_labels": labels[:args.limit]})
    start = time.perf_counter()
    report = evaluate.evaluate(model, data, args.split, tta=args.tta, device=args.device)
    seconds = time.perf_counter() - start
    print(f"{report.summary()} in {seconds:.1f} s")
    with pd.option_context("display.float_format", "{:.3f}".format):
        print(report.report.to_string())
    figure = plots.confusion_heatmap(report.confusion, report.classes, source=data.title)
    png = args.checkpoint.with_name("confusion.png")
    figure.savefig(png, dpi=120, bbox_inches="tight")
    print(f"wrote {png}")


def _models(_: argparse.Namespace) -> None:
    table = pd.DataFrame(list_models()).set_index("name")
    print(table.to_string(formatters={"params": "{:,}".format,
                                      "params_with_aux": "{:,}".format}))


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        {"train": _train, "evaluate": _evaluate, "models": _models}[args.command](args)
    except (DatasetError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the last completed epoch's checkpoint is kept; "
              "continue with --resume", file=sys.stderr)
        return 130
    return 0
