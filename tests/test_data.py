"""inception.data: finding and verifying CIFAR, the split, and the device-resident loader."""

import hashlib
import socket
import tarfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import write_tiny_cifar10

import inception
from inception import data as D
from inception.data import DatasetError, DeviceLoader, load_cifar


@pytest.fixture
def no_network(monkeypatch):
    """Make every outgoing connection fail, as on an offline machine."""
    def refuse(*args, **kwargs):
        raise OSError("Network is unreachable")
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_unofficial_copy_loads_with_one_clear_warning(tiny_root):
    with pytest.warns(UserWarning, match="not the official CIFAR-10 release") as caught:
        data = load_cifar(root=tiny_root, val_size=10)
    assert len(caught) == 1
    assert data.source == "unofficial copy" and data.title == "CIFAR-10 (unofficial copy)"
    assert data.train_images.shape == (90, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert len(data.val_labels) == 10 and len(data.test_labels) == 20
    assert data.classes[0] == "airplane"


def test_files_matching_official_checksums_count_as_official(tiny_root, monkeypatch, recwarn):
    folder = tiny_root / "cifar-10-batches-py"
    C = D._TORCHVISION["cifar10"]
    monkeypatch.setattr(C, "train_list", [[f, _md5(folder / f)] for f, _ in C.train_list])
    monkeypatch.setattr(C, "test_list", [[f, _md5(folder / f)] for f, _ in C.test_list])
    monkeypatch.setattr(C, "meta", {**C.meta, "md5": _md5(folder / "batches.meta")})
    data = load_cifar(root=tiny_root, val_size=10)
    assert data.source == "official"
    assert not [w for w in recwarn if "official" in str(w.message)]


def test_cifar100_loads_through_the_same_call(tmp_path):
    import pickle

    import numpy as np
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 30), ("test", 10)):
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "fine_labels": [int(v) for v in rng.integers(0, 100, n)],
                 "coarse_labels": [0] * n}
        (folder / name).write_bytes(pickle.dumps(entry))
    names = [f"class_{i}" for i in range(100)]
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": names}))
    with pytest.warns(UserWarning, match="not the official CIFAR-100 release"):
        data = load_cifar("cifar100", root=tmp_path, val_size=5)
    assert len(data.classes) == 100 and data.title == "CIFAR-100 (unofficial copy)"
    assert (len(data.train_labels), len(data.val_labels), len(data.test_labels)) == (25, 5, 10)


def test_data_root_defaults_to_the_repository_and_follows_the_environment(monkeypatch,
                                                                         tmp_path):
    monkeypatch.delenv("INCEPTION_DATA", raising=False)
    assert D.default_root() == Path(inception.__file__).resolve().parents[1] / "data"
    monkeypatch.setenv("INCEPTION_DATA", str(tmp_path))
    assert D.default_root() == tmp_path


def test_pixels_and_labels_decode_in_the_official_layout(tmp_path):
    # One hand-made image: channel-planar R, G, B rows, as the CIFAR docs describe.
    folder = write_tiny_cifar10(tmp_path, per_file=2)
    import pickle
    entry = pickle.loads((folder / "test_batch").read_bytes())
    entry["data"][0, :1024], entry["data"][0, 1024:2048], entry["data"][0, 2048:] = 10, 20, 30
    entry["labels"][0] = 7
    (folder / "test_batch").write_bytes(pickle.dumps(entry))
    with pytest.warns(UserWarning):
        data = load_cifar(root=tmp_path, val_size=2)
    assert data.test_images[0, :, 5, 9].tolist() == [10, 20, 30] and data.test_labels[0] == 7


def test_split_is_seeded_and_disjoint(tiny_root):
    with pytest.warns(UserWarning):
        a = load_cifar(root=tiny_root, val_size=10, seed=1)
        b = load_cifar(root=tiny_root, val_size=10, seed=1)
        c = load_cifar(root=tiny_root, val_size=10, seed=2)
    assert torch.equal(a.val_images, b.val_images) and not torch.equal(a.val_images, c.val_images)
    train_rows = {bytes(x.flatten().tolist()) for x in a.train_images}
    assert not any(bytes(x.flatten().tolist()) in train_rows for x in a.val_images)


