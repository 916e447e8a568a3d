"""The command line: complete --help, one-line errors, and a train -> evaluate round trip."""

import pytest

from inception.cli import main


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for option in ("--preset", "--epochs", "--budget-min", "--max-steps", "--data", "--out",
                   "--resume", "--synthetic", "--seed", "--device"):
        assert option in text
    assert "{auto,quick,cpu,reference,gpu}" in text
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = capsys.readouterr().out
    assert "--tta" in text and "--limit" in text


@pytest.mark.parametrize("argv", [["train", "--preset", "tpu"], ["train", "--epochs", "-3"],
                                  ["train", "--epochs", "many"], ["fly"], []])
def test_bad_arguments_get_a_one_line_error(argv, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error:" in err


def test_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope.pt")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no checkpoint at" in err


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

