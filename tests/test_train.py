"""inception.train: learning, determinism, exact resume, checkpoints and the schedule."""

import re
from dataclasses import replace

import pytest
import torch
from conftest import RunsCode, train_on_cpu, train_until_stopped_after_epoch

import inception.runtime
import inception.train as T
from inception.runtime import choose_precision, runs_natively
from inception.train import PRESETS, TrainConfig, fit, get_preset, load_checkpoint, lr_at

# A run small enough to repeat several times in a test: 4 steps of 16 images per epoch.
TINY = TrainConfig(epochs=3, batch_size=16, lr=0.05, train_limit=64, eval_limit=32,
                   width=0.125)


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_overfits_a_small_fixed_batch(synthetic):
    config = TrainConfig(epochs=40, batch_size=32, train_limit=32, eval_limit=0, lr=0.02,
                         optimizer="adamw", weight_decay=0.0, label_smoothing=0.0,
                         crop_padding=0, flip=False, warmup=0.0, schedule="cosine",
                         aux_weight=0.0, width=0.125)
    result = train_on_cpu(synthetic, config)
    model = result.model.eval()
    with torch.no_grad():
        x = synthetic.train_images[:32]
        from inception.data import normalize
        preds = model(normalize(x, synthetic.mean, synthetic.std)).argmax(1)
    assert result.history.train_acc.iloc[-1] >= 0.95
    assert (preds == synthetic.train_labels[:32]).float().mean() >= 0.95


def test_quick_preset_learns_real_cifar10(real_cifar10):
    config = replace(get_preset("quick"), width=0.125, train_limit=1536, eval_limit=1000,
                     epochs=2, batch_size=32, lr=0.1)
    result = train_on_cpu(real_cifar10, config)
    # Chance is 10%; under a hundred steps on real images must already be well clear of it.
    assert result.history.val_acc.iloc[-1] > 0.25, result.history


def test_same_seed_gives_identical_weights(synthetic):
    a, b = train_on_cpu(synthetic, TINY), train_on_cpu(synthetic, TINY)
    assert _same_weights(a.model, b.model)
    assert a.history.train_loss.tolist() == b.history.train_loss.tolist()
    c = train_on_cpu(synthetic, replace(TINY, seed=1))
    assert not _same_weights(a.model, c.model)


def test_a_run_cut_short_mid_epoch_and_extended_ends_on_its_last_step(synthetic, tmp_path):
    # 3 epochs of 4 steps; the first sitting stops after 2 steps, inside epoch 1. Counting that
    # part-epoch as a whole one left the extended run 2 steps short of its schedule's end.
    train_on_cpu(synthetic, replace(TINY, max_steps=2), out_dir=tmp_path)
    with pytest.warns(UserWarning, match=r"max_steps: 2 -> None .*warm restart"):
        result = train_on_cpu(synthetic, TINY, out_dir=tmp_path, resume=tmp_path / "checkpoint.pt")
    saved = T.read_checkpoint(tmp_path / "checkpoint.pt")
    assert saved["step"] == 3 * 4 and result.stopped_by == "epochs"
    planned = train_on_cpu(synthetic, TINY)  # the schedule ran to its end, as planned
    assert result.history.lr.iloc[-1] == pytest.approx(planned.history.lr.iloc[-1])


def test_resume_matches_uninterrupted_run(synthetic, tmp_path, monkeypatch):
    config = replace(TINY, ema_decay=0.9)  # EMA state must survive the interruption too
    straight = train_on_cpu(synthetic, config, out_dir=tmp_path / "straight")

    train_until_stopped_after_epoch(2, synthetic, config, tmp_path / "resumed", monkeypatch)
    resumed = train_on_cpu(synthetic, config, out_dir=tmp_path / "resumed",
                           resume=tmp_path / "resumed" / "checkpoint.pt")

    assert _same_weights(straight.model, resumed.model)
    assert len(resumed.history) == 3
    assert resumed.history.train_loss.tolist() == straight.history.train_loss.tolist()


def test_checkpoint_loads_with_weights_only_and_rebuilds_the_model(synthetic, tmp_path):
    result = train_on_cpu(synthetic, TINY, out_dir=tmp_path)
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert payload["epoch"] == 3 and payload["data"]["source"] == "synthetic"
    model, meta = load_checkpoint(tmp_path / "checkpoint.pt")
    assert not model.training and meta["config"]["width"] == 0.125
    assert list(meta["history"].columns) == ["epoch", "train_loss", "train_acc", "val_loss",
                                             "val_acc", "lr", "seconds", "img_per_s"]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), result.model.eval()(x))
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file