def test_split_indices_deal_one_seeded_permutation_in_order():
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(3))
    val, train = D.split_indices(20, [5], seed=3)  # CIFAR's rule: the first 5 are validation
    assert val.tolist() == sorted(perm[:5].tolist()) and train.tolist() == sorted(perm[5:].tolist())
    val, test, train = D.split_indices(20, [5, 4], seed=3)
    assert val.tolist() == sorted(perm[:5].tolist())
    assert test.tolist() == sorted(perm[5:9].tolist()) and len(train) == 11
    with pytest.raises(ValueError, match="cannot hold out"):
        D.split_indices(5, [4, 2])


def test_missing_data_and_no_network_says_where_to_put_the_archive(tmp_path, no_network):
    with pytest.raises(DatasetError) as err:
        load_cifar(root=tmp_path)
    message = str(err.value)
    assert "cifar-10-python.tar.gz" in message and str(tmp_path) in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    assert not (tmp_path / "cifar-10-python.tar.gz").exists()


def test_quick_mode_without_data_uses_labelled_synthetic_stand_in(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INCEPTION_QUICK", "1")
    data = load_cifar(root=tmp_path, train_limit=64, eval_limit=32)
    assert data.source == "synthetic" and "synthetic" in data.title and "synthetic" in repr(data)
    assert "synthetic" in capsys.readouterr().out
    assert data.train_images.shape == (64, 3, 32, 32) and len(data.test_labels) == 32


def test_without_quick_mode_missing_data_is_an_error_not_synthetic(tmp_path, monkeypatch,
                                                                  no_network):
    monkeypatch.setenv("INCEPTION_QUICK", "0")
    with pytest.raises(DatasetError):
        load_cifar(root=tmp_path)


def test_corrupt_batch_file_gives_clear_error(tiny_root):
    path = tiny_root / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500])  # truncated, as by an interrupted copy
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match="data_batch_3.*truncated"):
        load_cifar(root=tiny_root, val_size=10)


def test_incomplete_folder_names_missing_files(tiny_root):
    (tiny_root / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DatasetError, match="incomplete: test_batch missing"):
        load_cifar(root=tiny_root)


def test_hand_placed_archive_is_verified_then_extracted(tmp_path, monkeypatch):
    source = tmp_path / "src"
    write_tiny_cifar10(source)
    root = tmp_path / "root"
    root.mkdir()
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    C = D._TORCHVISION["cifar10"]
    monkeypatch.setattr(C, "tgz_md5", "0" * 32)
    with pytest.raises(DatasetError, match="partial or corrupt download"):
        load_cifar(root=root)
    monkeypatch.setattr(C, "tgz_md5", _md5(archive))
    with pytest.warns(UserWarning, match="not the official"):
        data = load_cifar(root=root, val_size=10)
    assert len(data.train_labels) == 90


def test_channel_stats_match_hand_computation():
    images = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    images[0, 0] = 255  # red channel: half the pixels 1.0, half 0.0 -> mean 0.5, std 0.5
    images[:, 1] = 51  # green: all 0.2 -> std 0
    mean, std = D.channel_stats(images)
    assert mean == (0.5, 0.2, 0.0) and std == (0.5, 0.0, 0.0)


def test_real_cifar10_split_sizes_and_statistics(real_cifar10):
    data = real_cifar10
    assert (len(data.train_labels), len(data.val_labels), len(data.test_labels)) == \
        (45_000, 5_000, 10_000)
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
    # Means agree with the published constants; the JPEG copy's std is slightly lower.
    for ours, published in zip(data.mean, D.CIFAR10_MEAN, strict=True):
        assert abs(ours - published) < 0.003
    for ours, published in zip(data.std, D.CIFAR10_STD, strict=True):
        assert abs(ours - published) < 0.006


