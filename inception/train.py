"""Training: the `TrainConfig` presets, the learning-rate schedule, `fit`, and checkpoints.

Owns the optimisation loop and everything needed to stop and resume it exactly, on one process
or on many under torchrun (the process group and the ranks are `inception.distributed`'s). It
does not plot (no matplotlib here) and does not compute evaluation reports (see
`inception.evaluate`).
"""

from __future__ import annotations

import copy
import math
import numbers
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from inception import distributed
from inception.data import DeviceLoader, ImageData
from inception.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    ConfigError,
    TrainingError,
    first_line,
)
from inception.model import MODELS, GoogLeNet, build_model, count_parameters, fold_batchnorm
from inception.runtime import (
    autocast_dtype,
    choose_precision,
    eval_batch_size,
    resolve_device,
    runs_natively,
    save_atomically,
    seed_everything,
)
from inception.transfer import (
    FREEZE_CHOICES,
    HEADS,
    check_config_fits,
    find_pretrained,
    freeze_layers,
    frozen_modules,
    keep_frozen_in_eval,
    normalised_as_pretrained,
    start_from,
    transfer_model,
)

CHECKPOINT_FORMAT = "inception-checkpoint-v1"
# What `load_checkpoint` needs, and what a resume needs on top (slim exports lack the latter).
_LOAD_KEYS = ("model_name", "arch", "model", "ema", "config", "data", "epoch", "step",
              "train_seconds", "precision", "device", "history")
_RESUME_KEYS = (*_LOAD_KEYS, "ema_updates", "optimizer", "scaler", "loader", "rng")
# GoogLeNet arguments added after this format was fixed, with the value older files were made
# with: filled in on reading, so an older checkpoint still matches the model it was made for.
_ARCH_ADDED = {"transform_input": False}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. Frozen: a run's config never changes under it."""

    model: str = "googlenet_cifar_small"
    width: float | None = None  # override the registry's width multiplier (None: keep it)
    epochs: int = 30  # upper bound; a budget or max_steps may end the run sooner
    budget_min: float | None = None  # wall-clock minutes of training; the schedule spans them
    max_steps: int | None = None  # hard cap on optimizer steps (smoke tests)
    batch_size: int = 128
    optimizer: str = "sgd"  # "sgd" (Nesterov momentum) or "adamw"
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9
    weight_decay: float = 5e-4  # applied to conv/linear weights only, never BN or biases
    schedule: str = "onecycle"  # "onecycle" (linear up, linear down) or "cosine"
    warmup: float = 0.15  # fraction of the run spent warming up
    label_smoothing: float = 0.1
    aux_weight: float = 0.3  # the paper's weight on each auxiliary classifier's loss
    precision: str = "auto"  # "auto", "bf16", "fp16" or "fp32"; see runtime.choose_precision
    channels_last: bool = True
    compile: bool = False  # torch.compile the model (measure first: it lost on a 2-core CPU)
    ema_decay: float | None = None  # keep an exponential moving average of the weights
    crop_padding: int = 4
    flip: bool = True
    cutout: int = 0  # side of the cutout square in pixels; 0 disables it
    train_limit: int | None = None  # train on the first N training images only
    eval_limit: int | None = None  # validate/test on the first N images only
    seed: int = 0
    # Under torchrun, BatchNorm statistics over the global batch rather than each rank's share:
    # worth it when the per-rank batch is small (CUDA only; ignored by a single process).
    sync_batchnorm: bool = False
    # Transfer learning (see inception.transfer): start from these weights (a weights name such
    # as "imagenet" or "cifar10", or a checkpoint path) with a new classifier; freeze
    # "features" (train fc only) or the layers up to a named one; the pretrained layers that
    # still train learn at lr x pretrained_lr_scale, the new heads at lr.
    init_from: str | None = None
    freeze: str | None = None
    pretrained_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        validate_config(self)

    def build_model(self, num_classes: int, resume: str | Path | None = None) -> GoogLeNet:
        """The model this config trains, freshly initialised.

        With `init_from` it has the pretrained network's shape (checked against `model` and
        `width`) and `num_classes` outputs; `fit` copies the weights in, unless it resumes.
        Aux heads are built only when nothing is frozen: they exist to push gradient into the
        early layers, which a frozen trunk does not take. Pass the checkpoint a transfer run
        resumes from as `resume`: the shape is then read from it, so the `init_from` file may
        have moved or gone since the run began.
        """
        if self.init_from is not None:
            pretrained = find_pretrained(_shape_source(self, resume), self.model)
            check_config_fits(pretrained, self.model, self.width)
            return transfer_model(pretrained, num_classes, aux_logits=self.freeze is None)
        overrides = {} if self.width is None else {"width": self.width}
        return build_model(self.model, num_classes=num_classes, **overrides)


# The one place a TrainConfig is checked (it runs on construction and on every `replace`).
# Each numeric field: (integer?, lowest, highest, is the lowest allowed, is the highest allowed);
# None as a bound means unbounded. Fields typed `X | None` may also be None.
_NUMERIC_FIELDS: dict[str, tuple[bool, float | None, float | None, bool, bool]] = {
    "width": (False, 0, None, False, False),
    "epochs": (True, 1, None, True, False),
    "budget_min": (False, 0, None, False, False),
    "max_steps": (True, 1, None, True, False),
    "batch_size": (True, 1, None, True, False),
    "lr": (False, 0, None, False, False),
    "momentum": (False, 0, 1, True, False),
    "weight_decay": (False, 0, None, True, False),
    "warmup": (False, 0, 1, True, False),
    "label_smoothing": (False, 0, 1, True, False),
    "aux_weight": (False, 0, None, True, False),
    "ema_decay": (False, 0, 1, False, False),
    "crop_padding": (True, 0, 31, True, True),  # the mirrored crop needs padding < 32 pixels
    "cutout": (True, 0, 32, True, True),
    "train_limit": (True, 1, None, True, False),  # 0 images cannot be trained on
    "eval_limit": (True, 0, None, True, False),  # 0 skips validation
    "seed": (True, 0, 2**32 - 1, True, True),  # NumPy's seed range
    "pretrained_lr_scale": (False, 0, None, False, False),  # 0 would be freezing: use freeze
}
_CHOICES = dict(optimizer=("sgd", "adamw"), schedule=("onecycle", "cosine"),
                precision=("auto", "bf16", "fp16", "fp32"))
_OPTIONAL = {"width", "budget_min", "max_steps", "ema_decay", "train_limit", "eval_limit"}


def _range_text(integer: bool, low, high, low_ok: bool, high_ok: bool) -> str:
    kind = "an integer" if integer else "a finite number"
    if high is None:
        return f"{kind} {'>=' if low_ok else '>'} {low}"
    return f"{kind} in {'[' if low_ok else '('}{low}, {high}{']' if high_ok else ')'}"


