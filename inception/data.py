"""CIFAR-10/100 as uint8 tensors, a seeded train/validation split, and a device-resident loader.

Owns finding, downloading, verifying and decoding the data, and the batch augmentation that feeds
training. It knows nothing about models or training loops.
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import (
    check_integrity,
    download_and_extract_archive,
    extract_archive,
)

from inception.errors import ConfigError, DatasetError
from inception.runtime import quick_mode

# Published per-channel statistics of the official training sets (RGB, pixel values in [0, 1]).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
PUBLISHED_STATS = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD),
                   "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}

# torchvision's dataset classes carry the official URL, file names and MD5 checksums.
_TORCHVISION = {"cifar10": CIFAR10, "cifar100": CIFAR100}
_LABEL_KEY = {"cifar10": "labels", "cifar100": "fine_labels"}
_PRETTY = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]


@dataclass
class CifarData:
    """Images as uint8 tensors of shape (N, 3, 32, 32) with int64 labels, for three splits."""

    name: str  # "cifar10" or "cifar100"
    source: str  # "official", "unofficial copy" or "synthetic"
    classes: list[str]
    train_images: Tensor
    train_labels: Tensor
    val_images: Tensor
    val_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    mean: tuple[float, float, float]  # per channel, measured on this training split
    std: tuple[float, float, float]
    seed: int = 0
    root: str | None = None

    def __post_init__(self) -> None:
        """Check the splits against each other and against `classes` (also on every `replace`).

        Labels outside the classes or images of the wrong type would otherwise train and
        evaluate without a word, to meaningless numbers.
        """
        n = len(self.classes)
        if n < 1:
            raise DatasetError("CifarData needs at least one class name in `classes`")
        for split in ("train", "val", "test"):
            images, labels = self.split(split)
            if (not isinstance(images, Tensor) or images.dtype != torch.uint8
                    or images.dim() != 4 or images.shape[1] != 3):
                got = (f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor)
                       else type(images).__name__)
                raise DatasetError(f"CifarData.{split}_images must be a uint8 tensor "
                                   f"(N, 3, H, W), got {got}")
            if (not isinstance(labels, Tensor) or labels.dtype != torch.int64
                    or labels.shape != images.shape[:1]):
                got = (f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, Tensor)
                       else type(labels).__name__)
                raise DatasetError(f"CifarData.{split}_labels must be an int64 tensor with one "
                                   f"label per image ({len(images)}), got {got}")
            if len(labels) and (labels.min() < 0 or labels.max() >= n):
                raise DatasetError(
                    f"CifarData.{split}_labels run from {labels.min().item()} to "
                    f"{labels.max().item()}, outside [0, {n}) for its {n} classes")
        _check_stats(self.mean, self.std, "CifarData")

    def check_num_classes(self, num_classes: int) -> None:
        """Raise a ConfigError unless a model with `num_classes` outputs fits these classes.

        Without it a 100-class model trains and evaluates on CIFAR-10 silently (90 outputs
        simply never win), and its numbers look plausible.
        """
        if num_classes != len(self.classes):
            raise ConfigError(
                f"the model has {num_classes} outputs but {self.title} has "
                f"{len(self.classes)} classes: build it with num_classes={len(self.classes)} "
                "(len(data.classes)), or use data with as many classes as the model")

    @property
    def title(self) -> str:
        """How results from this data should be labelled, e.g. 'CIFAR-10 (unofficial copy)'."""
        if self.source == "synthetic":
            return f"synthetic stand-in for {_PRETTY[self.name]} (random images)"
        return f"{_PRETTY[self.name]} ({self.source})"

    def split(self, split: str) -> tuple[Tensor, Tensor]:
        """The (images, labels) of 'train', 'val' or 'test'."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        return getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")

    def describe(self) -> dict:
        """Plain-data description stored in checkpoints (no tensors of images)."""
        return dict(name=self.name, source=self.source, title=self.title, root=self.root,
                    seed=self.seed, classes=list(self.classes), mean=list(self.mean),
                    std=list(self.std), n_train=len(self.train_labels),
                    n_val=len(self.val_labels), n_test=len(self.test_labels))

    def __repr__(self) -> str:
        return (f"CifarData({self.title}: {len(self.train_labels)} train, "
                f"{len(self.val_labels)} val, {len(self.test_labels)} test)")


