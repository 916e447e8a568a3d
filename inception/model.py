"""GoogLeNet (Inception v1) as in Szegedy et al. 2015, plus the CIFAR variants this course trains.

Owns the network and its registry of named configurations. It does not know about data,
training or checkpoints; names follow torchvision's `googlenet.py` so its weights load unchanged.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from inception.errors import ConfigError, ModelInputError

# The paper's Table 1, one row per Inception module:
# (name, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).
# The input width of each module is the output width of the one before it.
INCEPTION_TABLE: list[tuple[str, int, int, int, int, int, int]] = [
    ("inception3a", 64, 96, 128, 16, 32, 32),
    ("inception3b", 128, 128, 192, 32, 96, 64),
    ("inception4a", 192, 96, 208, 16, 48, 64),
    ("inception4b", 160, 112, 224, 24, 64, 64),
    ("inception4c", 128, 128, 256, 24, 64, 64),
    ("inception4d", 112, 144, 288, 32, 64, 64),
    ("inception4e", 256, 160, 320, 32, 128, 128),
    ("inception5a", 256, 160, 320, 32, 128, 128),
    ("inception5b", 384, 192, 384, 48, 128, 128),
]
STEMS = ("imagenet", "cifar", "cifar16")

# ImageNet's per-channel pixel mean and std: the normalisation every torchvision classifier takes.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvBNReLU(nn.Module):
    """Convolution without bias, then BatchNorm, then ReLU.

    The bias is dropped because BatchNorm's shift makes it redundant. The paper predates
    BatchNorm; torchvision (and this course) add it because it makes the network trainable
    from scratch without the paper's auxiliary-loss crutches and careful learning rates.
    Submodule names match torchvision's `BasicConv2d` (`conv`, `bn`), eps as there.
    """

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """The Inception module: four parallel branches whose outputs are concatenated.

    1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max-pool -> 1x1. The 1x1 "reduce" convolutions
    shrink the channel count before the expensive spatial convolutions; that is what
    makes the module cheap enough to stack nine times. `five_by_five=False` uses a 3x3
    kernel in the third branch, reproducing torchvision's known deviation from the paper.
    """

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int,
                 ch5x5red: int, ch5x5: int, pool_proj: int, five_by_five: bool = True) -> None:
        super().__init__()
        k = 5 if five_by_five else 3
        self.branch1 = ConvBNReLU(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            ConvBNReLU(in_channels, ch3x3red, kernel_size=1),
            ConvBNReLU(ch3x3red, ch3x3, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(
            ConvBNReLU(in_channels, ch5x5red, kernel_size=1),
            ConvBNReLU(ch5x5red, ch5x5, kernel_size=k, padding=k // 2),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            ConvBNReLU(in_channels, pool_proj, kernel_size=1),
        )
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: Tensor) -> Tensor:
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return torch.cat([branch(x) for branch in branches], dim=1)


class InceptionAux(nn.Module):
    """The paper's auxiliary classifier, attached after inception4a and inception4d.

    Pool to 4x4, 1x1 conv to 128 channels, a 1024-unit fully connected layer with 70%
    dropout, then the classifier. Its loss (weighted 0.3) adds gradient to the middle of
    the network during training; at inference the heads are discarded.
    """

    def __init__(self, in_channels: int, num_classes: int, conv_channels: int = 128,
                 hidden: int = 1024, dropout: float = 0.7) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, conv_channels, kernel_size=1)
        self.fc1 = nn.Linear(conv_channels * 4 * 4, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: Tensor) -> Tensor:
        # The paper uses a 5x5/3 average pool on 14x14 maps to get a 4x4 grid; adaptive pooling
        # (torchvision's choice) gives a 4x4 grid for any input size, with its own windows.
        x = self.conv(F.adaptive_avg_pool2d(x, (4, 4)))
        x = self.dropout(F.relu(self.fc1(torch.flatten(x, 1)), inplace=True))
        return self.fc2(x)


class GoogLeNetOutputs(NamedTuple):
    """What a GoogLeNet with aux heads returns in training mode (torchvision's order)."""

    logits: Tensor
    aux_logits2: Tensor
    aux_logits1: Tensor


def _scaled(channels: int, width: float) -> int:
    """Scale a channel count by `width`, rounded to a multiple of 8 (vector-friendly)."""
    return channels if width == 1.0 else max(8, int(round(channels * width / 8)) * 8)


class GoogLeNet(nn.Module):
    """GoogLeNet / Inception v1.

    Args:
        num_classes: size of the classifier output.
        in_channels: image channels (3 for RGB).
        aux_logits: build the two auxiliary classifiers. In training mode the forward pass
            then returns `GoogLeNetOutputs(logits, aux_logits2, aux_logits1)`; in eval mode,
            and always when `aux_logits=False`, it returns the logits tensor.
        dropout: dropout before the final classifier (torchvision's 0.2; the paper used 0.4).
        dropout_aux: dropout inside the auxiliary heads (the paper's 0.7).
        width: multiplier on every channel count of Table 1 (rounded to multiples of 8).
        stem: "imagenet" is the paper's 7x7/2 conv, max-pool, 1x1, 3x3, max-pool, which
            shrinks 224x224 input 8x before inception3a. "cifar" replaces all of that with
            one stride-1 3x3 conv, so 32x32 input keeps 32x32 maps through stage 3, 16x16
            through stage 4 and 8x8 through stage 5.
        five_by_five: False reproduces torchvision's 3x3 kernel in the "5x5" branch.
        transform_input: True takes ImageNet-normalised input (IMAGENET_MEAN, IMAGENET_STD)
            and rescales it to the [-1, 1] pixels ((p - 0.5) / 0.5) that torchvision's ported
            ImageNet weights were trained on, as torchvision's `transform_input` does. It lets
            those weights take the same input as every other torchvision classifier.

    Like torchvision, maxpool4 is 2x2/2 where the paper has 3x3/2; both give 7x7 maps at 224.

    Initialisation: convolutions use Kaiming-normal (fan-out, ReLU gain) so activations keep
    their scale through the deep stack at step 0; linear layers N(0, 0.01) with zero bias;
    BatchNorm starts as the identity. All draws come from torch's global RNG, so
    `torch.manual_seed(s)` before construction gives identical weights.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, aux_logits: bool = True,
                 dropout: float = 0.2, dropout_aux: float = 0.7, width: float = 1.0,
                 stem: str = "imagenet", five_by_five: bool = True,
                 transform_input: bool = False) -> None:
        super().__init__()
        _check_arch(num_classes=num_classes, in_channels=in_channels, width=width,
                    dropout=dropout, dropout_aux=dropout_aux, stem=stem,
                    transform_input=transform_input)
        # Everything needed to rebuild this network (checkpoints store it).
        self.arch = dict(num_classes=num_classes, in_channels=in_channels, aux_logits=aux_logits,
                         dropout=dropout, dropout_aux=dropout_aux, width=width, stem=stem,
                         five_by_five=five_by_five, transform_input=transform_input)
        self.in_channels, self.stem, self.aux_logits = in_channels, stem, aux_logits
        self.transform_input = transform_input

        def c(n: int) -> int:
            return _scaled(n, width)

        if stem == "imagenet":
            self.conv1 = ConvBNReLU(in_channels, c(64), kernel_size=7, stride=2, padding=3)
            self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
            self.conv2 = ConvBNReLU(c(64), c(64), kernel_size=1)
            self.conv3 = ConvBNReLU(c(64), c(192), kernel_size=3, padding=1)
            self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        elif stem == "cifar16":
            # The paper's stem in miniature: conv, pool, 1x1, 3x3, but with one 2x downsample
            # instead of 8x, so 32x32 input reaches inception3a at 16x16 (stage sizes 16/8/4,
            # the paper's 28/14/7 scaled). Stage 3 then costs a quarter of the "cifar" stem's,
            # and that compute can buy width instead.
            self.conv1 = ConvBNReLU(in_channels, c(64), kernel_size=3, padding=1)
            self.maxpool1 = nn.MaxPool2d(3, stride=2, padding=1)
            self.conv2 = ConvBNReLU(c(64), c(64), kernel_size=1)
            self.conv3 = ConvBNReLU(c(64), c(192), kernel_size=3, padding=1)
            self.maxpool2 = nn.Identity()
        else:  # 32x32 images have no resolution to spare: no striding, no pooling in the stem.
            self.conv1 = ConvBNReLU(in_channels, c(192), kernel_size=3, padding=1)
            # Identity placeholders keep the forward pass and the attribute names of every stem
            # the same (one instance each, so a hook on one fires once).
            self.maxpool1, self.conv2 = nn.Identity(), nn.Identity()
            self.conv3, self.maxpool2 = nn.Identity(), nn.Identity()

        channels = c(192)
        for name, *widths in INCEPTION_TABLE:
            module = Inception(channels, *map(c, widths), five_by_five=five_by_five)
            setattr(self, name, module)
            channels = module.out_channels
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)

        if aux_logits:
            aux = dict(num_classes=num_classes, conv_channels=c(128), hidden=c(1024),
                       dropout=dropout_aux)
            self.aux1 = InceptionAux(self.inception4a.out_channels, **aux)
            self.aux2 = InceptionAux(self.inception4d.out_channels, **aux)
        else:
            self.aux1 = self.aux2 = None

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _check_input(self, x: Tensor) -> None:
        """Shape, dtype and size, from metadata only: no host sync, so no cost on a GPU.

        Values are not checked (that would sync every batch). A NaN batch in training mode
        would poison the BatchNorm running statistics for good; `fit` cannot feed one (its
        loader holds uint8 images and validated statistics) and stops on a non-finite loss.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ModelInputError(
                f"GoogLeNet expects a batch of shape (N, {self.in_channels}, H, W); "
                f"got a tensor of shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ModelInputError(
                f"GoogLeNet expects float images, normalised as in training; got {x.dtype}. "
                "Convert uint8 images with inception.data.normalize(images, data.mean, "
                "data.std)")
        weight = self.conv1.conv.weight.dtype
        if x.dtype != weight and not _autocast_on(x.device.type):
            raise ModelInputError(
                f"the input is {x.dtype} but the model's weights are {weight}: convert the "
                f"input with x.to({weight}), or the model with model.to({x.dtype})")
        too_small = [side for side in x.shape[-2:] if _final_side(self, side) < 1]
        if too_small:
            raise ModelInputError(
                f"{x.shape[-2]}x{x.shape[-1]} images are too small for the {self.stem} stem: "
                "its pooling layers shrink them to nothing before the classifier. The "
                f"smallest input it takes is {_smallest_side(self)}x{_smallest_side(self)}; "
                "resize the images, or use a model with a gentler stem")
        if self.stem == "imagenet" and min(x.shape[-2:]) < 64:
            warnings.warn(
                f"{x.shape[-2]}x{x.shape[-1]} input is too small for the imagenet stem, which "
                "downsamples 8x before the first Inception module and 32x by stage 5: the "
                "feature maps collapse (32x32 input leaves 4x4 in stage 3, 2x2 in stage 4 and "
                "1x1 in stage 5). Use stem='cifar' (build_model('googlenet_cifar')) instead.",
                UserWarning, stacklevel=3)

    def forward(self, x: Tensor) -> Tensor | GoogLeNetOutputs:
        self._check_input(x)
        if self.transform_input:
            x = _imagenet_to_unit_range(x)
        x = self.maxpool2(self.conv3(self.conv2(self.maxpool1(self.conv1(x)))))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        aux_on = self.aux_logits and self.training
        aux1 = self.aux1(x) if aux_on else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if aux_on else None
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        logits = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        return GoogLeNetOutputs(logits, aux2, aux1) if aux_on else logits


def _imagenet_to_unit_range(x: Tensor) -> Tensor:
    """Undo ImageNet normalisation and scale to [-1, 1]: x * std / 0.5 + (mean - 0.5) / 0.5.

    Per channel with Python scalars, as torchvision writes it: the same float operations give
    the same bits, and no constant tensor has to be copied to the device on every call.
    """
    channels = [x[:, c:c + 1] * (std / 0.5) + (mean - 0.5) / 0.5
                for c, (mean, std) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))]
    return torch.cat(channels, dim=1)


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no argument, and the CPU has its own query
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


