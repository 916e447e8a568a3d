"""Bad input and faults, through the door a user would use: the CLI, or the library.

Every case must end in a message that names the problem (and the fix), a non-zero exit code
for the CLI, and never a Python traceback. CLI cases run `python -m inception` in a subprocess:
all of them in one (`CLI_HARNESS` runs the package's `__main__` once per case, as a fresh
process would, with that case's argv, folder and environment), since each separate process
spends seconds importing torch; a few cases also run as separate processes to show the real
entry point answers the same. Library cases call the package. One case per entry: add the next
mistake a user makes as one more.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BATCH_FILES, RunsCode, train_on_cpu, write_tiny_cifar10

import inception.cli as cli
import inception.train as T
from inception.data import DeviceLoader, load_cifar
from inception.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    ConfigError,
    DatasetError,
    ModelInputError,
    TrainingError,
)
from inception.evaluate import evaluate
from inception.model import build_model
from inception.train import TrainConfig, fit, get_preset

# No case may reach the network: a refused proxy makes any download fail at once.
OFFLINE = {name: "http://127.0.0.1:9" for name in
           ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}
QUICK = ["--preset", "quick", "--synthetic", "--max-steps", "1"]


def run_cli(argv: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m inception *argv` as a user runs it, offline, with a clean INCEPTION_ setup."""
    return subprocess.run([sys.executable, "-m", "inception", *argv], cwd=cwd,
                          env=_environment(env), capture_output=True, text=True, timeout=900)


# Runs `python -m inception` once per case inside one process: sys.argv, the working folder and
# the environment are the case's, stdout and stderr are captured, and an exception that escapes
# is printed as Python itself would print it (a traceback), so a test sees what a user would.
CLI_HARNESS = r"""
import contextlib, io, json, os, runpy, sys, traceback
cases_file, results_file = sys.argv[1:3]
cases = json.loads(open(cases_file).read())
base = dict(os.environ)
results = []
for case in cases:
    os.chdir(case["cwd"])
    os.environ.clear()
    os.environ.update(base, **case["env"])
    sys.argv = ["inception", *case["argv"]]
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module("inception", run_name="__main__", alter_sys=True)
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else int(done.code is not None)
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append(dict(code=code, stdout=out.getvalue(), stderr=err.getvalue()))
open(results_file, "w").write(json.dumps(results))
"""


def _environment(env: dict | None = None) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("INCEPTION_")}
    environment.update(OFFLINE, NO_PROXY="", no_proxy="", OMP_NUM_THREADS="1", **(env or {}))
    return environment