def default_root() -> Path:
    """`$INCEPTION_DATA`, else `data/` at the repository root, else `./data` (e.g. in Colab)."""
    if os.environ.get("INCEPTION_DATA"):
        return Path(os.environ["INCEPTION_DATA"]).expanduser()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():
        return checkout / "data"
    return Path.cwd() / "data"


def load_cifar(name: str = "cifar10", root: str | Path | None = None, *, source: str = "auto",
               val_size: int = 5000, seed: int = 0, train_limit: int | None = None,
               eval_limit: int | None = None, download: bool = True) -> CifarData:
    """Load CIFAR-10 or CIFAR-100 with a seeded train/validation split.

    source="auto" reads the dataset from `root`, downloading and verifying the official archive
    if it is missing; in quick mode (INCEPTION_QUICK=1) with nothing on disk it uses the synthetic
    stand-in instead, and says so. source="synthetic" always does. `train_limit` and `eval_limit`
    keep only the first images of the training and of the validation/test splits.
    """
    if name not in _TORCHVISION:
        raise ValueError(f"name must be 'cifar10' or 'cifar100', got {name!r}")
    if source not in ("auto", "synthetic"):
        raise ValueError(f"source must be 'auto' or 'synthetic', got {source!r}")
    from_env = root is None and bool(os.environ.get("INCEPTION_DATA"))
    root = Path(root).expanduser() if root is not None else default_root()
    spec = _TORCHVISION[name]
    if root.exists() and not root.is_dir():
        where = "INCEPTION_DATA" if from_env else "the data folder (--data)"
        raise DatasetError(f"{where} points at {root}, which is a file, not a folder: point it "
                           f"at a folder that holds {spec.base_folder}/ (or where it may be "
                           "downloaded)")
    on_disk = (root / spec.base_folder).is_dir() or (root / spec.filename).is_file()
    if source == "auto" and quick_mode() and not on_disk:
        print(f"Quick mode and no {_PRETTY[name]} in {root}: using the synthetic stand-in.")
        source = "synthetic"
    if source == "synthetic":
        num_classes = 10 if name == "cifar10" else 100
        n_train = 50_000 - val_size if train_limit is None else train_limit
        n_val = val_size if eval_limit is None else min(val_size, eval_limit)
        n_test = 10_000 if eval_limit is None else eval_limit
        images, labels = make_synthetic(n_train + n_val + n_test, num_classes, seed=seed)
        train, val, test = (slice(0, n_train), slice(n_train, n_train + n_val),
                            slice(n_train + n_val, None))
        classes = CIFAR10_CLASSES if name == "cifar10" else [f"class_{i}" for i in range(100)]
        return _assemble(name, "synthetic", classes, images[train], labels[train],
                         images[val], labels[val], images[test], labels[test], seed, None)

    folder, official = _ensure_on_disk(name, root, download)
    classes = _read_meta(folder / spec.meta["filename"], spec.meta["key"], name)
    label_key = _LABEL_KEY[name]
    train_x, train_y = _read_files(folder, [f for f, _ in spec.train_list], label_key, classes)
    test_x, test_y = _read_files(folder, [f for f, _ in spec.test_list], label_key, classes)
    if not 0 <= val_size < len(train_y):
        raise DatasetError(f"{folder} holds {len(train_y)} training images, too few to hold "
                           f"out {val_size} for validation (val_size): is the dataset "
                           "complete? Delete the folder and run again to re-download it")
    perm = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:val_size].sort().values, perm[val_size:].sort().values
    train_idx = train_idx[:train_limit]
    val_idx, test_idx = val_idx[:eval_limit], torch.arange(len(test_y))[:eval_limit]
    return _assemble(name, "official" if official else "unofficial copy", classes,
                     train_x[train_idx], train_y[train_idx], train_x[val_idx], train_y[val_idx],
                     test_x[test_idx], test_y[test_idx], seed, str(root))


