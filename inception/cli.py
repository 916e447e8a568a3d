"""The command line: `python -m inception train | evaluate | predict | models | export`.

Owns argument parsing and turning errors into one-line messages. All the work is done by
`inception.data`, `inception.train`, `inception.evaluate` and `inception.plots`.
`torchrun --nproc_per_node=N -m inception train ...` runs the same command on N ranks; only
rank 0 prints (each rank still reports its own errors, tagged with its rank).

Errors: every command runs inside one boundary, `main`. A mistake the user can fix prints one
line naming the problem and the fix and exits 1 (Ctrl-C: a line that fits the command, exit
130); `--debug` prints the traceback as well.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import shutil
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import torch

from inception import distributed
from inception.data import SMALL_SIDE, default_crop, load_cifar, load_folder
from inception.errors import ConfigError, DatasetError, InceptionError, first_line
from inception.model import MODELS, list_models
from inception.runtime import brief_warnings, describe_runtime, resolve_device, seed_everything
from inception.train import (
    PRESETS,
    fit,
    get_preset,
    kept_aside,
    load_checkpoint,
    prepare_out_dir,
    require_checkpoint_file,
    resume_hint,
)
from inception.transfer import FREEZE_CHOICES, find_pretrained
from inception.weights import (
    TorchvisionWeights,
    export_weights,
    get_weights,
    known_weights,
    verify,
    weights_owner,
    write_record,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(kind, low: float = 0, *, strict: bool = True, high: float | None = None):
    """An argparse type: a finite `kind` (int or float) above `low` (or at it unless `strict`)."""
    what = "a whole number" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if value < low or (strict and value == low) or (high is not None and value > high):
            bound = f"{'>' if strict else '>='} {low}" + (f" and <= {high}" if high else "")
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value
    return parse


def _positive(kind):
    return _number(kind)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to render --help)."""
    parser = _Parser(prog="python -m inception",
                     description="Train and evaluate GoogLeNet (Inception v1) on CIFAR or on "
                                 "your own image folders.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train a model from a preset",
                           description="Train a GoogLeNet from a preset. Prints the device, "
                           "precision, data source, model and parameter count, shows progress, "
                           "writes OUT/checkpoint.pt after every epoch (the history inside "
                           "it) and OUT/history.csv when training ends. "
                           "torchrun --nproc_per_node=N -m inception train ... trains the "
                           "same way on N data-parallel ranks.")
    train.add_argument("--preset", default="auto", choices=["auto", *PRESETS],
                       help="auto picks gpu when CUDA is available, else cpu (default: auto)")
    train.add_argument("--epochs", type=_positive(int), help="override the preset's epochs")
    train.add_argument("--budget-min", type=_number(float, strict=False), metavar="M",
                       help="wall-clock training budget in minutes; the LR schedule spans it "
                            "(0 removes the preset's budget)")
    train.add_argument("--max-steps", type=_positive(int), metavar="S",
                       help="stop after S optimizer steps")
    train.add_argument("--seed", type=_number(int, strict=False, high=2**32 - 1),
                       help="override the preset's seed (0 to 2**32 - 1)")
    train.add_argument("--dataset", default="cifar10", metavar="cifar10|cifar100|PATH",
                       help="cifar10 or cifar100, or an image folder PATH holding "
                            "train/<class>/<images> (and optionally val/ and test/) "
                            "(default: cifar10)")
    train.add_argument("--image-size", type=_number(int, 8, strict=False), metavar="N",
                       help="for an image folder: the side every image is resized and "
                            "centre-cropped to (default: 128)")
    train.add_argument("--model", choices=sorted(MODELS),
                       help="the network to train (default: the preset's for images up to "
                            f"{SMALL_SIDE} px, googlenet with the paper's ImageNet stem above)")
    train.add_argument("--data", type=Path, metavar="DIR",
                       help="where CIFAR is kept or downloaded to "
                            "(default: $INCEPTION_DATA or data/)")
    train.add_argument("--synthetic", action="store_true",
                       help="train on random stand-in images (offline smoke runs only)")
    train.add_argument("--out", type=Path, default=Path("checkpoints"), metavar="DIR",
                       help="where checkpoint.pt and history.csv go (default: checkpoints/)")
    train.add_argument("--resume", nargs="?", const=True, type=Path, metavar="CHECKPOINT",
                       help="continue exactly from OUT/checkpoint.pt, or from CHECKPOINT "
                            "(e.g. one an earlier run kept aside as checkpoint-<time>.pt)")
    train.add_argument("--init-from", metavar="NAME|CHECKPOINT",
                       help="transfer learning: start from pretrained weights (cifar10, "
                            "imagenet) or a checkpoint, with a new classifier for this "
                            "dataset's classes; the weights decide the network (unlike "
                            "--weights of evaluate and predict, which use weights as they are)")
    train.add_argument("--freeze", choices=FREEZE_CHOICES, metavar="features|LAYER",
                       help="with --init-from: keep pretrained layers fixed, 'features' for all "
                            "but the classifier (a linear probe) or every layer up to and "
                            f"including LAYER ({', '.join(FREEZE_CHOICES[1:])})")
    train.add_argument("--pretrained-lr-scale", type=_positive(float), metavar="F",
                       help="with --init-from: the pretrained layers that train learn at the "
                            "learning rate x F (e.g. 0.1), the new classifier at the full rate "
                            "(default: 1)")
    train.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    train.add_argument("--sync-batchnorm", action="store_true",
                       help="under torchrun on GPUs: BatchNorm statistics over the global batch "
                            "(worth it for small per-rank batches)")
    train.add_argument("--dist-timeout", type=_positive(float), metavar="S",
                       default=distributed.DEFAULT_TIMEOUT_S,
                       help="under torchrun: seconds a rank waits for the others before it "
                            "stops with an error (default: %(default).0f)")

    evaluate = sub.add_parser("evaluate", help="evaluate a checkpoint on the test split",
                              description="Print accuracy and the per-class table of a "
                              "checkpoint (or of packaged weights, --weights), and write "
                              "confusion.png next to the checkpoint (or here).")
    evaluate.add_argument("checkpoint", type=Path, nargs="?", help="path to checkpoint.pt")
    evaluate.add_argument("--weights", metavar="NAME",
                          help="evaluate packaged weights instead, e.g. cifar10")
    evaluate.add_argument("--model", help="the network whose --weights to evaluate, when "
                          "several ship weights of that name")
    evaluate.add_argument("--tta", action="store_true", help="average with horizontal flips")
    evaluate.add_argument("--split", default="test", choices=["test", "val"],
                          help="which split to score (default: test)")
    evaluate.add_argument("--limit", type=_positive(int), metavar="N",
                          help="score only the first N images of the split, for a quick check "
                               "(default: all of them)")
    evaluate.add_argument("--data", type=Path, metavar="DIR",
                          help="the CIFAR folder (default: $INCEPTION_DATA or data/), or where "
                               "the image folder the checkpoint was trained on is now")
    evaluate.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")

    predict = sub.add_parser(
        "predict", help="classify image files with a checkpoint or packaged weights",
        description="Print one row per image: its top-k classes and their probabilities. Each "
        "image is resized as the model's training data was (shorter side, centre crop) and "
        "normalised with the model's own statistics. A file that cannot be read gets an error "
        "in its row, and the exit status is then 1.")
    predict.add_argument("checkpoint", type=Path, nargs="?",
                         help="path to checkpoint.pt (or use --weights)")
    predict.add_argument("files", type=Path, nargs="+", metavar="FILE_OR_FOLDER",
                         help="image files, or folders of them (searched recursively)")
    predict.add_argument("--weights", metavar="NAME",
                         help="use pretrained weights instead of a checkpoint: cifar10 "
                         "(packaged) or imagenet (torchvision's, downloaded once)")
    predict.add_argument("--model", help="the network whose --weights to use, when several "
                         "ship weights of that name")
    predict.add_argument("--top-k", type=_positive(int), default=5, metavar="K",
                         help="classes shown per image (default: 5)")
    predict.add_argument("--csv", type=Path, metavar="FILE", help="also write the table here")
    predict.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")

    sub.add_parser("models", help="list the registered models, their parameter counts and "
                   "weights (with the parameter count of the network each fits)")

    export = sub.add_parser(
        "export", help="turn a checkpoint into shippable weights with a provenance record",
        description="Write MODEL-NAME.pt (float16, no aux heads, no optimizer state; still a "
        "checkpoint) and MODEL-NAME.json into DIR. The record's accuracies are measured on the "
        "exported file itself: validation, and test with and without flip TTA.")
    export.add_argument("checkpoint", type=Path, help="path to checkpoint.pt")
    export.add_argument("--name", required=True, help="the weights' name, e.g. cifar10")
    export.add_argument("--into", type=Path, default=Path("."), metavar="DIR",
                        help="folder to write into (default: here; the package's own weights "
                             "live in inception/pretrained)")
    export.add_argument("--data-source", help="how to describe the training data in the "
                        "record (default: the data's title, e.g. 'CIFAR-10 (official)')")
    export.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra provenance field, e.g. commit=abc123 (repeatable)")
    export.add_argument("--data", type=Path, metavar="DIR",
                        help="dataset folder (default: $INCEPTION_DATA or data/)")
    debug = "show the full Python traceback of an error (for bug reports)"
    parser.add_argument("--debug", action="store_true", help=debug)
    for command in sub.choices.values():  # also accepted after the command
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help=debug)
    parser.commands = sub.choices  # for parse_args, which parses predict's words again
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line as a Namespace; predict takes its options anywhere among its paths.

    argparse fills the positionals from the first run of bare words only, so in
    `predict ckpt.pt --top-k 3 a.jpg` a.jpg would be left over. `parse_intermixed_args`
    gathers every bare word first but refuses a parser with subcommands, so predict's parser
    parses its own words again that way: those after the command, which is the first bare
    word (the top level has only flags).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if args.command == "predict":
        own = parser.commands["predict"].parse_intermixed_args(argv[argv.index("predict") + 1:])
        return argparse.Namespace(**{**vars(args), **vars(own)})
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def _train(args: argparse.Namespace) -> None:
    config = get_preset(args.preset)
    changes = {"epochs": args.epochs, "max_steps": args.max_steps, "seed": args.seed}
    config = replace(config, **{k: v for k, v in changes.items() if v is not None})
    if args.budget_min is not None:
        config = replace(config, budget_min=args.budget_min or None)
    if args.sync_batchnorm:
        config = replace(config, sync_batchnorm=True)
    config = _with_transfer(config, args)
    device = resolve_device(args.device)  # checked before anything slow: a typo fails at once
    prepare_out_dir(args.out)  # likewise a folder that cannot be written
    resume = _resume_path(args)
    cifar = _check_dataset_arguments(args)
    with (distributed.process_group(device, args.dist_timeout) as world,
          _quiet_unless(world.is_main)):
        print(describe_runtime(distributed.rank_device(device, world), config.precision))
        with distributed.main_first(world):  # rank 0 downloads or decodes; the others reuse it
            if cifar:
                data = load_cifar(args.dataset, root=args.data, seed=config.seed,
                                  train_limit=config.train_limit, eval_limit=config.eval_limit,
                                  source="synthetic" if args.synthetic else "auto")
            else:
                data = load_folder(args.dataset, seed=config.seed,
                                   train_limit=config.train_limit, eval_limit=config.eval_limit,
                                   **({} if args.image_size is None
                                      else {"image_size": args.image_size}))
        print(f"data: {data!r}")
        config, why = _choose_model(config, args.model, data.image_size, args.init_from,
                                    resume)
        crop = ("the paper's random-area crop, resized back"
                if default_crop(min(data.image_size)) == "resized"
                else f"shifted by up to {config.crop_padding} px")
        cutout = f", {config.cutout}x{config.cutout} px cut out" if config.cutout else ""
        print(f"model: {config.model}{why} | training images: {crop}, flipped{cutout}")
        seed_everything(config.seed)  # the initial weights come from the seed, not only the data
        model = config.build_model(len(data.classes), resume)
        result = fit(model, data, config, device=device, out_dir=args.out, resume=resume)
        if world.is_main:
            result.history.to_csv(args.out / "history.csv", index=False)
            print(f"saved {result.checkpoint} and {args.out / 'history.csv'}")