def test_a_fresh_run_keeps_the_earlier_checkpoint(synthetic, tmp_path):
    train_on_cpu(synthetic, replace(TINY, epochs=1), out_dir=tmp_path)
    first = (tmp_path / "checkpoint.pt").read_bytes()
    train_on_cpu(synthetic, replace(TINY, epochs=1, seed=5), out_dir=tmp_path)
    kept = list(tmp_path.glob("checkpoint-*.pt"))
    assert len(kept) == 1 and kept[0].read_bytes() == first
    assert (tmp_path / "checkpoint.pt").read_bytes() != first


def _native_bf16(monkeypatch, native: bool) -> None:
    """Make precision="auto" see a CPU with (or without) native bf16: what a checkpoint meets when
    it moves between machines."""
    monkeypatch.setattr(inception.runtime, "cpu_has_native_bf16", lambda: native)


def test_a_resume_on_a_bf16_machine_keeps_training_in_fp32_as_it_began(synthetic, tmp_path,
                                                                       monkeypatch):
    _native_bf16(monkeypatch, False)
    straight = train_on_cpu(synthetic, TINY)
    train_until_stopped_after_epoch(2, synthetic, TINY, tmp_path, monkeypatch)
    _native_bf16(monkeypatch, True)  # "auto" would now pick bf16 for a new run
    assert choose_precision("cpu") == "bf16"
    resumed = train_on_cpu(synthetic, TINY, out_dir=tmp_path, resume=tmp_path / "checkpoint.pt")
    assert resumed.precision == "fp32"
    assert _same_weights(straight.model, resumed.model)
    assert load_checkpoint(tmp_path / "checkpoint.pt")[1]["precision"] == "fp32"


def test_a_bf16_checkpoint_resumed_without_native_bf16_goes_on_in_fp32_and_says_so(
        synthetic, tmp_path, monkeypatch):
    _native_bf16(monkeypatch, True)
    config = replace(TINY, epochs=2, width=0.125)
    train_until_stopped_after_epoch(1, synthetic, config, tmp_path, monkeypatch)
    assert T.read_checkpoint(tmp_path / "checkpoint.pt")["precision"] == "bf16"
    _native_bf16(monkeypatch, False)  # emulated bf16 would be several times slower than fp32
    with pytest.warns(UserWarning, match=r"trained in bf16, .* trains in fp32, so its result "
                                          "will differ"):
        resumed = train_on_cpu(synthetic, config, out_dir=tmp_path,
                               resume=tmp_path / "checkpoint.pt")
    assert resumed.precision == "fp32" and len(resumed.history) == 2


@pytest.mark.parametrize("change", [dict(width=0.25), dict(num_classes=100)])
def test_resume_into_a_different_model_is_a_clear_error(synthetic, tmp_path, change):
    train_on_cpu(synthetic, replace(TINY, epochs=1), out_dir=tmp_path)
    other = T.build_model("googlenet_cifar_small", **{"width": 0.125, **change})
    with pytest.raises(ValueError, match="checkpoint is for googlenet_cifar_small.*but the model"):
        fit(other, synthetic, replace(TINY, epochs=1), device="cpu", progress=False,
            resume=tmp_path / "checkpoint.pt")


