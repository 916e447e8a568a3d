"""Transfer learning: starting a run from pretrained weights with a new classifier.

Owns finding the weights a run starts from (a weights name or a checkpoint path), building the
network they fit with a classifier sized for the new classes, copying every tensor that fits,
and freezing a prefix of the network. The optimizer's learning rates are `train`'s; the weight
files themselves are `weights`'.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from inception import weights  # as a module: tests stand in for its get_weights
from inception.errors import ConfigError
from inception.model import INCEPTION_TABLE, GoogLeNet

# The layers of the network that carry weights, in the order the input meets them. Freezing
# "inception4e" freezes it and everything before it.
NETWORK_ORDER = ("conv1", "conv2", "conv3", *(row[0] for row in INCEPTION_TABLE))
FREEZE_CHOICES = ("features", *NETWORK_ORDER)

# The task-specific heads: they train at the full learning rate, the trunk at lr x scale. Their
# final layers map to the classes, so they start fresh even when the class count is unchanged.
HEADS = ("fc", "aux1", "aux2")
_CLASSIFIERS = ("fc.", "aux1.fc2.", "aux2.fc2.")

# What the pretrained weights decide about the network (the config may not contradict them).
_ARCH_FROM_WEIGHTS = ("in_channels", "width", "stem", "five_by_five", "transform_input")


@dataclass(frozen=True)
class Pretrained:
    """Weights a run starts from: a packaged or torchvision weights name, or a checkpoint."""

    init_from: str
    model: str  # the registered model they were trained as
    arch: dict  # the network they fit (GoogLeNet's arguments)
    mean: tuple[float, ...]  # the input normalisation the weights were trained with
    std: tuple[float, ...]
    path: Path | None = None  # the checkpoint file (None for weights by name)

    def describe(self) -> str:
        if self.path is None:
            return f"the {self.init_from} weights of {self.model}"
        return f"the checkpoint {self.path} ({self.model})"

    def state_dict(self) -> dict[str, Tensor]:
        """The tensors, read from disk (torchvision's are downloaded on first use)."""
        if self.path is None:
            return weights.get_weights(self.model, self.init_from).state_dict()
        from inception.train import read_checkpoint  # late: train imports this module

        payload = read_checkpoint(self.path, map_location="cpu")
        return payload["ema"] if payload.get("ema") is not None else payload["model"]


def find_pretrained(init_from: str, model: str | None = None) -> Pretrained:
    """The weights `init_from` names: a known weights name first, else a checkpoint path.

    Reads only the record of named weights (nothing is downloaded) and the checkpoint's header.
    `model` picks among several networks that ship weights of the same name.
    """
    owner = weights.weights_owner(init_from, model)
    if owner is not None:
        meta = weights.get_weights(owner, init_from).meta
        # Records written before GoogLeNet took transform_input were all made without it.
        return Pretrained(init_from, owner, {"transform_input": False, **meta["arch"]},
                          tuple(meta["mean"]), tuple(meta["std"]))
    path = Path(init_from)
    if not path.exists() and path.suffix != ".pt" and len(path.parts) == 1:
        raise ConfigError(f"init_from {init_from!r} is neither pretrained weights nor a "
                          f"checkpoint file: name known weights ({weights.known_weights()}) "
                          "or a checkpoint path")
    from inception.train import _require_keys, read_checkpoint  # late: train imports this

    payload = read_checkpoint(path, map_location="meta")  # shapes only: no tensor is read
    _require_keys(path, payload, ("model_name", "arch", "model", "data"), "start a run from")
    data = payload["data"]
    return Pretrained(init_from, payload["model_name"], dict(payload["arch"]),
                      tuple(data["mean"]), tuple(data["std"]), path)


def normalised_as_pretrained(data, pretrained: Pretrained):
    """`data` normalised with the statistics the pretrained weights were trained on.

    The first layer's filters, and every BatchNorm after it, are tuned to inputs of that mean
    and spread; ImageNet's GoogLeNet (transform_input) even undoes ImageNet's normalisation
    before its first layer. New images normalised with their own statistics would reach the
    network shifted. This is what torchvision's recipe does with the weights' transforms; the
    checkpoint records these statistics, so `evaluate` and `predict` normalise the same way.
    """
    from dataclasses import replace

    return replace(data, mean=pretrained.mean, std=pretrained.std)


def check_config_fits(pretrained: Pretrained, model: str, width: float | None) -> None:
    """The weights fix the network: a config naming another model or width cannot use them."""
    if model != pretrained.model:
        raise ConfigError(f"init_from {pretrained.init_from!r} holds {pretrained.model} weights "
                          f"but the config trains {model}: set model={pretrained.model!r} "
                          "(--model), or leave it out on the command line")
    if width is not None and width != pretrained.arch["width"]:
        raise ConfigError(f"init_from {pretrained.init_from!r} is {pretrained.model} at width "
                          f"{pretrained.arch['width']} but the config asks for width {width}: "
                          "leave width unset (None), the weights decide it")


def transfer_model(pretrained: Pretrained, num_classes: int, aux_logits: bool) -> GoogLeNet:
    """The pretrained network's shape with `num_classes` outputs, freshly initialised.

    `start_from` then copies the weights in (`fit` does, unless it resumes a checkpoint).
    """
    arch = {k: pretrained.arch[k] for k in _ARCH_FROM_WEIGHTS if k in pretrained.arch}
    model = GoogLeNet(num_classes=num_classes, aux_logits=aux_logits, **arch)
    model.name = pretrained.model
    return model


def start_from(model: nn.Module, pretrained: Pretrained) -> str:
    """Copy every pretrained tensor whose name and shape fit `model`, except the classifiers.

    Returns a one-line summary for the run header: how many tensors came from the weights and
    which are new. A model of another shape than the weights' is a ConfigError.
    """
    arch = getattr(model, "arch", {})
    differ = [k for k in _ARCH_FROM_WEIGHTS if arch.get(k) != pretrained.arch.get(k)]
    if differ:
        detail = ", ".join(f"{k} {arch.get(k)!r} vs {pretrained.arch.get(k)!r}" for k in differ)
        raise ConfigError(f"the model does not have the shape of {pretrained.describe()} "
                          f"({detail}): build it with config.build_model(num_classes)")
    source, target = pretrained.state_dict(), model.state_dict()
    kept = {k: v for k, v in source.items()
            if k in target and v.shape == target[k].shape and not k.startswith(_CLASSIFIERS)}
    model.load_state_dict(kept, strict=False)
    new = [k for k in target if k not in kept]
    unused = [k for k in source if k not in kept and not k.startswith(_CLASSIFIERS)]
    return (f"init from {pretrained.describe()}: {len(kept)} tensors transferred, {len(new)} new "
            f"({_short_list(new)}), {len(unused)} of the file's unused"
            + (f" ({_short_list(unused)})" if unused else ""))


def _short_list(names: list[str]) -> str:
    modules = list(dict.fromkeys(n.rsplit(".", 1)[0] for n in names))
    return ", ".join(modules[:4]) + (f" and {len(modules) - 4} more" if len(modules) > 4 else "")


def frozen_modules(freeze: str | None) -> tuple[str, ...]:
    """The top-level modules `freeze` keeps fixed: every one but the heads for "features",
    else the layers up to and including the one named, in network order."""
    if freeze is None:
        return ()
    if freeze == "features":
        return NETWORK_ORDER
    return NETWORK_ORDER[:NETWORK_ORDER.index(freeze) + 1]


def freeze_layers(model: nn.Module, names: tuple[str, ...]) -> int:
    """Stop the named modules learning; returns how many parameters that froze.

    requires_grad=False keeps them out of the optimizer; eval mode keeps their BatchNorm
    statistics fixed too (re-applied by `keep_frozen_in_eval` after every `model.train()`).
    """
    frozen = 0
    for name in names:
        module = getattr(model, name)
        module.requires_grad_(False)
        frozen += sum(p.numel() for p in module.parameters())
    keep_frozen_in_eval(model, names)
    return frozen


def keep_frozen_in_eval(model: nn.Module, names: tuple[str, ...]) -> None:
    """Put the frozen modules back in eval mode: BatchNorm in train mode would update their
    running statistics from every batch, though no gradient ever reaches them."""
    for name in names:
        getattr(model, name).eval()