_CIFAR = ("cifar10", "cifar100")


def _check_dataset_arguments(args: argparse.Namespace) -> bool:
    """Whether --dataset names CIFAR; refuses options that do not apply to the dataset named."""
    cifar = args.dataset in _CIFAR
    named = str(args.dataset).lower().replace("-", "")
    if not cifar and named in _CIFAR and not Path(args.dataset).exists():
        raise ConfigError(f"--dataset {args.dataset} is neither cifar10 nor cifar100 (the names "
                          f"are lower case) nor a folder: did you mean --dataset {named}?")
    if cifar and args.image_size is not None:
        raise ConfigError(f"--image-size is for image folders; {args.dataset} images are 32x32 "
                          "(leave --image-size out, or give --dataset a folder)")
    if not cifar and (args.data is not None or args.synthetic):
        option = "--data" if args.data is not None else "--synthetic"
        raise ConfigError(f"{option} is for CIFAR; with --dataset {args.dataset} the folder "
                          f"itself is the data (leave {option} out)")
    return cifar


def _with_transfer(config, args: argparse.Namespace):
    """The config with --init-from, --freeze and --pretrained-lr-scale. The weights decide the
    width, so the preset's is dropped (the network comes from `_choose_model`)."""
    if args.init_from is None:
        if args.freeze is not None or args.pretrained_lr_scale is not None:
            raise ConfigError("--freeze and --pretrained-lr-scale act on pretrained layers: add "
                              "--init-from NAME_OR_CHECKPOINT")
        return config
    return replace(config, init_from=args.init_from, width=None, freeze=args.freeze,
                   pretrained_lr_scale=args.pretrained_lr_scale or 1.0)