def make_synthetic(n: int, num_classes: int = 10, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random CIFAR-shaped uint8 images whose class sets a smooth colour pattern, plus labels.

    For offline smoke runs only: a model can learn it, so quick-mode curves move, but numbers
    from it say nothing about CIFAR.
    """
    g = torch.Generator().manual_seed(seed)
    patterns = torch.rand(num_classes, 3, 4, 4, generator=g)
    patterns = torch.nn.functional.interpolate(patterns, size=32, mode="bilinear")
    patterns = (patterns * 255).round().to(torch.int16)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    noise = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return ((patterns[labels] + noise) // 2).to(torch.uint8), labels  # half pattern, half noise


def _assemble(name, source, classes, train_x, train_y, val_x, val_y, test_x, test_y, seed,
              root) -> CifarData:
    mean, std = channel_stats(train_x)
    return CifarData(name, source, list(classes), train_x, train_y, val_x, val_y, test_x, test_y,
                     mean, std, seed, root)


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units.

    Computed from each channel's histogram of the 256 pixel values: exact integer counts, and
    ~20x faster than summing 138 million pixels as floats for the CIFAR-10 training split.
    """
    if images.numel() == 0:
        raise ValueError("channel_stats needs at least one image (is train_limit 0?)")
    levels = torch.arange(256, dtype=torch.float64) / 255
    counts = torch.stack([torch.bincount(images[:, c].reshape(-1), minlength=256)
                          for c in range(images.shape[1])]).to(torch.float64)
    n = counts.sum(dim=1)
    mean = counts @ levels / n
    std = (counts @ levels.square() / n - mean.square()).sqrt()
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def _ensure_on_disk(name: str, root: Path, download: bool) -> tuple[Path, bool]:
    """Return the dataset folder and whether every file matches the official checksums."""
    spec = _TORCHVISION[name]
    folder, archive = root / spec.base_folder, root / spec.filename
    if not folder.is_dir():
        if archive.is_file():
            if not check_integrity(str(archive), spec.tgz_md5):
                raise DatasetError(
                    f"{archive} does not match the official checksum: it is a partial or corrupt "
                    f"download. Delete it and run again, or download it anew from {spec.url}.")
            extract_archive(str(archive), str(root))
        elif download:
            _download(name, root)
        else:
            raise DatasetError(_missing_message(name, root, "download=False"))
    files = [*spec.train_list, *spec.test_list, [spec.meta["filename"], spec.meta["md5"]]]
    missing = [f for f, _ in files if not (folder / f).is_file()]
    if missing:
        raise DatasetError(
            f"{folder} is incomplete: {', '.join(missing)} missing. Delete the folder and run "
            f"again to re-download, or extract {spec.filename} from {spec.url} into {root}.")
    differ = [f for f, md5 in files if not check_integrity(str(folder / f), md5)]
    if differ:
        warnings.warn(
            f"{_relative(folder)} is not the official {_PRETTY[name]} release: {len(differ)} of "
            f"{len(files)} files differ from the official checksums (for example a re-encoded "
            "mirror). It loads, but label results from it as coming from an unofficial copy.",
            UserWarning, stacklevel=3)
    return folder, not differ


def _relative(path: Path) -> str:
    """`path` relative to the working directory: shorter, and no home folder in saved outputs."""
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)


