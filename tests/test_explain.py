"""inception.explain: hooks clean up, and each measurement gives the answer a worked case knows."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from inception import explain
from inception.evaluate import silence_branch
from inception.model import GoogLeNet, build_model

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def tiny():
    """A GoogLeNet with every layer of the paper, 8-channel widths and the cifar16 stem."""
    torch.manual_seed(0)
    return GoogLeNet(num_classes=10, aux_logits=False, width=0.05, stem="cifar16").eval()


@pytest.fixture(scope="module")
def inputs():
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


# ---------------------------------------------------------------------------------------------
# Hooks


def test_capture_returns_outputs_in_forward_order_and_removes_its_hooks(tiny, inputs):
    names = ["inception4a", "conv1", "inception3a.branch2"]
    with torch.no_grad(), explain.capture(tiny, names) as seen:
        logits = tiny(inputs)
    assert list(seen) == ["conv1", "inception3a.branch2", "inception4a"]  # the order they ran
    assert seen["inception4a"].shape[:2] == (6, tiny.inception4a.out_channels)
    assert logits.shape == (6, 10) and _hook_count(tiny) == 0


def test_hooks_are_removed_even_when_the_block_raises(tiny, inputs):
    with pytest.raises(RuntimeError, match="boom"), explain.capture(tiny, ["inception3a"]):
        raise RuntimeError("boom")
    with pytest.raises(ValueError, match="valid|Inception modules"), \
            explain.capture(tiny, ["conv1", "inception9z"]):
        pass  # the bad name fails after conv1's hook was registered: it must still go
    assert _hook_count(tiny) == 0
    explain.activations(tiny, inputs, ["inception3a"])  # stops the pass early by raising inside
    assert _hook_count(tiny) == 0


def test_activations_stop_early_but_match_a_full_pass(tiny, inputs):
    with torch.no_grad(), explain.capture(tiny, ["inception3b"]) as full:
        tiny(inputs)
    early = explain.activations(tiny, inputs, ["inception3b"])
    assert torch.equal(early["inception3b"], full["inception3b"])


def test_silence_branch_and_capture_share_the_mechanism_and_compose(tiny, inputs):
    with torch.no_grad(), silence_branch(tiny.inception3a, "branch3"), \
            explain.capture(tiny, ["inception3a", "inception3a.branch3"]) as seen:
        tiny(inputs)
        assert _hook_count(tiny) == 3  # one silencing hook, two capturing ones
    assert not seen["inception3a.branch3"].any()  # what the silenced branch handed on
    widths = [explain.branch_outputs(tiny, inputs, "inception3a")[b].shape[1]
              for b in explain.BRANCHES]
    start = widths[0] + widths[1]
    assert not seen["inception3a"][:, start:start + widths[2]].any()
    assert seen["inception3a"][:, :start].any()
    assert _hook_count(tiny) == 0


def test_explaining_restores_the_models_training_mode(inputs):
    torch.manual_seed(0)
    model = GoogLeNet(num_classes=10, aux_logits=True, width=0.05, stem="cifar16").train()
    model.inception4b.eval()  # a mixed state must come back as it was
    explain.branch_energy(model, inputs[:2])
    assert model.training and not model.inception4b.training and model.aux1.training


# ---------------------------------------------------------------------------------------------
# Inside the modules, dataset examples, feature space


def test_branch_energy_shares_sum_to_one_per_module_and_match_a_direct_computation(tiny, inputs):
    table = explain.branch_energy(tiny, inputs, batch_size=4)  # two batches, unequal sizes
    assert list(table.module.unique()) == explain.inception_modules(tiny) and len(table) == 36
    assert torch.allclose(torch.tensor(table.groupby("module").share.sum().to_numpy()),
                          torch.ones(9, dtype=torch.float64))
    out = explain.branch_outputs(tiny, inputs, "inception4c")["branch2"]
    direct = out.double().square().mean(dim=(2, 3)).sum(dim=1).mean().item()
    row = table[(table.module == "inception4c") & (table.branch == "branch2")].iloc[0]
    assert row.energy == pytest.approx(direct, rel=1e-9)
    assert row.path == "1x1→3x3" and row.channels == out.shape[1]


def test_top_activating_returns_the_images_with_the_largest_channel_means():
    model = nn.Sequential(OrderedDict(layer=nn.Identity())).eval()
    images = torch.zeros(12, 3, 4, 4)
    images[:, 1] = torch.arange(12.0)[torch.randperm(12, generator=torch.Generator()
                                                      .manual_seed(0))].view(12, 1, 1)
    images[7, 1, 0, 0] = 1000.0  # one hot pixel: a large *mean*, whatever its value elsewhere
    top = explain.top_activating(model, images, "layer", channels=[1, 2], k=3, batch_size=5)
    means = images[:, 1].mean(dim=(1, 2))
    assert top.shape == (2, 3)
    assert top[0].tolist() == means.argsort(descending=True)[:3].tolist()
    assert top[0, 0].item() == 7


def test_pooled_features_are_what_the_classifier_reads(tiny, inputs):
    features = explain.pooled_features(tiny, inputs, batch_size=4)
    assert features.shape == (6, tiny.fc.in_features)
    with torch.no_grad():
        assert torch.allclose(tiny.fc(features), tiny(inputs), atol=1e-5)


def test_pca_2d_recovers_points_that_lie_in_a_plane():
    g = torch.Generator().manual_seed(0)
    flat = torch.randn(50, 2, generator=g) * torch.tensor([3.0, 1.0])
    basis = torch.linalg.qr(torch.randn(10, 2, generator=g)).Q  # a plane in 10 dimensions
    points, explained = explain.pca_2d(flat @ basis.T + 5.0)
    assert explained.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert explained[0] > explained[1]  # the stretched axis first
    assert torch.allclose(torch.cdist(points, points), torch.cdist(flat, flat), atol=1e-3)


def test_class_neighbours_counts_which_classes_lie_among_each_other():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])  # 1, 2 mixed
    labels = torch.arange(3).repeat_interleave(20)
    features = centres[labels] + 0.01 * torch.randn(60, 3, generator=g)
    counts = explain.class_neighbours(features, labels, 3, k=5, chunk=7)
    assert counts.sum().item() == 60 * 5 and counts.sum(dim=1).tolist() == [100, 100, 100]
    assert counts[0, 0] == 100  # class 0 stands apart
    assert counts[1, 2] > 0 and counts[2, 1] > 0  # classes 1 and 2 overlap


def test_filter_statistics_tells_blobs_from_edges_and_grey_from_colour():
    blob = torch.zeros(3, 3, 3)
    blob[0] = 1.0  # a flat red patch
    edge = torch.tensor([[-1.0, 0.0, 1.0]] * 3).expand(3, 3, 3)  # a grey vertical edge
    stats = explain.filter_statistics(torch.stack([blob, edge]))
    assert stats.flat.tolist() == pytest.approx([1.0, 0.0])
    assert stats.grey.tolist() == pytest.approx([1 / 3, 1.0])


# ---------------------------------------------------------------------------------------------
# Grad-CAM and occlusion


def test_grad_cam_maps_have_the_inputs_size_and_are_non_negative(tiny, inputs):
    targets = torch.tensor([0, 1, 2, 3, 4, 5])
    maps = explain.grad_cam(tiny, inputs, targets, "inception5b", batch_size=4)
    assert maps.shape == (6, 32, 32)
    assert (maps >= 0).all() and maps.isfinite().all()
    assert _hook_count(tiny) == 0


def _patch_detector() -> nn.Module:
    """Class 1's score is the pooled response of a detector of bright red; class 0 its negative.

    The answer is known: only a bright red patch makes class 1 likely, so both Grad-CAM and
    occlusion should point at the patch and nowhere else.
    """
    detector = nn.Conv2d(3, 1, 3, padding=1)
    head = nn.Linear(1, 2)
    with torch.no_grad():
        detector.weight.zero_()
        detector.weight[0, 0] = 1 / 9  # the local mean of the red channel
        detector.bias.fill_(-0.5)      # background noise stays below the threshold
        head.weight.copy_(torch.tensor([[-4.0], [4.0]]))
        head.bias.zero_()
    return nn.Sequential(OrderedDict(detector=detector, relu=nn.ReLU(),
                                     pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(),
                                     fc=head)).eval()


def _images_with_red_patches(n: int, side: int = 24, patch: int = 6):
    g = torch.Generator().manual_seed(0)
    images = 0.1 * torch.randn(n, 3, side, side, generator=g)
    corners = torch.randint(0, side - patch + 1, (n, 2), generator=g)
    for i, (y, x) in enumerate(corners.tolist()):
        images[i, 0, y:y + patch, x:x + patch] += 2.0
    return images, corners


def _occlude(images: torch.Tensor, corners: torch.Tensor, size: int) -> torch.Tensor:
    out = images.clone()
    for i, (y, x) in enumerate(corners.tolist()):
        out[i, :, y:y + size, x:x + size] = 0.0
    return out


def test_occluding_where_grad_cam_looks_costs_more_than_occluding_elsewhere():
    model, size = _patch_detector(), 6
    images, _ = _images_with_red_patches(8)
    targets = torch.ones(8, dtype=torch.long)
    maps = explain.grad_cam(model, images, targets, "detector")
    # The size x size window holding the most Grad-CAM mass, against a random window.
    mass = nn.functional.avg_pool2d(maps[:, None], size, stride=1)[:, 0]
    best = mass.flatten(1).argmax(dim=1)
    marked = torch.stack([best // mass.shape[-1], best % mass.shape[-1]], dim=1)
    elsewhere = torch.randint(0, 24 - size + 1, (8, 2), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        score = model(images)[:, 1]
        drop_marked = score - model(_occlude(images, marked, size))[:, 1]
        drop_random = score - model(_occlude(images, elsewhere, size))[:, 1]
    assert (drop_marked > 0).all()
    assert (drop_marked > drop_random).float().mean() >= 7 / 8
    assert drop_marked.mean() > 3 * drop_random.mean().clamp(min=1e-6)


def test_occlusion_map_peaks_inside_the_planted_patch():
    model = _patch_detector()
    images, corners = _images_with_red_patches(4)
    maps = explain.occlusion(model, images, torch.ones(4, dtype=torch.long), window=4, stride=2,
                             batch_size=8)
    assert maps.shape == (4, 24, 24)
    peaks = maps.flatten(1).argmax(dim=1)
    for (y, x), peak in zip(corners.tolist(), peaks.tolist(), strict=True):
        assert y <= peak // 24 < y + 6 and x <= peak % 24 < x + 6


def test_rank_correlation_of_a_hand_worked_case_with_ties():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 2.0], [5.0, 5.0, 5.0, 5.0]])
    b = torch.tensor([[10.0, 20.0, 30.0, 40.0], [2.0, 1.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    rho = explain.rank_correlation(a, b)
    # Row 2: ranks (1.5, 1.5, 3, 4) against (2, 1, 3, 4): covariance 4.5 over sqrt(4.5 * 5).
    assert rho[0].item() == pytest.approx(1.0)
    assert rho[1].item() == pytest.approx(4.5 / (4.5 * 5) ** 0.5)
    assert rho[2].isnan()  # a constant map has no ranking
    assert explain.rank_correlation(a[:1], -a[:1]).item() == pytest.approx(-1.0)


# ---------------------------------------------------------------------------------------------
# Receptive fields


def test_erf_of_one_3x3_convolution_has_exactly_3x3_support():
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3, padding=1))).eval()
    erf = explain.effective_receptive_field(model, torch.randn(5, 3, 9, 9), "conv")
    support = (erf > 0).nonzero()
    assert len(support) == 9
    assert support.min(dim=0).values.tolist() == [3, 3]  # centred on the centre unit (4, 4)
    assert support.max(dim=0).values.tolist() == [5, 5]
    assert erf.sum().item() == pytest.approx(1.0)
    assert explain.erf_extent(erf, mass=1.0) == 3


def test_measured_receptive_field_of_a_conv_stack_equals_the_analytic_size():
    # 3x3, then 3x3 stride 2, then 5x5: 1 + 2 + 2 + 4 * 2 = 13 pixels.
    stack = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                          nn.Conv2d(4, 2, 5, padding=2)).eval()
    with torch.no_grad():
        for conv in stack:
            conv.weight.fill_(1.0)  # positive weights: no gradient can cancel to zero
    erf = explain.effective_receptive_field(stack, torch.randn(3, 3, 32, 32), "2")
    rows, cols = (erf > 0).any(dim=1).nonzero(), (erf > 0).any(dim=0).nonzero()
    assert rows.max() - rows.min() + 1 == 13 and cols.max() - cols.min() + 1 == 13
    assert explain.theoretical_receptive_field(stack, "2") == 13
    assert explain.erf_extent(erf, mass=1.0) == 13


def test_erf_extent_finds_the_smallest_square_holding_the_mass():
    erf = torch.zeros(10, 10)
    erf[2:7, 3:8] = 1.0  # a uniform 5x5 block
    assert explain.erf_extent(erf, mass=1.0) == 5
    assert explain.erf_extent(erf, mass=0.6) == 4  # 16 of 25 pixels = 64%
    erf[9, 9] = 0.01  # a faint far pixel is outside 95% but inside 100%
    assert explain.erf_extent(erf, mass=0.95) == 5 and explain.erf_extent(erf, mass=1.0) == 8


def test_theoretical_receptive_fields_match_notebook_03s_hand_computation():
    # Notebook 03 follows the widest path by hand: googlenet_cifar_small first sees more than
    # 32 pixels at inception4a (45) and ends at 177; the cifar stem ends at 87 and torchvision's
    # 3x3 "5x5" branch at 97 (its exercises 5 and 1).
    small = build_model("googlenet_cifar_small", aux_logits=False, width=0.05).eval()
    assert explain.theoretical_receptive_field(small, "inception4a") == 45
    assert explain.theoretical_receptive_field(small, "inception5b") == 177
    cifar = build_model("googlenet_cifar", aux_logits=False, width=0.05).eval()
    assert explain.theoretical_receptive_field(cifar, "inception5b") == 87
    narrow = build_model("googlenet_cifar_small", aux_logits=False, width=0.05,
                         five_by_five=False).eval()
    assert explain.theoretical_receptive_field(narrow, "inception5b") == 97


def test_erf_extent_of_a_module_never_exceeds_its_theoretical_receptive_field(tiny, inputs):
    for module in ("inception3a", "inception3b"):
        rf = explain.theoretical_receptive_field(tiny, module)
        erf = explain.effective_receptive_field(tiny, inputs, module, batch_size=4)
        assert 1 < explain.erf_extent(erf, mass=0.95) <= explain.erf_extent(erf, mass=1.0) <= rf
        rows = (erf > 0).any(dim=1).nonzero()
        assert rows.max() - rows.min() + 1 <= rf  # no gradient from outside the field
    assert _hook_count(tiny) == 0


# ---------------------------------------------------------------------------------------------
# The figures of notebook 06 render from these measurements


def test_explain_figures_render_titled_with_their_source(tiny, inputs):
    import io

    import matplotlib

    matplotlib.use("Agg")
    from inception import plots

    source, classes = "synthetic stand-in", [f"class {i}" for i in range(10)]
    images = (inputs.clamp(-2, 2) * 60 + 128).to(torch.uint8)
    labels, preds = torch.arange(6), torch.tensor([0, 1, 2, 0, 0, 0])
    energy = explain.branch_energy(tiny, inputs)
    erf = explain.effective_receptive_field(tiny, inputs, "inception3a")
    cams = explain.grad_cam(tiny, inputs, preds, "inception5b")
    points, explained = explain.pca_2d(explain.pooled_features(tiny, inputs))
    figures = [
        plots.first_layer_filters(tiny.conv1.conv.weight, source=source),
        plots.branch_feature_maps(images[:2], explain.branch_outputs(tiny, inputs[:2],
                                                                     "inception3a"),
                                  source=source),
        plots.branch_energy_chart(energy, source=source),
        plots.top_activating_grid(images, explain.top_activating(tiny, inputs, "inception5b",
                                                                 channels=[0, 1], k=3),
                                  [0, 1], labels=labels, classes=classes, layer="inception5b",
                                  source=source),
        plots.attribution_overlays(images, {"Grad-CAM": cams, "signed": cams - cams.mean()},
                                   labels=labels, preds=preds, classes=classes, source=source),
        plots.erf_heatmaps({"3a": erf}, rfs={"3a": 17}, extents={"3a": explain.erf_extent(erf)},
                           source=source),
        plots.feature_scatter(points, labels, classes, explained=explained, source=source),
    ]
    for fig in figures:
        assert source in fig.get_suptitle()
        fig.savefig(io.BytesIO(), format="png", dpi=30)  # layout and drawing errors surface here
        for ax in fig.axes:
            if ax.axison and (len(ax.get_xticks()) and len(ax.get_yticks())):
                assert ax.get_xlabel() and ax.get_ylabel(), fig.get_suptitle()
