"""torchvision's ImageNet GoogLeNet in the package's model, tested offline.

A randomly initialised torchvision GoogLeNet, saved under the real file's name in a temporary
TORCH_HOME, stands in for the downloaded file; every test blocks the network.
"""

import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import cache_file, expect_prefix
from torchvision.models import GoogLeNet_Weights

import inception.weights as W
from inception.data.folder import _TORCHVISION_IO_DEPRECATED
from inception.errors import InceptionError, WeightsError, WeightsNotFoundError
from inception.model import IMAGENET_MEAN, IMAGENET_STD, GoogLeNetOutputs, build_model, list_models
from inception.predict import load_weights, predict_images

SOURCE = GoogLeNet_Weights.IMAGENET1K_V1
pytestmark = pytest.mark.usefixtures("no_network")  # every test here runs offline


def test_imagenet_weights_give_torchvisions_logits_from_the_same_file(cached):
    ours = build_model("googlenet", num_classes=1000, weights="imagenet")
    theirs = torchvision.models.googlenet(weights=SOURCE).eval()  # reads the same cached file
    assert not ours.training and ours.arch["transform_input"] and not ours.arch["five_by_five"]
    torch.manual_seed(1)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits, expected = ours(x), theirs(x)
    assert logits.shape == (2, 1000) and expected.std() > 0.1  # O(1) logits, not all ~0
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)  # the same operations: exact
    assert build_model("googlenet", weights="imagenet").fc.out_features == 1000  # the default


def test_aux_heads_are_loaded_then_dropped_unless_asked_for(cached):
    state = torch.load(cached, weights_only=True)
    plain = build_model("googlenet", weights="imagenet")
    assert plain.aux1 is None and plain.aux2 is None and not plain.arch["aux_logits"]
    assert plain.state_dict().keys() == {k for k in state if not k.startswith("aux")}
    with pytest.warns(UserWarning, match="aux heads .* not pretrained"):
        with_aux = build_model("googlenet", weights="imagenet", aux_logits=True)
    loaded = with_aux.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)  # every tensor, aux heads too
    outputs = with_aux.train()(torch.randn(2, 3, 224, 224))
    assert isinstance(outputs, GoogLeNetOutputs) and outputs.aux_logits1.shape == (2, 1000)


def test_class_names_and_preprocessing_come_with_the_weights():
    weights = W.get_weights("googlenet", "imagenet")  # nothing downloaded for its description
    meta = weights.meta
    assert meta["classes"] == SOURCE.meta["categories"] and len(meta["classes"]) == 1000
    assert meta["classes"][0] == "tench" and meta["url"] == SOURCE.url
    assert (meta["resize"], meta["crop"], meta["interpolation"]) == (256, 224, "bilinear")
    assert tuple(meta["mean"]) == IMAGENET_MEAN and tuple(meta["std"]) == IMAGENET_STD
    gray = torch.full((3, 300, 400), 128, dtype=torch.uint8)  # a flat image stays flat
    x = weights.transforms()(gray)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x, ((128 / 255 - mean) / std).view(3, 1, 1).expand(3, 224, 224))
    assert "imagenet" in [r for r in list_models() if r["name"] == "googlenet"][0]["weights"]


