"""Pretrained weights in torchvision's manner: the ones the package ships, and torchvision's own.

Owns finding, verifying, describing and writing weight files. Each shipped one is a slim
checkpoint (`inception/pretrained/<model>-<name>.pt`, loadable with `load_checkpoint`) beside a
JSON record of how it was made; torchvision's ImageNet GoogLeNet is downloaded by torchvision
into torch.hub's cache on first use. It loads weights into no model itself:
`model.build_model(..., weights=...)` does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torch.hub import HASH_REGEX
from torchvision.models import GoogLeNet_Weights, WeightsEnum

from inception.errors import ConfigError, WeightsError, WeightsNotFoundError, first_line
from inception.model import GoogLeNet, build_model
from inception.runtime import reachable

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"

# What every provenance record must say, so a reader can tell exactly what the weights are.
REQUIRED_META = ("model", "weights", "arch", "classes", "mean", "std", "test_accuracy",
                 "test_accuracy_tta", "val_accuracy", "data_source", "preset", "sha256")

# The network torchvision.models.googlenet builds for its ImageNet weights: 3x3 kernels in the
# "5x5" branch, the [-1, 1] input its port was trained on (transform_input), and the aux heads
# the file holds (build_model loads them, then drops them unless asked, as torchvision does).
# The rest are GoogLeNet's defaults, which are torchvision's. No state_dict key is renamed:
# model.py names every module as torchvision does, and `_check_fits` proves it for each file.
IMAGENET_ARCH = dict(num_classes=1000, in_channels=3, aux_logits=True, dropout=0.2,
                     dropout_aux=0.7, width=1.0, stem="imagenet", five_by_five=False,
                     transform_input=True)

# Weights torchvision publishes for a registered model: (torchvision's entry, the network's arch).
TORCHVISION_WEIGHTS: dict[tuple[str, str], tuple[WeightsEnum, dict]] = {
    ("googlenet", "imagenet"): (GoogLeNet_Weights.IMAGENET1K_V1, IMAGENET_ARCH),
}


@dataclass(frozen=True)
class Weights:
    """One packaged weight file: where it is and how it was made (`meta`, from its JSON)."""

    model: str
    name: str
    path: Path
    meta: dict

    def state_dict(self) -> dict[str, Tensor]:
        """The weights as float32 tensors, after checking the file's sha256 against `meta`."""
        verify(self)
        payload = torch.load(self.path, map_location="cpu", weights_only=True)
        return {k: v.float() if v.is_floating_point() else v for k, v in payload["model"].items()}


@dataclass(frozen=True)
class TorchvisionWeights(Weights):
    """Weights torchvision publishes, kept in torch.hub's cache at `path` (fetched on first use).

    `meta` holds what a packaged record holds where it applies (arch, classes, mean, std), the
    preprocessing (`resize`, `crop`, `interpolation`), the `url` and the `sha256_prefix` that
    the file's name carries, and torchvision's ImageNet validation accuracies.
    """

    source: WeightsEnum

    def state_dict(self, progress: bool = True) -> dict[str, Tensor]:
        """The weights, downloaded by torchvision when not cached, checked whole before use."""
        if self.path.is_file():
            _check_cached_file(self)
        state = _load_from_hub(self, progress)
        _check_fits(state, self)
        return state

    def transforms(self) -> nn.Module:
        """torchvision's preprocessing for these weights: resize, centre crop, to float, normalise.

        It takes a PIL image or a uint8 tensor (C, H, W) and returns the float tensor the model
        takes: (3, 224, 224) for GoogLeNet, normalised with `meta["mean"]` and `meta["std"]`.
        """
        return self.source.transforms()


def _record_path(model: str, name: str) -> Path:
    return PRETRAINED_DIR / f"{model}-{name}.json"


