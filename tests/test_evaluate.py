"""inception.evaluate against hand-worked examples and independent recomputation."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inception.data import load_cifar
from inception.evaluate import (
    BRANCHES,
    Predictions,
    accuracy,
    branch_ablation,
    calibration,
    confusion_matrix,
    evaluate,
    fit_temperature,
    misclassified,
    most_confused,
    per_class_report,
    predict,
    silence_branch,
    with_temperature,
)
from inception.model import Inception, build_model

CLASSES4 = ["a", "b", "c", "d"]
# Ten hand-made predictions over four classes; class "d" is never predicted.
LABELS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
PREDS = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0, 2, 2])


def _tiny_model() -> nn.Module:
    """Conv, BatchNorm and dropout: eval mode and a horizontal flip both change its output."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Dropout(0.5), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(24, 10))
    model[1].running_mean.uniform_(-0.5, 0.5)  # non-trivial statistics, so eval mode matters
    return model


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def synthetic():
    return load_cifar(source="synthetic", train_limit=64, eval_limit=24)


def test_confusion_matrix_matches_hand_count():
    # Rows = true class, columns = predicted. True a: a,a,b; true b: b,c; true c: c,c,a,c; d: c.
    expected = torch.tensor([[2, 1, 0, 0],
                             [0, 1, 1, 0],
                             [1, 0, 3, 0],
                             [0, 0, 1, 0]])
    cm = confusion_matrix(LABELS, PREDS, 4)
    assert cm.dtype == torch.int64 and torch.equal(cm, expected)


def test_per_class_report_matches_hand_worked_precision_recall_f1():
    report = per_class_report(confusion_matrix(LABELS, PREDS, 4), CLASSES4)
    # Column sums (times predicted): a 3, b 2, c 5, d 0. Row sums (support): 3, 2, 4, 1.
    # precision = diag / column: a 2/3, b 1/2, c 3/5, d 0 (never predicted: 0, not NaN)
    # recall    = diag / row:    a 2/3, b 1/2, c 3/4, d 0/1
    # f1 = 2pr/(p+r): a 2/3, b 1/2, c 2*(3/5*3/4)/(3/5+3/4) = 0.9/1.35 = 2/3, d 0
    expected = {
        "a": (2 / 3, 2 / 3, 2 / 3, 3),
        "b": (1 / 2, 1 / 2, 1 / 2, 2),
        "c": (3 / 5, 3 / 4, 2 / 3, 4),
        "d": (0.0, 0.0, 0.0, 1),
        # macro: precision (2/3+1/2+3/5+0)/4 = 53/120, recall (2/3+1/2+3/4+0)/4 = 23/48,
        # f1 (2/3+1/2+2/3+0)/4 = 11/24; support = 3+2+4+1 = 10
        "macro avg": (53 / 120, 23 / 48, 11 / 24, 10),
    }
    assert list(report.index) == list(expected)
    assert list(report.columns) == ["precision", "recall", "f1", "support"]
    assert not report.isna().any().any()
    for name, (p, r, f1, support) in expected.items():
        row = report.loc[name]
        assert row["precision"] == pytest.approx(p)
        assert row["recall"] == pytest.approx(r)
        assert row["f1"] == pytest.approx(f1)
        assert row["support"] == support


def test_confusion_matrix_rejects_bad_inputs_clearly():
    with pytest.raises(ValueError, match="same length"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        confusion_matrix(torch.tensor([0, 2]), torch.tensor([0, 1]), 2)
    with pytest.raises(ValueError, match="preds must lie"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([-1, 1]), 2)
    with pytest.raises(ValueError, match="integer class indices"):
        confusion_matrix(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), 2)


def test_most_confused_lists_largest_off_diagonal_cells_with_row_rates():
    classes = ["cat", "dog", "frog"]
    cm = torch.tensor([[50, 3, 7],
                       [10, 40, 0],
                       [1, 2, 60]])
    table = most_confused(cm, classes, k=3)
    # Row totals: cat 60, dog 50, frog 63. Largest errors: dog→cat 10 (10/50),
    # cat→frog 7 (7/60), cat→dog 3 (3/60).
    assert table.to_dict("list") == {
        "true": ["dog", "cat", "cat"], "predicted": ["cat", "frog", "dog"],
        "count": [10, 7, 3], "rate": pytest.approx([0.2, 7 / 60, 0.05])}
    # Only five off-diagonal cells are non-zero; an empty cell is not a confusion.
    assert len(most_confused(cm, classes, k=10)) == 5