def test_models_list_the_imagenet_weights_with_torchvisions_parameter_count(tmp_path,
                                                                           monkeypatch, capsys):
    """The registry's googlenet (5x5 kernels, 10 classes) is not the network the imagenet
    weights fit; the listing counts that one, torchvision's, without downloading it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with torch.device("meta"):
        theirs = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
    count = sum(p.numel() for p in theirs.parameters())
    assert count == 6_624_904  # torchvision's published figure
    row = next(r for r in list_models() if r["name"] == "googlenet")
    assert row["params"] != count
    assert row["weights"] == f"imagenet ({count:,} params: num_classes=1000, five_by_five=False)"
    from inception.cli import main

    assert main(["models"]) == 0 and f"imagenet ({count:,} params" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())  # nothing downloaded


# write_png, which writes the test's photo, warns that torchvision 0.29 deprecates it (the
# package's own reader is checked to warn about nothing in test_folder).
@pytest.mark.filterwarnings(f"ignore:{_TORCHVISION_IO_DEPRECATED}:DeprecationWarning")
def test_predict_with_imagenet_weights_matches_torchvision_on_its_own_preprocessing(cached,
                                                                                    tmp_path):
    """`predict --weights imagenet` reads a file as torchvision's pipeline does (shorter side to
    256, centre crop 224, ImageNet normalisation) and gives torchvision's top-5 and its
    probabilities."""
    torch.manual_seed(2)
    image = torch.randint(0, 256, (3, 300, 420), dtype=torch.uint8)
    torchvision.io.write_png(image, str(tmp_path / "photo.png"))
    table = predict_images(load_weights("imagenet"), [tmp_path / "photo.png"], top_k=5)
    theirs = torchvision.models.googlenet(weights=SOURCE).eval()
    with torch.no_grad():
        probs = theirs(SOURCE.transforms()(image)[None]).softmax(1)[0]
    top = probs.topk(5)
    row = table.iloc[0]
    assert row["error"] is None or row["error"] != row["error"]  # None, or NaN in the frame
    assert [row[f"class_{r}"] for r in range(1, 6)] == [SOURCE.meta["categories"][i]
                                                       for i in top.indices.tolist()]
    assert [row[f"prob_{r}"] for r in range(1, 6)] == pytest.approx(top.values.tolist(),
                                                                    abs=1e-4)


def test_missing_file_offline_names_the_url_and_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "elsewhere"))
    with pytest.raises(WeightsNotFoundError) as err:
        build_model("googlenet", weights="imagenet")
    message = str(err.value)
    assert SOURCE.url in message and str(cache_file(tmp_path / "elsewhere")) in message
    assert "download.pytorch.org cannot be reached" in message and "\n" not in message
    assert isinstance(err.value, InceptionError) and isinstance(err.value, FileNotFoundError)
    folder = cache_file(tmp_path / "elsewhere").parent  # asked first, so not even created
    assert not folder.exists() or not any(folder.iterdir())  # and no partial file


def test_a_damaged_cached_file_is_refused_by_name(stand_in, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = cache_file(tmp_path)
    path.parent.mkdir(parents=True)
    expect_prefix(monkeypatch, W.sha256(stand_in)[:8])
    data = bytearray(stand_in.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a tensor: torch.load alone would not notice
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=f"{path} is damaged .* Delete it"):
        build_model("googlenet", weights="imagenet")
    path.write_bytes(stand_in.read_bytes()[:1000])  # a download cut short
    with pytest.raises(WeightsError, match=f"{path} is damaged"):
        build_model("googlenet", weights="imagenet")


def _cache(tmp_path, monkeypatch, write) -> Path:
    """TORCH_HOME holding a file made by `write(path)`, taken for the real one."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = cache_file(tmp_path)
    path.parent.mkdir(parents=True)
    write(path)
    expect_prefix(monkeypatch, W.sha256(path)[:8])
    return path


@pytest.mark.parametrize("network, problem", [
    (lambda: torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False),
     r"20 keys missing \(first: aux1\.conv\.bn\.bias\)"),  # 2 aux heads of 10 tensors
    (lambda: build_model("googlenet", num_classes=1000),  # the paper's 5x5 kernels
     r"tensors of another shape \(first: inception3a\.branch3\.1\.conv\.weight is "
     r"\(32, 16, 5, 5\), not \(32, 16, 3, 3\)\)"),
], ids=["without_aux_heads", "with_5x5_kernels"])
def test_a_file_of_another_network_is_refused_before_anything_loads(
        tmp_path, monkeypatch, network, problem):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's note on its init_weights default
        state = network().state_dict()
    path = _cache(tmp_path, monkeypatch, lambda p: torch.save(state, p))
    with pytest.raises(WeightsError, match=f"{path} does not fit googlenet.*{problem}"):
        build_model("googlenet", weights="imagenet")


def test_an_unreadable_file_is_refused_by_name(tmp_path, monkeypatch):
    path = _cache(tmp_path, monkeypatch, lambda p: p.write_bytes(b"<html>404</html>"))
    with pytest.raises(WeightsError, match=f"{path} cannot be read .* delete it"):
        build_model("googlenet", weights="imagenet")
    path.unlink()
    shutil.copy(W.PRETRAINED_DIR / "googlenet_cifar_small-cifar10.pt", path)  # not a state_dict
    expect_prefix(monkeypatch, W.sha256(path)[:8])
    with pytest.raises(WeightsError, match=f"{path} holds no state_dict of tensors"):
        build_model("googlenet", weights="imagenet")


@pytest.mark.parametrize("kwargs, named", [
    (dict(num_classes=10), "num_classes=10"),
    (dict(five_by_five=True), "five_by_five=True"),
    (dict(transform_input=False), "transform_input=False"),
])
def test_imagenet_weights_refuse_a_network_they_do_not_fit(kwargs, named):
    with pytest.raises(ValueError, match=f"do not fit {named}"):
        build_model("googlenet", weights="imagenet", **kwargs)


def test_evaluate_refuses_imagenet_weights_and_points_to_predict(capsys):
    from inception.cli import main

    assert main(["evaluate", "--model", "googlenet", "--weights", "imagenet"]) == 1
    assert "python -m inception predict --weights imagenet" in capsys.readouterr().err
