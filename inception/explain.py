"""Looking inside a trained network: activations, attributions, receptive fields, feature space.

Owns forward hooks (the one mechanism `evaluate.silence_branch` also uses) and the measurements
built on them; Grad-CAM and occlusion come from captum, not hand-written code. It does not plot
(see `plots`), load data or train; inputs are batches already normalised as in training.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inception.model import Inception, eval_mode

BRANCHES = ("branch1", "branch2", "branch3", "branch4")
Hook = Callable[[nn.Module, tuple, Tensor], Tensor | None]


# ---------------------------------------------------------------------------------------------
# Forward hooks: register for a block, always remove.


@contextmanager
def forward_hooks(hooks: Sequence[tuple[nn.Module, Hook]]) -> Iterator[None]:
    """Inside the block each (module, hook) pair is registered; afterwards, even on an error, none.

    A hook that returns a tensor replaces the module's output (how a branch is silenced); one
    that returns None only looks. A hook left behind would silently change every later pass.
    """
    handles = []
    try:
        for module, hook in hooks:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        modules = [n for n, m in model.named_modules() if isinstance(m, Inception)]
        hint = f" (its Inception modules: {', '.join(modules)})" if modules else ""
        raise ValueError(f"{type(model).__name__} has no submodule {name!r}{hint}") from None


@contextmanager
def capture(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Inside the block, a dict that each forward pass fills with the named submodules' outputs.

    Keys appear in the order the modules ran, so the dict also records the forward order.
    """
    outputs: dict[str, Tensor] = {}

    def keep(name: str) -> Hook:
        return lambda _module, _inputs, output: outputs.__setitem__(name, output)

    with forward_hooks([(_submodule(model, name), keep(name)) for name in names]):
        yield outputs


class _Seen(Exception):
    """Raised by a hook once every wanted output exists: the rest of the pass is not needed."""