def _check_number(name: str, value, integer: bool, low, high, low_ok: bool,
                  high_ok: bool) -> None:
    """Raise a ConfigError unless `value` is a finite number (an int if asked) within bounds."""
    is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    is_real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = (is_int if integer else is_real) and math.isfinite(value)
    if ok and low is not None:
        ok = value >= low if low_ok else value > low
    if ok and high is not None:
        ok = value <= high if high_ok else value < high
    if not ok:
        raise ConfigError(f"TrainConfig.{name} must be "
                          f"{_range_text(integer, low, high, low_ok, high_ok)}, got {value!r}")


def validate_config(config: TrainConfig) -> None:
    """Check every field of a TrainConfig: choices, types, finiteness and ranges.

    Called by `TrainConfig.__post_init__`, so no invalid config exists to be trained with: a NaN
    learning rate or budget is refused here rather than training to NaN weights.
    """
    if config.model not in MODELS:
        raise ConfigError(f"TrainConfig.model {config.model!r} is not a registered model; "
                          f"choose one of {sorted(MODELS)}")
    for name, allowed in _CHOICES.items():
        if getattr(config, name) not in allowed:
            raise ConfigError(f"TrainConfig.{name} must be one of {allowed}, "
                              f"got {getattr(config, name)!r}")
    for name in ("channels_last", "compile", "flip", "sync_batchnorm"):
        if not isinstance(getattr(config, name), bool):
            raise ConfigError(f"TrainConfig.{name} must be True or False, "
                              f"got {getattr(config, name)!r}")
    for name, rule in _NUMERIC_FIELDS.items():
        value = getattr(config, name)
        if value is None and name in _OPTIONAL:
            continue
        _check_number(name, value, *rule)
    _check_transfer_fields(config)


def _check_transfer_fields(config: TrainConfig) -> None:
    """init_from a non-empty string; freeze a known layer; both of the others need init_from.

    Whether the weights exist is checked where they are used (`build_model`, `fit`): a config
    is checked on every `replace`, too often to read files.
    """
    if config.init_from is not None and (not isinstance(config.init_from, str)
                                         or not config.init_from):
        raise ConfigError(f"TrainConfig.init_from must be a weights name or a checkpoint path "
                          f"as a string (str(path)), got {config.init_from!r}")
    if config.freeze is not None and config.freeze not in FREEZE_CHOICES:
        raise ConfigError(f"TrainConfig.freeze must be None or one of {', '.join(FREEZE_CHOICES)}"
                          f", got {config.freeze!r}")
    if config.init_from is None and (config.freeze is not None
                                     or config.pretrained_lr_scale != 1.0):
        name = "freeze" if config.freeze is not None else "pretrained_lr_scale"
        raise ConfigError(f"TrainConfig.{name} applies to pretrained layers, and there are none "
                          "without init_from: set init_from (--init-from), or leave it unset")


# Each preset's non-default fields carry their reason.
PRESETS: dict[str, TrainConfig] = {
    # Seconds long: proves the whole pipeline runs (CI, notebooks in quick mode). Not for accuracy.
    "quick": TrainConfig(
        model="googlenet_cifar_small", width=0.125,  # the course's network, in miniature
        epochs=2, batch_size=32,  # small batches: a few dozen steps still move the weights
        lr=0.05, warmup=0.2,
        train_limit=512, eval_limit=500,  # a subset: train + evaluate --limit 500 in ~30 s
    ),
    # The best a 2-core laptop CPU reaches in 15 minutes of training (tuned on validation).
    "cpu": TrainConfig(
        model="googlenet_cifar_small",
        # Half the registry's width: 245-290 img/s on 2 AVX2 cores (fp32), so 15 minutes are 5-6
        # epochs, 76-79% validation and 77.5-79.7% test with flip TTA (README, Results). The
        # earlier small network (stage 3 at 32x32) needed width 0.125 to run this fast.
        width=0.25,
        epochs=30,  # an upper bound: the 15-minute budget ends the run first
        budget_min=15.0,  # the schedule is laid over the budget, so it ends at a low LR
        # Batch 64, measured on the earlier network (width 0.125; README, "What was tried"):
        # batch 32 (lr 0.05) makes twice the updates but ran at 114 img/s inside `fit` and
        # reached 70.9% validation; batch 128 trained no faster per image than 64.
        batch_size=64, lr=0.08, warmup=0.1,
        label_smoothing=0.1,
    ),
    # The network behind the packaged reference weights: a fixed number of epochs, so its result
    # does not depend on how busy the machine is. ~3.4 hours on a 2-core AVX2 CPU (fp32).
    "reference": TrainConfig(
        model="googlenet_cifar_small",  # cifar16 stem, width 0.5: 1.5M parameters
        epochs=30,  # ~110 img/s on 2 AVX2 cores: 30 x 45,000 images in about 3.4 hours.
        # Test accuracy with flip TTA: 87.3% after 12 epochs, 88.8% after 18, 89.7% after 30,
        # 89.9% after 40 (a third more time for less than a standard error: README)
        batch_size=128, lr=0.15,  # the cpu preset's tuned 0.08 at batch 64, scaled linearly
        warmup=0.15, label_smoothing=0.1,
    ),
    # The full recipe for googlenet_cifar on one GPU (Colab T4: fp16 + grad scaler; A100: bf16).
    "gpu": TrainConfig(
        model="googlenet_cifar",
        epochs=60,  # one-cycle + cutout reaches ~95% in 70 epochs for this model (see README)
        batch_size=256, lr=0.2,  # linear LR scaling from 0.1 at batch 128
        weight_decay=5e-4, label_smoothing=0.1,
        cutout=8,  # DeVries & Taylor: +0.5-1% on CIFAR-10 for long runs
        ema_decay=0.999,
    ),
}


def get_preset(name: str) -> TrainConfig:
    """A preset by name; "auto" is "gpu" when CUDA is available, otherwise "cpu"."""
    if name == "auto":
        name = "gpu" if torch.cuda.is_available() else "cpu"
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose auto, {', '.join(PRESETS)}")
    return PRESETS[name]


def lr_at(progress: float, config: TrainConfig) -> float:
    """The learning rate at `progress` in [0, 1] through the run (by steps or by budget)."""
    p = min(max(progress, 0.0), 1.0)
    if config.warmup and p < config.warmup:
        start = 0.05 if config.schedule == "onecycle" else 0.0
        return config.lr * (start + (1 - start) * p / config.warmup)
    rest = (p - config.warmup) / (1 - config.warmup)
    if config.schedule == "onecycle":
        return config.lr * (1 - rest)
    return config.lr * 0.5 * (1 + math.cos(math.pi * rest))