def _choose_model(config, model: str | None, image_size: tuple[int, int],
                  init_from: str | None = None, resume: Path | None = None):
    """The config with the model to train, and why it was chosen (for the run header).

    Pretrained weights (--init-from) decide the network; a resumed transfer run reads it from
    its own checkpoint, so the --init-from file may have moved since. Otherwise small images
    keep the preset's CIFAR-stem network; larger ones get `googlenet`, whose ImageNet stem
    (7x7/2 conv and two max-pools) shrinks them 8x before the first Inception module, as the
    paper does at 224 px.
    """
    if model is not None:
        return replace(config, model=model), " (--model)"
    if init_from is not None and resume is not None:
        return (replace(config, model=find_pretrained(str(resume)).model),
                f" (as in the resumed checkpoint, which began from {init_from})")
    if init_from is not None:
        pretrained = find_pretrained(init_from)
        return replace(config, model=pretrained.model), f" (from {pretrained.describe()})"
    side = min(image_size)
    if side <= SMALL_SIDE:
        return config, (f" (the preset's, with the {MODELS[config.model].kwargs['stem']} stem "
                        f"for {side} px images; --model to choose another)")
    return (replace(config, model="googlenet"),
            f" (the paper's ImageNet stem, for {side} px images; --model to choose another)")