def _check_arch(*, num_classes, in_channels, width, dropout, dropout_aux, stem,
                transform_input) -> None:
    """GoogLeNet's arguments must make a network: counts >= 1, width finite and > 0, p in [0, 1]."""
    if stem not in STEMS:
        raise ConfigError(f"stem must be one of {STEMS}, got {stem!r}")
    if transform_input and in_channels != 3:
        raise ConfigError(f"transform_input rescales the 3 channels of RGB images; in_channels is "
                          f"{in_channels}: use transform_input=False")
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
    if (not isinstance(width, numbers.Real) or isinstance(width, bool)
            or not math.isfinite(width) or width <= 0):
        raise ConfigError(f"width must be a finite number > 0, got {width!r}")
    for name, value in (("dropout", dropout), ("dropout_aux", dropout_aux)):
        if not isinstance(value, numbers.Real) or not 0 <= value <= 1:
            raise ConfigError(f"{name} must be a probability in [0, 1], got {value!r}")


def _shrink(side: int, layer: nn.Module) -> int:
    """A Conv2d's or MaxPool2d's output side for an input side, as torch computes it."""
    if not isinstance(layer, nn.Conv2d | nn.MaxPool2d):
        return side

    def first(v):
        return v[0] if isinstance(v, tuple) else v

    k, s, p, d = (first(layer.kernel_size), first(layer.stride), first(layer.padding),
                  first(layer.dilation))
    ceil = isinstance(layer, nn.MaxPool2d) and layer.ceil_mode
    out = (side + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= side + p:  # the last window must start inside the input
        out -= 1
    return out


def _final_side(model: GoogLeNet, side: int) -> int:
    """The side of the feature map reaching the classifier (< 1: the input is too small)."""
    for layer in (model.conv1.conv, model.maxpool1, model.maxpool2, model.maxpool3,
                  model.maxpool4):  # every other layer keeps the size (padding k // 2)
        side = _shrink(side, layer)
        if side < 1:
            return side
    return side


def _smallest_side(model: GoogLeNet) -> int:
    return next(n for n in range(1, 1024) if _final_side(model, n) >= 1)


@dataclass(frozen=True)
class ModelSpec:
    """A registered configuration: its description and the GoogLeNet arguments it fixes."""

    description: str
    kwargs: dict


MODELS: dict[str, ModelSpec] = {
    "googlenet": ModelSpec(
        "The paper's network for 224x224 ImageNet-size input.",
        dict(stem="imagenet", width=1.0)),
    "googlenet_cifar": ModelSpec(
        "Paper channels (Table 1) with the stride-1 CIFAR stem, for 32x32 input.",
        dict(stem="cifar", width=1.0)),
    # Every layer and branch of the paper, with the paper's stem in miniature (one 2x downsample
    # where the paper has 8x: stages at 16/8/4, as the paper's at 28/14/7) and half the channels:
    # 1/15 of googlenet_cifar's compute and 1.5M parameters. On a 2-core AVX2 CPU it trains at
    # ~110 img/s against googlenet_cifar's ~8; the packaged CIFAR-10 reference weights are for
    # this network.
    "googlenet_cifar_small": ModelSpec(
        "Paper topology, 16x16 stage 3 (cifar16 stem), half width: ~1/15 of the compute.",
        dict(stem="cifar16", width=0.5)),
}


# The GoogLeNet arguments build_model passes through as overrides.
_OVERRIDABLE = ("in_channels", "dropout", "dropout_aux", "width", "stem", "five_by_five",
                "transform_input")


def build_model(name: str, *, num_classes: int | None = None, aux_logits: bool | None = None,
                weights: str | None = None, **overrides) -> GoogLeNet:
    """Build a registered GoogLeNet by name; keyword overrides replace the registry's settings.

    `weights` loads pretrained weights and returns the model in eval mode, as torchvision's
    builders do: "cifar10" (packaged, checked against their sha256) or, for googlenet,
    "imagenet" (torchvision's, downloaded into torch.hub's cache on first use). The weights fix
    the network, so `num_classes` defaults to theirs (10 without weights) and `aux_logits` to
    False (True without weights); aux heads a file holds are loaded, then dropped unless asked.
    An unknown name or weights, or arguments the weights do not fit, are a ConfigError (a
    ValueError); a damaged weight file is a WeightsError (also a ValueError).
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    unknown = sorted(set(overrides) - set(_OVERRIDABLE))
    if unknown:  # with weights, a misspelt width would otherwise be ignored without a word
        raise ConfigError(f"build_model got unknown argument(s) {', '.join(unknown)}; it "
                          f"takes num_classes, aux_logits, weights and {', '.join(_OVERRIDABLE)}")
    kwargs = {**MODELS[name].kwargs, **overrides}
    if weights is None:
        model = GoogLeNet(num_classes=10 if num_classes is None else num_classes,
                          aux_logits=aux_logits is not False, **kwargs)
        model.name = name
        return model

    from inception.weights import get_weights  # late: model stays free of files and hashes

    pretrained = get_weights(name, weights)
    saved = pretrained.meta["arch"]
    asked = dict(kwargs, aux_logits=bool(aux_logits))
    if num_classes is not None:
        asked["num_classes"] = num_classes
    if saved["aux_logits"]:  # heads in the file: either answer fits (they go after loading)
        del asked["aux_logits"]
    differ = {k: (v, saved[k]) for k, v in asked.items() if k in saved and saved[k] != v}
    if differ:
        detail = ", ".join(f"{k}={v!r} (the weights have {w!r})" for k, (v, w) in differ.items())
        raise ConfigError(f"the {weights!r} weights of {name} do not fit {detail}; drop those "
                          "arguments, or build without weights and train")
    model = GoogLeNet(**saved)
    model.name = name
    model.load_state_dict(pretrained.state_dict())
    if saved["aux_logits"] and not aux_logits:
        _drop_aux_heads(model)
    elif aux_logits and "aux_note" in pretrained.meta:
        warnings.warn(pretrained.meta["aux_note"], UserWarning, stacklevel=2)
    return model.eval()


def _drop_aux_heads(model: GoogLeNet) -> None:
    """Remove the auxiliary classifiers, as torchvision does after loading its weights."""
    model.aux1 = model.aux2 = None
    model.aux_logits = model.arch["aux_logits"] = False


def out_channels(block: nn.Module) -> int:
    """Output channels of a layer, a branch or a module: those of its last convolution.

    The one answer for the diagrams in `plots` and the branch tables in `evaluate` (a branch
    is a ConvBNReLU, a Sequential of them, or a pool followed by one).
    """
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(block).__name__} holds no convolution")
    return convs[-1].out_channels


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def list_models(num_classes: int = 10) -> list[dict]:
    """Every registered model: parameter counts with and without aux heads, and its weights.

    Weights fix their own network, which need not be the row's: googlenet's imagenet weights
    are torchvision's, with 1000 classes and 3x3 kernels in the "5x5" branch. So each weights
    name comes with that network's parameter count and the settings where it differs.
    """
    from inception.weights import available_weights, get_weights  # late, as in build_model

    shipped = available_weights()
    rows = []
    for name, spec in MODELS.items():
        with torch.device("meta"):  # count shapes without allocating or initialising weights
            deployed = build_model(name, num_classes=num_classes, aux_logits=False)
            training = build_model(name, num_classes=num_classes, aux_logits=True)
        weights = [_weights_network(w, get_weights(name, w).meta["arch"], deployed.arch)
                   for w in shipped.get(name, [])]
        rows.append(dict(name=name, description=spec.description,
                         params=count_parameters(deployed),
                         params_with_aux=count_parameters(training),
                         weights=", ".join(weights) or "-"))
    return rows


def _weights_network(name: str, arch: dict, registered: dict) -> str:
    """'imagenet (6,624,904 params: num_classes=1000, five_by_five=False)': the network the
    weights fit, as `build_model` loads it (no aux heads), with the settings that shape its
    parameters where they differ from `registered` (dropout and transform_input hold none)."""
    arch = {**arch, "aux_logits": False}
    with torch.device("meta"):
        params = count_parameters(GoogLeNet(**arch))
    differ = [f"{k}={v!r}" for k, v in arch.items() if registered.get(k) != v
              and k not in ("dropout", "dropout_aux", "transform_input")]
    return f"{name} ({params:,} params" + (f": {', '.join(differ)})" if differ else ")")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode (BatchNorm's running statistics, no dropout), and afterwards every
    submodule back in the mode it had: frozen layers stay in eval inside a training model."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes.items():
            module.train(mode)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with each ConvBNReLU's BatchNorm folded into its convolution.

    In eval mode BatchNorm is a fixed per-channel affine map, so it can be absorbed into the
    weights and a bias of the convolution before it: the same function (up to float rounding)
    with one pass over every activation fewer. For inference only; the original is untouched.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, ConvBNReLU) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(module.conv, module.bn)
            module.bn = nn.Identity()
    return folded.requires_grad_(False)
