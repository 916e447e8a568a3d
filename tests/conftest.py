"""Shared fixtures: a tiny CIFAR-10 in the official python layout, the real one if present, a
synthetic stand-in with a seeded CPU run on it, and an offline stand-in for torchvision's
ImageNet GoogLeNet file."""

import dataclasses
import os
import pickle
import socket
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import inception.train as T
import inception.weights as W
from inception.data import default_root, load_cifar
from inception.train import fit

BATCH_FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
               "test_batch"]


def write_tiny_cifar10(root: Path, per_file: int = 20, seed: int = 0) -> Path:
    """Write cifar-10-batches-py/ with `per_file` random images per batch file."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in BATCH_FILES:
        entry = {"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in rng.integers(0, 10, per_file)],
                 "batch_label": name, "filenames": [f"{i}.png" for i in range(per_file)]}
        (folder / name).write_bytes(pickle.dumps(entry))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                            "horse", "ship", "truck"], "num_cases_per_batch": per_file}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return folder


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    write_tiny_cifar10(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def real_cifar10():
    """The CIFAR-10 on disk (official or an unofficial copy), or a skip saying why not."""
    root = default_root()
    if not (root / "cifar-10-batches-py").is_dir():
        pytest.skip(f"needs CIFAR-10 in {root}/cifar-10-batches-py (downloaded on first use "
                    "with network; offline: python ../shared/data/make_cifar10.py data/)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unofficial-copy warning is tested elsewhere
        return load_cifar(root=root, download=False)


@pytest.fixture(scope="module")
def synthetic():
    """The synthetic CIFAR-10 stand-in, large enough for the tiny runs the training tests repeat
    (their configs' train_limit and eval_limit take what each needs). A module may define its own
    `synthetic` of another size, which pytest then uses instead."""
    return load_cifar(source="synthetic", train_limit=256, eval_limit=64)


class RunsCode:
    """Pickles as a call to os.system: what a crafted data file or checkpoint would do."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def train_on_cpu(data, config, *, progress: bool = False, **kwargs):
    """fit a new model of `config` on the CPU, its initial weights drawn from `config.seed`, so
    that two runs of one config can be compared weight for weight."""
    torch.manual_seed(config.seed)
    model = config.build_model(len(data.classes))
    return fit(model, data, config, device="cpu", progress=progress, **kwargs)


def train_until_stopped_after_epoch(epoch: int, data, config, out_dir, monkeypatch) -> None:
    """Train as if the user pressed Stop right after `epoch`'s checkpoint was written."""
    real_save = T.save_checkpoint

    def stop_after(path, payload):
        real_save(path, payload)
        if payload["epoch"] == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(T, "save_checkpoint", stop_after)
    with pytest.raises(KeyboardInterrupt):
        train_on_cpu(data, config, out_dir=out_dir)
    monkeypatch.setattr(T, "save_checkpoint", real_save)


@pytest.fixture(scope="module")
def one_thread():
    """Run a test module single-threaded, restoring the setting after. Its tests push batches of
    a few images through small models, where thread barriers cost more than they save (10x
    slower on a busy 2-core machine). Use with pytestmark = pytest.mark.usefixtures(...)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_tiny_folder(root: Path, classes=("ant", "bee"), per_class: int = 20,
                      height: int = 40, width: int = 48, seed: int = 0) -> Path:
    """Write root/train/<class>/<i>.png: random images, each class's own channel at 255."""
    from torchvision.io import write_png

    g = torch.Generator().manual_seed(seed)
    with warnings.catch_warnings():  # torchvision 0.29 deprecates write_png (see data.folder)
        warnings.simplefilter("ignore", DeprecationWarning)
        for c, name in enumerate(classes):
            (root / "train" / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                image = torch.randint(0, 256, (3, height + i % 5, width), dtype=torch.uint8,
                                      generator=g)
                image[c % 3] = 255
                write_png(image, str(root / "train" / name / f"{i:03d}.png"))
    return root


# torchvision's ImageNet GoogLeNet, offline: a randomly initialised torchvision GoogLeNet saved
# under the real file's name in a temporary TORCH_HOME stands in for the download.
IMAGENET_FILE = "googlenet-1378be20.pth"  # the name torch.hub gives the download of its url


def cache_file(torch_home: Path) -> Path:
    return torch_home / "hub" / "checkpoints" / IMAGENET_FILE


@pytest.fixture
def no_network(monkeypatch):
    """Any connection or download fails as it does offline: `runtime.reachable` asks through
    socket.create_connection, torch.hub fetches a missing file with download_url_to_file."""
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> Path:
    """A random torchvision GoogLeNet with aux heads, as state_dict, away from its identity init.

    torchvision's init (weights N(0, 0.01), BatchNorm as the identity) shrinks activations to
    nothing by the classifier, where any two networks agree; Kaiming convolutions and drawn
    BatchNorm statistics keep the logits O(1), so their equality means something.
    """
    torch.manual_seed(0)
    model = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    path = cache_file(tmp_path_factory.mktemp("torch_home"))
    path.parent.mkdir(parents=True)
    torch.save(model.state_dict(), path)
    return path


def expect_prefix(monkeypatch, prefix: str) -> None:
    """Make get_weights promise `prefix` as the file's sha256 prefix instead of the real file's.

    No random file can have the real one (1378be20), so the tests stand in their own; the
    check of the prefix itself is unchanged, and tested with a damaged file.
    """
    real = W.get_weights

    def with_prefix(model, name):
        found = real(model, name)
        return dataclasses.replace(found, meta={**found.meta, "sha256_prefix": prefix})

    monkeypatch.setattr(W, "get_weights", with_prefix)


@pytest.fixture
def cached(stand_in, monkeypatch) -> Path:
    """TORCH_HOME holding the stand-in, which get_weights takes for the real file."""
    monkeypatch.setenv("TORCH_HOME", str(stand_in.parents[2]))
    expect_prefix(monkeypatch, W.sha256(stand_in)[:8])
    return stand_in
