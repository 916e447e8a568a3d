"""Datasets as uint8 tensors in memory, and the device-resident loader that batches them.

Split by concern: `dataset` (`ImageData`, the in-memory data, and its statistics), `cifar` (CIFAR
files), `folder` (image folders and their cache), `subset` (some classes, or a few images per
class), `augment` (batch transforms) and `loader` (batches on the device). This file only
re-exports them, so `from inception.data import X` names the same objects as before the split.
It knows nothing about models or training loops.
"""

from inception.data.augment import (
    SMALL_SIDE,
    cutout,
    default_crop,
    denormalize,
    normalize,
    random_crop_flip,
    random_resized_crop_flip,
    resized_crop,
)
from inception.data.cifar import (
    _TORCHVISION,  # noqa: F401 - tests patch its checksums
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    PUBLISHED_STATS,
    load_cifar,
    make_synthetic,
)
from inception.data.dataset import (
    CifarData,
    ImageData,
    channel_stats,
    default_root,
    split_indices,
)
from inception.data.folder import (
    available_memory,
    load_folder,
    read_image,
    unreadable_reason,
)
from inception.data.loader import DeviceLoader, shard_indices
from inception.data.subset import few_per_class, select_classes
from inception.errors import ConfigError, DatasetError

__all__ = [
    "ImageData", "CifarData", "channel_stats", "split_indices", "default_root",
    "load_cifar", "make_synthetic", "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD",
    "CIFAR100_MEAN", "CIFAR100_STD", "PUBLISHED_STATS",
    "load_folder", "read_image", "unreadable_reason", "available_memory",
    "select_classes", "few_per_class",
    "normalize", "denormalize", "random_crop_flip", "cutout", "resized_crop",
    "random_resized_crop_flip", "default_crop", "SMALL_SIDE",
    "DeviceLoader", "shard_indices",
    "ConfigError", "DatasetError",
]
