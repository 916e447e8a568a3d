"""inception.model against independent references: torchvision's googlenet and published counts."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision

from inception.model import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    GoogLeNet,
    GoogLeNetOutputs,
    Inception,
    _imagenet_to_unit_range,
    build_model,
    count_parameters,
    fold_batchnorm,
    list_models,
)


def _stage_sizes(model: GoogLeNet, side: int) -> dict[str, int]:
    """Spatial side after the stem and after each stage, traced with forward hooks."""
    sizes: dict[str, int] = {}
    names = {"maxpool2": "stem", "inception3b": "stage3", "inception4e": "stage4",
             "inception5b": "stage5"}
    hooks = [getattr(model, n).register_forward_hook(
        lambda _m, _i, out, key=key: sizes.__setitem__(key, out.shape[-1]))
        for n, key in names.items()]
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model(torch.zeros(1, 3, side, side))
    for h in hooks:
        h.remove()
    return sizes


def test_cifar_stem_keeps_32_16_8_through_stages():
    sizes = _stage_sizes(build_model("googlenet_cifar", width=0.25), 32)
    assert sizes == {"stem": 32, "stage3": 32, "stage4": 16, "stage5": 8}


def test_cifar16_stem_scales_the_paper_28_14_7_to_16_8_4():
    # The paper's stem takes 224 to 28 (1/8); cifar16 takes 32 to 16, and the stages halve on.
    sizes = _stage_sizes(build_model("googlenet_cifar_small"), 32)
    assert sizes == {"stem": 16, "stage3": 16, "stage4": 8, "stage5": 4}


def test_imagenet_stem_matches_paper_table_at_224():
    # Table 1: 28x28 at inception3, 14x14 at inception4, 7x7 at inception5.
    sizes = _stage_sizes(build_model("googlenet", width=0.25), 224)
    assert sizes == {"stem": 28, "stage3": 28, "stage4": 14, "stage5": 7}


def test_imagenet_stem_collapses_32x32_input_to_2x2():
    sizes = _stage_sizes(build_model("googlenet", width=0.25), 32)
    assert sizes == {"stem": 4, "stage3": 4, "stage4": 2, "stage5": 1}


def test_torchvision_published_parameter_count():
    # torchvision documents 6,624,904 parameters for GoogLeNet (1000 classes, no aux heads).
    model = build_model("googlenet", num_classes=1000, aux_logits=False, five_by_five=False)
    assert count_parameters(model) == 6_624_904


def test_registered_parameter_counts():
    counts = {row["name"]: (row["params"], row["params_with_aux"]) for row in list_models()}
    # Hand arithmetic for the paper's 5x5 branches: each 3x3 -> 5x5 swap adds (25-9)*red*out
    # weights, 16 * 23,808 = 380,928 over the nine modules, on top of torchvision's 6,624,904
    # (which with 10 classes instead of 1000 loses 990*1025 in the classifier).
    assert counts["googlenet"][0] == 6_624_904 - 990 * 1025 + 16 * sum(
        red * out for red, out in [(16, 32), (32, 96), (16, 48), (24, 64), (24, 64), (32, 64),
                                   (32, 128), (32, 128), (48, 128)])
    assert counts == {
        "googlenet": (5_991_082, 10_341_566),
        "googlenet_cifar": (5_871_914, 10_222_398),
        "googlenet_cifar_small": (1_510_954, 2_604_350),  # cifar16 stem, width 0.5
    }
    for name, (deployed, _) in counts.items():
        built = count_parameters(build_model(name, aux_logits=False))
        assert built == deployed, name


def test_state_dict_matches_torchvision_keys_and_shapes():
    ours = build_model("googlenet", num_classes=1000, five_by_five=False)
    theirs = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    theirs_shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert ours_shapes == theirs_shapes


def test_torchvision_weights_load_and_give_identical_outputs():
    torch.manual_seed(0)
    theirs = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
    ours = build_model("googlenet", num_classes=1000, five_by_five=False)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)

    ours.eval(), theirs.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=0)

    # Train mode: same aux outputs too (dropout off so the comparison is deterministic).
    ours.train(), theirs.train()
    for m in (*ours.modules(), *theirs.modules()):
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    for field in ("logits", "aux_logits2", "aux_logits1"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field), atol=1e-5, rtol=0)


def test_transform_input_is_torchvisions_and_maps_imagenet_normalisation_to_unit_range():
    theirs = torchvision.models.googlenet(weights=None, aux_logits=False, transform_input=True,
                                          init_weights=False)
    ours = build_model("googlenet", num_classes=1000, aux_logits=False, five_by_five=False,
                       transform_input=True)
    assert ours.arch["transform_input"] and not build_model("googlenet").arch["transform_input"]
    pixels = torch.rand(2, 3, 8, 8)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x = (pixels - mean) / std
    assert torch.equal(_imagenet_to_unit_range(x), theirs._transform_input(x))  # bit for bit
    torch.testing.assert_close(_imagenet_to_unit_range(x), (pixels - 0.5) / 0.5)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="in_channels is 1: use transform_input=False"):
        build_model("googlenet", in_channels=1, transform_input=True)


def test_default_follows_paper_with_5x5_kernels():
    module = build_model("googlenet").inception3a
    assert module.branch3[1].conv.kernel_size == (5, 5)
    assert build_model("googlenet", five_by_five=False).inception3a.branch3[1].conv.kernel_size \
        == (3, 3)


def test_inception_module_concatenates_four_branches():
    module = Inception(192, 64, 96, 128, 16, 32, 32)
    out = module(torch.randn(2, 192, 28, 28))
    assert out.shape == (2, 256, 28, 28) and module.out_channels == 256


def test_aux_heads_only_in_training_mode():
    model = build_model("googlenet_cifar_small")
    x = torch.randn(2, 3, 32, 32)
    model.train()
    out = model(x)
    assert isinstance(out, GoogLeNetOutputs)
    assert [t.shape for t in out] == [(2, 10)] * 3
    model.eval()
    assert isinstance(model(x), torch.Tensor) and model(x).shape == (2, 10)
    no_aux = build_model("googlenet_cifar_small", aux_logits=False).train()
    assert isinstance(no_aux(x), torch.Tensor)
    assert no_aux.aux1 is None and no_aux.aux2 is None


def test_gradient_reaches_every_parameter_with_aux_losses():
    torch.manual_seed(0)
    model = build_model("googlenet_cifar_small").train()
    y = torch.randint(0, 10, (4,))
    out = model(torch.randn(4, 3, 32, 32))
    loss = F.cross_entropy(out.logits, y) + 0.3 * (
        F.cross_entropy(out.aux_logits1, y) + F.cross_entropy(out.aux_logits2, y))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 1, 32, 32), (2, 4, 32, 32), (2, 3, 32)])
def test_bad_input_shape_names_expected_and_received(shape):
    model = build_model("googlenet_cifar_small").eval()
    with pytest.raises(ValueError) as err:
        model(torch.zeros(shape))
    assert "(N, 3, H, W)" in str(err.value) and str(tuple(shape)) in str(err.value)


def test_in_channels_is_respected():
    model = build_model("googlenet_cifar_small", in_channels=1).eval()
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_imagenet_stem_warns_on_small_images_and_not_on_large():
    model = build_model("googlenet", width=0.25).eval()
    with pytest.warns(UserWarning, match="collapse.*2x2.*stem='cifar'"):
        model(torch.zeros(1, 3, 32, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.zeros(1, 3, 96, 96))
        build_model("googlenet_cifar_small").eval()(torch.zeros(1, 3, 32, 32))


def test_seeded_construction_is_deterministic():
    torch.manual_seed(123)
    a = build_model("googlenet_cifar_small").state_dict()
    torch.manual_seed(123)
    b = build_model("googlenet_cifar_small").state_dict()
    torch.manual_seed(124)
    c = build_model("googlenet_cifar_small").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.conv.weight"], c["conv1.conv.weight"])


def test_unknown_names_and_arguments_are_rejected():
    with pytest.raises(ValueError, match="unknown model 'googlenet_tiny'"):
        build_model("googlenet_tiny")
    with pytest.raises(ValueError, match="stem must be one of"):
        build_model("googlenet", stem="resnet")
    for weights in (None, "cifar10"):  # with weights it would otherwise be ignored
        with pytest.raises(ValueError, match="unknown argument.* widht; it takes num_classes, "
                                             "aux_logits, weights and in_channels, dropout"):
            build_model("googlenet_cifar_small", weights=weights, widht=0.25)


def test_fold_batchnorm_computes_the_same_function_and_leaves_the_original_alone():
    torch.manual_seed(0)
    model = build_model("googlenet_cifar_small")
    with torch.no_grad():  # statistics and affine parameters as after training, not the identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model.train()
    state = copy.deepcopy(model.state_dict())

    folded = fold_batchnorm(model)

    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert not folded.training and all(not p.requires_grad for p in folded.parameters())
    assert model.training and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        reference = model.eval()(x)  # the unfolded network, BatchNorm using running statistics
        torch.testing.assert_close(folded(x), reference, rtol=1e-4, atol=1e-4)
