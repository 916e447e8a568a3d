"""Classifying image files with a trained model: the top-k classes of each, as a table.

Owns turning files (or folders of them) and a checkpoint or packaged weights into one row per
image, each resized as the training data was and normalised with the model's own statistics.
The forward passes are `evaluate.predict`'s; it does not score against labels (that is
`evaluate`) and prints nothing (that is the CLI).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torchvision.datasets.folder import IMG_EXTENSIONS

from inception.data import read_image, unreadable_reason
from inception.errors import ConfigError
from inception.evaluate import predict
from inception.train import load_checkpoint
from inception.weights import known_weights, load_reference, weights_owner


def load_weights(name: str, model: str | None = None) -> tuple[nn.Module, dict]:
    """Pretrained weights by name (e.g. "cifar10", "imagenet") as (model, meta), like
    `load_checkpoint`.

    The name is looked up in `inception.weights.available_weights` (the packaged weights and
    torchvision's); `model` is needed only when more than one network has weights of that name.
    Unknown names list the known ones.
    """
    owner = weights_owner(name, model)
    if owner is None and model is None:
        raise ConfigError(f"no pretrained weights named {name!r}; known weights: "
                          f"{known_weights()}")
    return load_reference(model or owner, name)  # a ValueError listing them for a wrong --model


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """Each path as given, or for a folder the image files inside it (recursively, sorted).

    Files named one by one are kept whatever their extension, so a wrong one gets its own
    error row; inside folders only image extensions count and hidden files are skipped.
    """
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*")
                            if p.is_file() and p.name.lower().endswith(IMG_EXTENSIONS)
                            and not any(part.startswith(".")
                                        for part in p.relative_to(path).parts))
        else:
            files.append(path)
    return files


def _model_and_meta(model_or_checkpoint) -> tuple[nn.Module, dict]:
    if isinstance(model_or_checkpoint, str | Path):
        return load_checkpoint(model_or_checkpoint, map_location="cpu")
    if (isinstance(model_or_checkpoint, tuple) and len(model_or_checkpoint) == 2
            and isinstance(model_or_checkpoint[0], nn.Module)
            and isinstance(model_or_checkpoint[1], dict) and "data" in model_or_checkpoint[1]):
        return model_or_checkpoint
    raise ConfigError("predict_images takes a checkpoint path, or (model, meta) as "
                      "load_checkpoint and load_reference return them (the metadata holds the "
                      f"class names and normalisation), got {type(model_or_checkpoint).__name__}")


def _image_size(data: dict, model: nn.Module) -> int:
    """The side the model was trained at. Where the data record lacks it (checkpoints from
    before image folders, all 32x32 CIFAR), the stem tells: 224, the paper's, for the ImageNet
    stem, else 32."""
    stem = getattr(model, "arch", {}).get("stem")
    height, width = data.get("image_size") or ((224, 224) if stem == "imagenet" else (32, 32))
    if height != width:
        raise ConfigError(f"the model was trained on {height}x{width} images; predict resizes "
                          "to squares only")
    return height


def predict_images(model_or_checkpoint, paths: Sequence[str | Path], top_k: int = 5, *,
                   device: torch.device | str | None = None) -> pd.DataFrame:
    """One row per image file: file, class_1..k, prob_1..k, and error (None when it was read).

    `model_or_checkpoint` is a checkpoint path or (model, meta) as `load_checkpoint` returns;
    its class names, image size and mean/std are the ones used. Folders in `paths` stand for
    the images inside them (`image_files`). Each image is resized as the training data was
    (shorter side, centre crop). A file that cannot be read gets its reason in `error` and
    empty classes; the others are still classified.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k must be a positive whole number, got {top_k!r}")
    model, meta = _model_and_meta(model_or_checkpoint)
    data = meta["data"]
    classes, size = list(data["classes"]), _image_size(data, model)
    k = min(top_k, len(classes))
    files = image_files(paths)
    if not files:
        raise ConfigError("no image files to classify: name files, or folders holding images "
                          f"({', '.join(IMG_EXTENSIONS)})")
    images, errors = [], []
    for path in files:
        try:
            images.append(read_image(path, size, data.get("resize")))
            errors.append(None)
        except Exception as err:  # noqa: BLE001 - any unreadable file becomes its row's error
            errors.append(f"not a readable image: {unreadable_reason(err)}")
    rows = [{"file": str(path), "error": error} for path, error in zip(files, errors, strict=True)]
    if images:
        batch = torch.stack(images)
        probs = predict(model, batch, torch.zeros(len(batch), dtype=torch.int64),
                        mean=data["mean"], std=data["std"], device=device).probs
        top = probs.topk(k, dim=1)
        read = (row for row in rows if row["error"] is None)
        for row, p, i in zip(read, top.values.tolist(), top.indices.tolist(), strict=True):
            for rank in range(k):
                row[f"class_{rank + 1}"], row[f"prob_{rank + 1}"] = classes[i[rank]], p[rank]
    columns = ["file"] + [f"{c}_{r + 1}" for r in range(k) for c in ("class", "prob")] + ["error"]
    return pd.DataFrame(rows).reindex(columns=columns)
