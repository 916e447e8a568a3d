"""Transfer learning: pretrained weights in, a new classifier, freezing, and per-layer rates.

Each test compares against the weights it started from (the packaged file, a checkpoint, or an
offline stand-in for torchvision's ImageNet file), read independently of the code under test.
"""

from dataclasses import replace

import pytest
import torch
from conftest import train_on_cpu, train_until_stopped_after_epoch

import inception.train as T
import inception.transfer as X
from inception.data import load_cifar
from inception.errors import CheckpointNotFoundError, ConfigError
from inception.train import TrainConfig, fit, load_checkpoint
from inception.weights import get_weights

pytestmark = pytest.mark.usefixtures("one_thread")

# Two steps of 8 images per epoch, no validation: enough to move every weight that trains.
TINY = TrainConfig(init_from="cifar10", epochs=1, batch_size=8, train_limit=16, eval_limit=0,
                   lr=0.05, warmup=0.0, schedule="cosine")


@pytest.fixture(scope="module")
def three_classes():
    """A 3-class dataset: the synthetic CIFAR stand-in with its labels taken modulo 3."""
    data = load_cifar(source="synthetic", train_limit=16, eval_limit=8)
    return replace(data, classes=data.classes[:3], train_labels=data.train_labels % 3,
                   val_labels=data.val_labels % 3, test_labels=data.test_labels % 3)


@pytest.fixture(scope="module")
def packaged():
    return get_weights("googlenet_cifar_small", "cifar10").state_dict()


def _changed(state: dict, start: dict) -> set[str]:
    return {k for k in start if not torch.equal(state[k], start[k])}


def test_cifar10_weights_start_a_three_class_model_with_a_new_fc(packaged):
    config = TINY
    model = config.build_model(3)
    summary = X.start_from(model, X.find_pretrained("cifar10"))
    state = model.state_dict()
    assert state["fc.weight"].shape == (3, 512) and state["fc.bias"].shape == (3,)
    for name, tensor in packaged.items():
        if not name.startswith("fc."):
            assert torch.equal(state[name], tensor), name
    assert not torch.equal(state["fc.weight"][:3], packaged["fc.weight"][:3])
    assert f"{len(packaged) - 2} tensors transferred" in summary and "fc" in summary


def test_linear_probe_changes_fc_only_and_keeps_batchnorm_statistics(three_classes, packaged):
    config = replace(TINY, freeze="features", max_steps=3, epochs=2)
    result = train_on_cpu(three_classes, config)
    state = result.model.state_dict()
    assert result.model.aux1 is None  # no aux heads on a frozen trunk
    trunk = {k: v for k, v in packaged.items() if not k.startswith("fc.")}
    assert state.keys() - trunk.keys() == {"fc.weight", "fc.bias"}
    assert any("running_mean" in k for k in trunk)  # the statistics are compared too
    assert _changed(state, trunk) == set()
    torch.manual_seed(config.seed)  # the fc `_train` started from
    assert not torch.equal(state["fc.weight"], config.build_model(3).fc.weight)


def test_freezing_up_to_inception4e_trains_only_the_layers_after_it(three_classes, packaged):
    config = replace(TINY, freeze="inception4e", max_steps=3, epochs=2)
    state = train_on_cpu(three_classes, config).model.state_dict()
    trunk = {k for k in packaged if not k.startswith("fc.")}
    before = {k for k in trunk if k.split(".")[0] in X.frozen_modules("inception4e")}
    after = trunk - before
    assert before and after
    assert _changed(state, {k: packaged[k] for k in before}) == set()
    learned = {k for k in after if k.endswith("weight")}
    assert learned <= _changed(state, {k: packaged[k] for k in learned})


def test_pretrained_layers_train_at_the_scaled_learning_rate(three_classes, monkeypatch):
    seen = []
    real_step = T._train_step

    def record(run, forward, x, y, lr, plan):
        out = real_step(run, forward, x, y, lr, plan)
        seen.append([(g["lr"], g["lr_scale"], sum(p.numel() for p in g["params"]))
                     for g in run.optimizer.param_groups])
        return out

    monkeypatch.setattr(T, "_train_step", record)
    train_on_cpu(three_classes, replace(TINY, pretrained_lr_scale=0.1, max_steps=1))
    groups = seen[0]
    trunk = [lr for lr, scale, _ in groups if scale == 0.1]
    heads = [lr for lr, scale, _ in groups if scale == 1.0]
    assert len(trunk) == 2 and len(heads) == 2  # with and without weight decay each
    assert trunk[0] == pytest.approx(0.1 * heads[0]) and heads[0] == pytest.approx(TINY.lr)
    fc_params = 3 * 512 + 3
    assert sum(n for _, scale, n in groups if scale == 1.0) > fc_params  # fc and the aux heads