# ---------------------------------------------------------------------------------------------
# Pieces of the loop.


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum or AdamW; weight decay skips BatchNorm and bias parameters.

    Decaying BN scales and biases only fights the normalisation (they set scale, not capacity).
    Frozen parameters (requires_grad=False) are left out. Each group carries `lr_scale`, the
    factor `_train_step` puts on the schedule's learning rate: with `init_from`, the pretrained
    trunk's groups have `pretrained_lr_scale`, the new heads' 1.
    """
    groups = []
    for scale, params in _params_by_lr_scale(model, config):
        for decays, weight_decay in ((True, config.weight_decay), (False, 0.0)):
            chosen = [p for p in params if p.requires_grad and (p.ndim > 1) == decays]
            if chosen or config.init_from is None:  # two groups without transfer, as always
                groups.append(dict(params=chosen, weight_decay=weight_decay, lr_scale=scale))
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def _params_by_lr_scale(model: nn.Module, config: TrainConfig) -> list[tuple[float, list]]:
    """[(lr scale, parameters)]: the pretrained trunk and the new heads when transferring."""
    if config.init_from is None:
        return [(1.0, list(model.parameters()))]
    trunk, heads = [], []
    for name, p in model.named_parameters():
        (heads if name.split(".", 1)[0] in HEADS else trunk).append(p)
    return [(config.pretrained_lr_scale, trunk), (1.0, heads)]


def loss_fn(outputs: Tensor | tuple, labels: Tensor, config: TrainConfig) -> tuple[Tensor, Tensor]:
    """Main-head cross-entropy plus `aux_weight` times each aux head's; also returns the logits."""
    def ce(logits: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)

    if isinstance(outputs, Tensor):
        return ce(outputs), outputs
    logits, aux2, aux1 = outputs
    return ce(logits) + config.aux_weight * (ce(aux1) + ce(aux2)), logits


class ModelEMA:
    """Exponential moving average of a model's weights (BatchNorm statistics are copied).

    Averaging the last few thousand steps smooths out SGD noise; the decay warms up so the
    average does not remember the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_params = list(self.module.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1 - d)
        buffers = list(self.module.buffers())
        if buffers:  # one call for all of them (foreach ops refuse an empty list)
            torch._foreach_copy_(buffers, list(model.buffers()))


def _count(y: torch.Tensor) -> torch.Tensor:
    """The batch size as a tensor on y's device, made without a host-to-device copy.

    `torch.tensor(len(y), device="cuda")` copies from ordinary host memory, and PyTorch waits
    for the GPU to finish its queue before such a copy: a host sync on every step. `torch.full`
    fills on the device instead.
    """
    return torch.full((), len(y), device=y.device)


@torch.no_grad()
def _validate(model: nn.Module, loader: DeviceLoader, dtype: torch.dtype | None,
              world: distributed.World = distributed.SINGLE) -> tuple:
    """Mean loss and accuracy over a loader, with a single host sync at the end.

    Runs an eval-mode copy with BatchNorm folded (as `evaluate.predict` does), so the model
    being trained keeps its mode and its BatchNorm layers. Under torchrun each rank scores its
    own part of the images and the sums are added up across ranks.
    """
    net = fold_batchnorm(model)
    sums = torch.zeros(3, device=loader.device)
    for x, y in loader:
        with torch.autocast(loader.device.type, dtype=dtype, enabled=dtype is not None):
            logits = net(x).float()
        sums += torch.stack([F.cross_entropy(logits, y, reduction="sum"),
                             (logits.argmax(1) == y).sum(), _count(y)])
    loss_sum, correct, n = distributed.sum_over_ranks(sums, world).tolist()
    return loss_sum / max(n, 1), correct / max(n, 1)


# ---------------------------------------------------------------------------------------------
# Checkpoints.


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """Write a checkpoint atomically (`runtime.save_atomically`), creating its folder.

    A crash mid-write leaves the previous checkpoint intact instead of a truncated file, and
    a failed or interrupted write (full disk, Ctrl-C) removes its temp file too.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_atomically(payload, path)


def kept_aside(path: str | Path) -> list[Path]:
    """Checkpoints fresh runs renamed aside from `path` (checkpoint-<time>.pt), newest first."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    found = path.parent.glob(f"{path.stem}-*{path.suffix}")
    return sorted((p for p in found if p.is_file()), key=lambda p: p.stat().st_mtime,
                  reverse=True)


def _not_found_message(path: Path) -> str:
    if path.is_dir():
        inside = path / "checkpoint.pt"
        hint = f"; did you mean {inside}?" if inside.is_file() else ""
        return f"{path} is a folder, not a checkpoint file{hint}"
    earlier = kept_aside(path)
    if not earlier:
        return (f"no checkpoint at {path}: train one first (python -m inception train) "
                "or check the path")
    listed = ", ".join(str(p) for p in earlier[:3]) + (" ..." if len(earlier) > 3 else "")
    return (f"no checkpoint at {path}, but earlier runs' checkpoints were kept aside there "
            f"(newest first): {listed}. Use one of those paths instead "
            f"({resume_hint(earlier[0])}, or python -m inception evaluate {earlier[0]})")


def resume_hint(path: str | Path) -> str:
    """How to continue the run that wrote `path`, worded once for every message that says it.

    The run's own --preset and --out matter: another preset is refused as a different recipe,
    and another --out writes the continued run somewhere the user does not look.
    """
    return (f"python -m inception train --resume {path} with the --preset and --out of the "
            "run that wrote it")


def require_checkpoint_file(path: str | Path) -> Path:
    """`path` if it is a non-empty file; otherwise an error that says where to look instead.

    A missing checkpoint whose folder holds kept-aside ones (checkpoint-<time>.pt, renamed by
    a fresh run) lists them, so work that was moved aside is never mistaken for lost.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(_not_found_message(path))
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): it was never completely written. "
                              "Delete it, and train again or use another checkpoint")
    return path


def read_checkpoint(path: str | Path, map_location=None) -> dict:
    """Load a checkpoint dict with `weights_only=True` and check it is one of ours."""
    path = require_checkpoint_file(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated file, foreign pickle, objects weights_only refuses
        raise CheckpointError(f"{path} is not a readable checkpoint ({first_line(err)}). "
                              "It may be truncated or not from this package; only load "
                              "checkpoints you trust.") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an inception checkpoint "
                              f"(expected format {CHECKPOINT_FORMAT!r})")
    if isinstance(payload.get("arch"), dict):
        payload["arch"] = {**_ARCH_ADDED, **payload["arch"]}
    return payload