def available_weights() -> dict[str, list[str]]:
    """{model name: [weight names]}: the weight files the package ships, then torchvision's."""
    found: dict[str, list[str]] = {}
    for record in sorted(PRETRAINED_DIR.glob("*.json")):
        meta = json.loads(record.read_text())
        found.setdefault(meta["model"], []).append(meta["weights"])
    for model, name in TORCHVISION_WEIGHTS:
        found.setdefault(model, []).append(name)
    return found


def weights_owner(name: str, model: str | None = None) -> str | None:
    """The registered model whose weights are called `name`, or None when no network has them.

    `model` picks among several networks with weights of that name; when it is not one of
    them and several are, that is a ConfigError asking to name one.
    """
    owners = [m for m, names in available_weights().items() if name in names]
    if model in owners:
        return model
    if len(owners) > 1:
        raise ConfigError(f"several networks have {name!r} weights ({', '.join(owners)}): "
                          "name one with model (--model)")
    return owners[0] if owners else None


def known_weights() -> str:
    """Every weights name with its network, for messages: "cifar10 (googlenet_cifar_small), ..."."""
    return ", ".join(f"{n} ({m})" for m, names in available_weights().items()
                     for n in names) or "none"


def get_weights(model: str, name: str) -> Weights:
    """The weights `name` (e.g. "cifar10") for the registered model `model`.

    "imagenet" for googlenet is torchvision's (a `TorchvisionWeights`, nothing downloaded yet).
    A model/weights pair there is none of is a ConfigError listing what exists; a record
    lacking fields is a WeightsError. Both are ValueErrors, as the README promises.
    """
    if (model, name) in TORCHVISION_WEIGHTS:
        return _torchvision_weights(model, name)
    record = _record_path(model, name)
    if not record.is_file():
        have = available_weights()
        listing = "; ".join(f"{m}: {', '.join(ws)}" for m, ws in have.items()) or "none"
        raise ConfigError(f"no {name!r} weights for model {model!r}. Packaged weights: {listing}")
    meta = json.loads(record.read_text())
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise WeightsError(f"{record} lacks {', '.join(missing)}: the package install is "
                           "damaged; reinstall it")
    return Weights(model, name, record.with_suffix(".pt"), meta)


def _torchvision_weights(model: str, name: str) -> TorchvisionWeights:
    source, arch = TORCHVISION_WEIGHTS[(model, name)]
    # Where torch.hub.load_state_dict_from_url keeps it: $TORCH_HOME/hub/checkpoints/<file>.
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(source.url).path).name
    preprocess = source.transforms()
    metrics = source.meta["_metrics"]["ImageNet-1K"]
    meta = dict(
        model=model, weights=name, arch=dict(arch), classes=list(source.meta["categories"]),
        mean=list(preprocess.mean), std=list(preprocess.std),
        resize=preprocess.resize_size[0], crop=preprocess.crop_size[0],
        interpolation=preprocess.interpolation.value,
        url=source.url, sha256_prefix=HASH_REGEX.search(path.name).group(1),
        val_accuracy=metrics["acc@1"] / 100, val_accuracy_top5=metrics["acc@5"] / 100,
        data_source="ImageNet-1K (ILSVRC 2012); the accuracies are torchvision's, on the 50,000 "
                    "validation images",
        origin=f"torchvision {type(source).__name__}.{source.name}: {source.meta['_docs']}",
        aux_note="the aux heads of torchvision's ImageNet GoogLeNet are not pretrained "
                 "(torchvision warns the same): train them before using their outputs")
    return TorchvisionWeights(model, name, path, meta, source)