def test_a_checkpoint_path_starts_a_run_like_named_weights(three_classes, tmp_path):
    data = load_cifar(source="synthetic", train_limit=16, eval_limit=8)
    earlier = TrainConfig(epochs=1, batch_size=8, train_limit=16, eval_limit=0, width=0.125)
    train_on_cpu(data, earlier, out_dir=tmp_path)
    saved, _ = load_checkpoint(tmp_path / "checkpoint.pt")
    config = TrainConfig(init_from=str(tmp_path / "checkpoint.pt"), width=0.125)
    model = config.build_model(3)
    X.start_from(model, X.find_pretrained(config.init_from))
    state = model.state_dict()
    assert model.arch["width"] == 0.125 and state["fc.weight"].shape[0] == 3
    for name, tensor in saved.state_dict().items():
        if name.split(".")[0] in X.NETWORK_ORDER:
            assert torch.equal(state[name], tensor), name
        if name.startswith("aux1.conv"):  # the aux heads' own layers carry over, fc2 does not
            assert torch.equal(state[name], tensor), name


def test_a_transfer_run_normalises_with_the_pretrained_statistics(three_classes, tmp_path):
    """The synthetic images have their own mean and std; the run must feed the network inputs
    normalised as its pretrained weights saw them, and record that for evaluate and predict."""
    packaged = get_weights("googlenet_cifar_small", "cifar10").meta
    assert tuple(three_classes.mean) != tuple(packaged["mean"])  # the test would prove nothing
    result = train_on_cpu(three_classes, replace(TINY, freeze="features"), out_dir=tmp_path)
    _, meta = load_checkpoint(tmp_path / "checkpoint.pt")
    assert meta["data"]["mean"] == pytest.approx(packaged["mean"])
    assert meta["data"]["std"] == pytest.approx(packaged["std"])
    # and the result says so, for evaluating the model in the same process
    assert result.mean == pytest.approx(packaged["mean"]) and result.std == pytest.approx(
        packaged["std"])
    scratch = train_on_cpu(three_classes, replace(TINY, init_from=None))
    assert (scratch.mean, scratch.std) == (tuple(three_classes.mean), tuple(three_classes.std))


@pytest.mark.usefixtures("no_network")
def test_imagenet_weights_transfer_to_five_classes_with_new_classifiers(cached):
    config = TrainConfig(init_from="imagenet", model="googlenet")
    model = config.build_model(5)
    summary = X.start_from(model, X.find_pretrained("imagenet"))
    source, state = torch.load(cached, weights_only=True), model.state_dict()
    assert model.arch["transform_input"] and model.arch["stem"] == "imagenet"
    assert state["fc.weight"].shape == (5, 1024) and state["aux2.fc2.weight"].shape[0] == 5
    new = {"fc.weight", "fc.bias", *(f"aux{i}.fc2.{p}" for i in (1, 2) for p in ("weight", "bias"))}
    for name, tensor in source.items():
        if name not in new:
            assert torch.equal(state[name], tensor), name
    assert f"{len(source) - len(new)} tensors transferred, {len(new)} new" in summary


@pytest.mark.usefixtures("no_network")
def test_imagenet_googlenet_fine_tunes_on_upscaled_cifar_as_notebook_07_does(cached,
                                                                          three_classes):
    """Notebook 07's section 4 runs only where the real file downloads (never in CI), so its
    path is run here on the offline stand-in: 112 px images, the ImageNet stem, lr x 0.1."""
    def upscaled(images):
        return torch.nn.functional.interpolate(images.float(), size=112, mode="bilinear").round(
        ).clamp(0, 255).to(torch.uint8)

    data = replace(three_classes, train_images=upscaled(three_classes.train_images),
                   val_images=upscaled(three_classes.val_images),
                   test_images=upscaled(three_classes.test_images))
    config = replace(TINY, init_from="imagenet", model="googlenet", pretrained_lr_scale=0.1,
                     eval_limit=None)
    result = train_on_cpu(data, config)
    imagenet = get_weights("googlenet", "imagenet").meta
    assert (list(result.mean), list(result.std)) == (imagenet["mean"], imagenet["std"])
    assert result.history.val_acc.notna().all() and result.model.fc.out_features == 3
    changed = _changed(result.model.state_dict(), torch.load(cached, weights_only=True))
    assert "inception5b.branch1.conv.weight" in changed  # the trunk learned (at lr x 0.1)