def _download(name: str, root: Path) -> None:
    spec = _TORCHVISION[name]
    try:
        download_and_extract_archive(spec.url, str(root), filename=spec.filename, md5=spec.tgz_md5)
    except OSError as err:  # no network, DNS failure, refused connection (URLError is one)
        (root / spec.filename).unlink(missing_ok=True)  # never leave a partial archive behind
        raise DatasetError(_missing_message(name, root, f"download failed: {err}")) from None
    except RuntimeError as err:  # torchvision: "File not found or corrupted."
        raise DatasetError(f"The downloaded {spec.filename} failed its checksum ({err}). "
                           f"Delete {root / spec.filename} and run again.") from None


def _missing_message(name: str, root: Path, reason: str) -> str:
    spec = _TORCHVISION[name]
    return (f"{_PRETTY[name]} is not in {root / spec.base_folder} and could not be fetched "
            f"({reason}). Download {spec.url} by hand and put {spec.filename} in {root} (it is "
            f"verified and extracted on first use), or set INCEPTION_DATA to a folder that holds "
            f"{spec.base_folder}/.")


# ---------------------------------------------------------------------------------------------
# Reading the batch files. They are pickles, and `pickle.load` runs whatever a file asks for, so
# they are read by an unpickler that resolves only the few names the format needs: NumPy's array
# and scalar reconstruction (under NumPy 1 and NumPy 2 module names), and the latin-1 bytes
# helper of Python 3 protocol-2 pickles. Dicts, lists, strings and numbers need no names at all.
# The official files (Python 2 cPickle, protocol 2, byte-string keys read with latin-1) and the
# offline copy (protocol 4, str keys) both load; anything else is refused before it can run.