# --- augmentation and the loader -------------------------------------------------------------


def _all_crops(image: torch.Tensor, padding: int) -> list[torch.Tensor]:
    """Every crop and flip the augmentation may produce, built independently with F.pad."""
    padded = F.pad(image[None].float(), [padding] * 4, mode="reflect")[0]
    size = image.shape[-1]
    crops = []
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy:dy + size, dx:dx + size]
            crops += [crop, crop.flip(-1)]
    return crops


def test_each_sample_gets_its_own_valid_crop_and_flip():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    batch = image.expand(64, 3, 32, 32).contiguous()
    out = D.random_crop_flip(batch, padding=4, flip=True,
                             generator=torch.Generator().manual_seed(0))
    candidates = torch.stack(_all_crops(image, 4))
    matches = [int(((candidates - o.float()).abs().flatten(1).amax(1) == 0).nonzero()[0])
               for o in out]
    assert len(set(matches)) > 30  # 64 samples, 162 possible outcomes: independent draws
    assert {m % 2 for m in matches} == {0, 1}  # some flipped, some not


def test_cutout_zeroes_one_square_per_image():
    x = torch.ones(16, 3, 32, 32)
    out = D.cutout(x, 8, generator=torch.Generator().manual_seed(0))
    zeros = (out[:, 0] == 0).flatten(1).sum(1)
    assert zeros.max() == 64 and zeros.min() > 0  # full squares inside, clipped at the edges
    assert torch.equal(out[:, 0] == 0, out[:, 2] == 0)  # same hole in every channel


def test_resized_crop_matches_torchvision_box_by_box():
    import torchvision.transforms.v2.functional as TF

    images = torch.randint(0, 256, (3, 3, 40, 50), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    boxes = [(5, 7, 10, 10), (3, 2, 17, 29), (0, 0, 40, 50)]  # enlarged, shrunk, whole
    flip = torch.tensor([True, False, True])
    out = D.resized_crop(images, torch.tensor(boxes, dtype=torch.float32), (30, 24), flip)
    for image, box, mirrored, got in zip(images, boxes, flip, out, strict=True):
        want = TF.resized_crop(image.float(), *box, [30, 24], antialias=False)
        want = want.flip(-1) if mirrored else want
        assert torch.allclose(got, want, atol=1e-2)


def test_random_resized_crops_differ_per_image_and_keep_the_whole_at_full_scale():
    image = torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(1))
    batch = image.expand(32, 3, 48, 48).contiguous()
    whole = D.random_resized_crop_flip(batch, scale=(1, 1), ratio=(1, 1),
                                       generator=torch.Generator().manual_seed(0))
    plain = (whole - image.float()).abs().flatten(1).amax(1) < 0.01
    mirrored = (whole - image.flip(-1).float()).abs().flatten(1).amax(1) < 0.01
    assert (plain | mirrored).all() and plain.any() and mirrored.any()
    crops = D.random_resized_crop_flip(batch, generator=torch.Generator().manual_seed(0))
    assert crops.shape == (32, 3, 48, 48) and crops.dtype == torch.float32
    assert len({round(c.sum().item()) for c in crops}) > 25  # each image its own box


def test_random_resized_crop_gives_each_rank_its_share_of_one_draw():
    images = torch.randint(0, 256, (8, 3, 72, 72), dtype=torch.uint8)
    one = D.random_resized_crop_flip(images, generator=torch.Generator().manual_seed(4))
    ranks = [D.random_resized_crop_flip(images[4 * r:4 * (r + 1)], share=(r, 2),
                                        generator=torch.Generator().manual_seed(4))
             for r in (0, 1)]
    assert torch.equal(one, torch.cat(ranks))