@pytest.mark.parametrize(("change", "shown"), [
    (dict(source="unofficial copy"), "source: 'synthetic' -> 'unofficial copy'"),
    (dict(classes=[f"c{i}" for i in range(10)]),
     "classes: 10 classes (airplane, automobile, bird, ...) -> 10 classes (c0, c1, c2, ...)"),
])
def test_resume_on_other_data_is_a_clear_error(synthetic, tmp_path, change, shown):
    """The same network and recipe would train on other images without a word."""
    train_on_cpu(synthetic, replace(TINY, epochs=1), out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"cannot resume: the checkpoint was trained on other "
                                         rf"data \({re.escape(shown)}\)\. Resume with the data"):
        train_on_cpu(replace(synthetic, **change), replace(TINY, epochs=1),
                     resume=tmp_path / "checkpoint.pt")


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="a host sync only exists with a GPU, and this machine has none")
def test_the_training_steps_never_wait_for_the_gpu(synthetic, monkeypatch):
    """Between an epoch's first step and its one read of the sums, nothing may make the CPU wait
    for the GPU: CUDA's sync debug mode turns any such wait into an error. (fp32, because fp16's
    GradScaler reads its inf check every step by design.)"""
    steps, train_step, sum_over_ranks = [], T._train_step, T.distributed.sum_over_ranks

    def strict_after_the_first(*args, **kwargs):  # the first step may set up cuDNN
        steps.append(1)
        torch.cuda.set_sync_debug_mode("error" if len(steps) > 1 else "default")
        return train_step(*args, **kwargs)

    def relaxed(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("default")
        return sum_over_ranks(*args, **kwargs)

    monkeypatch.setattr(T, "_train_step", strict_after_the_first)
    monkeypatch.setattr(T.distributed, "sum_over_ranks", relaxed)
    config = replace(TINY, epochs=1, precision="fp32")
    torch.manual_seed(config.seed)
    try:
        fit(config.build_model(len(synthetic.classes)), synthetic, config, device="cuda",
            progress=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(steps) == 4


def test_a_checkpoint_from_before_transform_input_still_fits_its_model(tmp_path):
    model = T.build_model("googlenet_cifar_small", width=0.125)
    older = {k: v for k, v in model.arch.items() if k != "transform_input"}
    path = T.save_checkpoint(tmp_path / "checkpoint.pt",
                             {"format": T.CHECKPOINT_FORMAT, "arch": older})
    T.check_compatible(model, T.read_checkpoint(path))  # no error: the argument's old value


def test_resume_with_a_different_recipe_is_refused(synthetic, tmp_path):
    train_on_cpu(synthetic, replace(TINY, epochs=1), out_dir=tmp_path)
    with pytest.raises(ValueError, match="config differs.*lr"):
        train_on_cpu(synthetic, replace(TINY, lr=0.5), resume=tmp_path / "checkpoint.pt")


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = T.save_checkpoint(tmp_path / "checkpoint.pt", {"format": T.CHECKPOINT_FORMAT, "v": 1})

    def broken_save(obj, f):
        f.write(b"partial")  # save_checkpoint hands torch.save an open temp file
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        T.save_checkpoint(path, {"format": T.CHECKPOINT_FORMAT, "v": 2})
    monkeypatch.undo()
    assert T.read_checkpoint(path)["v"] == 1


def test_unreadable_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "truncated.pt").write_bytes(b"PK\x03\x04 not a whole file")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "truncated.pt")
    # A checkpoint that runs a command when unpickled: weights_only=True refuses it unrun.
    ran = tmp_path / "code-ran"
    torch.save({"format": T.CHECKPOINT_FORMAT, "x": RunsCode(f"touch {ran}")},
               tmp_path / "crafted.pt")
    with pytest.raises(ValueError, match="UnpicklingError.*only load checkpoints you trust"):
        load_checkpoint(tmp_path / "crafted.pt")
    assert not ran.exists()
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an inception checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_budget_ends_the_run_at_a_low_learning_rate(synthetic, monkeypatch):
    steps, real_loss = [0], T.loss_fn

    def counted_loss(*args):
        steps[0] += 1
        return real_loss(*args)

    class FakeClock:  # every step takes 100 ms, however fast the CPU and however often it is read
        @staticmethod
        def perf_counter() -> float:
            return 0.1 * steps[0]

    monkeypatch.setattr(T, "loss_fn", counted_loss)
    monkeypatch.setattr(T, "time", FakeClock)
    config = replace(TINY, epochs=1000, budget_min=0.05, eval_limit=0)  # a 3-second budget
    result = train_on_cpu(synthetic, config)
    assert result.stopped_by == "budget"
    assert 3.0 <= result.train_seconds < 3.2
    assert result.history.lr.iloc[-1] < 0.05 * config.lr  # laid over the budget: ends low
    assert result.history.lr.iloc[0] > 0.5 * config.lr  # after warming up to the peak


def test_max_steps_caps_the_run(synthetic):
    result = train_on_cpu(synthetic, replace(TINY, max_steps=5))
    assert result.stopped_by == "max_steps" and len(result.history) == 2