def test_misclassified_returns_most_confident_mistakes_first():
    predictions = Predictions(
        labels=torch.tensor([0, 1, 2, 0, 1]),
        probs=torch.tensor([[0.90, 0.05, 0.05],    # right
                            [0.70, 0.20, 0.10],    # wrong: b taken for a at 70%
                            [0.10, 0.30, 0.60],    # right
                            [0.05, 0.05, 0.90],    # wrong: a taken for c at 90%
                            [0.10, 0.40, 0.50]]))  # wrong: b taken for c at 50%
    table = misclassified(predictions, ["a", "b", "c"], k=2)
    assert table.to_dict("list") == {"index": [3, 1], "true": ["a", "b"],
                                     "predicted": ["c", "a"],
                                     "confidence": pytest.approx([0.9, 0.7])}
    assert list(misclassified(predictions, ["a", "b", "c"])["index"]) == [3, 1, 4]
    assert accuracy(predictions) == pytest.approx(2 / 5)


def test_predict_tta_is_mean_of_image_and_mirror_softmax():
    model = _tiny_model()
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 10, (10,))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    # Independent reference: normalise by hand, one eval-mode pass over all ten images.
    x = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) \
        / torch.tensor(std).view(1, 3, 1, 1)
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        plain = F.softmax(reference(x), dim=1)
        mirrored = F.softmax(reference(x.flip(3)), dim=1)

    kw = dict(mean=mean, std=std, batch_size=4, device="cpu", precision="fp32")  # 4+4+2
    with_tta = predict(model, images, labels, tta=True, **kw)
    without = predict(model, images, labels, **kw)
    torch.testing.assert_close(with_tta.probs, (plain + mirrored) / 2)
    torch.testing.assert_close(without.probs, plain)
    assert with_tta.probs.dtype == torch.float32 and with_tta.labels.dtype == torch.int64
    assert torch.equal(with_tta.labels, labels)


def test_predict_restores_each_submodules_training_mode():
    model = _tiny_model().train()
    model[1].eval()  # a frozen BatchNorm inside a training model must stay frozen
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    predict(model, images, torch.zeros(4, dtype=torch.long), mean=(0.5,) * 3, std=(0.25,) * 3,
            device="cpu")
    assert model.training and model[3].training and not model[1].training
    model.eval()
    predict(model, images, torch.zeros(4, dtype=torch.long), mean=(0.5,) * 3, std=(0.25,) * 3,
            device="cpu")
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("channels", [1, 4])
def test_predict_names_images_that_are_not_rgb(channels):
    """Grey or RGBA images would otherwise fail deep in the loader, about the mean."""
    from inception.errors import ModelInputError
    from inception.model import build_model
    model = build_model("googlenet_cifar_small", width=0.125, aux_logits=False)
    images = torch.zeros(2, channels, 32, 32, dtype=torch.uint8)
    with pytest.raises(ModelInputError, match=rf"images with {channels} channel\(s\) and a mean "
                                              r"of 3 value\(s\) for a model of 3 input channels: "
                                              "convert the images to RGB"):
        predict(model, images, torch.zeros(2, dtype=torch.long), mean=(0.5,) * 3,
                std=(0.25,) * 3, device="cpu")


def test_evaluate_numbers_agree_with_each_other_on_synthetic_data(synthetic):
    report = evaluate(_tiny_model(), synthetic, "val", tta=True, batch_size=10, device="cpu")
    n = len(synthetic.val_labels)
    assert report.confusion.sum() == n
    assert report.accuracy == pytest.approx(report.confusion.trace().item() / n)
    correct = (report.predictions.preds == synthetic.val_labels).sum().item()
    assert report.accuracy == pytest.approx(correct / n)
    assert report.report.loc["macro avg", "support"] == n
    assert report.report["support"].iloc[:-1].tolist() == torch.bincount(
        synthetic.val_labels, minlength=10).tolist()
    assert report.summary().startswith("val accuracy ")
    assert f"({n} images, flip TTA)" in report.summary()
    assert "synthetic" in report.summary() and "synthetic" in report.source


def _small_googlenet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("googlenet_cifar_small", aux_logits=False).eval()


def test_silenced_branch_outputs_zeros_only_in_its_channel_slice():
    torch.manual_seed(0)
    module = Inception(16, 8, 4, 8, 4, 8, 8).eval()  # branch widths 8, 8, 8, 8
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        before = module(x)
        for i, branch in enumerate(BRANCHES):
            with silence_branch(module, branch):
                out = module(x)
            inside = slice(8 * i, 8 * (i + 1))
            assert torch.all(out[:, inside] == 0) and before[:, inside].abs().sum() > 0
            rest = torch.ones(32, dtype=torch.bool)
            rest[inside] = False
            torch.testing.assert_close(out[:, rest], before[:, rest])
        torch.testing.assert_close(module(x), before)


def test_silence_branch_removes_its_hook_even_on_error():
    module = Inception(16, 8, 4, 8, 4, 8, 8)
    with pytest.raises(RuntimeError, match="boom"), silence_branch(module, "branch3"):
        raise RuntimeError("boom")
    assert all(not getattr(module, b)._forward_hooks for b in BRANCHES)


