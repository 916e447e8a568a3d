"""inception.plots: every figure renders, is titled with its data source, and labels its axes."""

import ast
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from inception import plots  # noqa: E402
from inception.data import load_cifar, normalize  # noqa: E402
from inception.evaluate import (  # noqa: E402
    Predictions,
    calibration,
    confusion_matrix,
    misclassified,
    per_class_report,
    with_temperature,
)
from inception.model import Inception, build_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data():
    return load_cifar(source="synthetic", train_limit=80, eval_limit=40)


@pytest.fixture(scope="module")
def predictions(data):
    probs = torch.softmax(torch.randn(len(data.test_labels), 10,
                                      generator=torch.Generator().manual_seed(0)), dim=1)
    return Predictions(labels=data.test_labels, probs=probs)


def _check(fig: Figure, source: str | None) -> None:
    """A rendered Figure whose title names the data, with every data axis labelled."""
    assert isinstance(fig, Figure)
    title = fig.get_suptitle()
    assert title.strip()
    if source is not None:
        assert source in title
    fig.savefig(io.BytesIO(), format="png", dpi=40)  # layout and drawing errors surface here
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>" or not ax.axison:
            continue
        if len(ax.get_xticks()) or len(ax.get_yticks()):  # charts, not image cells
            assert ax.get_xlabel() and ax.get_ylabel(), ax.get_title()
    fig.clear()


def test_image_grids_are_titled_with_the_synthetic_source(data):
    source = data.title
    assert "synthetic" in source
    images, labels = data.train_images[:6], data.train_labels[:6]
    _check(plots.image_grid(images, labels, data.classes, source=source), source)
    _check(plots.examples_per_class(data.train_images, data.train_labels, data.classes,
                                    source=source, per_class=2), source)
    _check(plots.augmentation_preview(images[0], source=source, n=6), source)


def test_image_grid_marks_wrong_predictions_in_red(data):
    images, labels = data.train_images[:4], data.train_labels[:4]
    preds = labels.clone()
    preds[1] = (labels[1] + 1) % 10
    fig = plots.image_grid(images, labels, data.classes, source=data.title, preds=preds)
    colours = [ax.title.get_color() for ax in fig.axes[:4]]
    assert colours[1] == "tab:red" and colours.count("tab:red") == 1
    assert f"pred: {data.classes[preds[1]]}" in fig.axes[1].get_title()
    _check(fig, data.title)


def test_image_grid_denormalises_float_images_and_requires_their_stats(data):
    images = normalize(data.train_images[:3], data.mean, data.std)
    with pytest.raises(ValueError, match="mean and std"):
        plots.image_grid(images, data.train_labels[:3], data.classes, source=data.title)
    fig = plots.image_grid(images, data.train_labels[:3], data.classes, source=data.title,
                           mean=data.mean, std=data.std)
    shown = fig.axes[0].get_images()[0].get_array()
    expected = data.train_images[0].permute(1, 2, 0).float().numpy() / 255
    assert abs(shown - expected).max() < 1e-4  # the original pixels, not normalised values
    _check(fig, data.title)


def test_data_figures_are_titled_with_the_source(data):
    splits = {"train": data.train_labels, "val": data.val_labels, "test": data.test_labels}
    _check(plots.class_balance(splits, data.classes, source=data.title), data.title)
    _check(plots.channel_histograms(data.train_images, source=data.title), data.title)


def test_training_figures_render_with_unmeasured_validation_epochs():
    history = pd.DataFrame({
        "epoch": [1, 2, 3], "train_loss": [2.0, 1.5, 1.2], "train_acc": [0.3, 0.45, 0.55],
        "val_loss": [1.8, float("nan"), 1.3], "val_acc": [0.35, float("nan"), 0.52],
        "lr": [0.1, 0.05, 0.0], "seconds": [30.0, 30.0, 30.0], "img_per_s": [1500.0] * 3})
    source = "synthetic stand-in for CIFAR-10 (random images)"
    fig = plots.training_curves(history, source=source)
    assert "52.00% at epoch 3" in fig.axes[1].get_legend().get_texts()[1].get_text()
    _check(fig, source)
    _check(plots.lr_schedule(torch.linspace(0, 0.1, 50).tolist() + [0.05] * 10), None)