def _latin1_bytes(text: str, encoding: str = "utf-8") -> bytes:
    """Stands in for `_codecs.encode`, as Python 3 pickles bytes at protocol 2, latin-1 only."""
    if encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _safe_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core import multiarray, numeric  # NumPy 2 (and a shim in 1.26)
    except ImportError:  # older NumPy 1
        from numpy.core import multiarray, numeric
    safe = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): _latin1_bytes}
    for package in ("numpy.core", "numpy._core"):  # the name the writer's NumPy used
        safe[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        safe[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        safe[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5
    return safe


class _Refused(pickle.UnpicklingError):
    """A pickle asked for a name outside the CIFAR format's few: it is not loaded."""


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that can build dicts, lists, strings, numbers and NumPy arrays, nothing else."""

    _SAFE = _safe_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._SAFE[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def _unpickle(path: Path):
    """Load one CIFAR pickle with `_CifarUnpickler`; DatasetError naming the file otherwise."""
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, encoding="latin1").load()
    except _Refused as err:
        raise DatasetError(
            f"{path} is not a plain CIFAR file: it asks to load {err}, which no CIFAR file "
            "needs (a pickle can run code), so it was refused and nothing in it ran. Delete "
            f"{path.parent} and download the dataset again from a source you trust.") from None
    except OSError as err:
        raise DatasetError(f"cannot read {path} ({err.strerror or err}): check its "
                           "permissions, or delete the folder and download it again") from None
    except Exception as err:  # noqa: BLE001 - whatever a damaged pickle raises, it is damaged
        detail = str(err).strip().splitlines()
        raise DatasetError(
            f"{path} is truncated or corrupt ({type(err).__name__}"
            f"{': ' + detail[0] if detail else ''}). Delete {path.parent} and run again to "
            "re-download it.") from None


def _invalid(path: Path, problem: str) -> DatasetError:
    return DatasetError(f"{path} {problem}, so it is not a valid CIFAR file. Delete "
                        f"{path.parent} and run again to re-download it.")


def _check_pixels(path: Path, data) -> np.ndarray:
    """The images of one file as uint8 (N, 3, 32, 32); never a silent cast from another dtype."""
    if not isinstance(data, np.ndarray):
        raise _invalid(path, f"stores its images as a {type(data).__name__}, not a NumPy array")
    if data.dtype != np.uint8:
        span = ""
        if data.size and (np.issubdtype(data.dtype, np.integer)
                          or np.issubdtype(data.dtype, np.floating)):
            span = f" (values {data.min()} to {data.max()})"
        raise _invalid(path, f"stores {data.dtype} pixels{span} where CIFAR has uint8 in 0-255")
    if data.ndim == 2 and data.shape[1] == 3 * 32 * 32:
        return data.reshape(-1, 3, 32, 32)
    if data.ndim == 4 and data.shape[1:] == (3, 32, 32):
        return data
    raise _invalid(path, f"stores images of shape {data.shape} where CIFAR has (N, 3072) "
                         "rows of 3 x 32 x 32 pixels")


def _check_labels(path: Path, labels, key: str, num_classes: int) -> np.ndarray:
    """The labels of one file as int64, each in [0, num_classes)."""
    try:
        array = np.asarray(labels)
    except (ValueError, TypeError):
        array = np.asarray([None])  # ragged or odd: reported below as not integers
    if array.size == 0:
        array = array.astype(np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise _invalid(path, f"stores {key!r} as {array.dtype} of shape {array.shape} where "
                             "CIFAR has a list of integer class indices")
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise _invalid(path, f"has {key!r} from {array.min()} to {array.max()}, outside "
                             f"[0, {num_classes}) for the {num_classes} classes its meta "
                             "file names")
    return array.astype(np.int64)


def _read_files(folder: Path, files: list[str], label_key: str,
                classes: list[str]) -> tuple[Tensor, Tensor]:
    images, labels = [], []
    for name in files:
        path = folder / name
        entry = _unpickle(path)
        if not isinstance(entry, dict):
            raise _invalid(path, f"holds a {type(entry).__name__} where CIFAR has a dict")
        missing = [k for k in ("data", label_key) if k not in entry]
        if missing:
            raise _invalid(path, f"has no {' or '.join(map(repr, missing))} entry")
        data = _check_pixels(path, entry["data"])
        label = _check_labels(path, entry[label_key], label_key, len(classes))
        if len(data) != len(label):
            raise _invalid(path, f"has {len(data)} images but {len(label)} labels")
        images.append(torch.from_numpy(data))
        labels.append(torch.from_numpy(label))
    return torch.cat(images), torch.cat(labels)


def _read_meta(path: Path, key: str, name: str) -> list[str]:
    """The class names from the meta file, which must name exactly the dataset's classes."""
    meta = _unpickle(path)
    if not isinstance(meta, dict) or key not in meta:
        raise _invalid(path, f"has no {key!r} entry")
    names = meta[key]
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise _invalid(path, f"stores {key!r} as {type(names).__name__} where CIFAR has a "
                             "list of class names")
    expected = _NUM_CLASSES[name]
    if len(names) != expected:
        raise _invalid(path, f"names {len(names)} classes, but {_PRETTY[name]} has "
                             f"{expected} (labels 0 to {expected - 1})")
    return list(names)


# ---------------------------------------------------------------------------------------------
# Normalisation and batch augmentation: whole-batch tensor ops, no per-image Python.


def normalize(images: Tensor, mean: tuple[float, ...] | Tensor,
              std: tuple[float, ...] | Tensor) -> Tensor:
    """uint8 images (N, 3, H, W) to float32, standardised per channel.

    `mean`/`std` may already be tensors on the images' device (the loader caches them): building
    them from Python floats is a host-to-device copy, which on a GPU would sync every batch.
    """
    m = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.float() - m * 255) / (s * 255)


def denormalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Undo `normalize`, back to floats in [0, 1] for display."""
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() * s + m).clamp(0, 1)


def _reflect(index: Tensor, size: int) -> Tensor:
    """Map out-of-range indices back inside by mirroring at the edges (like reflect padding)."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def shard_indices(order: Tensor, batch_size: int, rank: int, world_size: int) -> Tensor:
    """This rank's rows of an epoch's shuffled `order`: its slice of every global batch.

    One process with batch N*b takes batch i as order[i*N*b : (i+1)*N*b]; rank r of N takes the
    r-th b of those, so together the ranks see exactly that batch. The incomplete last global
    batch is dropped, as one process drops it. Returns a (steps, batch_size) index tensor.
    """
    global_batch = batch_size * world_size
    steps = len(order) // global_batch
    return order[:steps * global_batch].view(steps, world_size, batch_size)[:, rank]


def _slice_of(share: tuple[int, int], b: int) -> tuple[int, slice]:
    """How many random draws a batch needs, and which of them belong to these `b` images.

    `share` = (rank, world_size): the images are the rank-th of world_size equal slices of one
    global batch. Drawing for the whole global batch and keeping the slice gives each image the
    numbers one process would have drawn for it.
    """
    rank, world_size = share
    return b * world_size, slice(rank * b, (rank + 1) * b)


def random_crop_flip(images: Tensor, padding: int = 4, flip: bool = True,
                     generator: torch.Generator | None = None,
                     share: tuple[int, int] = (0, 1)) -> Tensor:
    """Per-sample random crop (from a reflect-padded image) and horizontal flip, in one gather.

    Each image gets its own shift in [-padding, padding] on both axes and its own coin flip.
    Nothing is padded in memory: the crop is a gather with mirrored indices. `share` (rank,
    world_size) marks the images as one rank's slice of a global batch (see `_slice_of`).
    """
    b, c, h, w = images.shape
    dev = images.device
    n, mine = _slice_of(share, b)
    dy = torch.randint(-padding, padding + 1, (n, 1), device=dev, generator=generator)[mine]
    dx = torch.randint(-padding, padding + 1, (n, 1), device=dev, generator=generator)[mine]
    rows = torch.arange(h, device=dev) + dy
    cols = torch.arange(w, device=dev) + dx
    if flip:
        flipped = torch.rand(n, 1, device=dev, generator=generator)[mine] < 0.5
        cols = torch.where(flipped, cols.flip(1), cols)
    rows, cols = _reflect(rows, h), _reflect(cols, w)
    batch = torch.arange(b, device=dev).view(b, 1, 1, 1)
    chan = torch.arange(c, device=dev).view(1, c, 1, 1)
    return images[batch, chan, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


def cutout(images: Tensor, size: int, generator: torch.Generator | None = None,
           share: tuple[int, int] = (0, 1)) -> Tensor:
    """Zero a size x size square at a random centre of each image (clipped at the borders).

    Applied after normalisation, so zero means "the mean colour" (DeVries & Taylor, 2017).
    `share` as in `random_crop_flip`.
    """
    b, _, h, w = images.shape
    dev = images.device
    n, mine = _slice_of(share, b)
    cy = torch.randint(0, h, (n, 1, 1), device=dev, generator=generator)[mine]
    cx = torch.randint(0, w, (n, 1, 1), device=dev, generator=generator)[mine]
    ys = torch.arange(h, device=dev).view(1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    top, left = cy - size // 2, cx - size // 2
    hole = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return images * (~hole).unsqueeze(1).to(images.dtype)


def _check_stats(mean, std, owner: str, channels: int = 3) -> None:
    """Per-channel mean and std must be finite, one per channel, and std positive.

    They are the only way a NaN or inf can enter a batch: images are uint8, which cannot hold
    one. So with them checked, the loader never hands the model a non-finite batch (which in
    training mode would poison the BatchNorm running statistics for good).
    """
    for label, values in (("mean", mean), ("std", std)):
        values = tuple(values)
        if len(values) != channels or not all(math.isfinite(float(v)) for v in values):
            raise ConfigError(f"{owner} {label} must be {channels} finite numbers, one per "
                              f"channel, got {values}")
    if min(float(v) for v in std) <= 0:
        raise ConfigError(f"{owner} std must be positive in every channel, got {tuple(std)}: "
                          "a channel with std 0 holds one value only, and normalising it "
                          "divides by zero")


class DeviceLoader:
    """Batches drawn from uint8 images that live on the training device.

    The whole split is copied to `device` once (CIFAR-10's 50,000 images are 150 MB as uint8).
    Each epoch reshuffles with the loader's own generator; training batches are cropped,
    flipped and optionally cut out per sample with batch-wide tensor ops, normalised, and
    handed over channels_last. No worker processes, PIL or per-image Python, so Colab's two
    vCPUs never starve its GPU, and no host sync happens inside the loop.

    Rank `rank` of `world_size` data-parallel ranks (training only) yields its slice of each
    global batch of world_size x batch_size: every rank draws the epoch's order and the
    augmentation's random numbers exactly as one process with the global batch would, and keeps
    its share (`shard_indices`). The split then stays in host memory and
    each epoch moves only this rank's images to the device, so device memory falls with the
    number of ranks, and the shards change every epoch, reproducibly from the seed.
    """

    def __init__(self, images: Tensor, labels: Tensor, *, batch_size: int,
                 mean: tuple[float, ...], std: tuple[float, ...],
                 device: torch.device | str = "cpu", train: bool = False, crop_padding: int = 4,
                 flip: bool = True, cutout_size: int = 0, channels_last: bool = True,
                 drop_last: bool | None = None, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ConfigError(f"DeviceLoader wants uint8 images (N, C, H, W), got "
                             f"{images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ConfigError(f"{len(images)} images but {len(labels)} labels")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        _check_stats(mean, std, "DeviceLoader", channels=images.shape[1])
        self.drop_last = train if drop_last is None else drop_last
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        if world_size > 1 and not (train and self.drop_last):
            raise ConfigError("only a training loader (train=True, drop_last) is shared between "
                              "ranks: give each rank its own part of evaluation data instead")
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        home = self.device if world_size == 1 else torch.device("cpu")
        self.images, self.labels = images.to(home), labels.to(home)
        self.batch_size, self.train = batch_size, train
        self.crop_padding, self.flip, self.cutout_size = crop_padding, flip, cutout_size
        self.channels_last = channels_last
        self.mean, self.std = tuple(mean), tuple(std)
        self._mean = torch.tensor(self.mean, dtype=torch.float32, device=self.device)
        self._std = torch.tensor(self.std, dtype=torch.float32, device=self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def __len__(self) -> int:
        n, b = len(self.labels), self.batch_size * self.world_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self):
        n, b = len(self.labels), self.batch_size
        order = (torch.randperm(n, device=self.device, generator=self.generator) if self.train
                 else torch.arange(n, device=self.device))
        if self.world_size == 1:
            images, labels = self.images, self.labels
            batches = (order[i * b:(i + 1) * b] for i in range(len(self)))
        else:  # this epoch's shard to the device, once; its batches are then consecutive
            mine = shard_indices(order, b, self.rank, self.world_size).reshape(-1).cpu()
            images, labels = self.images[mine].to(self.device), self.labels[mine].to(self.device)
            batches = (slice(i * b, (i + 1) * b) for i in range(len(self)))
        for idx in batches:
            x = images[idx]
            yield (self.augment(x) if self.train else self.prepare(x)), labels[idx]

    def prepare(self, images: Tensor) -> Tensor:
        """Normalise uint8 images and set the memory format the model runs fastest in."""
        x = normalize(images, self._mean, self._std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def augment(self, images: Tensor) -> Tensor:
        """The training transform: crop and flip, normalise, then cutout if enabled."""
        share = (self.rank, self.world_size)
        if self.crop_padding or self.flip:
            images = random_crop_flip(images, self.crop_padding, self.flip, self.generator,
                                      share)
        x = self.prepare(images)
        return cutout(x, self.cutout_size, self.generator, share) if self.cutout_size else x

    def state_dict(self) -> dict:
        """The shuffling/augmentation RNG state, so a resumed run draws the same batches."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
