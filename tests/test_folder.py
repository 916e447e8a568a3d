"""inception.data.folder: image folders as uint8 tensors, their checks, and the decode cache.

Every dataset here is written into tmp_path at test time from random or hand-made tensors; no
image is committed.
"""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import encode_jpeg, write_png

import inception.data.folder as folder
from inception.data import DatasetError, load_folder, read_image

# write_png and encode_jpeg, which write the test images, warn that torchvision 0.29 deprecates
# them; the package silences the same warning of its decoder (see folder.read_image).
pytestmark = pytest.mark.filterwarnings(
    f"ignore:{folder._TORCHVISION_IO_DEPRECATED}:DeprecationWarning")


def _solid(value: tuple[int, int, int], height: int = 24, width: int = 30) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.uint8).view(3, 1, 1).expand(3, height, width).clone()


def _png(path: Path, image: torch.Tensor) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(image, str(path))
    return path


def _jpeg(path: Path, image: torch.Tensor) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_jpeg(image, quality=95).numpy().tobytes())
    return path


def _numbered(root: Path, per_class: int = 6, classes=("cat", "dog", "eel")) -> list[int]:
    """train/<class>/<i>.png, each image one solid colour whose red value numbers it.

    Returns the numbers in the order torchvision lists the files (class, then file name).
    """
    numbers = []
    for c, name in enumerate(classes):
        for i in range(per_class):
            number = c * per_class + i
            colour = (number * 5, 255 - number * 5, number * 37 % 256)
            _png(root / "train" / name / f"{i:02d}.png", _solid(colour, 20 + i, 28))
            numbers.append(number)
    return numbers