@pytest.mark.parametrize(("config", "words"), [
    (dict(init_from="alexnet"), ["neither pretrained weights", "cifar10"]),
    (dict(init_from="cifar10", width=0.25), ["width 0.5", "width 0.25"]),
    (dict(init_from="cifar10", model="googlenet_cifar"), ["googlenet_cifar_small weights"]),
])
def test_weights_that_do_not_fit_the_config_are_refused_by_build_model(config, words):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**config).build_model(3)
    assert all(w in str(err.value) for w in words), err.value


@pytest.mark.parametrize(("config", "words"), [
    (dict(init_from="cifar10", freeze="inception9z"), ["inception9z", "features", "inception4e"]),
    (dict(freeze="features"), ["init_from"]),
    (dict(pretrained_lr_scale=0.1), ["init_from"]),
    (dict(init_from="cifar10", pretrained_lr_scale=0.0), ["pretrained_lr_scale"]),
    (dict(init_from=""), ["init_from"]),
])
def test_bad_transfer_settings_are_refused_on_construction(config, words):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**config)
    assert all(w in str(err.value) for w in words), err.value


def test_a_missing_checkpoint_path_is_named(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint at"):
        TrainConfig(init_from=str(tmp_path / "run" / "checkpoint.pt")).build_model(3)


def test_a_model_of_another_shape_is_refused_by_fit(three_classes):
    model = TrainConfig(width=0.125).build_model(3)
    with pytest.raises(ConfigError, match="config.build_model"):
        fit(model, three_classes, TINY, device="cpu", progress=False)


def test_resumed_transfer_run_continues_from_its_checkpoint(three_classes, tmp_path,
                                                            monkeypatch):
    config = replace(TINY, epochs=2, freeze="inception3b", pretrained_lr_scale=0.5)
    straight = train_on_cpu(three_classes, config, out_dir=tmp_path / "straight")

    train_until_stopped_after_epoch(1, three_classes, config, tmp_path / "resumed", monkeypatch)

    def no_reload(self):
        raise AssertionError("a resume must not read the pretrained weights again")

    monkeypatch.setattr(X.Pretrained, "state_dict", no_reload)
    checkpoint = tmp_path / "resumed" / "checkpoint.pt"
    resumed = train_on_cpu(three_classes, config, out_dir=tmp_path / "resumed", resume=checkpoint)
    assert resumed.history.epoch.tolist() == [1, 2]
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resumed_transfer_run_no_longer_needs_the_checkpoint_it_began_from(three_classes,
                                                                           tmp_path,
                                                                           monkeypatch):
    """The resumed checkpoint holds the network's shape and statistics, so the file named by
    init_from may have been moved or deleted since the run began."""
    other_images = load_cifar(source="synthetic", train_limit=32, eval_limit=8, seed=1)
    start = train_on_cpu(other_images, TrainConfig(width=0.125, epochs=1, batch_size=8,
                                                   eval_limit=0),
                         out_dir=tmp_path / "start").checkpoint
    config = replace(TINY, init_from=str(start), freeze="inception3b", epochs=2)
    straight = train_on_cpu(three_classes, config)
    train_until_stopped_after_epoch(1, three_classes, config, tmp_path / "run", monkeypatch)
    start.rename(tmp_path / "elsewhere.pt")
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    model = config.build_model(3, resume=checkpoint)
    resumed = fit(model, three_classes, config, device="cpu", progress=False,
                  out_dir=tmp_path / "run", resume=checkpoint)
    assert resumed.history.epoch.tolist() == [1, 2]
    assert resumed.mean == straight.mean == other_images.mean != three_classes.mean
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CheckpointNotFoundError):  # without resume it is still needed
        config.build_model(3)

