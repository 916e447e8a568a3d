"""Pretrained weights that ship inside the package, in torchvision's manner.

Owns finding, verifying, describing and writing weight files: each is a slim checkpoint
(`inception/pretrained/<model>-<name>.pt`, loadable with `load_checkpoint`) beside a JSON record
of how it was made. It builds no networks itself: `model.build_model(..., weights=...)` does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"

# What every provenance record must say, so a reader can tell exactly what the weights are.
REQUIRED_META = ("model", "weights", "arch", "classes", "mean", "std", "test_accuracy",
                 "test_accuracy_tta", "val_accuracy", "data_source", "preset", "sha256")


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


def _record_path(model: str, name: str) -> Path:
    return PRETRAINED_DIR / f"{model}-{name}.json"


def available_weights() -> dict[str, list[str]]:
    """{model name: [weight names]} for every weight file the package ships."""
    found: dict[str, list[str]] = {}
    for record in sorted(PRETRAINED_DIR.glob("*.json")):
        meta = json.loads(record.read_text())
        found.setdefault(meta["model"], []).append(meta["weights"])
    return found


def get_weights(model: str, name: str) -> Weights:
    """The packaged weights `name` (e.g. "cifar10") for the registered model `model`.

    Raises ValueError, listing what exists, for a model/weights pair the package does not ship.
    """
    record = _record_path(model, name)
    if not record.is_file():
        have = available_weights()
        listing = "; ".join(f"{m}: {', '.join(ws)}" for m, ws in have.items()) or "none"
        raise ValueError(f"no {name!r} weights for model {model!r}. Packaged weights: {listing}")
    meta = json.loads(record.read_text())
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise ValueError(f"{record} lacks {', '.join(missing)}: the package install is damaged; "
                         "reinstall it")
    return Weights(model, name, record.with_suffix(".pt"), meta)


def sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(weights: Weights) -> None:
    """Raise ValueError unless the weight file exists and matches its recorded sha256."""
    if not weights.path.is_file():
        raise ValueError(f"{weights.path} is missing: the package install is incomplete; "
                         "reinstall it (pip install -e . in a checkout)")
    actual = sha256(weights.path)
    if actual != weights.meta["sha256"]:
        raise ValueError(f"{weights.path} is damaged or was changed: its sha256 is {actual}, "
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
    state = payload["ema"] if payload["ema"] is not None else payload["model"]
    state = {k: (v.half() if half and v.is_floating_point() else v)
             for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
    slim = dict(format=CHECKPOINT_FORMAT, model_name=payload["model_name"],
                arch={**payload["arch"], "aux_logits": False}, model=state, ema=None,
                config=payload["config"], history=payload["history"], data=payload["data"],
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
        raise ValueError(f"the provenance record needs {', '.join(missing)}")
    record = weights_file.with_suffix(".json")
    record.write_text(json.dumps(meta, indent=2) + "\n")
    return record


def load_reference(model: str = "googlenet_cifar_small", name: str = "cifar10"):
    """Packaged weights as `load_checkpoint` returns a checkpoint: (model in eval mode, metadata).

    The metadata (config, history, data description) is the training run's, so code written for
    a checkpoint from notebook 04 works unchanged on the reference weights.
    """
    from inception.train import load_checkpoint  # late: train imports model

    weights = get_weights(model, name)
    verify(weights)
    return load_checkpoint(weights.path, map_location="cpu")


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
        acc = get_weights(model.name, "cifar10").meta["test_accuracy_tta"]
        return model, meta, (f"Studying the packaged reference weights of {model.name}{why}: "
                             f"{acc:.2%} test accuracy with flip TTA.")
    path = checkpoint if study == "auto" else Path(study)
    model, meta = load_checkpoint(path, map_location="cpu")
    return model, meta, f"Studying the checkpoint at {path} ({meta['epoch']} epochs of training)."
