"""Image folders (one subfolder per class, as torchvision's ImageFolder) as uint8 tensors.

Owns finding the files and classes, decoding and resizing the images, checking the layout, and
the on-disk cache of decoded tensors. It returns the same `ImageData` as CIFAR, so training and
evaluation need nothing new; it knows nothing about batches, models or training loops.

Layout: ROOT/train/<class>/<image> and, optionally, ROOT/val/<class>/... and
ROOT/test/<class>/...; a missing val/ or test/ is held out of train/ by `split_indices`.
Cache: ROOT/.inception-cache/<size>px-<key>.pt, where the key hashes every file's path, size,
modification time and (on POSIX) status-change time with the image size, so any change to the
folder makes a new one (the stale file of the same size is then deleted). Delete the folder to
free the space. The ctime is there because a tool may rewrite a file and set its mtime back
(touch -d, rsync --times, a restored backup): with the same size, only the ctime, which every
write moves and no user can set, tells. What the key still misses: such an edit on Windows,
where st_ctime is the creation time; one in the same clock tick (a few ms) as the file's
previous change; and one hidden by setting the system clock back. It also sees changes that
leave the pixels alone (chmod, a copy of the folder), which cost one decode, no wrong data.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.io import ImageReadMode, decode_image
from tqdm import tqdm

from inception.data.dataset import ImageData, channel_stats, check_limits, split_indices
from inception.errors import ConfigError, DatasetError, first_line
from inception.runtime import save_atomically

SPLITS = ("train", "val", "test")
CACHE_DIR = ".inception-cache"
# Bumped whenever decoding or resizing changes, so no cache from older code is ever read.
_CACHE_VERSION = 1
# The held-out parts are cut from train/ by indexing, which copies them once: the peak is up to
# twice the images' own size.
_HEADROOM = 2
# At most this many bad files are named in the warning (the rest are counted).
_LISTED = 20
# torchvision 0.29 deprecates its image decoders in favour of TorchCodec, warning on every call.
# They still decode, and TorchCodec would be one more dependency; PIL reads what they cannot.
_TORCHVISION_IO_DEPRECATED = "The image decoding and encoding capabilities of TorchVision"


def available_memory() -> int | None:
    """Bytes of memory free for new allocations, or None where that cannot be told.

    Linux's MemAvailable (free memory plus caches it can drop), else the free physical pages
    (`os.sysconf`), which undercount it.
    """
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return None


def read_image(path: str | Path, image_size: int, resize: int | None = None) -> Tensor:
    """One image file as uint8 (3, image_size, image_size): RGB, shorter side resized, centre crop.

    The shorter side goes to `resize` (default: `image_size`) before the crop: ImageNet models
    are fed 256 cropped to 224, so the crop keeps the middle 87.5% of the picture.

    Grey, grey+alpha, RGBA and palette images become RGB (alpha is dropped); 16-bit images are
    scaled to 8 bits. The resize is antialiased, so shrinking a large photo does not alias.
    Formats torchvision.io cannot decode (BMP, TIFF, PPM) are read with PIL instead.
    """
    data = Path(path).read_bytes()  # an OSError (missing, no permission) names the reason
    try:
        with warnings.catch_warnings():  # one per image otherwise: see _TORCHVISION_IO_DEPRECATED
            warnings.filterwarnings("ignore", _TORCHVISION_IO_DEPRECATED, DeprecationWarning)
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                 mode=ImageReadMode.RGB)
    except RuntimeError:  # not a format torchvision.io reads; PIL knows the others
        from PIL import Image

        with Image.open(io.BytesIO(data)) as opened:
            image = torch.from_numpy(np.array(opened.convert("RGB"))).permute(2, 0, 1)
    if image.dim() == 4:  # an animated GIF: its first frame
        image = image[0]
    if image.dtype != torch.uint8:
        image = TF.to_dtype(image, torch.uint8, scale=True)
    image = TF.resize(image, [resize or image_size], antialias=True)
    return TF.center_crop(image, [image_size, image_size]).contiguous()


@dataclass
class _Listing:
    """What is on disk: the classes of train/, and each split's image files and labels."""

    root: Path
    classes: list[str]
    files: dict[str, list[tuple[Path, int]]]  # split -> (file, label), for the splits present
    not_images: list[Path]  # files without an image extension (named in the warning)

    def key(self, image_size: int) -> str:
        """A hash of every file's path, size, mtime and ctime (on POSIX; see the module
        docstring), and of the image size."""
        rows = [[_CACHE_VERSION, image_size, self.classes]]
        for split, entries in sorted(self.files.items()):
            for path, label in entries:
                stat = path.stat()
                rows.append([split, path.relative_to(self.root).as_posix(), label,
                             stat.st_size, stat.st_mtime_ns,
                             stat.st_ctime_ns if os.name == "posix" else None])
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]

    def count(self) -> int:
        return sum(len(entries) for entries in self.files.values())


