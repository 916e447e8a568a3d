"""The command line: complete --help, one-line errors, and a train -> evaluate round trip."""

from dataclasses import replace
from pathlib import Path

import pytest
from conftest import write_tiny_folder

from inception.cli import main, parse_args
from inception.errors import CheckpointNotFoundError, ConfigError, DatasetError
from inception.train import PRESETS


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for option in ("--preset", "--epochs", "--budget-min", "--max-steps", "--data", "--out",
                   "--resume", "--synthetic", "--seed", "--device", "--dataset", "--image-size",
                   "--model", "--init-from", "--freeze", "--pretrained-lr-scale"):
        assert option in text
    assert "{auto,quick,cpu,reference,gpu}" in text
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = capsys.readouterr().out
    assert "--tta" in text and "--limit" in text


@pytest.mark.parametrize("argv, says", [
    (["train", "--preset", "tpu"], "argument --preset: invalid choice: 'tpu'"),
    (["train", "--epochs", "-3"], "argument --epochs: must be > 0, got -3"),
    (["train", "--epochs", "many"], "argument --epochs: must be a whole number, got 'many'"),
    (["fly"], "argument command: invalid choice: 'fly'"),
    ([], "the following arguments are required: command"),
    (["train", "--image-size", "4"], "argument --image-size: must be >= 8, got 4"),
    (["train", "--model", "vgg"], "argument --model: invalid choice: 'vgg'"),
    # predict parses its words again (intermixed): still refused
    (["predict", "ckpt.pt", "a.jpg", "--bogus"], "unrecognized arguments: --bogus"),
    (["predict", "ckpt.pt", "--top-k", "0", "a.jpg"], "argument --top-k: must be > 0, got 0"),
    (["predict", "--top-k", "3"], "the following arguments are required: FILE_OR_FOLDER"),
    (["models", "extra"], "unrecognized arguments: extra")])