def activations(model: nn.Module, inputs: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
    """Outputs of the named submodules for one batch, in eval mode, keeping the autograd graph.

    The forward pass stops as soon as all of them have run, so early layers cost little.
    Call it under `torch.no_grad()` unless gradients are wanted.
    """
    wanted = set(names)
    outputs: dict[str, Tensor] = {}

    def keep(name: str) -> Hook:
        def hook(_module, _inputs, output):
            outputs[name] = output
            if wanted <= outputs.keys():
                raise _Seen
        return hook

    with eval_mode(model), forward_hooks([(_submodule(model, n), keep(n)) for n in names]):
        try:
            model(inputs)
        except _Seen:
            pass
    missing = wanted - outputs.keys()
    if missing:
        raise ValueError(f"{sorted(missing)} did not run in the forward pass (an aux head, "
                         "which runs only in training?)")
    return outputs


def _batches(inputs: Tensor, batch_size: int) -> Iterator[Tensor]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for start in range(0, len(inputs), batch_size):
        yield inputs[start:start + batch_size]


# ---------------------------------------------------------------------------------------------
# Inside an Inception module.


def branch_path(branch: nn.Module) -> str:
    """A branch's layers as a short label, e.g. '1x1→5x5' or 'pool→1x1', read from its modules."""
    steps = []
    for m in branch.modules():
        if isinstance(m, nn.MaxPool2d):
            steps.append("pool")
        elif isinstance(m, nn.Conv2d):
            steps.append("x".join(map(str, m.kernel_size)))
    return "→".join(steps)


def inception_modules(model: nn.Module) -> list[str]:
    """Names of the model's Inception modules, in the order they were built (network order)."""
    return [name for name, m in model.named_modules() if isinstance(m, Inception)]


@torch.no_grad()
def branch_outputs(model: nn.Module, inputs: Tensor, module: str) -> dict[str, Tensor]:
    """The four branch outputs of one Inception module: {'branch1': (N, C1, H, W), ...}."""
    outputs = activations(model, inputs, [f"{module}.{b}" for b in BRANCHES])
    return {b: outputs[f"{module}.{b}"] for b in BRANCHES}


@torch.no_grad()
def branch_energy(model: nn.Module, inputs: Tensor, *, batch_size: int = 64) -> pd.DataFrame:
    """Share of each module's activation energy that each of its four branches carries.

    A branch's energy is its mean squared activation, averaged over images and positions and
    summed over its channels: what it adds to the squared length of the module's output at a
    typical position. `share` sums to 1 within each module; `channel_share` is the branch's
    share of the module's channels, for comparison (equal shares mean an average channel).
    """
    modules = inception_modules(model)
    names = [f"{m}.{b}" for m in modules for b in BRANCHES]
    totals = dict.fromkeys(names, 0.0)
    for batch in _batches(inputs, batch_size):
        for name, out in activations(model, batch, names).items():
            # Mean over positions, summed over channels and images; divided by N below.
            totals[name] += out.double().square().mean(dim=(2, 3)).sum().item()
    rows = []
    for module in modules:
        for b in BRANCHES:
            branch = model.get_submodule(f"{module}.{b}")
            channels = [m for m in branch.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
            rows.append(dict(module=module, branch=b, path=branch_path(branch),
                             channels=channels, energy=totals[f"{module}.{b}"] / len(inputs)))
    table = pd.DataFrame(rows)
    by_module = table.groupby("module", sort=False)
    table["share"] = table.energy / by_module.energy.transform("sum")
    table["channel_share"] = table.channels / by_module.channels.transform("sum")
    return table


def filter_statistics(weight: Tensor) -> pd.DataFrame:
    """For each first-layer filter (out, 3, k, k): how much of it is flat colour, how much grey.

    `flat` is the share of the filter's squared weights in its spatial mean (1: a uniform
    colour blob, 0: no net response to a uniform patch, as for an edge); `grey` the share in
    its mean over colour channels (1: colour-blind, 0: pure colour opponency such as red minus
    green). BatchNorm follows the convolution, so only the filter's shape matters, not its scale.
    """
    w = weight.detach().double().cpu()
    total = w.square().sum(dim=(1, 2, 3)).clamp(min=1e-12)
    flat = w.mean(dim=(2, 3), keepdim=True).expand_as(w).square().sum(dim=(1, 2, 3)) / total
    grey = w.mean(dim=1, keepdim=True).expand_as(w).square().sum(dim=(1, 2, 3)) / total
    return pd.DataFrame({"flat": flat.numpy(), "grey": grey.numpy()})


# ---------------------------------------------------------------------------------------------
# Dataset examples and the feature space.


@torch.no_grad()
def channel_means(model: nn.Module, inputs: Tensor, layer: str, *,
                  batch_size: int = 64) -> Tensor:
    """The spatially averaged activation of every channel of `layer` for every image: (N, C)."""
    return torch.cat([activations(model, batch, [layer])[layer].float().mean(dim=(2, 3))
                      for batch in _batches(inputs, batch_size)])


def top_activating(model: nn.Module, inputs: Tensor, layer: str, *,
                   channels: Sequence[int] | None = None, k: int = 9,
                   batch_size: int = 64) -> Tensor:
    """Indices (len(channels), k) of the k images that drive each channel of `layer` hardest.

    "Hardest" is the largest spatially averaged activation, most active first. All channels
    when `channels` is None. These are dataset examples, the cheap half of feature
    visualization: they show what a channel responds to among real images, not what it wants.
    """
    if not 1 <= k <= len(inputs):
        raise ValueError(f"k must lie in [1, {len(inputs)}] for {len(inputs)} images, got {k}")
    means = channel_means(model, inputs, layer, batch_size=batch_size)
    if channels is not None:
        means = means[:, list(channels)]
    return means.topk(k, dim=0).indices.T.contiguous()


@torch.no_grad()
def pooled_features(model: nn.Module, inputs: Tensor, *, layer: str = "avgpool",
                    batch_size: int = 64) -> Tensor:
    """What the classifier sees: the globally pooled features of each image, (N, C) float32.

    For GoogLeNet the logits in eval mode are `model.fc(features)` (dropout is then the identity).
    """
    return torch.cat([activations(model, batch, [layer])[layer].float().flatten(1)
                      for batch in _batches(inputs, batch_size)])


def pca_2d(features: Tensor, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The features projected on their two principal axes, and each axis' share of the variance.

    torch.pca_lowrank is randomised; a few extra components and power iterations make its first
    two exact enough, and `seed` makes them repeat. The sign of each axis is arbitrary.
    """
    x = features.double()
    x = x - x.mean(dim=0)
    q = min(6, *x.shape)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        _, s, v = torch.pca_lowrank(x, q=q, center=False, niter=6)
    total = x.square().sum().clamp(min=1e-12)
    return (x @ v[:, :2]).float(), (s[:2].square() / total).float()


def class_neighbours(features: Tensor, labels: Tensor, num_classes: int, *, k: int = 10,
                     chunk: int = 1024) -> Tensor:
    """(C, C) counts: row = an image's class, column = the classes of its k nearest neighbours.

    Neighbours by cosine similarity of the features, the image itself excluded. Off-diagonal
    mass marks classes whose images lie among each other in the feature space.
    """
    if not 1 <= k < len(features):
        raise ValueError(f"k must lie in [1, {len(features) - 1}], got {k}")
    x = F.normalize(features.float(), dim=1)
    labels = torch.as_tensor(labels).long()
    counts = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for start in range(0, len(x), chunk):  # a chunk of rows of the N x N similarity at a time
        sim = x[start:start + chunk] @ x.T
        rows = torch.arange(len(sim))
        sim[rows, rows + start] = -float("inf")  # not its own neighbour
        near = labels[sim.topk(k, dim=1).indices]  # (chunk, k) neighbour classes
        own = labels[start:start + chunk, None].expand_as(near)
        counts += torch.bincount((own * num_classes + near).flatten(),
                                 minlength=num_classes ** 2).view(num_classes, num_classes)
    return counts


# ---------------------------------------------------------------------------------------------
# Where the network looks: Grad-CAM and occlusion (captum), and comparing maps.


def _captum_attr():
    """captum.attr, imported late (evaluate imports this module and should not pay for it)."""
    with warnings.catch_warnings():
        # captum imports tqdm.auto, which warns in a Jupyter without ipywidgets; we draw no bars.
        warnings.filterwarnings("ignore", message="IProgress not found")
        import captum.attr
    return captum.attr


def grad_cam(model: nn.Module, inputs: Tensor, targets: Tensor, layer: str, *,
             batch_size: int = 64) -> Tensor:
    """Grad-CAM maps (N, H, W) of `targets` at `layer`, upsampled to the input size, >= 0.

    Selvaraju et al. (2017): weight each channel of the layer by the mean gradient of the class
    score over its positions, sum, and keep the positive part. The map is as coarse as the
    layer (4x4 for the last module of googlenet_cifar_small); the upsampling only smooths it.
    """
    attr = _captum_attr()
    targets = torch.as_tensor(targets).long()
    maps = []
    with eval_mode(model):
        cam = attr.LayerGradCam(model, _submodule(model, layer))
        for start in range(0, len(inputs), batch_size):
            x = inputs[start:start + batch_size]
            m = cam.attribute(x, target=targets[start:start + len(x)], relu_attributions=True)
            m = attr.LayerAttribution.interpolate(m.detach(), tuple(x.shape[-2:]),
                                                  interpolate_mode="bilinear")
            maps.append(m[:, 0].clamp(min=0))  # bilinear weights are >= 0; clamp guards rounding
    return torch.cat(maps)


def occlusion(model: nn.Module, inputs: Tensor, targets: Tensor, *, window: int = 8,
              stride: int = 4, batch_size: int = 64) -> Tensor:
    """Occlusion maps (N, H, W): how much the class score drops when a square covers each pixel.

    Zeiler & Fergus (2014), through captum's Occlusion: a `window`-pixel square of zeros (in
    normalised units: the training mean colour) slides with `stride`; each pixel gets the mean
    score drop of the windows covering it. Positive means the covered region supported the
    class. No gradients: a second opinion that does not share Grad-CAM's assumptions.
    """
    targets = torch.as_tensor(targets).long()
    channels = inputs.shape[1]
    maps = []
    with eval_mode(model), torch.no_grad():
        occluder = _captum_attr().Occlusion(model)
        for start in range(0, len(inputs), batch_size):
            x = inputs[start:start + batch_size]
            # Several occluded copies per forward pass, so each pass holds ~batch_size images.
            per_pass = max(1, batch_size // len(x))
            a = occluder.attribute(x, sliding_window_shapes=(channels, window, window),
                                   strides=(channels, stride, stride), baselines=0.0,
                                   target=targets[start:start + len(x)],
                                   perturbations_per_eval=per_pass)
            maps.append(a.mean(dim=1))  # every channel was covered together: equal values
    return torch.cat(maps)


def _ranks(x: Tensor) -> Tensor:
    """Ranks 1..n of a 1-D tensor, tied values sharing their mean rank (as Spearman needs)."""
    values, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()
    return (last - (counts.double() - 1) / 2)[inverse]


def rank_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Spearman's rank correlation between matching rows of a and b (e.g. two sets of maps).

    Returns one value per row, NaN where a row is constant (an all-zero map ranks nothing).
    """
    a, b = a.flatten(1).double(), b.flatten(1).double()
    if a.shape != b.shape:
        raise ValueError(f"a and b must hold maps of the same shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    ra = torch.stack([_ranks(row) for row in a])
    rb = torch.stack([_ranks(row) for row in b])
    ra, rb = ra - ra.mean(dim=1, keepdim=True), rb - rb.mean(dim=1, keepdim=True)
    denominator = (ra.square().sum(dim=1) * rb.square().sum(dim=1)).sqrt()
    return (ra * rb).sum(dim=1) / denominator  # 0 / 0 = NaN for a constant row


# ---------------------------------------------------------------------------------------------
# Receptive fields: theoretical (from the layers) and effective (from gradients).


def _geometry(layer: nn.Module) -> tuple[int, int] | None:
    """(kernel, stride) of a layer that changes how far a unit sees; None for the others."""
    if isinstance(layer, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
        k, s = layer.kernel_size, layer.stride
        k, s = (k[0] if isinstance(k, tuple) else k), (s[0] if isinstance(s, tuple) else s)
        dilation = getattr(layer, "dilation", 1)
        d = dilation[0] if isinstance(dilation, tuple) else dilation
        return d * (k - 1) + 1, s
    return None


def _steps(module: nn.Module, prefix: str) -> list[tuple[str, int, int]]:
    """(name, kernel, stride) of the spatial layers a signal crosses, widest branch of a module."""
    geometry = _geometry(module)
    if geometry is not None:
        return [(prefix, *geometry)]
    if isinstance(module, Inception):  # parallel branches, all stride 1: the widest reaches most
        paths = [_steps(getattr(module, b), f"{prefix}.{b}") for b in BRANCHES]
        return max(paths, key=lambda path: sum(k - 1 for _, k, _ in path))
    return [step for name, child in module.named_children()
            for step in _steps(child, f"{prefix}.{name}")]


def widest_path(model: nn.Module, image_size: int = 32) -> list[tuple[str, int, int]]:
    """(layer, kernel, stride) along the path that sees farthest, in forward order.

    The order of the top-level layers is traced from one blank image (GoogLeNet registers its
    pools after the modules they sit between); inside an Inception module the branch with the
    largest kernels is followed.
    """
    first = next(p for p in model.parameters() if p.dim() == 4)
    blank = torch.zeros(1, first.shape[1], image_size, image_size, device=first.device)
    names = [name for name, _ in model.named_children()]
    with torch.no_grad(), eval_mode(model), capture(model, names) as ran:
        model(blank)
    return [step for name in ran for step in _steps(model.get_submodule(name), name)]


def receptive_fields(path: Sequence[tuple[str, int, int]]) -> pd.DataFrame:
    """Receptive field `rf` and `jump` after each (layer, kernel, stride) of `path`.

    r <- r + (k - 1) j and j <- j s, from r = j = 1 at the input (notebook 03 derives it):
    a kernel widens the field by (k - 1) steps of the current map, and each stride makes
    every later step longer.
    """
    rows, rf, jump = [], 1, 1
    for layer, kernel, stride in path:
        rf, jump = rf + (kernel - 1) * jump, jump * stride
        rows.append(dict(layer=layer, kernel=kernel, stride=stride, rf=rf, jump=jump))
    return pd.DataFrame(rows)


def theoretical_receptive_field(model: nn.Module, module: str, image_size: int = 32) -> int:
    """The receptive field (pixels) of one unit of `module`'s output, along the widest path."""
    table = receptive_fields(widest_path(model, image_size))
    inside = table.layer.eq(module) | table.layer.str.startswith(module + ".")
    if not inside.any():
        raise ValueError(f"no spatial layer of {module!r} on the widest path of the model")
    return int(table.rf[inside].iloc[-1])


def effective_receptive_field(model: nn.Module, inputs: Tensor, module: str, *,
                              batch_size: int = 64) -> Tensor:
    """How strongly each input pixel moves the centre unit of `module`: (H, W), summing to 1.

    Luo et al. (2016): the gradient of the centre position of the module's output (all its
    channels summed; index side // 2 on an even side) with respect to the input, its magnitude
    averaged over images and colour channels. Pixels outside the theoretical receptive field
    get exactly zero.
    """
    total = torch.zeros(inputs.shape[-2:], dtype=torch.float64, device=inputs.device)
    for batch in _batches(inputs, batch_size):
        x = batch.detach().clone().requires_grad_(True)
        out = activations(model, x, [module])[module]
        centre = out[:, :, out.shape[2] // 2, out.shape[3] // 2].sum()
        (grad,) = torch.autograd.grad(centre, x)
        total += grad.abs().double().sum(dim=(0, 1))
    return (total / total.sum().clamp(min=1e-300)).float().cpu()


def erf_extent(erf: Tensor, mass: float = 0.95) -> int:
    """Side (pixels) of the smallest square, anywhere in the map, holding `mass` of its total.

    Any square that holds the whole support is no larger than the support's bounding box, so
    the extent never exceeds the theoretical receptive field.
    """
    if not 0 < mass <= 1:
        raise ValueError(f"mass must lie in (0, 1], got {mass}")
    m = erf.double()[None, None] / erf.double().sum()
    for side in range(1, max(m.shape[-2:]) + 1):
        k = (min(side, m.shape[-2]), min(side, m.shape[-1]))
        held = F.avg_pool2d(m, k, stride=1) * (k[0] * k[1])  # mass of every window of this size
        if held.max().item() >= mass - 1e-9:
            return side
    return max(m.shape[-2:])