def load_folder(path: str | Path, *, image_size: int = 128, seed: int = 0,
                val_fraction: float = 0.1, test_fraction: float = 0.1,
                train_limit: int | None = None, eval_limit: int | None = None,
                cache: bool = True) -> ImageData:
    """Load an image folder (ROOT/train/<class>/..., optional val/ and test/) as `ImageData`.

    Every image is decoded to RGB, its shorter side resized to `image_size` and the centre
    cropped square. A missing val/ or test/ is held out of train/ (`val_fraction`,
    `test_fraction` of it) by the seeded rule CIFAR uses. Mean and std are measured on the
    training split. Files that are not images or cannot be read are skipped and named in one
    warning. Decoded tensors are cached under ROOT/.inception-cache (see the module docstring),
    so the next call with the same files and size loads in seconds (`cache=False`: neither read
    nor written). `train_limit` and `eval_limit` keep the first images of the splits, as in
    `load_cifar`.
    """
    root = Path(path).expanduser()
    _check_arguments(image_size, val_fraction, test_fraction)
    check_limits(train_limit, eval_limit)
    listing = _list_files(root)
    _check_memory(listing.count(), image_size, root)
    decoded = _cached_decode(listing, image_size) if cache else None
    if decoded is None:
        decoded = _decode_all(listing, image_size)
        if cache:
            _write_cache(listing, image_size, decoded)
    _warn_bad_files(root, decoded["bad"])
    splits = {split: (entry["images"], entry["labels"])
              for split, entry in decoded["splits"].items()}
    _check_every_class_kept(root, listing.classes, splits)
    train, val, test = _held_out(root, splits, val_fraction, test_fraction, seed)
    train = train[0][:train_limit], train[1][:train_limit]
    val = val[0][:eval_limit], val[1][:eval_limit]
    test = test[0][:eval_limit], test[1][:eval_limit]
    mean, std = channel_stats(train[0])
    where = root.resolve()  # recorded in checkpoints: evaluate may run from another folder
    return ImageData(where.name, "image folder", listing.classes, *train, *val, *test, mean,
                     std, seed, str(where), load_args=dict(image_size=image_size,
                                                           val_fraction=val_fraction,
                                                           test_fraction=test_fraction))


def _check_arguments(image_size: int, val_fraction: float, test_fraction: float) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ConfigError(f"image_size must be a whole number of pixels >= 8, got "
                          f"{image_size!r}")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
    if val_fraction + test_fraction >= 1:
        raise ConfigError(f"val_fraction + test_fraction must leave images to train on, got "
                          f"{val_fraction} + {test_fraction}")


def _visible(path: str) -> bool:
    """Hidden files (.DS_Store, ._name from macOS copies) are neither images nor worth a word."""
    return not Path(path).name.startswith(".")


def _classes_of(folder: Path) -> list[str]:
    """The class folders of one split, without hidden ones (.ipynb_checkpoints is no class)."""
    try:
        classes, _ = find_classes(folder)
    except FileNotFoundError:
        return []
    return [c for c in classes if not c.startswith(".")]