def _require_keys(path: str | Path, payload: dict, keys: tuple[str, ...], purpose: str) -> None:
    missing = [k for k in keys if k not in payload]
    if missing:
        raise CheckpointError(f"{path} cannot be used to {purpose}: it has no "
                              f"{', '.join(missing)} (a slim or incomplete checkpoint). Use a "
                              "checkpoint written by training, or start a new run")


def _describe_arch(name: str, arch: dict) -> str:
    return f"{name} (width {arch['width']}, {arch['num_classes']} classes, stem {arch['stem']})"


def check_compatible(model: nn.Module, payload: dict) -> None:
    """Raise a clear CheckpointError when a checkpoint was made for a different network."""
    arch = getattr(model, "arch", None)
    if arch != payload["arch"]:
        have = _describe_arch(getattr(model, "name", "?"), arch) if arch else type(model).__name__
        want = _describe_arch(payload["model_name"], payload["arch"])
        raise CheckpointError(f"checkpoint is for {want} but the model is {have}; build the "
                              "model the checkpoint names, or use "
                              "inception.load_checkpoint(path), which does that for you")


def load_checkpoint(path: str | Path, map_location=None) -> tuple[GoogLeNet, dict]:
    """Rebuild the model a checkpoint was trained as, in eval mode, plus its metadata.

    The weights are the ones that were validated: the EMA average when the run kept one.
    Metadata holds config, history (a DataFrame), data, epoch, step and train_seconds.
    """
    payload = read_checkpoint(path, map_location)
    _require_keys(path, payload, _LOAD_KEYS, "rebuild a model")
    try:
        model = GoogLeNet(**payload["arch"])
        model.load_state_dict(payload["ema"] if payload["ema"] is not None else payload["model"])
    except (ConfigError, TypeError, RuntimeError) as err:  # a damaged or hand-edited file
        raise CheckpointError(f"{path} describes a network that cannot be rebuilt "
                              f"({first_line(err)}); it is damaged or not from this "
                              "package: use another checkpoint") from None
    model.name = payload["model_name"]
    meta = {k: payload[k] for k in ("config", "data", "epoch", "step", "train_seconds",
                                    "precision", "device")}
    meta["history"] = pd.DataFrame(payload["history"])
    return model.eval(), meta


# ---------------------------------------------------------------------------------------------
# The loop.


@dataclass
class TrainResult:
    """What `fit` hands back: the trained model, its history and where it was saved."""

    model: nn.Module  # the weights to evaluate (the EMA average when enabled)
    history: pd.DataFrame
    checkpoint: Path | None
    device: torch.device
    precision: str
    train_seconds: float
    stopped_by: str  # "epochs", "budget" or "max_steps"
    # The input normalisation the model was trained with: the data's own, or the pretrained
    # weights' with init_from. Evaluate with these (the checkpoint records them too).
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class _Run:
    """What a run changes as it trains: everything a checkpoint saves and a resume restores."""

    model: GoogLeNet
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: ModelEMA | None
    train_loader: DeviceLoader
    history: list[dict] = field(default_factory=list)
    epoch: int = 0
    step: int = 0
    train_seconds: float = 0.0


@dataclass(frozen=True)
class _Plan:
    """What stays fixed through a run: where it runs, on how many ranks, and for how long."""

    config: TrainConfig
    device: torch.device
    precision: str
    dtype: torch.dtype | None
    world: distributed.World
    total_steps: int
    budget_s: float | None
    lr_scale: float  # the learning rate is the schedule's times this (see `lr_scale`)
    checkpoint_path: Path | None
    progress: bool  # print the header, the estimate and the table (rank 0 only)
    live_bar: bool
    estimate_at: int  # the step after which the run's length is estimated
    frozen: tuple[str, ...] = ()  # modules kept fixed, in eval mode (see `inception.transfer`)
    transfer: str | None = None  # the header's line on the pretrained weights, if any

    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.world.size


def lr_scale(config: TrainConfig, world_size: int) -> tuple[float, str]:
    """The factor on the peak learning rate for `world_size` ranks, and the rule behind it.

    Each rank trains on `config.batch_size` images, so the global batch grows with the number of
    ranks, while the presets' learning rates were tuned for one process.
    """
    if world_size == 1:
        return 1.0, "one process"
    if config.optimizer == "sgd":
        return float(world_size), ("linear scaling rule for SGD (Goyal et al. 2017), reached "
                                   "through the schedule's warmup")
    return math.sqrt(world_size), "square-root scaling rule for AdamW (Malladi et al. 2022)"