def run_cli_cases(runs: list[tuple[list[str], Path, dict]],
                  workdir: Path) -> list[subprocess.CompletedProcess]:
    """Each (argv, cwd, env) as `python -m inception *argv`, all in one subprocess."""
    cases, results = workdir / "cases.json", workdir / "results.json"
    cases.write_text(json.dumps([dict(argv=argv, cwd=str(cwd), env=env)
                                 for argv, cwd, env in runs]))
    done = subprocess.run([sys.executable, "-c", CLI_HARNESS, str(cases), str(results)],
                          cwd=workdir, env=_environment(), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr
    return [subprocess.CompletedProcess(argv, r["code"], r["stdout"], r["stderr"])
            for (argv, _, _), r in zip(runs, json.loads(results.read_text()), strict=True)]


def assert_clear_error(done: subprocess.CompletedProcess, pattern: str) -> None:
    """Non-zero exit, no traceback, and an error of at most two lines matching `pattern`."""
    err = done.stderr
    assert done.returncode != 0, f"exit code 0; stdout:\n{done.stdout}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    first = next((i for i, line in enumerate(lines) if "error:" in line), None)
    assert first is not None and len(lines) - first <= 2, err
    assert re.search(pattern, "\n".join(lines[first:]), re.DOTALL), err


# ---------------------------------------------------------------------------------------------
# Scenarios: each writes what a case needs into its own folder and returns names for its argv.


def _tiny_data(tmp: Path, file: str | None = None, **changes) -> dict:
    """A tiny CIFAR-10 in tmp/data; with `file`, that file's entries replaced by `changes`."""
    folder = write_tiny_cifar10(tmp / "data")
    if file is not None:
        entry = pickle.loads((folder / file).read_bytes())  # our own file: safe to unpickle
        entry.update(changes)
        (folder / file).write_bytes(pickle.dumps(entry, protocol=4))
    return {}


def _replace_file(file: str, content: bytes):
    def setup(tmp: Path) -> dict:
        _tiny_data(tmp)
        (tmp / "data" / "cifar-10-batches-py" / file).write_bytes(content)
        return {}
    return setup


def _crafted(tmp: Path) -> dict:
    _tiny_data(tmp)
    payload = {"data": RunsCode(f"touch {tmp / 'code-ran'}"), "labels": [0]}
    (tmp / "data" / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(payload))
    return {}


def _labels(values):
    return lambda tmp: _tiny_data(tmp, "data_batch_2", labels=values)


def _pixels(array):
    return lambda tmp: _tiny_data(tmp, "data_batch_1", data=array)


def _meta(names):
    return lambda tmp: _tiny_data(tmp, "batches.meta", label_names=names)


def _a_file(tmp: Path) -> dict:
    (tmp / "a-file").write_text("not a folder")
    return {}


def _checkpoint_payload(num_classes: int = 10, **changes) -> dict:
    """A checkpoint as training writes it (untrained weights), for the quick preset on a
    small synthetic set: resumable with the quick preset, and quick to evaluate."""
    config = get_preset("quick")
    data = load_cifar(source="synthetic", train_limit=64, eval_limit=32)
    torch.manual_seed(0)
    model = config.build_model(num_classes)
    payload = dict(format=T.CHECKPOINT_FORMAT, model_name=model.name, arch=model.arch,
                   model=model.state_dict(), ema=None, ema_updates=0, config=asdict(config),
                   data=data.describe(), epoch=1, step=1, train_seconds=0.0, precision="fp32",
                   device="cpu", history=[],
                   optimizer=T.make_optimizer(model, config).state_dict(), scaler={},
                   loader={"generator": torch.Generator().get_state()}, rng=T._rng_state())
    payload.update(changes)
    return payload


def _checkpoint(name: str = "checkpoint.pt", drop: str | None = None, **kwargs):
    def setup(tmp: Path) -> dict:
        payload = _checkpoint_payload(**kwargs)
        payload.pop(drop, None)
        T.save_checkpoint(tmp / "run" / name, payload)
        return {}
    return setup


def _bad_arch(**arch):
    def setup(tmp: Path) -> dict:
        payload = _checkpoint_payload()
        T.save_checkpoint(tmp / "run" / "checkpoint.pt", {**payload,
                                                          "arch": {**payload["arch"], **arch}})
        return {}
    return setup


def _write(relative: str, content: bytes):
    def setup(tmp: Path) -> dict:
        (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp / relative).write_bytes(content)
        return {}
    return setup


def _foreign_torch_file(tmp: Path) -> dict:
    (tmp / "run").mkdir()
    torch.save({"state_dict": {}}, tmp / "run" / "checkpoint.pt")
    return {}


def _kept_aside_only(tmp: Path) -> dict:
    T.save_checkpoint(tmp / "run" / "checkpoint-20250101-120000.pt", _checkpoint_payload())
    return {}


@dataclass(frozen=True)
class Case:
    """One user mistake: its argv ({tmp} is its own folder), setup, environment, message."""

    id: str
    argv: tuple[str, ...]
    expect: str  # a regex the error line(s) must match
    setup: object = None
    env: tuple[tuple[str, str], ...] = ()


def case(id: str, argv: str, expect: str, setup=None, **env) -> Case:
    return Case(id, tuple(argv.split()), expect, setup, tuple(env.items()))


TRAIN = "train " + " ".join(QUICK) + " --device cpu"
SYNTHETIC = "train " + " ".join(QUICK)
TINY = "train --preset quick --data {tmp}/data --max-steps 1 --out {tmp}/run --device cpu"

CLI_CASES = [
    # Arguments argparse can judge alone.
    case("epochs-fraction", "train --epochs 1.5", r"--epochs: must be a whole number, got '1.5'"),
    case("epochs-zero", "train --epochs 0", r"--epochs: must be > 0"),
    case("max-steps-zero", "train --max-steps 0", r"--max-steps: must be > 0"),
    case("max-steps-negative", "train --max-steps -2", r"--max-steps: must be > 0"),
    case("budget-nan", "train --budget-min nan", r"--budget-min: must be a finite number"),
    case("budget-inf", "train --budget-min inf", r"--budget-min: must be a finite number"),
    case("budget-negative", "train --budget-min -1", r"--budget-min: must be >= 0"),
    case("seed-negative", "train --seed -1", r"--seed: must be >= 0"),
    case("seed-too-big", "train --seed 99999999999", r"--seed: must be >= 0 and <= 4294967295"),
    case("seed-fraction", "train --seed 0.5", r"--seed: must be a whole number"),
    case("preset-unknown", "train --preset tpu", r"--preset: invalid choice: 'tpu'"),
    case("limit-zero", "evaluate x.pt --limit 0", r"--limit: must be > 0"),
    case("no-command", "", r"required: command"),
    case("unknown-command", "fly", r"invalid choice: 'fly'"),
    # Devices.
    case("device-unknown", f"{SYNTHETIC} --device gpu --out {{tmp}}/run",
         r"unknown device 'gpu'"),
    case("device-garbled", f"{SYNTHETIC} --device cuda:x --out {{tmp}}/run",
         r"unknown device 'cuda:x'"),
    case("device-cuda-without-gpu", f"{SYNTHETIC} --device cuda --out {{tmp}}/run",
         r"no CUDA GPU.*--device cpu"),
    case("evaluate-device-unknown", "evaluate {tmp}/run/checkpoint.pt --device tpu",
         r"unknown device 'tpu'", _checkpoint()),
    # Where the output goes: checked before any data is loaded.
    case("out-is-a-file", f"{TRAIN} --out {{tmp}}/a-file", r"a-file is a file, not a folder",
         _a_file),
    case("out-inside-a-file", f"{TRAIN} --out {{tmp}}/a-file/run", r"cannot write to .*a-file/run",
         _a_file),
    # Where the data comes from.
    case("data-env-is-a-file", "train --preset quick --out {tmp}/run --device cpu",
         r"INCEPTION_DATA points at .*a-file, which is a file", _a_file,
         INCEPTION_DATA="{tmp}/a-file"),
    case("data-option-is-a-file", "train --preset quick --data {tmp}/a-file --out {tmp}/run",
         r"--data\) points at .*a-file, which is a file", _a_file),
    case("data-missing-offline", "train --preset quick --data {tmp}/empty --out {tmp}/run",
         r"could not be fetched.*cifar-10-python.tar.gz"),
    # Data files that are damaged, unsafe or not CIFAR.
    case("data-runs-code", TINY, r"data_batch_1 is not a plain CIFAR file.*posix.system.*refused",
         _crafted),
    case("data-truncated", TINY, r"data_batch_3 is truncated or corrupt",
         lambda tmp: _replace_file("data_batch_3", pickle.dumps({"data": 1})[:9])(tmp)),
    case("data-empty-file", TINY, r"test_batch is truncated or corrupt",
         _replace_file("test_batch", b"")),
    case("data-not-a-dict", TINY, r"data_batch_4 holds a list where CIFAR has a dict",
         _replace_file("data_batch_4", pickle.dumps([1, 2, 3]))),
    case("data-no-labels", TINY, r"data_batch_5 has no 'labels' entry",
         _replace_file("data_batch_5", pickle.dumps({"data": np.zeros((2, 3072), np.uint8)}))),
    case("pixels-float", TINY, r"data_batch_1 stores float32 pixels \(values 0.0 to 1.0\)",
         _pixels(np.linspace(0, 1, 20 * 3072, dtype=np.float32).reshape(20, 3072))),
    case("pixels-out-of-range", TINY, r"data_batch_1 stores int16 pixels \(values -5 to 300\)",
         _pixels(np.array([[-5] * 3071 + [300]] * 20, dtype=np.int16))),
    case("pixels-wrong-shape", TINY, r"data_batch_1 stores images of shape \(20, 1024\)",
         _pixels(np.zeros((20, 1024), np.uint8))),
    case("pixels-as-list", TINY, r"data_batch_1 stores its images as a list",
         _pixels([[0] * 3072] * 20)),
    case("labels-too-large", TINY, r"data_batch_2 has 'labels' from 0 to 12, outside \[0, 10\)",
         _labels([0] * 19 + [12])),
    case("labels-negative", TINY, r"data_batch_2 has 'labels' from -1 to 0",
         _labels([-1] + [0] * 19)),
    case("labels-float", TINY, r"data_batch_2 stores 'labels' as float64", _labels([0.5] * 20)),
    case("labels-count", TINY, r"data_batch_2 has 20 images but 3 labels", _labels([1, 2, 3])),
    case("meta-too-few-classes", TINY, r"batches.meta names 9 classes, but CIFAR-10 has 10",
         _meta([f"c{i}" for i in range(9)])),
    case("meta-too-many-classes", TINY, r"batches.meta names 11 classes",
         _meta([f"c{i}" for i in range(11)])),
    case("meta-not-names", TINY, r"batches.meta stores 'label_names' as int", _meta(10)),
    case("data-too-few-images", TINY, r"holds 100 training images, too few to hold out 5000",
         _tiny_data),
    # Checkpoints: missing, empty, foreign, or for another model.
    case("resume-nothing", f"{TRAIN} --out {{tmp}}/run --resume",
         r"no checkpoint at .*run/checkpoint.pt"),
    case("resume-only-kept-aside", f"{TRAIN} --out {{tmp}}/run --resume",
         r"kept aside there.*checkpoint-20250101-120000.pt.*--resume .*checkpoint-2025",
         _kept_aside_only),
    case("resume-empty-file", f"{TRAIN} --out {{tmp}}/run --resume", r"checkpoint.pt is empty",
         _write("run/checkpoint.pt", b"")),
    case("resume-missing-path", f"{TRAIN} --out {{tmp}}/run --resume {{tmp}}/nope.pt",
         r"no checkpoint at .*nope.pt"),
    case("resume-other-recipe", f"{TRAIN} --out {{tmp}}/run --resume --seed 3",
         r"cannot resume: the config differs.*seed", _checkpoint()),
    case("evaluate-missing", "evaluate {tmp}/nope.pt", r"no checkpoint at .*nope.pt"),
    case("evaluate-empty-file", "evaluate {tmp}/run/checkpoint.pt", r"is empty \(0 bytes\)",
         _write("run/checkpoint.pt", b"")),
    case("evaluate-a-folder", "evaluate {tmp}/run",
         r"run is a folder.*did you mean .*checkpoint.pt",
         _checkpoint()),
    case("evaluate-a-text-file", "evaluate {tmp}/run/history.csv", r"not a readable checkpoint",
         _write("run/history.csv", b"epoch,loss\n1,2.3\n")),
    case("evaluate-weights-of-another-shape", "evaluate {tmp}/run/checkpoint.pt",
         r"cannot be rebuilt \(RuntimeError: Error\(s\) in loading state_dict",
         _bad_arch(width=0.25)),
    case("evaluate-foreign-file", "evaluate {tmp}/run/checkpoint.pt",
         r"not an inception checkpoint", _foreign_torch_file),
    case("evaluate-without-history", "evaluate {tmp}/run/checkpoint.pt",
         r"cannot be used to rebuild a model: it has no history", _checkpoint(drop="history")),
    case("resume-a-slim-export", f"{TRAIN} --out {{tmp}}/run --resume",
         r"cannot be used to resume training: it has no optimizer", _checkpoint(drop="optimizer")),
    case("evaluate-100-class-model", "evaluate {tmp}/run/checkpoint.pt --device cpu",
         r"the model has 100 outputs but .*CIFAR-10.* has 10 classes",
         _checkpoint(num_classes=100)),
    case("evaluate-zero-classes", "evaluate {tmp}/run/checkpoint.pt",
         r"checkpoint.pt describes a network that cannot be rebuilt \(ConfigError: "
         r"num_classes must be a whole number >= 1, got 0\)", _bad_arch(num_classes=0)),
    case("evaluate-nan-width", "evaluate {tmp}/run/checkpoint.pt",
         r"cannot be rebuilt .*width must be a finite number > 0, got nan",
         _bad_arch(width=math.nan)),
]



def _prepare(case: Case, tmp: Path) -> tuple[list[str], dict]:
    names = {"tmp": str(tmp)}
    if case.setup is not None:
        names.update(case.setup(tmp) or {})
    return ([a.format(**names) for a in case.argv],
            {k: v.format(**names) for k, v in case.env})


@pytest.fixture(scope="module")
def cli_runs(request, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every selected CLI case, run in one subprocess (one import of torch for all of them)."""
    selected = [item.callspec.params["case"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_cli_answers_with_a_clear_error"]
    folders = {c.id: tmp_path_factory.mktemp(c.id) for c in selected}
    runs = [(*_prepare(c, folders[c.id]), folders[c.id]) for c in selected]
    done = run_cli_cases([(argv, cwd, env) for argv, env, cwd in runs],
                         tmp_path_factory.mktemp("harness"))
    return {c.id: (d, folders[c.id]) for c, d in zip(selected, done, strict=True)}


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.id)
def test_cli_answers_with_a_clear_error(case, cli_runs):
    if case.id == "device-cuda-without-gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done, tmp = cli_runs[case.id]
    assert_clear_error(done, case.expect)
    if case.id == "data-runs-code":
        assert not (tmp / "code-ran").exists()  # refused before anything in the file ran


# The real entry point, one process per case (seconds each), for an argparse error and for the
# crafted data file whose code must not run.
SEPARATE = ["epochs-fraction", "data-runs-code"]


@pytest.mark.parametrize("case", [c for c in CLI_CASES if c.id in SEPARATE], ids=lambda c: c.id)
def test_the_real_entry_point_answers_the_same(case, tmp_path):
    argv, env = _prepare(case, tmp_path)
    assert_clear_error(run_cli(argv, tmp_path, env), case.expect)
    assert not (tmp_path / "code-ran").exists()


def test_debug_shows_the_traceback_too(tmp_path, capsys):
    done = run_cli(["train", *QUICK, "--device", "gpu", "--out", str(tmp_path), "--debug"],
                   tmp_path)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "unknown device 'gpu'" in done.stderr
    assert cli.main(["--debug", "evaluate", str(tmp_path / "nope.pt")]) == 1  # before the command
    err = capsys.readouterr().err
    assert "Traceback" in err and "CheckpointNotFoundError" in err


def test_same_seed_through_the_cli_gives_bit_identical_weights(tmp_path):
    argv = ["train", "--preset", "quick", "--synthetic", "--max-steps", "2", "--device", "cpu"]
    seeds = {"first": "0", "again": "0", "other": "1"}

    def train(name: str) -> subprocess.CompletedProcess:
        return run_cli([*argv, "--seed", seeds[name], "--out", str(tmp_path / name)], tmp_path)

    with ThreadPoolExecutor(max_workers=3) as pool:
        for done in pool.map(train, seeds):
            assert done.returncode == 0, done.stderr
    weights = {name: torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["model"]
               for name in seeds}
    first, again, other = weights["first"], weights["again"], weights["other"]
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)  # the seed is what decides


# ---------------------------------------------------------------------------------------------
# Ctrl-C and kept-aside checkpoints: what the user is told, and that nothing is lost.


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_during_evaluate_says_nothing_about_training(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "load_checkpoint", _interrupt)
    assert cli.main(["evaluate", str(tmp_path / "checkpoint.pt")]) == 130
    err = capsys.readouterr().err
    assert "evaluate stopped" in err and "resume" not in err and "epoch" not in err


def test_ctrl_c_during_train_says_what_can_be_resumed(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "fit", _interrupt)
    argv = ["train", *QUICK, "--device", "cpu", "--out", str(tmp_path)]
    kept = tmp_path / "checkpoint-20250101-120000.pt"
    kept.write_bytes(b"an earlier run")
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert "nothing to resume" in err and T.resume_hint(kept) in err
    # An earlier run's checkpoint.pt, not yet kept aside (Ctrl-C while the data loads): as it was.
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"an earlier run's epoch 3")
    os.utime(checkpoint, (1e9, 1e9))
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert f"{checkpoint} is unchanged" in err and "saved" not in err

    def one_epoch_then_ctrl_c(*args, **kwargs):
        checkpoint.write_bytes(b"this run's epoch 1")
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "fit", one_epoch_then_ctrl_c)
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert f"saved in {checkpoint}" in err and "--resume" in err


def test_a_full_disk_is_one_line_not_a_traceback(monkeypatch, capsys, tmp_path):
    def disk_full(path, payload):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(T, "save_checkpoint", disk_full)
    assert cli.main(["train", *QUICK, "--device", "cpu", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"error: [Errno 28] No space left on device: "
                                        f"'{tmp_path / 'checkpoint.pt'}'"]


def test_an_unexpected_failure_is_reported_as_a_bug_in_two_lines(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "fit", lambda *args, **kwargs: 1 / 0)
    assert cli.main(["train", *QUICK, "--device", "cpu", "--out", str(tmp_path)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "error: unexpected ZeroDivisionError: division by zero"
    assert "bug" in lines[1] and "--debug" in lines[1] and len(lines) == 2


TINY_RUN = TrainConfig(epochs=1, batch_size=16, lr=0.05, train_limit=32, eval_limit=16,
                       width=0.125)


def test_a_fresh_run_says_where_the_earlier_checkpoint_went(synthetic, tmp_path, capsys):
    train_on_cpu(synthetic, TINY_RUN, out_dir=tmp_path)
    first = (tmp_path / "checkpoint.pt").read_bytes()
    train_on_cpu(synthetic, replace(TINY_RUN, seed=5), out_dir=tmp_path, progress=True)
    out = capsys.readouterr().out
    [kept] = tmp_path.glob("checkpoint-*.pt")
    assert f"kept the earlier checkpoint as {kept}" in out and T.resume_hint(kept) in out
    assert kept.read_bytes() == first


def test_resuming_a_kept_aside_checkpoint_keeps_the_current_one_too(synthetic, tmp_path):
    train_on_cpu(synthetic, TINY_RUN, out_dir=tmp_path)
    train_on_cpu(synthetic, replace(TINY_RUN, seed=5), out_dir=tmp_path)
    [earlier] = tmp_path.glob("checkpoint-*.pt")
    current = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.warns(UserWarning, match="epochs: 1 -> 2"):
        train_on_cpu(synthetic, replace(TINY_RUN, epochs=2), out_dir=tmp_path, resume=earlier)
    kept = {p.read_bytes() for p in tmp_path.glob("checkpoint-*.pt")}
    assert current in kept and earlier.is_file()  # neither earlier run was overwritten
    assert T.read_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 2


@pytest.mark.parametrize(("finished", "message"), [
    (TINY_RUN, r"has done all 2 steps of its 1 epoch\. To train on, raise --epochs"),
    (replace(TINY_RUN, epochs=3, budget_min=1e-6),
     r"has used its whole budget \(0\.\d of 1e-06 minutes\)\. To train on, raise --budget-min"),
])
def test_resuming_a_finished_run_is_refused_and_moves_nothing(synthetic, tmp_path, finished,
                                                              message):
    """Resumed from a kept-aside file, a finished run would train no step, yet move the current
    checkpoint aside and report one saved."""
    train_on_cpu(synthetic, finished, out_dir=tmp_path)
    train_on_cpu(synthetic, replace(finished, seed=5), out_dir=tmp_path)
    [earlier] = tmp_path.glob("checkpoint-*.pt")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ConfigError, match=rf"nothing left to train: {re.escape(str(earlier))} "
                                          rf"{message}"):
        train_on_cpu(synthetic, finished, out_dir=tmp_path, resume=earlier)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_an_interrupted_save_leaves_no_partial_file_and_keeps_the_last_good_one(tmp_path,
                                                                                monkeypatch):
    path = T.save_checkpoint(tmp_path / "checkpoint.pt", {"format": T.CHECKPOINT_FORMAT, "v": 1})

    def interrupted_save(obj, f):
        f.write(b"half a checkpoint")  # save_checkpoint hands torch.save an open temp file
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        T.save_checkpoint(path, {"format": T.CHECKPOINT_FORMAT, "v": 2})
    monkeypatch.undo()
    assert T.read_checkpoint(path)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


# ---------------------------------------------------------------------------------------------
# Non-finite numbers in training: stopped, reported, never saved.

THREE_EPOCHS = replace(TINY_RUN, epochs=3, train_limit=64)  # 4 steps of 16 per epoch


def _poison_batch(monkeypatch, batch: int) -> None:
    """Make the `batch`-th training batch (1-based) all NaN, as corrupt input would be."""
    real, seen = DeviceLoader.augment, [0]

    def augment(self, images):
        seen[0] += 1
        x = real(self, images)
        return x * math.nan if seen[0] == batch else x

    monkeypatch.setattr(DeviceLoader, "augment", augment)


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(synthetic, tmp_path,
                                                                    monkeypatch):
    real, steps = T.loss_fn, [0]

    def nan_from_step_6(outputs, labels, config):
        steps[0] += 1
        loss, logits = real(outputs, labels, config)
        return (loss * math.nan if steps[0] >= 6 else loss), logits

    monkeypatch.setattr(T, "loss_fn", nan_from_step_6)
    with pytest.raises(TrainingError, match=r"diverged in epoch 2: the training loss became nan"
                                            r".*last good checkpoint.*is kept.*lower learning"):
        train_on_cpu(synthetic, THREE_EPOCHS, out_dir=tmp_path)
    model, meta = T.load_checkpoint(tmp_path / "checkpoint.pt")
    assert meta["epoch"] == 1 and T.nonfinite_tensors(model) == []


def test_a_nan_batch_poisons_batchnorm_but_never_reaches_a_checkpoint(synthetic, tmp_path,
                                                                      monkeypatch):
    # The package's answer to NaN input in training mode: its loader cannot make one (uint8
    # images, checked statistics); should one arrive anyway, the run stops before saving.
    _poison_batch(monkeypatch, batch=6)
    torch.manual_seed(0)
    model = THREE_EPOCHS.build_model(10)
    with pytest.raises(TrainingError, match="diverged in epoch 2"):
        fit(model, synthetic, THREE_EPOCHS, device="cpu", out_dir=tmp_path)
    assert any("running_mean" in name for name in T.nonfinite_tensors(model))  # poisoned
    saved, meta = T.load_checkpoint(tmp_path / "checkpoint.pt")
    assert meta["epoch"] == 1 and T.nonfinite_tensors(saved) == []


def test_weights_are_checked_before_every_save(synthetic, tmp_path, monkeypatch):
    monkeypatch.setattr(T, "_check_finite_loss", lambda *args: None)  # only the second guard
    _poison_batch(monkeypatch, batch=6)
    with pytest.raises(TrainingError, match=r"diverged in epoch 2: the weights hold NaN or inf"):
        train_on_cpu(synthetic, THREE_EPOCHS, out_dir=tmp_path)
    assert T.read_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1


# ---------------------------------------------------------------------------------------------
# CIFAR files: the official Python 2 pickles and the offline copy load; anything else refused.


class _Python2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote at protocol 2, like the official CIFAR files: byte
    strings as STRING opcodes (read back as str with encoding="latin1"), NumPy as numpy.core."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None) -> None:
        module = getattr(obj, "__module__", "")
        if module.startswith("numpy._core"):
            module = module.replace("numpy._core", "numpy.core")
            self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def _python2_dumps(obj) -> bytes:
    import io
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _write_cifar10(root: Path, dumps, key=str) -> tuple[np.ndarray, list[int]]:
    """The six batch files and the meta file, each serialised by `dumps`, keys made by `key`."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    test_images = None
    for name in BATCH_FILES:
        images = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, 4)]
        entry = {key("batch_label"): key(name), key("labels"): labels, key("data"): images,
                 key("filenames"): [key(f"{i}.png") for i in range(4)]}
        (folder / name).write_bytes(dumps(entry))
        test_images, test_labels = images, labels
    names = [key(n) for n in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                              "horse", "ship", "truck")]
    (folder / "batches.meta").write_bytes(dumps({key("label_names"): names,
                                                 key("num_cases_per_batch"): 4}))
    return test_images, test_labels