@contextlib.contextmanager
def _quiet_unless(speak: bool):
    """Silence stdout and warnings on ranks other than 0, which would repeat rank 0's lines."""
    if speak:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _evaluate(args: argparse.Namespace) -> None:
    from inception import evaluate, plots  # plotting only where a figure is written

    device = resolve_device(args.device)  # checked before anything slow: a typo fails at once
    if (args.checkpoint is None) == (args.weights is None):
        raise ConfigError("name a checkpoint file or --weights NAME (one of the two), e.g. "
                          "python -m inception evaluate --weights cifar10")
    if args.model is not None and args.weights is None:
        raise ConfigError("--model picks the network of --weights; a checkpoint names its own "
                          "network, so drop --model")
    if args.weights is not None:
        args.model = weights_owner(args.weights, args.model) or args.model
        if args.model is None:
            raise ConfigError(f"no pretrained weights named {args.weights!r}; known weights: "
                              f"{known_weights()}")
        weights = get_weights(args.model, args.weights)
        if isinstance(weights, TorchvisionWeights):
            raise ConfigError(f"{args.model}/{args.weights} are torchvision's weights, scored on "
                              "ImageNet, which this package does not load: evaluate scores "
                              "CIFAR and image folders. Classify your own images with "
                              f"python -m inception predict --weights {args.weights} FILES")
        verify(weights)
        checkpoint, png = weights.path, Path("confusion.png")
        print(f"packaged weights {args.model}/{args.weights}: "
              f"{weights.meta['test_accuracy_tta']:.2%} test accuracy with flip TTA recorded "
              f"on {weights.meta['data_source']}")
    else:
        checkpoint, png = args.checkpoint, args.checkpoint.with_name("confusion.png")
    model, meta = load_checkpoint(checkpoint, map_location="cpu")
    data = _data_of(meta["data"], args.data)
    if args.limit is not None:
        images, labels = data.split(args.split)
        data = replace(data, **{f"{args.split}_images": images[:args.limit],
                                f"{args.split}_labels": labels[:args.limit]})
    start = time.perf_counter()
    report = evaluate.evaluate(model, data, args.split, tta=args.tta, device=device)
    seconds = time.perf_counter() - start
    print(f"{report.summary()} in {seconds:.1f} s")
    with pd.option_context("display.float_format", "{:.3f}".format):
        print(report.report.to_string())
    figure = plots.confusion_heatmap(report.confusion, report.classes, source=data.title)
    figure.savefig(png, dpi=120, bbox_inches="tight")
    print(f"wrote {png}")


