"""CIFAR-10/100: finding, downloading, verifying and decoding them, and a seeded split.

Owns the official files and their safe reading, and the synthetic stand-in for offline runs.
It returns an `ImageData` and knows nothing about batches, models or training loops.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import (
    check_integrity,
    download_and_extract_archive,
    extract_archive,
)

from inception.data.dataset import (
    _PRETTY,
    ImageData,
    _relative,
    channel_stats,
    check_limits,
    default_root,
    split_indices,
)
from inception.errors import ConfigError, DatasetError, first_line
from inception.runtime import quick_mode, reachable

# Published per-channel statistics of the official training sets (RGB, pixel values in [0, 1]).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
PUBLISHED_STATS = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD),
                   "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}

# torchvision's dataset classes carry the official URL, file names and MD5 checksums.
_TORCHVISION = {"cifar10": CIFAR10, "cifar100": CIFAR100}
_LABEL_KEY = {"cifar10": "labels", "cifar100": "fine_labels"}
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]


def load_cifar(name: str = "cifar10", root: str | Path | None = None, *, source: str = "auto",
               val_size: int = 5000, seed: int = 0, train_limit: int | None = None,
               eval_limit: int | None = None, download: bool = True) -> ImageData:
    """Load CIFAR-10 or CIFAR-100 with a seeded train/validation split.

    source="auto" reads the dataset from `root`, downloading and verifying the official archive
    if it is missing; in quick mode (INCEPTION_QUICK=1) with nothing on disk it uses the synthetic
    stand-in instead, and says so. source="synthetic" always does. `train_limit` and `eval_limit`
    keep only the first images of the training and of the validation/test splits.
    """
    if name not in _TORCHVISION:
        raise ConfigError(f"name must be 'cifar10' or 'cifar100', got {name!r}")
    if source not in ("auto", "synthetic"):
        raise ConfigError(f"source must be 'auto' or 'synthetic', got {source!r}")
    check_limits(train_limit, eval_limit)
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
    val_idx, train_idx = split_indices(len(train_y), [val_size], seed)
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
              root) -> ImageData:
    mean, std = channel_stats(train_x)
    return ImageData(name, source, list(classes), train_x, train_y, val_x, val_y, test_x, test_y,
                     mean, std, seed, root)


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



def _download(name: str, root: Path) -> None:
    spec = _TORCHVISION[name]
    if not reachable(spec.url):  # offline, the download itself takes minutes to give up
        raise DatasetError(_missing_message(
            name, root, f"download failed: {urlparse(spec.url).hostname} cannot be reached"))
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
        raise DatasetError(
            f"{path} is truncated or corrupt ({first_line(err)}). Delete {path.parent} and run "
            "again to re-download it.") from None


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