def test_official_python2_files_load(tmp_path):
    images, labels = _write_cifar10(tmp_path, _python2_dumps, key=lambda s: s.encode())
    raw = (tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes()
    assert raw.startswith(b"\x80\x02") and b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    assert b"U\x04data" in raw  # a Python 2 byte-string key, as in the official files
    with pytest.warns(UserWarning, match="not the official"):
        data = load_cifar(root=tmp_path, val_size=4)
    assert torch.equal(data.test_images, torch.from_numpy(images).view(-1, 3, 32, 32))
    assert data.test_labels.tolist() == labels and data.classes[9] == "truck"


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_files_written_by_python3_pickle_load(tmp_path, protocol):
    # The offline copy is protocol 4 with str keys; 2 and 5 are what other writers choose.
    images, labels = _write_cifar10(tmp_path, lambda obj: pickle.dumps(obj, protocol=protocol))
    with pytest.warns(UserWarning, match="not the official"):
        data = load_cifar(root=tmp_path, val_size=4)
    assert torch.equal(data.test_images, torch.from_numpy(images).view(-1, 3, 32, 32))
    assert data.test_labels.tolist() == labels


class _Calls:
    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize(("call", "protocol", "named"), [
    (_Calls(os.system, "touch {marker}"), 4, "posix.system"),
    (_Calls(os.system, "touch {marker}"), 2, "posix.system"),
    (_Calls(eval, "open({marker!r}, 'w')"), 4, "builtins.eval"),
    (_Calls(eval, "open({marker!r}, 'w')"), 2, "__builtin__.eval"),  # how Python 2 names it
    (_Calls(__import__, "os"), 4, "builtins.__import__"),  # the first step of most gadgets
])
def test_a_crafted_data_file_is_refused_and_its_code_never_runs(tiny_root, tmp_path, call,
                                                                protocol, named):
    marker = tmp_path / "code-ran"
    call.args = tuple(a.format(marker=str(marker)) if isinstance(a, str) else a
                      for a in call.args)
    crafted = pickle.dumps({"data": call, "labels": [0]}, protocol=protocol)
    (tiny_root / "cifar-10-batches-py" / "data_batch_1").write_bytes(crafted)
    with pytest.warns(UserWarning), pytest.raises(
            DatasetError, match=rf"data_batch_1 is not a plain CIFAR file.*{re.escape(named)}"
                                r".*refused and nothing in it ran"):
        load_cifar(root=tiny_root, val_size=10)
    assert not marker.exists()
    if named != "builtins.__import__":  # the control: an ordinary unpickler runs the code
        pickle.loads(crafted)
        assert marker.exists()


# ---------------------------------------------------------------------------------------------
# The library: each mistake raises a specific exception whose message names it.


def _small_model(**kwargs):
    kwargs = {"width": 0.125, "aux_logits": False, **kwargs}
    return build_model("googlenet_cifar_small", **kwargs).eval()


def _forward(x: torch.Tensor, name: str = "googlenet_cifar_small"):
    with torch.no_grad():
        return build_model(name, width=0.125, aux_logits=False).eval()(x)


def _tiny_cifar(tmp: Path, file: str, **changes) -> Path:
    _tiny_data(tmp, file, **changes)
    return tmp / "data"


NAN, INF = math.nan, math.inf

# TrainConfig: every field validated in one place, on construction and on every `replace`.
CONFIG_CASES = [
    ("lr", NAN, r"a finite number > 0, got nan"),
    ("lr", INF, r"a finite number > 0, got inf"),
    ("lr", 0, r"a finite number > 0, got 0"),
    ("lr", -0.1, r"a finite number > 0"),
    ("momentum", 1.0, r"a finite number in \[0, 1\), got 1.0"),
    ("momentum", NAN, r"a finite number in \[0, 1\)"),
    ("weight_decay", -1e-4, r"a finite number >= 0"),
    ("weight_decay", NAN, r"a finite number >= 0, got nan"),
    ("budget_min", NAN, r"a finite number > 0, got nan"),
    ("budget_min", INF, r"a finite number > 0, got inf"),
    ("budget_min", 0, r"a finite number > 0, got 0"),
    ("width", NAN, r"a finite number > 0, got nan"),
    ("width", 0, r"a finite number > 0"),
    ("label_smoothing", 1.0, r"a finite number in \[0, 1\)"),
    ("aux_weight", -0.3, r"a finite number >= 0"),
    ("aux_weight", INF, r"a finite number >= 0, got inf"),
    ("ema_decay", 1.0, r"a finite number in \(0, 1\)"),
    ("ema_decay", NAN, r"a finite number in \(0, 1\), got nan"),
    ("warmup", 1.0, r"a finite number in \[0, 1\)"),
    ("warmup", NAN, r"a finite number in \[0, 1\), got nan"),
    ("epochs", 1.5, r"an integer >= 1, got 1.5"),
    ("epochs", 0, r"an integer >= 1, got 0"),
    ("epochs", True, r"an integer >= 1, got True"),
    ("batch_size", 0, r"an integer >= 1"),
    ("batch_size", 32.0, r"an integer >= 1, got 32.0"),
    ("max_steps", 0, r"an integer >= 1, got 0"),
    ("max_steps", -5, r"an integer >= 1, got -5"),
    ("cutout", -1, r"an integer in \[0, 32\]"),
    ("crop_padding", 40, r"an integer in \[0, 31\]"),
    ("train_limit", 0, r"an integer >= 1"),
    ("eval_limit", -1, r"an integer >= 0"),
    ("seed", -1, r"an integer in \[0, 4294967295\]"),
    ("seed", 2**32, r"an integer in \[0, 4294967295\]"),
    ("seed", 0.5, r"an integer"),
    ("model", "resnet", r"'resnet' is not a registered model"),
    ("optimizer", "lion", r"one of \('sgd', 'adamw'\)"),
    ("precision", "fp8", r"one of \('auto', 'bf16', 'fp16', 'fp32'\)"),
    ("flip", "yes", r"True or False"),
]


@pytest.mark.parametrize(("field", "value", "expect"), CONFIG_CASES,
                         ids=[f"{f}={v!r}" for f, v, _ in CONFIG_CASES])
def test_train_config_refuses_an_invalid_field(field, value, expect):
    with pytest.raises(ConfigError, match=rf"TrainConfig.{field} .*{expect}"):
        TrainConfig(**{field: value})
    with pytest.raises(ConfigError, match=rf"TrainConfig.{field} "):
        replace(get_preset("quick"), **{field: value})  # a preset changed later: the same check


def _linear(outputs: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, outputs))