def _predict(args: argparse.Namespace) -> int:
    from inception.predict import load_weights, predict_images

    device = resolve_device(args.device)  # checked before anything slow: a typo fails at once
    files = list(args.files)
    if args.weights is not None:
        if args.checkpoint is not None:  # with --weights, every positional is an image
            files.insert(0, args.checkpoint)
        source, name = load_weights(args.weights, args.model), f"packaged weights {args.weights}"
    elif args.checkpoint is not None:
        source, name = args.checkpoint, str(args.checkpoint)
    else:
        raise ConfigError("name a checkpoint file or --weights NAME, then the images, e.g. "
                          "python -m inception predict --weights cifar10 photo.jpg")
    if args.csv is not None and args.csv.is_dir():
        raise ConfigError(f"--csv {args.csv} is a folder: name a file, e.g. {args.csv / 'out.csv'}")
    table = predict_images(source, files, top_k=args.top_k, device=device)
    failed = int(table["error"].notna().sum())
    print(f"{len(table) - failed} of {len(table)} images classified with {name}")
    shown = table.drop(columns="error") if not failed else table.fillna({"error": ""})
    probs = {c: "{:.1%}".format for c in table.columns if c.startswith("prob_")}
    print(shown.to_string(index=False, formatters=probs, na_rep=""))
    if args.csv is not None:
        table.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    if failed:
        print(f"error: {failed} of {len(table)} files could not be read as images (see the "
              "error column)", file=sys.stderr)
        return 1
    return 0


def _data_of(recorded: dict, root: Path | None):
    """The data a checkpoint was trained on (same split), normalised with its own statistics.

    For an image folder, `root` (--data) points at the folder if it has moved since training.
    """
    if recorded["source"] == "image folder":
        folder = Path(root or recorded["root"])
        if not folder.is_dir():
            raise DatasetError(f"the checkpoint was trained on the image folder "
                               f"{recorded['root']}, and {folder} is not a folder here: point "
                               "--data at where that folder is now")
        data = load_folder(folder, seed=recorded["seed"], **recorded["load_args"])
    elif recorded["source"] == "synthetic":  # regenerate exactly the stand-in it was trained on
        data = load_cifar(recorded["name"], source="synthetic", seed=recorded["seed"],
                          train_limit=recorded["n_train"], eval_limit=recorded["n_test"])
    else:
        data = load_cifar(recorded["name"], root=root, seed=recorded["seed"])
    return replace(data, mean=tuple(recorded["mean"]), std=tuple(recorded["std"]))


def _models(_: argparse.Namespace) -> None:
    table = pd.DataFrame(list_models()).set_index("name")
    print(table.to_string(formatters={"params": "{:,}".format,
                                      "params_with_aux": "{:,}".format}))
    print("params: with 10 classes, without aux heads. weights: each with the parameter count "
          "of the network it fits (without aux heads) and the settings where that network differs")