def _list_files(root: Path) -> _Listing:
    """Find the classes and files of each split, and refuse a layout that cannot train."""
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DatasetError(f"the image folder {root} {what}: point --dataset at a folder "
                           "holding train/<class>/<images> (and optionally val/ and test/)")
    if not (root / "train").is_dir():
        inside = _classes_of(root)
        hint = (f"; it holds {', '.join(inside[:3])}{' ...' if len(inside) > 3 else ''} "
                f"directly: move those class folders into {root / 'train'}") if inside else ""
        raise DatasetError(f"{root} has no train/ folder{hint}. The layout is "
                           "ROOT/train/<class>/<images>, with optional val/ and test/ beside it")
    classes = _classes_of(root / "train")
    if not classes:
        raise DatasetError(f"{root / 'train'} has no class folders: put each class's images in "
                           "its own subfolder, train/<class>/<images>")
    class_to_idx = {name: i for i, name in enumerate(classes)}
    files, not_images = {}, []
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            continue
        extra = sorted(set(_classes_of(folder)) - set(classes))
        if extra:
            raise DatasetError(f"{folder} has classes that train/ lacks ({', '.join(extra)}): "
                               f"a model cannot learn them. Add them to {root / 'train'}, or "
                               f"remove them from {folder}")
        found = make_dataset(folder, class_to_idx, is_valid_file=_visible, allow_empty=True)
        images = [(Path(p), label) for p, label in found
                  if p.lower().endswith(IMG_EXTENSIONS)]
        not_images += [Path(p) for p, _ in found if not p.lower().endswith(IMG_EXTENSIONS)]
        if not images:
            fix = ("" if split == "train" else
                   f", or delete the folder to hold {split} images out of train/")
            raise DatasetError(f"{folder} holds no images: put them in {split}/<class>/<images> "
                               f"({', '.join(IMG_EXTENSIONS)}){fix}")
        present = [c for c in classes if (folder / c).is_dir()]
        having = {classes[label] for _, label in images}
        empty = [c for c in present if c not in having]
        if empty:
            raise DatasetError(f"{folder / empty[0]} holds no images"
                               f"{f' (nor do {len(empty) - 1} more)' if len(empty) > 1 else ''}"
                               f": add images ({', '.join(IMG_EXTENSIONS)}) to it, or remove "
                               "the folder")
        files[split] = images
    return _Listing(root, classes, files, not_images)


def _check_memory(n: int, image_size: int, root: Path) -> None:
    """Refuse, before decoding anything, images that would not fit in memory at this size."""
    need = n * 3 * image_size * image_size
    free = available_memory()
    if free is not None and need * _HEADROOM > free:
        smaller = int((free / _HEADROOM / (3 * n)) ** 0.5) // 8 * 8
        raise DatasetError(
            f"{n:,} images of {root} at {image_size}x{image_size} need {need / 2**30:.1f} GB "
            f"in memory as uint8 (up to {_HEADROOM}x that while the splits are cut), but only "
            f"{free / 2**30:.1f} GB is available: use a smaller image_size (--image-size "
            f"{max(smaller, 8)} fits), or fewer images")


def _decode_all(listing: _Listing, image_size: int) -> dict:
    """Decode every split's images into one uint8 tensor each; unreadable files are noted."""
    bad = [(path, "not an image file") for path in listing.not_images]
    splits = {}
    for split, entries in listing.files.items():
        images = torch.empty(len(entries), 3, image_size, image_size, dtype=torch.uint8)
        keep = torch.ones(len(entries), dtype=torch.bool)
        progress = tqdm(entries, desc=f"decoding {split}/", leave=False, unit="img",
                        disable=len(entries) < 2000, mininterval=2.0)
        for i, (path, _) in enumerate(progress):
            try:
                images[i] = read_image(path, image_size)
            except Exception as err:  # noqa: BLE001 - whatever a damaged file raises, it is skipped
                bad.append((path, unreadable_reason(err)))
                keep[i] = False
        labels = torch.tensor([label for _, label in entries], dtype=torch.int64)
        names = [p.relative_to(listing.root).as_posix() for p, _ in entries]
        if not keep.all():
            images, labels = images[keep], labels[keep]
            names = [n for n, k in zip(names, keep.tolist(), strict=True) if k]
        splits[split] = dict(images=images, labels=labels, files=names)
    return dict(splits=splits, bad=[(p.relative_to(listing.root).as_posix(), why)
                                    for p, why in bad])