def _zeros(*shape, dtype=torch.float32) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype)


def _labels_plus(data, n):
    return replace(data, train_labels=data.train_labels + n)


def _fit(model, c, config=None, **kwargs):
    kwargs = {"device": "cpu", "progress": False, **kwargs}
    return fit(model, c.data, TINY_RUN if config is None else config, **kwargs)


def bad(id: str, call, error: type, message: str):
    return pytest.param(call, error, message, id=id)


LIBRARY_CASES = [
    bad("preset-unknown", lambda c: get_preset("tpu"), ConfigError, r"unknown preset 'tpu'"),
    # The model: its arguments, and the input it is given.
    bad("classes-zero", lambda c: _small_model(num_classes=0), ConfigError,
        r"num_classes must be a whole number >= 1, got 0"),
    bad("classes-negative", lambda c: _small_model(num_classes=-3), ConfigError,
        r"num_classes must be a whole number >= 1, got -3"),
    bad("classes-fraction", lambda c: _small_model(num_classes=2.5), ConfigError,
        r"num_classes must be a whole number >= 1, got 2.5"),
    bad("width-nan", lambda c: _small_model(width=NAN), ConfigError,
        r"width must be a finite number > 0, got nan"),
    bad("width-inf", lambda c: _small_model(width=INF), ConfigError, r"width must be"),
    bad("in-channels-zero", lambda c: _small_model(in_channels=0), ConfigError,
        r"in_channels must be"),
    bad("dropout-too-big", lambda c: _small_model(dropout=1.5), ConfigError,
        r"dropout must be a probability"),
    bad("input-uint8", lambda c: _forward(_zeros(2, 3, 32, 32, dtype=torch.uint8)),
        ModelInputError, r"expects float images.*got torch.uint8.*normalize"),
    bad("input-float64", lambda c: _forward(_zeros(2, 3, 32, 32, dtype=torch.float64)),
        ModelInputError, r"input is torch.float64 but the model's weights are torch.float32"),
    bad("input-int64", lambda c: _forward(_zeros(2, 3, 32, 32, dtype=torch.int64)),
        ModelInputError, r"expects float images"),
    bad("input-no-batch", lambda c: _forward(_zeros(3, 32, 32)), ModelInputError,
        r"batch of shape \(N, 3, H, W\)"),
    bad("input-too-small", lambda c: _forward(_zeros(2, 3, 2, 2)), ModelInputError,
        r"2x2 images are too small for the cifar16 stem.*smallest input it takes is 3x3"),
    bad("input-too-narrow", lambda c: _forward(_zeros(2, 3, 32, 1)), ModelInputError,
        r"32x1 images are too small"),
    bad("input-too-small-imagenet", lambda c: _forward(_zeros(1, 3, 8, 8), "googlenet"),
        ModelInputError, r"too small for the imagenet stem.*15x15"),
    # Model and data that disagree, in fit and in evaluate.
    bad("fit-100-classes", lambda c: _fit(_small_model(num_classes=100), c), ConfigError,
        r"the model has 100 outputs but .* has 10 classes.*num_classes=10"),
    bad("evaluate-100-classes", lambda c: evaluate(_small_model(num_classes=100), c.data,
                                                   device="cpu"),
        ConfigError, r"the model has 100 outputs but .* has 10 classes"),
    bad("evaluate-any-module", lambda c: evaluate(_linear(7), c.data, device="cpu"),
        ConfigError, r"the model has 7 outputs"),
    # fit's other arguments.
    bad("fit-batch-too-big", lambda c: _fit(_small_model(), c, replace(TINY_RUN, batch_size=64)),
        ConfigError, r"give no full batch of 64"),
    bad("fit-config-dict", lambda c: _fit(_small_model(), c, {"lr": 0.1}), ConfigError,
        r"config must be a TrainConfig"),
    bad("fit-device-unknown", lambda c: _fit(_small_model(), c, device="gpu"), ConfigError,
        r"unknown device 'gpu'"),
    bad("fit-out-is-a-file", lambda c: _fit(_small_model(), c, out_dir=c.file), ConfigError,
        r"is a file, not a folder"),
    bad("fit-resume-missing", lambda c: _fit(_small_model(), c, resume=c.tmp / "nope.pt"),
        CheckpointNotFoundError, r"no checkpoint at"),
    # Data that is not what it claims to be.
    bad("data-labels-shifted", lambda c: _labels_plus(c.data, 10), DatasetError,
        r"train_labels run from 10 to 19, outside \[0, 10\)"),
    bad("data-float-images", lambda c: replace(c.data, test_images=c.data.test_images.float()),
        DatasetError, r"test_images must be a uint8 tensor"),
    bad("data-int32-labels", lambda c: replace(c.data, val_labels=c.data.val_labels.int()),
        DatasetError, r"val_labels must be an int64 tensor"),
    bad("data-std-zero", lambda c: replace(c.data, std=(0.2, 0.0, 0.2)), ConfigError,
        r"std must be positive"),
    bad("data-mean-nan", lambda c: replace(c.data, mean=(NAN, 0.5, 0.5)), ConfigError,
        r"mean must be 3 finite numbers"),
    bad("loader-batch-zero", lambda c: DeviceLoader(c.data.val_images, c.data.val_labels,
                                                    batch_size=0, mean=c.data.mean,
                                                    std=c.data.std),
        ConfigError, r"batch_size must be a positive integer"),
    bad("loader-std-zero", lambda c: DeviceLoader(c.data.val_images, c.data.val_labels,
                                                  batch_size=8, mean=(0.5,) * 3, std=(0.0,) * 3),
        ConfigError, r"std must be positive"),
    bad("load-root-is-a-file", lambda c: load_cifar(root=c.file), DatasetError,
        r"points at .*a-file, which is a file"),
    bad("load-float-pixels",
        lambda c: load_cifar(root=_tiny_cifar(c.tmp, "data_batch_1", data=np.zeros((20, 3072)))),
        DatasetError, r"data_batch_1 stores float64 pixels"),
    bad("load-labels-out-of-range",
        lambda c: load_cifar(root=_tiny_cifar(c.tmp, "test_batch", labels=[10] * 20)),
        DatasetError, r"test_batch has 'labels' from 10 to 10, outside \[0, 10\)"),
    # Checkpoints.
    bad("checkpoint-empty", lambda c: T.load_checkpoint(c.empty), CheckpointError,
        r"is empty \(0 bytes\)"),
    bad("checkpoint-missing", lambda c: T.load_checkpoint(c.tmp / "nope.pt"),
        CheckpointNotFoundError, r"no checkpoint at"),
    bad("checkpoint-folder", lambda c: T.load_checkpoint(c.tmp), CheckpointError,
        r"is a folder, not a checkpoint file"),
]