def _load_from_hub(weights: TorchvisionWeights, progress: bool) -> dict:
    """torchvision's own download (sha256 prefix checked) and load, with errors that say what to do.

    weights_only=True: a file in a cache directory is trusted no further than its tensors.
    """
    url = weights.meta["url"]
    if not weights.path.is_file() and not reachable(url):  # offline: fail in seconds, not minutes
        raise _not_found(weights, f"{urlparse(url).hostname} cannot be reached")
    try:
        return weights.source.get_state_dict(progress=progress, check_hash=True,
                                             map_location="cpu", weights_only=True)
    except Exception as err:  # no network, a refused or broken download, an unreadable file
        reason = first_line(err, typed=False)
        if weights.path.is_file():
            raise WeightsError(f"{weights.path} cannot be read ({reason}): delete it, and the next "
                               f"use downloads it again from {url}") from err
        raise _not_found(weights, reason) from err


def _not_found(weights: TorchvisionWeights, reason: str) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"the {weights.name} weights of {weights.model} are not in torch's cache and could "
        f"not be downloaded ({reason}): download {weights.meta['url']} and put it at "
        f"{weights.path} (torch's cache is $TORCH_HOME/hub/checkpoints)")


def _check_cached_file(weights: TorchvisionWeights) -> None:
    """The sha256 prefix in the file's name, checked on every use, not only on download.

    torch.hub checks it only when it downloads, and a flipped bit inside a tensor loads silently.
    """
    actual, expected = sha256(weights.path), weights.meta["sha256_prefix"]
    if not actual.startswith(expected):
        raise WeightsError(
            f"{weights.path} is damaged or is not the file from {weights.meta['url']}: its sha256 "
            f"starts {actual[:len(expected)]}, its name promises {expected}. Delete it, and the "
            "next use downloads it again")


def _check_fits(state: dict, weights: TorchvisionWeights) -> None:
    """Every tensor of the network in the file with the network's shape, and nothing else.

    Checked before anything is loaded, so a file that does not fit never half-loads a model.
    """
    with torch.device("meta"):  # shapes only: nothing allocated or initialised
        network = GoogLeNet(**weights.meta["arch"])
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{weights.path} holds no state_dict of tensors: delete it, and the "
                           "next use downloads it again")
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    reshaped = [f"{k} is {found[k]}, not {expected[k]}"
                for k in sorted(expected.keys() & found.keys()) if found[k] != expected[k]]
    problems = [f"{len(keys)} {what} (first: {keys[0]})" for what, keys in
                (("keys missing", missing), ("unexpected keys", unexpected),
                 ("tensors of another shape", reshaped)) if keys]
    if problems:
        raise WeightsError(
            f"{weights.path} does not fit {weights.model} as torchvision builds it for its "
            f"{weights.name} weights: {'; '.join(problems)}. Delete it, and the next use "
            "downloads it again")


def sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(weights: Weights) -> None:
    """Raise WeightsError (a ValueError) unless the file exists and matches its recorded sha256."""
    if not weights.path.is_file():
        raise WeightsError(f"{weights.path} is missing: the package install is incomplete; "
                           "reinstall it (pip install -e . in a checkout)")
    actual = sha256(weights.path)
    if actual != weights.meta["sha256"]:
        raise WeightsError(f"{weights.path} is damaged or was changed: its sha256 is {actual}, "
                           f"the record says {weights.meta['sha256']}. Reinstall the package "
                           "(in a checkout: git checkout -- inception/pretrained)")