def _red(images: torch.Tensor) -> list[int]:
    """The number each solid image carries (its red value / 5)."""
    return (images[:, 0, 0, 0].long() // 5).tolist()


def test_classes_labels_and_square_images_of_the_requested_size(tmp_path):
    for name, colour in (("red", (250, 0, 0)), ("green", (0, 250, 0)), ("blue", (0, 0, 250))):
        for i in range(4):
            _png(tmp_path / "train" / name / f"{i}.png", _solid(colour, 30 + 7 * i, 50 - 5 * i))
        _jpeg(tmp_path / "val" / name / "v.jpg", _solid(colour, 40, 40))
        _png(tmp_path / "test" / name / "t.png", _solid(colour, 17, 64))
    data = load_folder(tmp_path, image_size=16)
    assert data.classes == ["blue", "green", "red"]  # sorted, as ImageFolder does
    assert data.train_images.shape == (12, 3, 16, 16) and data.train_images.dtype == torch.uint8
    assert data.val_images.shape == (3, 3, 16, 16) and data.test_images.shape == (3, 3, 16, 16)
    for images, labels in (data.split("train"), data.split("val"), data.split("test")):
        brightest = images.float().mean(dim=(2, 3)).argmax(dim=1)  # 0 red, 1 green, 2 blue
        assert (2 - brightest).tolist() == labels.tolist()
    assert data.source == "image folder" and data.title == f"{tmp_path.name} (image folder, 16x16)"
    assert data.describe()["load_args"]["image_size"] == 16


def test_shorter_side_is_resized_then_the_centre_cropped(tmp_path):
    # 20 x 40: a red quarter, a green half, a blue quarter, left to right. The shorter side goes
    # to 10, so the image is 10 x 20; the centre 10 x 10 is columns 5-15: the green half only.
    image = torch.zeros(3, 20, 40, dtype=torch.uint8)
    image[0, :, :10], image[1, :, 10:30], image[2, :, 30:] = 255, 255, 255
    out = read_image(_png(tmp_path / "bands.png", image), 10)
    assert out.shape == (3, 10, 10)
    # The antialiased 2:1 shrink weighs 4 source columns per output column, so only the edge
    # columns of the crop (sources 9-12 and 27-30) reach into the red and blue bands.
    inside = out[:, :, 1:-1]
    assert inside[1].min() == 255 and inside[0].max() == 0 and inside[2].max() == 0
    assert out[0, :, 0].max() > 0 and out[2, :, -1].max() > 0  # the bands were there, cut off


def test_grey_rgba_and_palette_images_become_rgb(tmp_path):
    grey = _png(tmp_path / "grey.png", torch.full((1, 12, 12), 77, dtype=torch.uint8))
    rgba = tmp_path / "rgba.png"  # write_png takes 1 or 3 channels only
    Image.fromarray(np.full((12, 12, 4), (10, 20, 30, 40), dtype=np.uint8)).save(rgba)
    assert Image.open(rgba).mode == "RGBA"
    palette = tmp_path / "palette.png"
    Image.fromarray(np.full((12, 12, 3), (200, 10, 60), dtype=np.uint8)).convert(
        "P", palette=Image.Palette.ADAPTIVE).save(palette)
    assert Image.open(palette).mode == "P"
    assert read_image(grey, 8)[:, 4, 4].tolist() == [77, 77, 77]
    assert read_image(rgba, 8)[:, 4, 4].tolist() == [10, 20, 30]  # alpha dropped, not blended
    assert read_image(palette, 8)[:, 4, 4].tolist() == [200, 10, 60]


def test_reading_an_image_warns_about_nothing(tmp_path):
    # The package silences torchvision's per-call deprecation of its decoders by the warning's
    # text. Should torchvision reword it, every image of a folder would warn again: this fails.
    path = _png(tmp_path / "a.png", _solid((1, 2, 3)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_image(path, 8)
    assert [str(w.message) for w in caught] == []


def test_missing_splits_are_held_out_of_train_by_the_cifar_rule(tmp_path):
    numbers = _numbered(tmp_path, per_class=10)  # 30 images: 3 validate, 3 test, 24 train
    data = load_folder(tmp_path, image_size=8, seed=7, val_fraction=0.1, test_fraction=0.1)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(7))  # as load_cifar does
    assert _red(data.val_images) == [numbers[i] for i in sorted(perm[:3].tolist())]
    assert _red(data.test_images) == [numbers[i] for i in sorted(perm[3:6].tolist())]
    assert _red(data.train_images) == [numbers[i] for i in sorted(perm[6:].tolist())]
    assert (data.train_labels == torch.tensor(_red(data.train_images)) // 10).all()


def test_val_folder_is_used_as_it_is_and_only_test_is_held_out(tmp_path):
    _numbered(tmp_path, per_class=10)
    _png(tmp_path / "val" / "dog" / "v.png", _solid((0, 0, 0)))
    data = load_folder(tmp_path, image_size=8, test_fraction=0.2)
    assert data.val_labels.tolist() == [1] and len(data.test_labels) == 6
    assert len(data.train_labels) == 24


def test_unreadable_and_non_image_files_are_skipped_with_one_warning(tmp_path):
    _numbered(tmp_path, per_class=3)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (tmp_path / "train" / "dog" / ".DS_Store").write_bytes(b"hidden: never mentioned")
    with pytest.warns(UserWarning) as caught:
        data = load_folder(tmp_path, image_size=8, val_fraction=0, test_fraction=0)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "skipped 2 file(s)" in message and "train/cat/notes.txt (not an image file)" in message
    assert "train/dog/broken.jpg (cannot be decoded as an image)" in message
    assert ".DS_Store" not in message
    assert len(data.train_labels) == 9


def test_a_second_load_reads_the_cache_and_decodes_nothing(tmp_path, monkeypatch):
    _numbered(tmp_path)
    first = load_folder(tmp_path, image_size=12)
    assert len(list((tmp_path / folder.CACHE_DIR).glob("12px-*.pt"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache holds these images")
    monkeypatch.setattr(folder, "read_image", no_decoding)
    second = load_folder(tmp_path, image_size=12)
    for split in ("train", "val", "test"):
        assert all(torch.equal(a, b) for a, b in zip(first.split(split), second.split(split),
                                                     strict=True))
    assert second.mean == first.mean and second.classes == first.classes


def test_a_changed_file_or_size_makes_a_new_cache(tmp_path, monkeypatch):
    _numbered(tmp_path)
    load_folder(tmp_path, image_size=12, val_fraction=0, test_fraction=0)
    old = next((tmp_path / folder.CACHE_DIR).glob("12px-*.pt"))
    changed = tmp_path / "train" / "dog" / "00.png"
    _png(changed, _solid((255, 255, 255), 40, 40))
    decoded = []
    real = folder.read_image
    monkeypatch.setattr(folder, "read_image", lambda p, s: decoded.append(p) or real(p, s))
    data = load_folder(tmp_path, image_size=12, val_fraction=0, test_fraction=0)
    assert len(decoded) == 18 and data.train_images[6].min() == 255
    assert not old.exists()  # the stale cache of this size was deleted
    load_folder(tmp_path, image_size=16, val_fraction=0, test_fraction=0)
    assert len(list((tmp_path / folder.CACHE_DIR).glob("*.pt"))) == 2  # one per size


def _bmp(path: Path, colour: tuple[int, int, int]) -> Path:
    """A solid 24x30 BMP: uncompressed, so every colour gives a file of the same byte size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_solid(colour).permute(1, 2, 0).numpy()).save(path)
    return path


@pytest.mark.skipif(os.name != "posix", reason="the key holds st_ctime only on POSIX")
def test_an_edit_that_keeps_the_size_and_the_mtime_makes_a_new_cache(tmp_path):
    """Some tools rewrite a file and put its mtime back (touch -d, a restored backup, rsync
    --times); with the same byte size only the ctime shows the edit."""
    edited = _bmp(tmp_path / "train" / "ant" / "0.bmp", (255, 0, 0))
    _bmp(tmp_path / "train" / "bee" / "0.bmp", (100, 255, 100))
    load_folder(tmp_path, image_size=8, val_fraction=0, test_fraction=0)
    before = edited.stat()
    _bmp(edited, (0, 0, 255))
    os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = edited.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    data = load_folder(tmp_path, image_size=8, val_fraction=0, test_fraction=0)
    assert data.classes == ["ant", "bee"] and data.train_labels.tolist() == [0, 1]
    assert data.train_images[0, :, 4, 4].tolist() == [0, 0, 255]  # the new pixels, not red


def test_a_damaged_cache_is_rebuilt_with_a_warning(tmp_path):
    _numbered(tmp_path)
    first = load_folder(tmp_path, image_size=12)
    cache = next((tmp_path / folder.CACHE_DIR).glob("*.pt"))
    cache.write_bytes(cache.read_bytes()[:300])
    with pytest.warns(UserWarning, match="is damaged .* decoding the images again"):
        second = load_folder(tmp_path, image_size=12)
    assert torch.equal(first.train_images, second.train_images)
    assert cache.stat().st_size > 300  # rewritten whole


def test_a_cache_write_that_fails_halfway_leaves_no_file_and_only_costs_the_speed_up(
        tmp_path, monkeypatch):
    _numbered(tmp_path)
    real_save = torch.save

    def disk_full(obj, f):
        f.write(b"half a cache")  # save_atomically hands torch.save an open temp file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.warns(UserWarning, match="cannot write the cache .*No space left on device"):
        data = load_folder(tmp_path, image_size=12)
    assert list((tmp_path / folder.CACHE_DIR).iterdir()) == []  # no temp file, no partial cache
    monkeypatch.setattr(torch, "save", real_save)
    again = load_folder(tmp_path, image_size=12)  # decodes again, and now caches
    assert torch.equal(data.train_images, again.train_images)
    assert [p.suffix for p in (tmp_path / folder.CACHE_DIR).iterdir()] == [".pt"]


def test_without_cache_nothing_is_written(tmp_path):
    _numbered(tmp_path, per_class=2)
    load_folder(tmp_path, image_size=8, cache=False)
    assert not (tmp_path / folder.CACHE_DIR).exists()


@pytest.mark.parametrize(("layout", "message"), [
    ("empty-class", r"train/eel holds no images: add images .* or remove the folder"),
    ("val-extra-class", r"val has classes that train/ lacks \(fox\): .* Add them to"),
    ("no-images", r"train holds no images: put them in train/<class>/<images>"),
    ("no-train", r"has no train/ folder; it holds cat, dog directly: move those class folders"),
    ("no-classes", r"train has no class folders"),
    ("missing", r"does not exist: point --dataset at a folder"),
    ("empty-val", r"val holds no images: .* or delete the folder"),
    ("class-all-unreadable", r"no readable image is left in .*train/dog"),
])
def test_layouts_that_cannot_train_are_refused_naming_the_folder(tmp_path, layout, message):
    root = tmp_path / "set"
    if layout == "empty-class":
        _numbered(root, per_class=2, classes=("cat", "dog"))
        (root / "train" / "eel").mkdir()
    elif layout == "val-extra-class":
        _numbered(root, per_class=2)
        _png(root / "val" / "fox" / "a.png", _solid((1, 2, 3)))
    elif layout == "no-images":
        (root / "train" / "cat").mkdir(parents=True)
        (root / "train" / "cat" / ".hidden").write_text("")
        (root / "train" / "dog").mkdir()
    elif layout == "no-train":
        for name in ("cat", "dog"):
            _png(root / name / "a.png", _solid((1, 2, 3)))
    elif layout == "no-classes":
        (root / "train").mkdir(parents=True)
        (root / "train" / "loose.png").write_bytes(b"")
    elif layout == "empty-val":
        _numbered(root, per_class=2)
        (root / "val").mkdir()
    elif layout == "class-all-unreadable":
        _numbered(root, per_class=2, classes=("cat",))
        (root / "train" / "dog").mkdir()
        (root / "train" / "dog" / "a.png").write_text("not a png")
    warned = pytest.warns(UserWarning) if layout == "class-all-unreadable" else nullcontext()
    with pytest.raises(DatasetError, match=message) as err, warned:
        load_folder(root, image_size=8)
    assert str(root) in str(err.value)


def test_images_that_do_not_fit_in_memory_are_refused_before_decoding(tmp_path, monkeypatch):
    _numbered(tmp_path)  # 18 images
    monkeypatch.setattr(folder, "available_memory", lambda: 2 * 18 * 3 * 32 * 32 - 1)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded images that were refused")
    monkeypatch.setattr(folder, "read_image", no_decoding)
    with pytest.raises(DatasetError, match=r"18 images .* at 32x32 need .* use a smaller "
                                           r"image_size \(--image-size 24 fits\)"):
        load_folder(tmp_path, image_size=32)
    monkeypatch.setattr(folder, "available_memory", lambda: None)  # unknown: no check
    monkeypatch.setattr(folder, "read_image",
                        lambda p, s: torch.randint(0, 256, (3, s, s), dtype=torch.uint8))
    assert load_folder(tmp_path, image_size=32, cache=False).train_images.shape[-1] == 32


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="reads /proc/meminfo or sysconf; elsewhere it may answer None")
def test_available_memory_is_a_positive_number_of_bytes_on_linux():
    free = folder.available_memory()  # None would turn the out-of-memory guard off
    assert isinstance(free, int) and free > 2**20


def test_fit_trains_two_steps_on_a_folder_dataset(tmp_path):
    from inception.train import TrainConfig, fit

    _numbered(tmp_path, per_class=6)
    data = load_folder(tmp_path, image_size=32)
    config = TrainConfig(width=0.125, epochs=1, max_steps=2, batch_size=4, precision="fp32",
                         channels_last=False)
    result = fit(config.build_model(len(data.classes)), data, config, device="cpu",
                 progress=False)
    assert result.stopped_by == "max_steps" and len(result.history) == 1
    assert result.history["val_acc"].notna().all()  # the held-out val/ split was scored