@dataclass
class _Context:
    data: object
    tmp: Path
    file: Path
    empty: Path


@pytest.fixture
def context(synthetic, tmp_path) -> _Context:
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "empty.pt").write_bytes(b"")
    return _Context(synthetic, tmp_path, tmp_path / "a-file", tmp_path / "empty.pt")


@pytest.mark.parametrize(("call", "error", "message"), LIBRARY_CASES)
def test_library_raises_a_specific_error_naming_the_problem(call, error, message, context,
                                                           recwarn):
    with pytest.raises(error, match=message):
        call(context)


def test_every_error_class_is_exported_and_named_in_the_readme():
    """The README's list of error types is what users catch: each must exist as
    `inception.<Name>`, and no type the package raises may be missing from it."""
    import inception
    import inception.errors as E
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    listed = re.search(r"`inception.InceptionError` subclasses with the same messages: "
                       r"((?:`\w+`(?:, )?)+)\.", " ".join(readme.split("\n"))).group(1)
    named = set(re.findall(r"`(\w+)`", listed))
    defined = {name for name, obj in vars(E).items() if isinstance(obj, type)
               and issubclass(obj, E.InceptionError) and obj is not E.InceptionError}
    direct = {name for name in defined if getattr(E, name).__bases__[0] is E.InceptionError}
    assert named == direct, "README's error list and errors.py differ"
    assert all(getattr(inception, name) is getattr(E, name) for name in defined)
    assert defined <= set(inception.__all__)