def test_accuracy_against_time_draws_each_run_against_its_cumulative_minutes():
    def run(budget, seconds, accs, tta):
        return {"config": {"budget_min": budget}, "test_acc_tta": tta,
                "history": [{"seconds": s, "val_acc": a}
                            for s, a in zip(seconds, accs, strict=True)]}

    runs = [run(15, [300, 300, 300], [0.5, 0.6, 0.7], 0.72),
            run(5, [150, 150], [0.4, 0.55], 0.56)]
    source = "CIFAR-10 (unofficial copy); AMD EPYC, 2 cores, AVX2, no native bf16"
    fig = plots.accuracy_against_time(runs, source=source)
    ax = fig.axes[0]
    first, second = ax.get_lines()  # the shorter budget first, whatever the records' order
    assert list(first.get_xdata()) == [2.5, 5.0] and list(second.get_xdata()) == [5.0, 10.0, 15.0]
    assert list(second.get_ydata()) == pytest.approx([50.0, 60.0, 70.0])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[1] == "15-min budget: 70.0% val, 72.0% test (flip TTA)"
    _check(fig, source)


def test_transfer_curves_draw_one_line_per_method_and_the_chance_level():
    results = pd.DataFrame({"method": ["scratch", "scratch", "fine-tune", "fine-tune"],
                            "per_class": [250, 50, 50, 250], "test_acc": [0.5, 0.3, 0.6, 0.7]})
    fig = plots.transfer_curves(results, chance=0.2, source="CIFAR-10 task B")
    ax = fig.axes[0]
    scratch, tuned, chance = ax.get_lines()
    assert list(scratch.get_xdata()) == [50, 250] and list(scratch.get_ydata()) == [30.0, 50.0]
    assert list(tuned.get_ydata()) == [60.0, 70.0] and list(chance.get_ydata()) == [20.0, 20.0]
    assert [t.get_text() for t in ax.get_legend().get_texts()][-1] == "chance (20%)"
    _check(fig, "CIFAR-10 task B")


def test_evaluation_figures_are_titled_with_the_source(data, predictions):
    cm = confusion_matrix(predictions.labels, predictions.preds, 10)
    _check(plots.confusion_heatmap(cm, data.classes, source=data.title), data.title)
    _check(plots.per_class_bars(per_class_report(cm, data.classes), source=data.title),
           data.title)
    table = misclassified(predictions, data.classes, k=6)
    _check(plots.misclassified_gallery(data.test_images, table, data.classes,
                                       source=data.title), data.title)
    ablation = pd.DataFrame({"branch": ["none", "1x1", "1x1→3x3", "1x1→5x5", "pool→1x1"],
                             "channels": [0, 32, 64, 16, 16],
                             "accuracy": [0.8, 0.7, 0.6, 0.78, 0.81]})
    ablation["drop"] = 0.8 - ablation["accuracy"]
    _check(plots.branch_ablation_bars(ablation, source=data.title), data.title)
    curves = {"as trained": calibration(predictions),
              "T = 2": calibration(with_temperature(predictions, 2.0))}
    fig = plots.reliability_diagram(curves, source=data.title)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(f"ECE {curves['T = 2'][0]:.2%}" in t for t in legend)  # each line names its ECE
    _check(fig, data.title)


def test_confusion_heatmap_skips_annotations_for_100_classes():
    classes = [f"class_{i}" for i in range(100)]
    cm = torch.eye(100, dtype=torch.long) * 5 + 1
    fig = plots.confusion_heatmap(cm, classes, source="synthetic")
    assert not fig.axes[0].texts
    _check(fig, "synthetic")


def _imports(path: Path) -> set[str]:
    """Every module a source file imports, e.g. {'torch', 'inception.data', 'inception.plots'}."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or "inception"  # `from . import x` inside the package
            names |= {base} | {f"{base}.{a.name}" for a in node.names}
    return names


def test_plots_module_does_not_import_training():
    assert not any(name.startswith("inception.train") for name in _imports(
        ROOT / "inception" / "plots.py"))


def test_no_library_module_imports_plots_or_matplotlib():
    # STYLE.md: only notebooks and the CLI (which writes figures) may import plots.
    for path in (ROOT / "inception").glob("*.py"):
        if path.name in ("plots.py", "cli.py", "__main__.py"):
            continue
        top = {name.split(".")[0] for name in _imports(path)}
        assert not top & {"matplotlib", "seaborn"}, path.name
        assert not any(name.endswith(".plots") or name == "plots"
                       for name in _imports(path)), path.name


def _traced_sizes(model: torch.nn.Module, side: int) -> dict[str, str]:
    """Every non-Identity top-level layer's output size, 'C×H×W', from hooks of our own."""
    sizes = {}
    hooks = [child.register_forward_hook(
                 lambda mod, args, out, name=name: sizes.__setitem__(
                     name, "×".join(map(str, out.shape[1:]))))
             for name, child in model.named_children()
             if not isinstance(child, torch.nn.Identity)]
    with torch.no_grad():
        model.train()(torch.zeros(2, 3, side, side))  # training mode: the aux heads run too
    for hook in hooks:
        hook.remove()
    return sizes