def test_bad_arguments_get_a_one_line_error_that_names_the_argument(argv, says, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error: " + says in err and "--help" in err


def _fails_with(argv, message, error, capsys):
    """main(argv) prints one line holding `message`; --debug's traceback shows it was `error`,
    the package's own class for it (the one line alone would read the same from a ValueError)."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert main([*argv, "--debug"]) == 1
    assert f"inception.errors.{error.__name__}: " in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message", "error"), [
    (["evaluate", "{tmp}/nope.pt", "--device", "cpu"], "no checkpoint at",
     CheckpointNotFoundError),
    (["evaluate", "--device", "cpu"], "name a checkpoint file or --weights NAME (one of the two)",
     ConfigError),
    (["evaluate", "--weights", "imagenet", "--device", "cpu"],  # its own network, not the default
     "googlenet/imagenet are torchvision's weights, scored on ImageNet", ConfigError),
    (["evaluate", "--weights", "cifar11", "--device", "cpu"],
     "no pretrained weights named 'cifar11'; known weights: cifar10 (googlenet_cifar_small)",
     ConfigError),
    (["evaluate", "ckpt.pt", "--model", "googlenet", "--device", "cpu"],
     "a checkpoint names its own network, so drop --model", ConfigError),
    (["predict", "ckpt.pt", "a.jpg", "--csv", "{tmp}", "--device", "cpu"],
     "is a folder: name a file", ConfigError),
    (["export", "ckpt.pt", "--name", "x", "--set", "commit"], "--set takes KEY=VALUE",
     ConfigError),
])
def test_commands_refuse_what_they_cannot_use_in_one_line(argv, message, error, tmp_path,
                                                          capsys):
    _fails_with([a.format(tmp=tmp_path) for a in argv], message, error, capsys)


def test_train_then_evaluate_round_trip(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--preset", "quick", "--synthetic", "--max-steps", "3",
                 "--out", str(out), "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "device: cpu" in printed and "precision:" in printed and "synthetic" in printed
    assert "googlenet_cifar_small" in printed and "params" in printed
    assert (out / "checkpoint.pt").is_file() and (out / "history.csv").is_file()
    assert main(["evaluate", str(out / "checkpoint.pt"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "synthetic" in printed and "precision" in printed
    assert "(500 images" in printed  # the quick preset's synthetic test split, all of it
    assert (out / "confusion.png").is_file()
    assert main(["evaluate", str(out / "checkpoint.pt"), "--device", "cpu", "--split", "val",
                 "--limit", "37"]) == 0
    printed = capsys.readouterr().out
    assert "val accuracy" in printed and "(37 images" in printed



@pytest.mark.parametrize(("argv", "message", "error"), [
    (["--dataset", "cifar10", "--image-size", "64"], "--image-size is for image folders",
     ConfigError),
    (["--dataset", "{folder}", "--synthetic"], "--synthetic is for CIFAR", ConfigError),
    (["--dataset", "{folder}", "--data", "x"], "--data is for CIFAR", ConfigError),
    (["--dataset", "{tmp}/nowhere"], "nowhere does not exist: point --dataset at a folder",
     DatasetError),
    (["--dataset", "CIFAR-10"], "did you mean --dataset cifar10?", ConfigError),
])
def test_dataset_options_that_do_not_fit_get_a_one_line_error(argv, message, error, tmp_path,
                                                              capsys):
    folder = write_tiny_folder(tmp_path / "set", per_class=2)
    argv = [a.format(folder=folder, tmp=tmp_path) for a in argv]
    _fails_with(["train", *argv, "--out", str(tmp_path / "run"), "--device", "cpu"], message,
                error, capsys)


def test_train_on_an_image_folder_picks_the_stem_by_size_then_evaluates(tmp_path, capsys):
    folder = write_tiny_folder(tmp_path / "bugs", per_class=20, height=100, width=120)
    out = tmp_path / "run"
    assert main(["train", "--preset", "quick", "--dataset", str(folder), "--image-size", "96",
                 "--max-steps", "2", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "bugs (image folder, 96x96): 32 train, 4 val, 4 test" in printed
    assert "model: googlenet (the paper's ImageNet stem, for 96 px images" in printed
    assert "random-area crop" in printed
    assert main(["evaluate", str(out / "checkpoint.pt"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "(4 images" in printed and "ant" in printed
    assert main(["train", "--preset", "quick", "--dataset", str(folder), "--image-size", "32",
                 "--max-steps", "1", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "model: googlenet_cifar_small (the preset's, with the cifar16 stem" in printed
    assert "shifted by up to 4 px" in printed


def test_evaluate_finds_a_moved_image_folder_with_data(tmp_path, capsys):
    folder = write_tiny_folder(tmp_path / "bugs", per_class=20, height=32, width=32)
    out = tmp_path / "run"
    assert main(["train", "--preset", "quick", "--dataset", str(folder), "--image-size", "32",
                 "--max-steps", "1", "--out", str(out), "--device", "cpu"]) == 0
    moved = folder.rename(tmp_path / "bugs_moved")
    _fails_with(["evaluate", str(out / "checkpoint.pt"), "--device", "cpu"],
                f"trained on the image folder {folder}, and {folder} is not a folder here: "
                "point --data at where that folder is now", DatasetError, capsys)
    assert main(["evaluate", str(out / "checkpoint.pt"), "--data", str(moved),
                 "--device", "cpu"]) == 0
    assert "(4 images" in capsys.readouterr().out


def test_train_says_which_augmentations_the_images_get(tmp_path, capsys, monkeypatch):
    argv = ["train", "--preset", "quick", "--synthetic", "--max-steps", "1", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "plain")]) == 0
    assert "training images: shifted by up to 4 px, flipped\n" in capsys.readouterr().out
    monkeypatch.setitem(PRESETS, "quick", replace(PRESETS["quick"], cutout=6))
    assert main([*argv, "--out", str(tmp_path / "cutout")]) == 0
    assert ("training images: shifted by up to 4 px, flipped, 6x6 px cut out\n"
            in capsys.readouterr().out)


def test_train_takes_cifar100_by_name(tmp_path, capsys):
    assert main(["train", "--preset", "quick", "--dataset", "cifar100", "--synthetic",
                 "--max-steps", "1", "--out", str(tmp_path), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "synthetic stand-in for CIFAR-100" in printed and "googlenet_cifar_small" in printed


def test_train_from_packaged_weights_on_an_image_folder_then_resume(tmp_path, capsys):
    folder = write_tiny_folder(tmp_path / "bugs", per_class=20, height=32, width=32)
    argv = ["train", "--preset", "quick", "--dataset", str(folder), "--image-size", "32",
            "--init-from", "cifar10", "--freeze", "inception4e", "--pretrained-lr-scale", "0.1",
            "--out", str(tmp_path / "run"), "--device", "cpu"]
    assert main([*argv, "--max-steps", "1"]) == 0
    printed = capsys.readouterr().out
    assert "model: googlenet_cifar_small (from the cifar10 weights of" in printed
    assert "tensors transferred, 2 new (fc)" in printed
    assert "frozen: conv1 to inception4e" in printed and "lr x 0.1" in printed
    with pytest.warns(UserWarning, match="max_steps: 1 -> 2 .*warm restart"):
        assert main([*argv, "--max-steps", "2", "--resume"]) == 0
    assert "resumed, so every weight is the checkpoint's" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["--freeze", "features"], "add --init-from"),
    (["--init-from", "cifar10", "--model", "googlenet"], "set model='googlenet_cifar_small'"),
    (["--init-from", "nothing"], "neither pretrained weights nor a checkpoint"),
])
def test_transfer_options_that_do_not_fit_get_a_one_line_error(argv, message, tmp_path,
                                                                capsys):
    _fails_with(["train", "--preset", "quick", "--synthetic", *argv, "--out",
                 str(tmp_path / "run"), "--device", "cpu"], message, ConfigError, capsys)


def test_warnings_print_as_one_line_without_the_package_path_unless_debugging(monkeypatch):
    import warnings

    import inception.cli as cli

    seen = []

    def models(_args):  # how a warning raised inside a command would be printed
        seen.append(warnings.formatwarning("no val/ folder", UserWarning,
                                           "/site-packages/inception/cli.py", 236))

    monkeypatch.setattr(cli, "_models", models)
    before = warnings.formatwarning
    assert main(["models"]) == 0 and main(["models", "--debug"]) == 0
    assert seen[0] == "UserWarning: no val/ folder\n"
    assert "/site-packages/inception/cli.py:236" in seen[1]  # --debug keeps the location
    assert warnings.formatwarning is before  # in-process callers get theirs back



@pytest.mark.parametrize("argv", [
    ["predict", "ckpt.pt", "--top-k", "3", "a.jpg", "b.jpg", "--device", "cpu"],
    ["predict", "ckpt.pt", "a.jpg", "--top-k", "3", "b.jpg", "--device", "cpu"],
    ["predict", "--device", "cpu", "ckpt.pt", "a.jpg", "b.jpg", "--top-k", "3"],
    ["--debug", "predict", "ckpt.pt", "--top-k", "3", "a.jpg", "--device", "cpu", "b.jpg"],
    ["predict", "ckpt.pt", "--top-k", "3", "a.jpg", "--debug", "--device", "cpu", "b.jpg"],
])
def test_predict_options_may_come_between_the_paths(argv):
    """Any order parses as all options first does, the order argparse always read right."""
    options_first = vars(parse_args(["predict", "--top-k", "3", "--device", "cpu",
                                     "ckpt.pt", "a.jpg", "b.jpg"]))
    assert options_first["checkpoint"] == Path("ckpt.pt")
    assert options_first["files"] == [Path("a.jpg"), Path("b.jpg")]
    parsed = vars(parse_args(argv))
    assert parsed.pop("debug") == ("--debug" in argv)
    options_first.pop("debug")
    assert parsed == options_first


def test_predict_with_weights_takes_every_path_as_an_image_in_any_order():
    args = parse_args(["predict", "--weights", "cifar10", "a.jpg", "--top-k", "3", "b.jpg"])
    assert (args.weights, args.top_k) == ("cifar10", 3)
    assert [args.checkpoint, *args.files] == [Path("a.jpg"), Path("b.jpg")]  # _predict's images
