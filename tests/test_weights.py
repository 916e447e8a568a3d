"""Packaged weights: the API in torchvision's manner, integrity checks, and their accuracy."""

import json
import os
import shutil
import signal
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import inception.weights as W
from inception import evaluate
from inception.data import load_cifar
from inception.errors import ConfigError, WeightsError
from inception.evaluate import accuracy, predict
from inception.model import build_model, count_parameters, list_models
from inception.train import PRESETS, TrainConfig, fit, load_checkpoint

MODEL, NAME = "googlenet_cifar_small", "cifar10"


@pytest.fixture(scope="module")
def reference() -> W.Weights:
    return W.get_weights(MODEL, NAME)


def test_reference_weights_are_small_and_fully_described(reference):
    assert reference.path.stat().st_size <= 5 * 2**20
    for key in W.REQUIRED_META:
        assert key in reference.meta, key
    assert reference.meta["sha256"] == W.sha256(reference.path)
    assert reference.meta["preset"] == "reference"
    # ... and that preset, as the code defines it now, is the recipe that made them: a reader who
    # runs `--preset reference` repeats this training, not a recipe changed since.
    assert reference.meta["config"] == asdict(PRESETS["reference"])
    assert "JPEG" in reference.meta["data_source"]  # the unofficial copy says so
    assert len(reference.meta["classes"]) == 10 and len(reference.meta["mean"]) == 3


def test_build_model_with_weights_returns_the_file_in_eval_mode(reference):
    model = build_model(MODEL, weights=NAME)
    assert not model.training and model.aux1 is None
    stored, _ = load_checkpoint(reference.path)  # the same file through the checkpoint door
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), stored(x))
    listed = next(r for r in list_models() if r["name"] == MODEL)["weights"]
    assert listed == f"{NAME} ({count_parameters(model):,} params)"  # the registered network


@pytest.mark.parametrize("kwargs, named", [
    (dict(num_classes=100), "num_classes=100"),
    (dict(width=0.25), "width=0.25"),
    (dict(stem="cifar"), "stem='cifar'"),
    (dict(aux_logits=True), "aux_logits=True"),
])
def test_weights_refuse_a_network_they_do_not_fit(kwargs, named):
    with pytest.raises(ValueError, match=f"do not fit {named}".replace("(", r"\(")):
        build_model(MODEL, weights=NAME, **kwargs)


@pytest.mark.parametrize("model, name", [("googlenet_cifar_small", "imagenet"),
                                         ("googlenet", "cifar10")])
def test_unknown_weights_name_what_exists(model, name):
    with pytest.raises(ValueError, match=f"no '{name}' weights for model '{model}'.*"
                                         f"{MODEL}: {NAME}"):
        W.get_weights(model, name)


def test_a_changed_weight_file_is_refused(reference, tmp_path, monkeypatch):
    for path in (reference.path, reference.path.with_suffix(".json")):
        shutil.copy(path, tmp_path / path.name)
    damaged = tmp_path / reference.path.name
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    monkeypatch.setattr(W, "PRETRAINED_DIR", tmp_path)
    with pytest.raises(ValueError, match="damaged or was changed"):
        build_model(MODEL, weights=NAME)
    damaged.unlink()
    with pytest.raises(ValueError, match="is missing"):
        build_model(MODEL, weights=NAME)


def test_weight_problems_are_the_packages_errors(reference, tmp_path, monkeypatch):
    """An argument problem is a ConfigError, a damaged install a WeightsError: the tests above
    catch the same calls as ValueError, which these types still are."""
    with pytest.raises(ConfigError, match="no 'imagenet' weights for model"):
        W.get_weights(MODEL, "imagenet")
    with pytest.raises(ConfigError, match="unknown model 'googlenet_tiny'"):
        build_model("googlenet_tiny", weights=NAME)
    with pytest.raises(ConfigError, match="do not fit num_classes=100"):
        build_model(MODEL, weights=NAME, num_classes=100)
    (tmp_path / "m-x.pt").write_bytes(b"weights")
    with pytest.raises(ConfigError, match="needs preset"):
        W.write_record(tmp_path / "m-x.pt", {k: 0 for k in W.REQUIRED_META if k != "preset"})
    meta = json.loads(reference.path.with_suffix(".json").read_text())
    monkeypatch.setattr(W, "PRETRAINED_DIR", tmp_path)
    record = tmp_path / reference.path.with_suffix(".json").name
    record.write_text(json.dumps({k: v for k, v in meta.items() if k not in ("preset", "std")}))
    with pytest.raises(WeightsError, match=f"{record} lacks std, preset: the package install"):
        W.get_weights(MODEL, NAME)
    record.write_text(json.dumps(meta))  # a whole record, but no weight file beside it
    with pytest.raises(WeightsError, match="is missing: the package install is incomplete"):
        build_model(MODEL, weights=NAME)


def test_reference_weights_score_their_recorded_accuracy(reference, real_cifar10):
    """2,000 test images: within 3 standard errors of the accuracy the record quotes."""
    if ("unofficial" in reference.meta["data_source"]) != (real_cifar10.source != "official"):
        pytest.skip("the data on disk is not the copy the weights were measured on")
    model = build_model(MODEL, weights=NAME)
    n = 2000
    images, labels = real_cifar10.test_images[:n], real_cifar10.test_labels[:n]
    acc = accuracy(predict(model, images, labels, mean=reference.meta["mean"],
                           std=reference.meta["std"], device="cpu"))
    recorded = reference.meta["test_accuracy"]
    se = (recorded * (1 - recorded) / n) ** 0.5
    assert abs(acc - recorded) < 3 * se + 0.005, (acc, recorded)


