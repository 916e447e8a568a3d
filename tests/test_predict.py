"""inception.predict and `python -m inception predict`: image files in, top-k classes out.

Images are written into tmp_path at test time (from random tensors, or from the CIFAR-10 test
split when it is on disk); none is committed.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.io import write_png

import inception.train as T
from inception.cli import main
from inception.data import ImageData, channel_stats, read_image
from inception.errors import ConfigError
from inception.evaluate import predict
from inception.predict import image_files, load_weights, predict_images
from inception.weights import load_reference

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = ["ant", "bee", "cow"]


def _write(path, image: torch.Tensor):
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # torchvision 0.29 deprecates write_png (see data.folder)
        warnings.simplefilter("ignore", DeprecationWarning)
        write_png(image, str(path))
    return path


def _random_pngs(folder, n: int = 4, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [_write(folder / f"img{i}.png",
                   torch.randint(0, 256, (3, 30 + 4 * i, 44), dtype=torch.uint8, generator=g))
            for i in range(n)]


@pytest.fixture
def checkpoint(tmp_path):
    """A three-class checkpoint trained on nothing (random weights) for 24 x 24 images."""
    torch.manual_seed(0)
    config = T.TrainConfig(width=0.125)
    model = config.build_model(len(CLASSES))
    images = torch.randint(0, 256, (6, 3, 24, 24), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    data = ImageData("bugs", "image folder", CLASSES, images, labels, images, labels, images,
                     labels, *channel_stats(images), root=str(tmp_path))
    payload = dict(format=T.CHECKPOINT_FORMAT, model_name=model.name, arch=model.arch,
                   model=model.state_dict(), ema=None, config=asdict(config),
                   data=data.describe(), epoch=1, step=1, train_seconds=0.0, precision="fp32",
                   device="cpu", history=[])
    return T.save_checkpoint(tmp_path / "run" / "checkpoint.pt", payload)


def test_rows_hold_the_checkpoints_classes_and_match_evaluate_predict(checkpoint, tmp_path):
    files = _random_pngs(tmp_path / "images")
    table = predict_images(checkpoint, files, top_k=2)
    assert list(table.columns) == ["file", "class_1", "prob_1", "class_2", "prob_2", "error"]
    assert table["file"].tolist() == [str(f) for f in files] and table["error"].isna().all()
    # The same files through read_image and evaluate.predict: predict_images adds no step.
    model, meta = T.load_checkpoint(checkpoint)
    batch = torch.stack([read_image(f, 24) for f in files])
    probs = predict(model, batch, torch.zeros(4, dtype=torch.int64), mean=meta["data"]["mean"],
                    std=meta["data"]["std"]).probs
    assert table["class_1"].tolist() == [CLASSES[i] for i in probs.argmax(1).tolist()]
    assert torch.allclose(torch.tensor(table["prob_1"].tolist()), probs.max(1).values)
    assert (table["prob_1"] >= table["prob_2"]).all()


def test_probabilities_match_a_forward_pass_written_out_by_hand(checkpoint, tmp_path):
    # Images of the checkpoint's own size (no resize), decoded by PIL, standardised and pushed
    # through the model here: an independent path to the same probabilities.
    g = torch.Generator().manual_seed(1)
    files = [_write(tmp_path / "own" / f"{i}.png",
                    torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8, generator=g))
             for i in range(3)]
    table = predict_images(checkpoint, files, top_k=3)
    model, meta = T.load_checkpoint(checkpoint)
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    mean, std = (torch.tensor(meta["data"][k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        probs = model.eval()((x - mean) / std).softmax(1)
    top = probs.sort(dim=1, descending=True)
    for k in range(3):
        assert table[f"class_{k + 1}"].tolist() == [CLASSES[i] for i in top.indices[:, k]]
        assert np.allclose(table[f"prob_{k + 1}"], top.values[:, k].numpy(), atol=1e-5)


def test_a_file_that_is_not_an_image_gets_its_own_row_error(checkpoint, tmp_path):
    good = _random_pngs(tmp_path, n=2)
    (tmp_path / "notes.txt").write_text("not an image")
    table = predict_images(checkpoint, [good[0], tmp_path / "notes.txt", tmp_path / "gone.png",
                                        good[1]], top_k=9)
    assert table["error"].tolist()[1:3] == ["not a readable image: cannot be decoded as an image",
                                            "not a readable image: no such file or directory"]
    assert table["class_1"].notna().tolist() == [True, False, False, True]
    assert "class_3" in table and "class_4" not in table  # top_k capped at the 3 classes


def test_folders_stand_for_the_images_inside_them(tmp_path):
    files = _random_pngs(tmp_path / "a" / "b", n=2)
    (tmp_path / "a" / "readme.md").write_text("skipped: not an image extension")
    _write(tmp_path / "a" / ".hidden" / "x.png", torch.zeros(3, 4, 4, dtype=torch.uint8))
    assert image_files([tmp_path / "a"]) == files


def test_without_a_recorded_size_the_stem_decides_it(checkpoint, tmp_path, monkeypatch):
    import inception.predict as P

    model, meta = T.load_checkpoint(checkpoint)
    del meta["data"]["image_size"]  # as in checkpoints from before image folders
    sizes = []
    monkeypatch.setattr(P, "read_image", lambda path, size, resize=None: sizes.append(size) or
                        torch.zeros(3, size, size, dtype=torch.uint8))
    predict_images((model, meta), ["a.png"])
    imagenet = T.TrainConfig(model="googlenet", width=0.125).build_model(3).eval()
    predict_images((imagenet, meta), ["a.png"])
    assert sizes == [32, 224]


def test_models_without_their_metadata_are_refused(checkpoint):
    model, _ = T.load_checkpoint(checkpoint)
    with pytest.raises(ConfigError, match=r"a checkpoint path, or \(model, meta\)"):
        predict_images(model, ["x.png"])


def test_packaged_weights_are_found_by_name_and_unknown_names_list_the_known():
    model, meta = load_weights("cifar10")
    assert model.name == "googlenet_cifar_small" and len(meta["data"]["classes"]) == 10
    with pytest.raises(ConfigError, match=r"no pretrained weights named 'nonsense'; known "
                                          r"weights: cifar10 \(googlenet_cifar_small\), "
                                          r"imagenet \(googlenet\)"):
        load_weights("nonsense")


def test_reference_weights_on_cifar_pngs_agree_with_evaluate(real_cifar10, tmp_path):
    data = real_cifar10  # skipped, saying why, when CIFAR-10 is not on disk
    images = data.test_images[:24]
    files = [_write(tmp_path / f"test_{i:02d}.png", image) for i, image in enumerate(images)]
    table = predict_images(load_reference(), files, top_k=1)
    model, meta = load_reference()
    probs = predict(model, images, data.test_labels[:24], mean=meta["data"]["mean"],
                    std=meta["data"]["std"]).probs
    assert table["class_1"].tolist() == [data.classes[i] for i in probs.argmax(1).tolist()]


def test_cli_prints_the_table_writes_the_csv_and_fails_for_a_bad_file(checkpoint, tmp_path,
                                                                     capsys):
    files = _random_pngs(tmp_path / "images", n=3)
    csv = tmp_path / "out.csv"
    options = ["--top-k", "2", "--csv", str(csv), "--device", "cpu"]
    assert main(["predict", str(checkpoint), str(tmp_path / "images"), *options]) == 0
    out = capsys.readouterr().out
    assert "3 of 3 images classified" in out and "class_2" in out and "%" in out
    table = pd.read_csv(csv)
    assert table["file"].tolist() == [str(f) for f in files]
    assert set(table["class_1"]) <= set(CLASSES) and table["error"].isna().all()
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    assert main(["predict", str(checkpoint), str(tmp_path / "images"),
                 str(tmp_path / "images" / "notes.txt"), *options]) == 1
    captured = capsys.readouterr()
    assert "3 of 4 images classified" in captured.out and "cannot be decoded" in captured.out
    assert captured.err.strip() == ("error: 1 of 4 files could not be read as images (see the "
                                    "error column)")
    assert pd.read_csv(csv)["error"].notna().tolist() == [False, False, False, True]


def test_cli_takes_options_between_the_images(checkpoint, tmp_path):
    files = _random_pngs(tmp_path / "images", n=2)
    csv = tmp_path / "out.csv"
    assert main(["predict", str(checkpoint), "--top-k", "2", str(files[0]), "--csv", str(csv),
                 str(files[1]), "--device", "cpu"]) == 0
    table = pd.read_csv(csv)
    assert table["file"].tolist() == [str(f) for f in files]
    assert "class_2" in table and "class_3" not in table
    assert main(["predict", "--weights", "cifar10", str(files[0]), "--top-k", "3",
                 str(files[1]), "--csv", str(csv), "--device", "cpu"]) == 0
    table = pd.read_csv(csv)  # with --weights every path is an image, wherever it stands
    assert table["file"].tolist() == [str(f) for f in files]
    assert "class_3" in table and "class_4" not in table and table["error"].isna().all()


def test_cli_takes_packaged_weights_and_names_unknown_ones_in_one_line(tmp_path, capsys):
    files = _random_pngs(tmp_path, n=1)
    assert main(["predict", "--weights", "cifar10", str(files[0]), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "1 of 1 images classified with packaged weights cifar10" in out and "class_5" in out
    assert main(["predict", "--weights", "nonsense", str(files[0])]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "known weights: cifar10" in err
    assert main(["predict", str(files[0])]) == 1
    assert "name a checkpoint file or --weights NAME" in capsys.readouterr().err