@pytest.mark.parametrize("name, stem, width", [("googlenet_cifar", "cifar", 0.25),
                                                ("googlenet_cifar_small", "cifar16", 0.5)])
def test_network_diagram_draws_the_sizes_a_traced_model_produces(name, stem, width):
    torch.manual_seed(0)
    model = build_model(name, stem=stem, width=width)
    expected = _traced_sizes(model, 32)
    assert expected["inception3a"].endswith("×32×32" if stem == "cifar" else "×16×16")
    model.train()
    model.inception4b.eval()  # a mixed state, as with frozen layers
    fig = plots.network_diagram(model, image_size=32)
    assert model.training and not model.inception4b.training  # the modes it found
    ax = fig.axes[0]
    drawn = {t.get_gid().removesuffix(":size"): t.get_text() for t in ax.texts
             if t.get_gid() and t.get_gid().endswith(":size")}
    assert drawn.pop("input") == "3×32×32"
    assert drawn == expected  # every layer, both aux heads included, and nothing else
    boxes = [p.get_gid() for p in ax.patches if p.get_gid()]
    assert sum(b.startswith("inception") for b in boxes) == 9
    assert sorted(b for b in boxes if b.startswith("aux")) == ["aux1", "aux2"]
    stem_layers = {"cifar": ["conv1"], "cifar16": ["conv1", "maxpool1", "conv2", "conv3"]}[stem]
    assert [b for b in boxes if b.startswith(("conv", "maxpool1", "maxpool2"))] == stem_layers
    assert f"{stem} stem" in fig.get_suptitle() and f"width {width:g}" in fig.get_suptitle()
    _check(fig, None)


def test_network_diagram_without_aux_heads_at_224():
    model = build_model("googlenet", num_classes=1000, aux_logits=False)
    fig = plots.network_diagram(model, image_size=224)
    sizes = {t.get_gid(): t.get_text() for t in fig.axes[0].texts if t.get_gid()}
    assert sizes["inception3a:size"] == "256×28×28" and sizes["inception5b:size"] == "1024×7×7"
    assert sizes["fc:size"] == "1000"  # the paper's Table 1, read off the drawing
    assert not any(p.get_gid() in ("aux1", "aux2") for p in fig.axes[0].patches)
    _check(fig, None)


def test_data_parallel_diagram_deals_the_global_batch_as_the_loader_does():
    fig = plots.data_parallel_diagram(world_size=3, batch_size=2, n_images=30, seed=4)
    order = torch.randperm(30, generator=torch.Generator().manual_seed(4))
    ax = fig.axes[0]
    cells = [p for p in ax.patches if p.get_gid()]
    assert [p.get_gid() for p in cells] == ["rank0"] * 2 + ["rank1"] * 2 + ["rank2"] * 2
    numbers = [int(t.get_text()) for t in ax.texts if t.get_text().isdigit()]
    assert numbers == order[:6].tolist()  # one process's first batch of 6, rank by rank
    assert "(g0 + g1 + g2) / 3" in " ".join(t.get_text() for t in ax.texts)
    _check(fig, None)


def test_inception_module_diagram_shows_the_modules_widths():
    fig = plots.inception_module_diagram(Inception(192, 64, 96, 128, 16, 32, 32), side=28)
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    for label in ("28x28x192", "28x28x256", "1x1 conv, 96", "3x3 conv, 128", "5x5 conv, 32",
                  "1x1 conv, 16", "1x1 conv, 32\n(pool proj)"):
        assert label in texts
    three = plots.inception_module_diagram(Inception(192, 64, 96, 128, 16, 32, 32,
                                                     five_by_five=False), side=28)
    assert "3x3 conv, 32" in " ".join(t.get_text() for t in three.axes[0].texts)
    _check(fig, None)