def fit(model: GoogLeNet, data: ImageData, config: TrainConfig, *,
        device: torch.device | str | None = None, out_dir: str | Path | None = None,
        resume: str | Path | None = None, progress: bool = True) -> TrainResult:
    """Train `model` on `data` as `config` says; checkpoint every epoch into `out_dir`.

    With `resume` (a checkpoint path) the run continues from its last checkpoint, written at
    the end of every epoch: weights, optimizer, EMA, RNG streams and history are restored, so on
    the CPU a run interrupted and resumed at an epoch's end finishes with the same weights as an
    uninterrupted one. Ctrl-C loses only the epoch in progress. An epoch that max_steps or a
    budget cut short is saved, but a resumed run does not finish it: it starts a new epoch with
    a new shuffle. Budget-limited runs depend on wall time and are not bit-reproducible.

    With `config.init_from` the pretrained weights are copied into `model` first (build it
    with `config.build_model`), and `config.freeze` keeps a prefix of it fixed; a resume takes
    every weight from its checkpoint instead (see `inception.transfer`).

    Everything a user can get wrong is checked before the first step: the device, the output
    folder (created, and proved writable), and that the model has one output per class of
    `data`. A loss that becomes NaN or infinite stops the run with a TrainingError, and so do
    such weights before a checkpoint would save them (`_check_finite_loss`,
    `_check_finite_weights`), so the last good checkpoint survives.

    Under torchrun the same call trains data-parallel (see `inception.distributed`): each of N
    ranks trains on `config.batch_size` images of every global batch of N times as many, DDP
    averages the gradients, and the learning rate follows `lr_scale`. Rank 0 alone prints and
    writes the checkpoint; validation is shared out between the ranks and summed.
    """
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig, got {type(config).__name__}")
    device = resolve_device(device)
    with distributed.process_group(device) as world:
        device = distributed.rank_device(device, world)
        if out_dir is not None:
            prepare_out_dir(out_dir)
        precision = choose_precision(device, config.precision)
        saved = _read_for_resume(resume, device) if resume is not None else None
        if saved is not None and config.precision == "auto":
            precision = _precision_to_resume(saved["precision"], precision, device, resume)
        seed_everything(config.seed)
        frozen, transfer, data = _start_transfer(model, data, config, resume)
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        model.to(device=device, memory_format=memory_format)
        train_loader, val_loader = _build_loaders(data, config, device, world)
        run = _Run(model, make_optimizer(model, config),
                   torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
                   ModelEMA(model, config.ema_decay) if config.ema_decay else None,
                   train_loader)
        if saved is not None:
            _restore(run, saved, config, world, data)
        distributed.reseed_rank(world, config.seed, run.step)
        num_classes = getattr(model, "arch", {}).get("num_classes")
        if num_classes is not None:  # after a resume's checks, which name the checkpoint's model
            data.check_num_classes(num_classes)
        total_steps = _total_steps(config, len(train_loader))
        budget_s = config.budget_min * 60 if config.budget_min else None
        if saved is not None:  # before the output folder's checkpoint is moved aside
            _check_work_left(run, config, total_steps, budget_s, resume)
        forward = distributed.wrap(model, world, device, config.sync_batchnorm)
        forward = torch.compile(forward) if config.compile else forward
        progress = progress and world.is_main
        plan = _Plan(config, device, precision, autocast_dtype(precision), world,
                     total_steps, budget_s, lr_scale(config, world.size)[0],
                     _checkpoint_path(out_dir, resume, progress, world), progress,
                     # A live bar where someone watches it redraw in place: a terminal or a
                     # notebook (`make course` collapses the redraws when it saves; a 15-minute
                     # run once kept 400 KB of them). A log file or CI would keep every redraw,
                     # so there only the epoch table is printed.
                     progress and (sys.stdout.isatty() or "ipykernel" in sys.modules),
                     run.step + _ESTIMATE_STEPS, frozen, transfer)
        if progress:
            _print_header(data, run, plan)

        stopped_by = "epochs"
        with (distributed.stop_requests(world) as stop_asked,
              distributed.collective_errors(world, _what_is_kept(plan.checkpoint_path))):
            # Steps, not epochs: an epoch cut short (max_steps, a budget) and then extended
            # by a resume still ends on the schedule's last step.
            while run.step < plan.total_steps and not _out_of_time(run.train_seconds, plan):
                sums, lr, seconds, stopped_by = _train_epoch(run, forward, plan, stop_asked)
                _end_epoch(run, plan, sums, lr, seconds, val_loader, data)
                if stopped_by != "epochs":
                    break

        if progress:
            print(f"stopped by {stopped_by} after {run.epoch} epochs, {run.step} steps, "
                  f"{run.train_seconds:.0f} s of training")
        return TrainResult(run.ema.module if run.ema is not None else model,
                           pd.DataFrame(run.history), plan.checkpoint_path, device, precision,
                           run.train_seconds, stopped_by, tuple(data.mean), tuple(data.std))


# The named steps of `fit`, in the order it takes them.


def _start_transfer(model: nn.Module, data: ImageData, config: TrainConfig,
                    resume: str | Path | None) -> tuple[tuple[str, ...], str | None, ImageData]:
    """Copy the pretrained weights into `model` (not on a resume: the checkpoint holds every
    weight, and the pretrained ones must not overwrite them) and freeze what `config.freeze`
    names. Returns the frozen modules, the run header's line (None without `init_from`), and
    `data` normalised with the pretrained weights' statistics (`normalised_as_pretrained`)."""
    if config.init_from is None:
        return (), None, data
    pretrained = find_pretrained(_shape_source(config, resume), config.model)
    check_config_fits(pretrained, config.model, config.width)
    data = normalised_as_pretrained(data, pretrained)
    if resume is None:
        line = start_from(model, pretrained)
    else:
        line = f"init from {config.init_from}: resumed, so every weight is the checkpoint's"
    frozen = frozen_modules(config.freeze)
    if frozen:
        count = freeze_layers(model, frozen)
        line += f" | frozen: {frozen[0]} to {frozen[-1]} ({count:,} parameters)"
    if config.pretrained_lr_scale != 1.0:
        line += f" | pretrained layers at lr x {config.pretrained_lr_scale:g}"
    line += (f" | inputs normalised with the weights' mean "
             f"{tuple(round(m, 3) for m in data.mean)} and std "
             f"{tuple(round(v, 3) for v in data.std)}")
    return frozen, line, data


def _shape_source(config: TrainConfig, resume: str | Path | None) -> str:
    """Where a transfer run's network shape and input statistics come from: `init_from`, or
    on a resume the checkpoint itself, which holds the same network (its own classes and aux
    heads, which `transfer_model` sets anyway) and was normalised with the same statistics."""
    return config.init_from if resume is None else str(resume)


def _build_loaders(data: ImageData, config: TrainConfig, device: torch.device,
                   world: distributed.World) -> tuple[DeviceLoader, DeviceLoader | None]:
    """This rank's training loader and its part of the validation images (None: no validation).

    The training loader yields this rank's share of every global batch (see `DeviceLoader`).
    Validation images are cut into one contiguous part per rank, and the sums are added up.
    """
    def subset(split: str, limit: int | None) -> tuple[Tensor, Tensor]:
        images, labels = data.split(split)
        return images[:limit], labels[:limit]

    common = dict(mean=data.mean, std=data.std, device=device,
                  channels_last=config.channels_last)
    train_loader = DeviceLoader(*subset("train", config.train_limit),
                                batch_size=config.batch_size, train=True,
                                crop_padding=config.crop_padding, flip=config.flip,
                                cutout_size=config.cutout, seed=config.seed, rank=world.rank,
                                world_size=world.size, **common)
    val_images, val_labels = subset("val", config.eval_limit)
    part = distributed.shard_range(len(val_labels), world)
    val_loader = (DeviceLoader(val_images[part], val_labels[part],
                               batch_size=eval_batch_size(device), **common)
                  if len(val_labels) else None)
    if len(train_loader) == 0:
        ranks = f" ({world.size} ranks x {config.batch_size})" if world.parallel else ""
        raise ConfigError(f"{len(train_loader.labels)} training images give no full batch of "
                          f"{config.batch_size * world.size}{ranks}; lower batch_size or raise "
                          "train_limit")
    return train_loader, val_loader


def _read_for_resume(path: str | Path, device: torch.device) -> dict:
    """The checkpoint a resume continues from, checked to hold everything a resume needs."""
    payload = read_checkpoint(path, map_location=device)
    _require_keys(path, payload, _RESUME_KEYS, "resume training")
    return payload