def _preset_of(config: dict) -> str:
    """The preset a run's config came from, with what was changed: 'quick with max_steps=2'."""
    def changes(name: str) -> dict:
        preset = asdict(PRESETS[name])
        return {k: v for k, v in config.items() if preset.get(k) != v}

    name = min(PRESETS, key=lambda n: len(changes(n)))
    changed = changes(name)
    return name + (" with " + ", ".join(f"{k}={v}" for k, v in changed.items()) if changed else "")


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Hold a Ctrl-C until the block has run, then raise it: for steps that go together.

    Signal handlers belong to the main thread; elsewhere the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed = []
    previous = signal.signal(signal.SIGINT, lambda *_: pressed.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt


def _export(args: argparse.Namespace) -> None:
    """Export, measure and record in a staging folder; only a complete pair replaces the old.

    Measuring takes minutes and needs the data: an interrupted or failed export must not leave
    new weights beside an old record (whose sha256 would then refuse them), least of all in
    inception/pretrained.
    """
    from inception import evaluate

    extra = dict(item.split("=", 1) for item in args.set if "=" in item)
    if len(extra) != len(args.set):
        raise ConfigError(f"--set takes KEY=VALUE, got {args.set}")
    staging = args.into / f".export-{args.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staged = export_weights(args.checkpoint, staging, args.name)
        model, meta = load_checkpoint(staged, map_location="cpu")  # measure the file that ships
        data = _data_of(meta["data"], args.data)
        scores = {}
        for key, split, tta in (("val_accuracy", "val", False), ("test_accuracy", "test", False),
                                ("test_accuracy_tta", "test", True)):
            scores[key] = evaluate.evaluate(model, data, split, tta=tta).accuracy
            print(f"{key}: {scores[key]:.2%}")
        config = meta["config"]
        record = write_record(staged, dict(
            model=model.name, weights=args.name, arch=model.arch,
            classes=list(data.classes), mean=list(data.mean), std=list(data.std), **scores,
            data_source=args.data_source or data.title, preset=_preset_of(config),
            config=config, epochs=meta["epoch"], steps=meta["step"],
            train_minutes=round(meta["train_seconds"] / 60, 1), precision=meta["precision"],
            device=meta["device"], torch=torch.__version__,
            file_bytes=staged.stat().st_size, **extra))
        out = args.into / staged.name
        with _ctrl_c_held():  # new weights beside the old record would fail their sha256
            os.replace(staged, out)
            os.replace(record, out.with_suffix(".json"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) and {out.with_suffix('.json')}")


def _resume_path(args: argparse.Namespace) -> Path | None:
    """The checkpoint `--resume` names (OUT/checkpoint.pt by default), checked to exist."""
    if args.resume is None:
        return None
    path = args.out / "checkpoint.pt" if args.resume is True else args.resume
    return require_checkpoint_file(path)  # lists kept-aside checkpoints when it is missing


def _interrupted(args: argparse.Namespace, started: float) -> str:
    """What Ctrl-C left behind, in the terms of the command that was running."""
    if args.command != "train":
        return (f"interrupted: {args.command} stopped before it finished; run it again to "
                "finish")
    checkpoint = args.out / "checkpoint.pt"
    if checkpoint.is_file():
        # Only a file this command wrote is its progress (a second's slack for coarse clocks):
        # before its first epoch ends, checkpoint.pt is an earlier run's, as that run left it.
        if checkpoint.stat().st_mtime >= started - 1:
            return (f"interrupted: the last completed epoch is saved in {checkpoint}; continue "
                    "with the same command plus --resume")
        return (f"interrupted before this run finished an epoch: {checkpoint} is unchanged, "
                "as the earlier run left it")
    message = "interrupted before the first epoch finished: nothing to resume"
    earlier = kept_aside(checkpoint)
    if earlier:
        message += (f"; the earlier checkpoint is kept as {earlier[0]} (continue it with "
                    f"{resume_hint(earlier[0])})")
    return message


def _error_message(err: Exception) -> str:
    """One or two lines for the user: the problem and the fix, or the bug and how to report it."""
    if isinstance(err, InceptionError | ValueError | OSError):
        return f"error: {first_line(err, typed=False)}"
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return ("error: out of memory: use a smaller preset (or batch_size), or close what "
                "else is using the memory")
    return (f"error: unexpected {first_line(err)}\n"
            "this looks like a bug in inception: rerun with --debug and report the traceback")


def _rank_tag() -> str:
    """'[rank 1 of 4] ' under torchrun, where every rank reports its own errors; else ''."""
    size = os.environ.get("WORLD_SIZE", "1")
    return "" if size in ("", "1") else f"[rank {os.environ.get('RANK', '?')} of {size}] "


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code. The one error boundary of every command."""
    args = parse_args(argv)
    shown = warnings.formatwarning
    if not args.debug:  # "UserWarning: message", without this package's file path and line
        brief_warnings()
    try:
        return _run(args)
    finally:
        warnings.formatwarning = shown


def _run(args: argparse.Namespace) -> int:
    commands = {"train": _train, "evaluate": _evaluate, "predict": _predict, "models": _models,
                "export": _export}
    started = time.time()
    try:
        code = commands[args.command](args)  # None, or the exit status a command chose
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        if os.environ.get("RANK", "0") == "0":  # every rank stopped at the same step: say it once
            print(_interrupted(args, started), file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the boundary: every failure ends in a message
        if args.debug:
            traceback.print_exc()
        print(_rank_tag() + _error_message(err), file=sys.stderr)
        return 1
    return code or 0