def export_weights(checkpoint: str | Path, into: str | Path, name: str, *,
                   half: bool = True) -> Path:
    """Write a slim, shippable copy of a training checkpoint to INTO/<model>-<name>.pt.

    The result is still a checkpoint (`load_checkpoint` reads it) holding the validated weights
    (the EMA average when the run kept one) of the network without its auxiliary heads, stored
    in float16 when `half` (half the size; the accuracy of the stored file is what gets quoted).
    Written atomically, like every checkpoint, so a failed export never leaves half a file.
    """
    from inception.train import (  # late: train imports model
        CHECKPOINT_FORMAT,
        read_checkpoint,
        save_checkpoint,
    )

    payload = read_checkpoint(checkpoint, map_location="cpu")
    data = dict(payload["data"])
    if data.get("source") != "image folder":  # CIFAR is found by name: the training machine's
        data["root"] = None                     # folder means nothing where the weights go
    state = payload["ema"] if payload["ema"] is not None else payload["model"]
    state = {k: (v.half() if half and v.is_floating_point() else v)
             for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
    slim = dict(format=CHECKPOINT_FORMAT, model_name=payload["model_name"],
                arch={**payload["arch"], "aux_logits": False}, model=state, ema=None,
                config=payload["config"], history=payload["history"], data=data,
                epoch=payload["epoch"], step=payload["step"],
                train_seconds=payload["train_seconds"], precision=payload["precision"],
                device=payload["device"])
    return save_checkpoint(Path(into) / f"{payload['model_name']}-{name}.pt", slim)


def write_record(weights_file: str | Path, meta: dict) -> Path:
    """Write the JSON provenance record beside a weight file, with the file's sha256 filled in."""
    weights_file = Path(weights_file)
    meta = {**meta, "sha256": sha256(weights_file)}
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise ConfigError(f"the provenance record needs {', '.join(missing)}: pass them in meta")
    record = weights_file.with_suffix(".json")
    record.write_text(json.dumps(meta, indent=2) + "\n")
    return record


def load_reference(model: str = "googlenet_cifar_small", name: str = "cifar10"):
    """Pretrained weights as `load_checkpoint` returns a checkpoint: (model in eval mode, metadata).

    For packaged weights the metadata (config, history, data description) is the training run's,
    so code written for a checkpoint from notebook 04 works unchanged on the reference weights;
    under "record" it also holds their provenance record (the JSON beside the file), whose
    accuracies were measured on the exported file and so cannot be stored inside it.
    torchvision's weights have no run to describe; their metadata holds the arch and the data
    description (classes, mean, std, image_size, resize) that `predict_images` reads.
    """
    from inception.train import load_checkpoint  # late: train imports model

    weights = get_weights(model, name)
    if isinstance(weights, TorchvisionWeights):
        return _torchvision_reference(weights)
    verify(weights)
    model, meta = load_checkpoint(weights.path, map_location="cpu")
    return model, {**meta, "record": weights.meta}


def _torchvision_reference(weights: TorchvisionWeights):
    """torchvision's weights as (model, metadata): no training run to describe, so the metadata
    holds what using the model needs, in a checkpoint's places: the arch, and under "data" the
    class names, normalisation and input sizes (resize the shorter side, then crop)."""
    meta = weights.meta
    data = dict(name=weights.name, title=meta["data_source"], classes=meta["classes"],
                mean=meta["mean"], std=meta["std"], image_size=(meta["crop"], meta["crop"]),
                resize=meta["resize"])
    model = build_model(weights.model, weights=weights.name)
    return model, dict(model_name=weights.model, arch=model.arch, data=data, origin=meta["origin"])


def load_for_study(checkpoint: str | Path, study: str = "auto"):
    """The model a course notebook studies, its metadata, and one line saying which it is.

    study="auto" takes `checkpoint` (notebook 04's) when it exists, else the packaged reference
    weights; "reference" always takes the reference weights; any other value is a checkpoint
    path. Never trains: a notebook opened alone (Colab) still has a real model to look at.
    """
    from inception.train import load_checkpoint

    checkpoint = Path(checkpoint)
    if study == "reference" or (study == "auto" and not checkpoint.is_file()):
        model, meta = load_reference()
        why = "" if study == "reference" else f" (no checkpoint from notebook 04 at {checkpoint})"
        acc = meta["record"]["test_accuracy_tta"]
        return model, meta, (f"Studying the packaged reference weights of {model.name}{why}: "
                             f"{acc:.2%} test accuracy with flip TTA.")
    path = checkpoint if study == "auto" else Path(study)
    model, meta = load_checkpoint(path, map_location="cpu")
    return model, meta, f"Studying the checkpoint at {path} ({meta['epoch']} epochs of training)."