def test_schedules_warm_up_then_decay_to_zero():
    one = TrainConfig(lr=1.0, warmup=0.2, schedule="onecycle")
    cos = replace(one, schedule="cosine")
    assert lr_at(0.0, one) == pytest.approx(0.05) and lr_at(0.0, cos) == 0.0
    assert lr_at(0.1, one) == pytest.approx(0.525) and lr_at(0.1, cos) == pytest.approx(0.5)
    assert lr_at(0.2, one) == 1.0 and lr_at(0.2, cos) == 1.0
    assert lr_at(0.6, one) == pytest.approx(0.5) and lr_at(0.6, cos) == pytest.approx(0.5)
    assert lr_at(1.0, one) == 0.0 and lr_at(1.0, cos) == pytest.approx(0.0)


def test_weight_decay_skips_batchnorm_and_biases():
    model = T.build_model("googlenet_cifar_small", width=0.125)
    groups = T.make_optimizer(model, TrainConfig()).param_groups
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0.0
    assert id(model.conv1.conv.weight) in decayed and id(model.fc.weight) in decayed
    assert id(model.conv1.bn.weight) not in decayed and id(model.fc.bias) not in decayed
    assert groups[0]["nesterov"] is True


def test_precision_choice_per_device():
    assert choose_precision("cuda", cuda_capability=(7, 5)) == "fp16"  # T4: fp16 + scaler
    assert choose_precision("cuda", cuda_capability=(8, 0)) == "bf16"  # A100
    assert choose_precision("cpu", cpu_bf16=True) == "bf16"  # AMX / AVX-512 BF16
    assert choose_precision("cpu", cpu_bf16=False) == "fp32"  # emulated bf16 is slower
    assert choose_precision("cpu", "bf16") == "bf16"
    with pytest.raises(ValueError, match="fp16 autocast is for CUDA"):
        choose_precision("cpu", "fp16")


def test_which_precisions_run_natively_where():
    """The hardware table that both "auto" and a resume's precision read (see choose_precision)."""
    native = {(precision, where): runs_natively(precision, device, **probe)
              for precision in ("bf16", "fp16", "fp32")
              for where, (device, probe) in {
                  "T4": ("cuda", {"cuda_capability": (7, 5)}),
                  "A100": ("cuda", {"cuda_capability": (8, 0)}),
                  "AMX CPU": ("cpu", {"cpu_bf16": True}),
                  "AVX2 CPU": ("cpu", {"cpu_bf16": False})}.items()}
    assert {key for key, yes in native.items() if not yes} == {
        ("bf16", "T4"), ("bf16", "AVX2 CPU"), ("fp16", "AMX CPU"), ("fp16", "AVX2 CPU")}
    assert not runs_natively("bf16", "mps") and runs_natively("fp32", "mps")
    with pytest.raises(ValueError, match="precision must be one of"):
        runs_natively("auto", "cpu")


def test_presets_and_config_validation():
    for cuda, preset in ((True, "gpu"), (False, "cpu")):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
            assert get_preset("auto") == PRESETS[preset]
    assert get_preset("cpu").model == "googlenet_cifar_small"
    assert get_preset("gpu").model == "googlenet_cifar"
    assert get_preset("cpu").budget_min == 15
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("tpu")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(optimizer="lion")


def test_gpu_recipe_runs_through_the_fp16_grad_scaler_path(synthetic, tmp_path, monkeypatch):
    # Colab's T4 resolves to fp16 autocast with a GradScaler. No GPU here, but the CPU runs the
    # same code: fp16 autocast, scaled backward, scaler step and update, scaler state in the
    # checkpoint and back on resume. The gpu preset's recipe (EMA, cutout) rides along, shrunk.
    monkeypatch.setattr(T, "choose_precision", lambda device, requested: "fp16")
    config = replace(get_preset("gpu"), width=0.125, batch_size=16, epochs=2, train_limit=64,
                     eval_limit=32)
    train_until_stopped_after_epoch(1, synthetic, config, tmp_path, monkeypatch)
    saved = T.read_checkpoint(tmp_path / "checkpoint.pt")
    assert saved["precision"] == "fp16"
    assert saved["scaler"]["scale"] > 0  # an enabled scaler saved its state (a disabled one: {})
    resumed = train_on_cpu(synthetic, config, out_dir=tmp_path, resume=tmp_path / "checkpoint.pt")
    assert resumed.precision == "fp16" and len(resumed.history) == 2
    straight = train_on_cpu(synthetic, config)  # the scaler's state came back exactly
    assert _same_weights(resumed.model, straight.model)