def test_loader_picks_the_crop_by_image_size():
    for side, crop in ((32, "pad"), (64, "pad"), (96, "resized")):
        images = torch.zeros(4, 3, side, side, dtype=torch.uint8)
        loader = DeviceLoader(images, torch.arange(4), batch_size=2, mean=(0.5,) * 3,
                              std=(0.5,) * 3, train=True)
        assert loader.crop == crop and next(iter(loader))[0].shape == (2, 3, side, side)
    with pytest.raises(ValueError, match="crop must be one of"):
        DeviceLoader(images, torch.arange(4), batch_size=2, mean=(0.5,) * 3, std=(0.5,) * 3,
                     crop="random")


def test_loader_keeps_labels_aligned_through_shuffle_and_augmentation():
    labels = torch.arange(100) % 10
    images = (labels * 25).to(torch.uint8).view(-1, 1, 1, 1).expand(100, 3, 32, 32).contiguous()
    loader = DeviceLoader(images, labels, batch_size=16, mean=(0.0,) * 3, std=(1.0,) * 3,
                          train=True, drop_last=False)
    seen = []
    for x, y in loader:
        assert x.is_contiguous(memory_format=torch.channels_last)
        pixel_value = (x * 255).round().amax(dim=(1, 2, 3))
        assert torch.equal(pixel_value, (y * 25).float())
        seen.append(y)
    assert torch.equal(torch.cat(seen).sort().values, labels.sort().values)


def test_loader_reshuffles_every_epoch_and_replays_from_its_state():
    images = torch.zeros(64, 3, 32, 32, dtype=torch.uint8)
    labels = torch.arange(64)
    loader = DeviceLoader(images, labels, batch_size=64, mean=(0.5,) * 3, std=(0.5,) * 3,
                          train=True)
    state = loader.state_dict()
    first = next(iter(loader))[1]
    second = next(iter(loader))[1]
    assert not torch.equal(first, second)
    loader.load_state_dict(state)
    assert torch.equal(next(iter(loader))[1], first)


def test_loader_state_from_another_kind_of_device_gives_a_seeded_order_and_a_warning():
    images, labels = torch.zeros(64, 3, 32, 32, dtype=torch.uint8), torch.arange(64)

    def resumed() -> torch.Tensor:
        loader = DeviceLoader(images, labels, batch_size=64, mean=(0.5,) * 3, std=(0.5,) * 3,
                              train=True)
        cuda_state = torch.arange(16, dtype=torch.uint8)  # Philox: 16 bytes, not the CPU's 5,056
        with pytest.warns(UserWarning, match="another kind of device"):
            loader.load_state_dict({"generator": cuda_state})
        return next(iter(loader))[1]

    assert torch.equal(resumed(), resumed())  # the same checkpoint, the same order


def test_eval_loader_is_ordered_and_complete():
    images = torch.zeros(10, 3, 32, 32, dtype=torch.uint8)
    loader = DeviceLoader(images, torch.arange(10), batch_size=4, mean=(0.5,) * 3,
                          std=(0.5,) * 3)
    assert len(loader) == 3
    assert torch.cat([y for _, y in loader]).tolist() == list(range(10))


def test_loader_rejects_float_images():
    with pytest.raises(ValueError, match="uint8"):
        DeviceLoader(torch.zeros(4, 3, 32, 32), torch.zeros(4), batch_size=2, mean=(0,) * 3,
                     std=(1,) * 3)


@pytest.mark.parametrize(("limits", "message"), [
    (dict(train_limit=-1), "train_limit must be a whole number of images, at least 1, .* -1"),
    (dict(train_limit=0), "train_limit must be .* at least 1, .* got 0"),
    (dict(eval_limit=-5), "eval_limit must be .* at least 0, .* got -5"),
    (dict(train_limit=2.5), "train_limit must be a whole number .* got 2.5"),
])
def test_limits_that_a_slice_would_misread_are_refused(limits, message, tmp_path):
    """[:-1] would keep all but the last image, and [:0] none, without a word."""
    from inception.data import load_folder
    with pytest.raises(inception.ConfigError, match=message):
        load_cifar(source="synthetic", **limits)
    with pytest.raises(inception.ConfigError, match=message):
        load_folder(tmp_path / "no_folder_needed", **limits)  # checked before it is read