def unreadable_reason(err: Exception) -> str:
    """Why `read_image` failed, in a few words: the OS's reason, or that the bytes are no image."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    return "cannot be decoded as an image"


def _warn_bad_files(root: Path, bad: list) -> None:
    """One warning naming every skipped file (the first `_LISTED`, then a count)."""
    if not bad:
        return
    named = "; ".join(f"{name} ({why})" for name, why in bad[:_LISTED])
    more = f"; and {len(bad) - _LISTED} more" if len(bad) > _LISTED else ""
    warnings.warn(f"skipped {len(bad)} file(s) in {root} that are not readable "
                  f"images: {named}{more}. Delete or fix them to silence this",
                  UserWarning, stacklevel=3)


def _check_every_class_kept(root: Path, classes: list[str], splits: dict) -> None:
    """A class whose every image was unreadable would train as if it did not exist."""
    labels = splits["train"][1]
    counts = torch.bincount(labels, minlength=len(classes)) if len(labels) else None
    if counts is None or (counts == 0).any():
        lost = (classes if counts is None
                else [c for c, n in zip(classes, counts.tolist(), strict=True) if n == 0])
        raise DatasetError(f"no readable image is left in {root / 'train' / lost[0]} (see the "
                           "warning above for the files skipped): replace them with images "
                           "that open, or remove the class folder")


def _held_out(root: Path, splits: dict, val_fraction: float, test_fraction: float,
              seed: int) -> tuple[tuple[Tensor, Tensor], ...]:
    """(train, val, test): the folders present, and any missing one held out of train/."""
    images, labels = splits["train"]
    missing = [s for s, f in (("val", val_fraction), ("test", test_fraction)) if s not in splits]
    fraction = {"val": val_fraction, "test": test_fraction}
    sizes = [round(fraction[s] * len(labels)) for s in missing]
    if sum(sizes) >= len(labels):
        raise DatasetError(f"{root / 'train'} holds {len(labels)} images, too few to hold out "
                           f"{' and '.join(missing)} from: add images, or add "
                           f"{' and '.join(f'{s}/' for s in missing)} folders")
    *parts, rest = split_indices(len(labels), sizes, seed)
    out = {s: (images[idx], labels[idx]) for s, idx in zip(missing, parts, strict=True)}
    out.update({s: splits[s] for s in ("val", "test") if s in splits})
    train = (images[rest], labels[rest]) if missing else (images, labels)
    return train, out["val"], out["test"]


# ---------------------------------------------------------------------------------------------
# The cache: one file per image size, written atomically, read with weights_only=True.


def _cache_path(listing: _Listing, image_size: int) -> Path:
    return listing.root / CACHE_DIR / f"{image_size}px-{listing.key(image_size)}.pt"


def _cached_decode(listing: _Listing, image_size: int) -> dict | None:
    """The decoded images from the cache, or None (no cache yet, or a damaged one: rebuilt)."""
    path = _cache_path(listing, image_size)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        _check_cache(payload, listing, image_size)
    except Exception as err:  # noqa: BLE001 - any damage means: decode again
        warnings.warn(f"the cache {path} is damaged ({first_line(err, limit=80)}): decoding the "
                      "images again and rewriting it", UserWarning, stacklevel=3)
        return None
    return payload


def _check_cache(payload, listing: _Listing, image_size: int) -> None:
    """Raise ValueError unless `payload` holds what this listing decodes to, split by split."""
    if not isinstance(payload, dict) or payload.get("version") != _CACHE_VERSION:
        raise ValueError("not a cache of this version")
    for split, entries in listing.files.items():
        entry = payload["splits"][split]
        images, labels = entry["images"], entry["labels"]
        if (images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, image_size, image_size)
                or labels.dtype != torch.int64 or len(labels) != len(images)
                or len(images) != len(entry["files"]) or len(images) > len(entries)):
            raise ValueError(f"its {split} tensors do not match the folder")


def _write_cache(listing: _Listing, image_size: int, decoded: dict) -> None:
    """Save atomically (temp file, then rename); drop the stale cache of the same size.

    A folder that cannot be written (a shared, read-only dataset) only costs the speed-up.
    """
    path = _cache_path(listing, image_size)
    try:
        path.parent.mkdir(exist_ok=True)
        # The pid in the temp name: ranks of one torchrun job may fill the same cache at once.
        save_atomically({"version": _CACHE_VERSION, **decoded}, path, tag=f".{os.getpid()}")
    except OSError as err:
        warnings.warn(f"cannot write the cache in {path.parent} "
                      f"({err.strerror or err}): every load decodes the images again",
                      UserWarning, stacklevel=3)
        return
    for stale in path.parent.glob(f"{image_size}px-*.pt"):
        if stale != path:
            stale.unlink(missing_ok=True)