def _precision_to_resume(saved: str, chosen: str, device: torch.device,
                         path: str | Path) -> str:
    """The precision a resumed run with precision="auto" continues in: its checkpoint's.

    "auto" resolves per machine, and a checkpoint may move: one from a CPU without native bf16,
    resumed on a CPU with it, continues in fp32, as the uninterrupted run would have. A precision
    this device does not run natively (`runtime.runs_natively`: bf16 on a CPU without AVX-512
    BF16 or AMX or on a GPU before Ampere, several times slower; fp16 off CUDA) gives way to
    `chosen`, with a warning, since the rest of the run then computes differently.
    """
    if saved == chosen or runs_natively(saved, device):
        return saved
    warnings.warn(f"{path} trained in {saved}, which this {device.type} does not run natively: "
                  f"the rest of the run trains in {chosen}, so its result will differ slightly "
                  "from an uninterrupted run's", stacklevel=3)
    return chosen


def _restore(run: _Run, payload: dict, config: TrainConfig, world: distributed.World,
             data: ImageData) -> None:
    """Load a checkpoint into `run`, after checking it is this config's, data's and model's.

    In that order: a changed config explains a changed split, and changed classes explain a
    changed network.
    """
    _check_same_run(payload["config"], config)
    _check_same_data(payload["data"], data.describe())
    check_compatible(run.model, payload)
    run.model.load_state_dict(payload["model"])
    run.optimizer.load_state_dict(payload["optimizer"])
    if payload["scaler"]:  # empty when it was off: a run moved to fp16 starts a fresh scale
        run.scaler.load_state_dict(payload["scaler"])
    if run.ema is not None and payload["ema"] is not None:
        run.ema.module.load_state_dict(payload["ema"])
        run.ema.updates = payload["ema_updates"]
    run.train_loader.load_state_dict(payload["loader"])
    _set_rng_state(payload["rng"])
    run.history, run.epoch, run.step = payload["history"], payload["epoch"], payload["step"]
    run.train_seconds = payload["train_seconds"]
    # Saved by a run on another number of ranks, its steps were of another global batch: count
    # them in this run's steps, so the schedule goes on from the same fraction of the run.
    # (Checkpoints from before data-parallel training were all single-process.)
    saved_batch = payload.get("global_batch", payload["config"]["batch_size"])
    if saved_batch != config.batch_size * world.size:
        n = len(run.train_loader.labels)
        run.step = round(run.step * len(run.train_loader) / max(1, n // saved_batch))


def _check_work_left(run: _Run, config: TrainConfig, total_steps: int, budget_s: float | None,
                     resume: str | Path) -> None:
    """Refuse to resume a run that has nothing left to train.

    Otherwise it would train no step, yet still move the output folder's checkpoint aside (when
    resumed from another file) and report a checkpoint as saved.
    """
    if run.step >= total_steps:
        epochs = f"{config.epochs} epoch{'s' * (config.epochs != 1)}"
        done = (f"all {total_steps:,} steps of its {epochs}"
                if config.max_steps is None or config.max_steps > run.step
                else f"its --max-steps {config.max_steps:,}")
        raise ConfigError(
            f"nothing left to train: {resume} has done {done}. To train on, raise --epochs "
            "(or --max-steps); the schedule is then laid over the new length, a warm restart. "
            "For a schedule that ends at the new length, start a new run with more epochs.")
    if budget_s is not None and run.train_seconds >= budget_s:
        raise ConfigError(
            f"nothing left to train: {resume} has used its whole budget "
            f"({run.train_seconds / 60:.1f} of {budget_s / 60:g} minutes). To train on, raise "
            "--budget-min.")


def _total_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    total = config.epochs * steps_per_epoch
    return total if config.max_steps is None else min(total, config.max_steps)


def _checkpoint_path(out_dir: str | Path | None, resume: str | Path | None, progress: bool,
                     world: distributed.World) -> Path | None:
    """OUT/checkpoint.pt; an earlier run's file there is moved aside, never overwritten."""
    if out_dir is None:
        return None
    path = Path(out_dir) / "checkpoint.pt"
    # A fresh run, or one resumed from another file, never overwrites earlier training.
    resuming_here = resume is not None and Path(resume).resolve() == path.resolve()
    if world.is_main and path.exists() and not resuming_here:
        kept = _keep_aside(path)
        if progress:
            print(f"kept the earlier checkpoint as {kept} (this run writes a new "
                  f"{path.name}; continue the earlier one with {resume_hint(kept)})")
    return path


def _print_header(data: ImageData, run: _Run, plan: _Plan) -> None:
    """What is trained, on what, and how: the lines above the epoch table."""
    config = plan.config
    width = "" if config.width is None else f" at width {config.width}"
    n_val = len(data.val_labels[:config.eval_limit])
    total, training = (sum(p.numel() for p in run.model.parameters()),
                       count_parameters(run.model))  # fewer when layers are frozen
    params = (f"{total:,} params{' with aux heads' if run.model.aux1 is not None else ''}"
              + ("" if training == total else f", {training:,} of them training"))
    print(f"{data.title} | {len(run.train_loader.labels):,} train / {n_val:,} val | "
          f"{config.model}{width} ({params}) | "
          f"device {plan.device} | precision {plan.precision} | "
          f"channels_last {config.channels_last} | compile {config.compile}")
    if plan.transfer is not None:
        print(plan.transfer)
    if plan.world.parallel:
        scale, rule = lr_scale(config, plan.world.size)
        print(f"data-parallel: {plan.world.size} ranks x batch {config.batch_size} = global "
              f"batch {plan.global_batch} | peak lr {config.lr * scale:g} = {config.lr:g} x "
              f"{scale:g}, the {rule} | SyncBatchNorm {config.sync_batchnorm}")
    print(_table_row(None))


def _out_of_time(seconds: float, plan: _Plan) -> bool:
    return plan.budget_s is not None and seconds >= plan.budget_s


def _what_is_kept(checkpoint_path: Path | None) -> str:
    if checkpoint_path is None:
        return "Nothing of this run was saved (no output folder)."
    return (f"Every completed epoch is saved in {checkpoint_path}: continue with --resume, on "
            "any number of ranks.")


def _train_epoch(run: _Run, forward: nn.Module, plan: _Plan,
                 stop_asked: Callable[[], bool]) -> tuple[list[float], float, float, str]:
    """One pass over this rank's batches, unless the step cap, the budget or Ctrl-C ends it.

    Returns the epoch's loss sum, correct count and image count over all ranks, the last
    learning rate, the seconds it trained, and "epochs" (ran to its end), "max_steps" or
    "budget". Under torchrun every rank takes each of these decisions after the same step.
    """
    run.model.train()
    keep_frozen_in_eval(run.model, plan.frozen)  # frozen BatchNorm statistics must not drift
    sums = torch.zeros(3, device=plan.device)  # loss * n, correct, n: summed on the device
    epoch_start_step, t0 = run.step, time.perf_counter()
    elapsed = run.train_seconds  # every rank's (agreed at the end of each epoch, or resumed)
    stopped_by = "epochs"
    bar = tqdm(run.train_loader, desc=f"epoch {run.epoch + 1}", leave=False,
               disable=not plan.live_bar, file=sys.stdout, mininterval=2.0, dynamic_ncols=True)
    for x, y in bar:
        lr = _learning_rate(run, plan, elapsed)
        loss, logits = _train_step(run, forward, x, y, lr, plan)
        with torch.no_grad():
            sums += torch.stack([loss.detach() * len(y), (logits.argmax(1) == y).sum(), _count(y)])
        run.step += 1
        elapsed, stop = distributed.agree(plan.world,
                                          run.train_seconds + time.perf_counter() - t0,
                                          stop_asked())
        if stop:
            raise KeyboardInterrupt  # Ctrl-C under torchrun: every rank, after this same step
        if plan.progress:
            _show_progress(run, plan, bar, sums, epoch_start_step, t0)
        if run.step >= plan.total_steps:
            stopped_by = "max_steps" if plan.config.max_steps == run.step else "epochs"
            break
        if _out_of_time(elapsed, plan):
            stopped_by = "budget"
            break
    bar.close()
    totals = distributed.sum_over_ranks(sums, plan.world).tolist()  # the epoch's one host sync
    seconds, _ = distributed.agree(plan.world, time.perf_counter() - t0, False)
    return totals, lr, seconds, stopped_by


def _learning_rate(run: _Run, plan: _Plan, elapsed: float) -> float:
    """The next step's learning rate, from how much of the run is done: by steps, or by the
    clock when there is a budget. `elapsed` is the training clock the ranks agreed on after the
    previous step (at an epoch's start, the epoch's starting time), so every rank takes the same
    learning rate without a second all-reduce per step; it lags a fresh reading by the time to
    fetch the batch, a small part of one step."""
    fraction = run.step / plan.total_steps
    if plan.budget_s is not None:
        fraction = max(fraction, elapsed / plan.budget_s)
    return lr_at(fraction, plan.config) * plan.lr_scale


def _train_step(run: _Run, forward: nn.Module, x: Tensor, y: Tensor, lr: float,
                plan: _Plan) -> tuple[Tensor, Tensor]:
    """One optimizer step on a batch (under DDP, `backward` averages gradients across ranks)."""
    for group in run.optimizer.param_groups:
        # Optimizer states saved before lr_scale existed restore groups without it.
        group["lr"] = lr * group.get("lr_scale", 1.0)
    with torch.autocast(plan.device.type, dtype=plan.dtype, enabled=plan.dtype is not None):
        loss, logits = loss_fn(forward(x), y, plan.config)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if run.ema is not None:
        run.ema.update(run.model)
    return loss, logits


def _show_progress(run: _Run, plan: _Plan, bar: tqdm, sums: Tensor, epoch_start_step: int,
                   t0: float) -> None:
    """The run's length estimate once, and the bar's numbers every 50 steps (each a sync)."""
    if run.step == plan.estimate_at:
        _print_estimate(run.step - epoch_start_step, time.perf_counter() - t0, run.step,
                        plan.total_steps, run.train_seconds, plan.budget_s, plan.device)
    if run.step % 50 == 0:  # an occasional sync for the bar (rank 0's share), not every step
        loss_sum, correct, n = sums.tolist()
        _check_finite_loss(loss_sum, run.epoch + 1, plan.checkpoint_path, plan.config,
                           plan.precision)
        rate = ((run.step - epoch_start_step) * plan.global_batch
                / (time.perf_counter() - t0))
        bar.set_postfix(loss=f"{loss_sum / n:.3f}", acc=f"{correct / n:.3f}",
                        img_s=f"{rate:.0f}", refresh=False)


def _end_epoch(run: _Run, plan: _Plan, sums: list[float], lr: float, seconds: float,
               val_loader: DeviceLoader | None, data: ImageData) -> None:
    """Check the epoch's loss, validate, add its row to the history, save the checkpoint."""
    loss_sum, correct, n = sums
    _check_finite_loss(loss_sum, run.epoch + 1, plan.checkpoint_path, plan.config,
                       plan.precision)
    run.train_seconds += seconds
    run.epoch += 1
    eval_model = run.ema.module if run.ema is not None else run.model
    val_loss, val_acc = float("nan"), float("nan")
    if val_loader is not None:
        distributed.share_buffers(eval_model, plan.world)  # rank 0's, the checkpoint's
        val_loss, val_acc = _validate(eval_model, val_loader, plan.dtype, plan.world)
    run.history.append(dict(epoch=run.epoch, train_loss=loss_sum / n, train_acc=correct / n,
                            val_loss=val_loss, val_acc=val_acc, lr=lr, seconds=seconds,
                            img_per_s=n / seconds))
    if plan.progress:
        tqdm.write(_table_row(run.history[-1]), file=sys.stdout)
    if plan.checkpoint_path is not None:
        _check_finite_weights(run.model, run.ema, run.epoch, plan.checkpoint_path, plan.config,
                              plan.precision)
        if plan.world.is_main:
            save_checkpoint(plan.checkpoint_path, _checkpoint_payload(run, plan, data))


def _checkpoint_payload(run: _Run, plan: _Plan, data: ImageData) -> dict:
    """What `load_checkpoint` and a resume read. Only `global_batch` depends on the number of
    ranks, and a resume on another number recounts the steps from it."""
    return dict(
        format=CHECKPOINT_FORMAT, model_name=getattr(run.model, "name", plan.config.model),
        arch=run.model.arch, model=run.model.state_dict(),
        ema=run.ema.module.state_dict() if run.ema is not None else None,
        ema_updates=run.ema.updates if run.ema is not None else 0,
        optimizer=run.optimizer.state_dict(), scaler=run.scaler.state_dict(),
        loader=run.train_loader.state_dict(), rng=_rng_state(), config=asdict(plan.config),
        history=run.history, data=data.describe(), epoch=run.epoch, step=run.step,
        train_seconds=run.train_seconds, precision=plan.precision, device=str(plan.device),
        world_size=plan.world.size, global_batch=plan.global_batch)


# Non-finite values. A NaN or inf in the loss or the weights only grows: one bad step makes every
# later one NaN, and the BatchNorm running statistics keep it for good. Checking every step
# would cost a host sync per step (a GPU stall), so the checks ride on syncs that happen anyway:
# the loss summed on the device is read once per epoch (and every 50 steps for the progress
# bar), where one NaN step makes the whole sum NaN; and before each checkpoint is written, every
# parameter and buffer is tested in one batched reduction. A diverged epoch is never saved.


def prepare_out_dir(out_dir: str | Path) -> Path:
    """Create `out_dir` if needed and prove a file can be written in it, before any training.

    Finding out after the first epoch (minutes or hours in) that the folder is a file, or
    read-only, would lose that epoch; this makes it an immediate ConfigError instead.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"the output folder {out} is a file, not a folder: choose a folder "
                          "for checkpoint.pt (--out; it is created when missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(f"cannot write to the output folder {out} ({reason}): choose a "
                          "folder you can write to (--out)") from None
    return out


def _diverged(what: str, epoch: int, checkpoint_path: Path | None, config: TrainConfig,
              precision: str) -> TrainingError:
    if checkpoint_path is not None and checkpoint_path.exists():
        kept = f"the last good checkpoint, {checkpoint_path}, is kept"
    else:
        kept = "no earlier epoch of this run was saved"
    fp32 = "" if precision == "fp32" else f", or train in fp32 instead of {precision}"
    return TrainingError(f"training diverged in epoch {epoch}: {what}. Nothing from this epoch "
                         f"was saved and {kept}. Start a new run with a lower learning rate "
                         f"(lr is {config.lr}){fp32}")


def _check_finite_loss(loss_sum: float, epoch: int, checkpoint_path: Path | None,
                       config: TrainConfig, precision: str) -> None:
    if not math.isfinite(loss_sum):
        raise _diverged(f"the training loss became {loss_sum}", epoch, checkpoint_path, config,
                        precision)


def nonfinite_tensors(module: nn.Module) -> list[str]:
    """Names of the parameters and buffers holding NaN or inf (one host sync for all of them)."""
    named = [(n, t) for n, t in module.state_dict().items() if t.is_floating_point()]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()
    return [n for (n, _), ok in zip(named, finite, strict=True) if not ok]


def _check_finite_weights(model: nn.Module, ema: ModelEMA | None, epoch: int,
                          checkpoint_path: Path | None, config: TrainConfig,
                          precision: str) -> None:
    bad = nonfinite_tensors(model) + (nonfinite_tensors(ema.module) if ema is not None else [])
    if bad:
        names = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise _diverged(f"the weights hold NaN or inf ({names})", epoch, checkpoint_path, config,
                        precision)


# Steps timed before `fit` prints its estimate: past the slow first steps (kernel selection,
# allocator warm-up), early enough that the learner can still decide to stop.
_ESTIMATE_STEPS = 20


def _print_estimate(steps: int, seconds: float, step: int, total_steps: int,
                    trained_s: float, budget_s: float | None, device: torch.device) -> None:
    """One line: the measured seconds per step, and when the run will end (steps or budget)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the clock must include the queued GPU work
    per_step = seconds / steps
    by_steps = trained_s + seconds + per_step * (total_steps - step)
    if budget_s is not None and budget_s < by_steps:
        when = (f"the {budget_s / 60:.0f}-minute budget ends it after about "
                f"{step + (budget_s - trained_s - seconds) / per_step:,.0f} of {total_steps:,} "
                "planned steps")
    else:
        when = f"{total_steps:,} steps take about {by_steps / 60:.1f} minutes of training"
    tqdm.write(f"estimate from {steps} timed steps: {per_step:.3f} s per step, so {when} "
               "(plus validation after each epoch)", file=sys.stdout)


def _keep_aside(path: Path) -> Path:
    """Rename an existing checkpoint to checkpoint-<its time stamp>.pt (never overwriting)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
    target, n = path.with_name(f"{path.stem}-{stamp}{path.suffix}"), 1
    while target.exists():
        target, n = path.with_name(f"{path.stem}-{stamp}-{n}{path.suffix}"), n + 1
    os.replace(path, target)
    return target


_COLUMNS = [("epoch", "{:>5d}"), ("train_loss", "{:>10.4f}"), ("train_acc", "{:>9.2%}"),
            ("val_loss", "{:>8.4f}"), ("val_acc", "{:>8.2%}"), ("lr", "{:>8.4f}"),
            ("seconds", "{:>7.1f}"), ("img_per_s", "{:>9.0f}")]


def _table_row(row: dict | None) -> str:
    """A fixed-width line of the per-epoch log (the header when `row` is None)."""
    if row is None:
        widths = [len(fmt.format(1 if name == "epoch" else 0.0)) for name, fmt in _COLUMNS]
        return "  ".join(f"{name:>{w}}" for (name, _), w in zip(_COLUMNS, widths, strict=True))
    return "  ".join(fmt.format(row[name]) for name, fmt in _COLUMNS)


# Fields that may change between an interrupted run and its resumption (extending a run).
_RESUMABLE_CHANGES = {"epochs", "budget_min", "max_steps"}


# What makes a dataset the same one for a resumed run. Not its root (a copy may move) or its
# statistics (they follow from the images).
_DATA_IDENTITY = ("name", "source", "classes", "image_size", "n_train", "n_val", "seed")


def _check_same_data(saved: dict, now: dict) -> None:
    """Refuse to resume on other images: another source (synthetic stand-in, another copy),
    classes, image size or split. The model would accept many of them without a word."""
    def shown(key: str, value) -> str:
        if key == "classes" and len(value) > 4:
            return f"{len(value)} classes ({', '.join(value[:3])}, ...)"
        return repr(value)

    differ = [k for k in _DATA_IDENTITY if k in saved and saved[k] != now[k]]
    if differ:
        detail = ", ".join(f"{k}: {shown(k, saved[k])} -> {shown(k, now[k])}" for k in differ)
        raise CheckpointError(f"cannot resume: the checkpoint was trained on other data "
                              f"({detail}). Resume with the data the run trained on, or start "
                              "a new run")


def _check_same_run(saved: dict, config: TrainConfig) -> None:
    now = asdict(config)
    # A field newer than the checkpoint had its default in the run that wrote it.
    was = {f.name: saved.get(f.name, f.default) for f in fields(TrainConfig)}
    differ = [f.name for f in fields(TrainConfig)
              if f.name not in _RESUMABLE_CHANGES and was[f.name] != now[f.name]]
    if differ:
        detail = ", ".join(f"{k}: {was[k]!r} -> {now[k]!r}" for k in differ)
        raise CheckpointError(f"cannot resume: the config differs from the checkpoint's "
                              f"({detail}). Resume with the same config, or start a new run")
    extended = [k for k in sorted(_RESUMABLE_CHANGES) if was[k] != now[k]]
    if extended:  # allowed, but not a continuation: the schedule's length is what changed
        detail = ", ".join(f"{k}: {was[k]!r} -> {now[k]!r}" for k in extended)
        warnings.warn(f"resuming with {detail} lays the learning-rate schedule over the new "
                      "length, so the rate jumps to where the new run would be at this step (a "
                      "warm restart): the result differs from a run planned this long from the "
                      "start", stacklevel=4)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():  # a machine may have fewer GPUs
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"][:torch.cuda.device_count()]])