def test_export_keeps_the_function_drops_aux_heads_and_halves_the_size(tmp_path):
    data = load_cifar(source="synthetic", train_limit=64, eval_limit=32)
    config = TrainConfig(width=0.125, epochs=1, batch_size=32, max_steps=2, eval_limit=32)
    torch.manual_seed(0)
    result = fit(config.build_model(10), data, config, out_dir=tmp_path / "run", progress=False)
    full = tmp_path / "run" / "checkpoint.pt"
    slim = W.export_weights(full, tmp_path, "slim")
    assert slim == tmp_path / f"{config.model}-slim.pt"
    assert slim.stat().st_size < 0.6 * full.stat().st_size
    payload = torch.load(slim, weights_only=True)
    assert not any(k.startswith("aux") for k in payload["model"])
    assert payload["data"]["root"] is None  # no path of the training machine travels with it
    assert all(v.dtype == torch.float16 for v in payload["model"].values()
               if v.is_floating_point())
    model, meta = load_checkpoint(slim)
    assert model.aux1 is None and meta["epoch"] == 1
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), result.model.eval()(x), atol=2e-2, rtol=2e-2)


def test_write_record_fills_in_the_sha256_and_insists_on_provenance(tmp_path):
    weights_file = tmp_path / "m-x.pt"
    weights_file.write_bytes(b"weights")
    meta = {key: 0 for key in W.REQUIRED_META if key != "sha256"}
    record = W.write_record(weights_file, meta)
    assert json.loads(record.read_text())["sha256"] == W.sha256(weights_file)
    with pytest.raises(ValueError, match="needs preset"):
        W.write_record(weights_file, {k: v for k, v in meta.items() if k != "preset"})


def test_load_for_study_prefers_a_checkpoint_and_never_trains(tmp_path):
    missing = tmp_path / "course" / "checkpoint.pt"
    model, meta, which = W.load_for_study(missing)
    assert "reference weights" in which and str(missing) in which
    record = W.get_weights("googlenet_cifar_small", "cifar10").meta
    assert meta["record"] == record and f"{record['test_accuracy_tta']:.2%}" in which
    assert not missing.parent.exists()
    data = load_cifar(source="synthetic", train_limit=64, eval_limit=32)
    config = TrainConfig(width=0.125, epochs=1, batch_size=32, max_steps=1, eval_limit=32)
    fit(config.build_model(10), data, config, out_dir=missing.parent, progress=False)
    model, meta, which = W.load_for_study(missing)
    assert which.startswith(f"Studying the checkpoint at {missing}") and meta["step"] == 1
    assert "record" not in meta  # a run of one's own has no provenance record
    _, _, which = W.load_for_study(missing, "reference")
    assert "reference weights" in which and str(missing) not in which


def _fail(*_args, **_kwargs):
    raise RuntimeError("measuring failed")


def test_cli_export_measures_the_exported_file_and_evaluate_reads_packaged_weights(
        tmp_path, monkeypatch, capsys):
    from inception.cli import main

    run = tmp_path / "run"
    assert main(["train", "--preset", "quick", "--synthetic", "--max-steps", "2",
                 "--out", str(run)]) == 0
    assert main(["export", str(run / "checkpoint.pt"), "--name", "toy", "--into",
                 str(tmp_path), "--set", "commit=abc123"]) == 0
    record = json.loads((tmp_path / f"{MODEL}-toy.json").read_text())
    assert record["preset"] == "quick with max_steps=2" and record["commit"] == "abc123"
    assert record["sha256"] == W.sha256(tmp_path / f"{MODEL}-toy.pt")
    printed = capsys.readouterr().out
    assert f"test_accuracy_tta: {record['test_accuracy_tta']:.2%}" in printed
    # An export that fails while measuring (no data, Ctrl-C) leaves the earlier pair as it was.
    pair = {p.name: p.read_bytes() for p in tmp_path.glob(f"{MODEL}-toy.*")}
    monkeypatch.setattr(evaluate, "evaluate", _fail)
    assert main(["export", str(run / "checkpoint.pt"), "--name", "toy", "--into",
                 str(tmp_path), "--set", "commit=def456"]) == 1
    assert {p.name: p.read_bytes() for p in tmp_path.glob(f"{MODEL}-toy.*")} == pair
    assert not list(tmp_path.glob(".export-*")), "the staging folder is removed"
    monkeypatch.undo()
    # Ctrl-C between the two renames is held until both are done: never new weights beside
    # the old record.
    real_replace = os.replace

    def ctrl_c_after_the_weights(src, dst):
        real_replace(src, dst)
        if Path(dst) == tmp_path / f"{MODEL}-toy.pt":
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(os, "replace", ctrl_c_after_the_weights)
    assert main(["export", str(run / "checkpoint.pt"), "--name", "toy", "--into",
                 str(tmp_path), "--set", "commit=ghi789"]) == 130
    monkeypatch.undo()
    record = json.loads((tmp_path / f"{MODEL}-toy.json").read_text())
    assert record["commit"] == "ghi789"
    assert record["sha256"] == W.sha256(tmp_path / f"{MODEL}-toy.pt")
    monkeypatch.setattr(W, "PRETRAINED_DIR", tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--weights", "toy", "--limit", "100"]) == 0
    assert "packaged weights googlenet_cifar_small/toy" in capsys.readouterr().out
    assert (tmp_path / "confusion.png").is_file()
    assert main(["evaluate"]) == 1  # neither a checkpoint nor --weights
    assert "name a checkpoint file or --weights NAME" in capsys.readouterr().err