def test_branch_ablation_matches_zeroing_each_branch_by_its_weights(synthetic):
    model = _small_googlenet()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    table = branch_ablation(model, synthetic, "inception4c", batch_size=12, device="cpu")

    module = model.inception4c
    assert list(table.columns) == ["branch", "channels", "accuracy", "drop"]
    assert list(table["branch"]) == ["none", "1x1", "1x1→3x3", "1x1→5x5", "pool→1x1"]
    assert table["channels"].iloc[1:].sum() == module.out_channels
    assert table["drop"].iloc[0] == 0
    with pytest.raises(ValueError, match="unknown device 'cuda:x'"):  # before any work
        branch_ablation(model, synthetic, "inception4c", device="cuda:x")
    assert table["drop"].tolist() == pytest.approx(
        (table["accuracy"].iloc[0] - table["accuracy"]).tolist())
    # Hooks are gone: the model computes exactly what it did before the ablation.
    assert all(not getattr(module, b)._forward_hooks for b in BRANCHES)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)
    # Independent silencing: a zero BatchNorm scale and shift make the branch's ReLU output 0.
    assert table["accuracy"].iloc[0] == evaluate(model, synthetic, "val", device="cpu").accuracy
    for row, branch in enumerate(BRANCHES, start=1):
        silenced = copy.deepcopy(model)
        last_bn = [m for m in getattr(silenced.inception4c, branch).modules()
                   if isinstance(m, nn.BatchNorm2d)][-1]
        nn.init.zeros_(last_bn.weight), nn.init.zeros_(last_bn.bias)
        expected = evaluate(silenced, synthetic, "val", device="cpu").accuracy
        assert table["accuracy"].iloc[row] == pytest.approx(expected), branch


def test_branch_ablation_rejects_unknown_module_listing_valid_names(synthetic):
    with pytest.raises(ValueError, match="no Inception module 'inception6a'.*inception3a.*"
                                         "inception5b"):
        branch_ablation(_small_googlenet(), synthetic, "inception6a", device="cpu")


def test_calibration_table_reproduces_torchmetrics_ece_and_a_hand_worked_case():
    # Four predictions: confident and right (0.9), unsure and wrong (0.5), confident and wrong
    # (0.8), fairly sure and right (0.7). With 10 bins ([0.5, 0.6) ...) each sits alone, so
    # the ECE by hand is (|1-0.9| + |0-0.5| + |0-0.8| + |1-0.7|) / 4 = 0.425.
    probs = torch.tensor([[0.90, 0.05, 0.05], [0.40, 0.50, 0.10],
                          [0.10, 0.10, 0.80], [0.20, 0.70, 0.10]])
    ece, table = calibration(Predictions(torch.tensor([0, 0, 1, 1]), probs), n_bins=10)
    assert ece == pytest.approx(0.425, abs=1e-6)
    assert table["images"].tolist() == [1, 1, 1, 1]
    assert table["accuracy"].tolist() == [0.0, 1.0, 0.0, 1.0]  # bins 0.5, 0.7, 0.8, 0.9
    # On many random predictions the table's weighted gap is torchmetrics' ECE.
    g = torch.Generator().manual_seed(0)
    probs = torch.randn(2000, 10, generator=g).mul(2).softmax(dim=1)
    labels = torch.randint(0, 10, (2000,), generator=g)
    ece, table = calibration(Predictions(labels, probs), n_bins=15)
    gap = (table.accuracy - table.confidence).abs() * table.images
    assert gap.sum() / table.images.sum() == pytest.approx(ece, abs=1e-6)


def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_at():
    # Labels drawn from softmax(z / 2) while the model reports softmax(z): an overconfident
    # model whose honest temperature is 2 by construction. Likewise 0.5 for an underconfident one.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 10, generator=g, dtype=torch.float64) * 3
    for true_t in (2.0, 0.5):
        labels = torch.multinomial((logits / true_t).softmax(dim=1), 1, generator=g).squeeze(1)
        predictions = Predictions(labels, logits.softmax(dim=1).float())
        fitted = fit_temperature(predictions)
        assert fitted == pytest.approx(true_t, rel=0.05)
        # At the fitted temperature the ECE falls, and the predicted classes do not move.
        scaled = with_temperature(predictions, fitted)
        assert calibration(scaled)[0] < calibration(predictions)[0] / 2
        assert torch.equal(scaled.preds, predictions.preds)


def test_with_temperature_one_is_the_identity_and_bad_temperatures_are_refused():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    same = with_temperature(Predictions(torch.tensor([0, 2]), probs), 1.0)
    assert torch.allclose(same.probs, probs, atol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        with_temperature(Predictions(torch.tensor([0, 2]), probs), 0.0)
