"""The device-resident loader: shuffling, sharding between ranks, and batches.

Owns which images make each batch (`shard_indices`, `DeviceLoader`). The transforms it applies
are `inception.data.augment`'s; where the images came from is no concern of it.
"""

from __future__ import annotations

import hashlib
import warnings

import torch
from torch import Tensor

from inception.data.augment import (
    CROPS,
    cutout,
    default_crop,
    normalize,
    random_crop_flip,
    random_resized_crop_flip,
)
from inception.data.dataset import _check_stats
from inception.errors import ConfigError


def shard_indices(order: Tensor, batch_size: int, rank: int, world_size: int) -> Tensor:
    """This rank's rows of an epoch's shuffled `order`: its slice of every global batch.

    One process with batch N*b takes batch i as order[i*N*b : (i+1)*N*b]; rank r of N takes the
    r-th b of those, so together the ranks see exactly that batch. The incomplete last global
    batch is dropped, as one process drops it. Returns a (steps, batch_size) index tensor.
    """
    global_batch = batch_size * world_size
    steps = len(order) // global_batch
    return order[:steps * global_batch].view(steps, world_size, batch_size)[:, rank]


class DeviceLoader:
    """Batches drawn from uint8 images that live on the training device.

    The whole split is copied to `device` once (CIFAR-10's 50,000 images are 150 MB as uint8).
    Each epoch reshuffles with the loader's own generator; training batches are cropped,
    flipped and optionally cut out per sample with batch-wide tensor ops, normalised, and
    handed over channels_last. The crop is `crop`: "pad" shifts small images by up to
    `crop_padding` pixels (CIFAR's), "resized" takes the paper's random-area crop of large
    ones (`random_resized_crop_flip`), and "auto" picks by the images' side (`default_crop`).
    No worker processes, PIL or per-image Python, so Colab's two vCPUs never starve its GPU,
    and no host sync happens inside the loop.

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
                 world_size: int = 1, crop: str = "auto") -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ConfigError(f"DeviceLoader wants uint8 images (N, C, H, W), got "
                             f"{images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ConfigError(f"{len(images)} images but {len(labels)} labels")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        _check_stats(mean, std, "DeviceLoader", channels=images.shape[1])
        if crop not in CROPS:
            raise ConfigError(f"crop must be one of {CROPS}, got {crop!r}")
        self.crop = default_crop(min(images.shape[-2:])) if crop == "auto" else crop
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
        if self.crop == "resized":
            images = random_resized_crop_flip(images, flip=self.flip, generator=self.generator,
                                              share=share)
        elif self.crop_padding or self.flip:
            images = random_crop_flip(images, self.crop_padding, self.flip, self.generator,
                                      share)
        x = self.prepare(images)
        return cutout(x, self.cutout_size, self.generator, share) if self.cutout_size else x

    def state_dict(self) -> dict:
        """The shuffling/augmentation RNG state, so a run resumed at an epoch's end draws the
        batches an uninterrupted run would (the position within an epoch is not kept)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Continue the saved stream. `set_state` takes a CPU tensor even for a CUDA generator,
        and `torch.load(map_location=...)` may have moved it to the GPU.

        A CPU generator's state (Mersenne Twister) does not fit a CUDA one (Philox), so a run
        moved between the two kinds of device continues with a new order, seeded from the saved
        state (the same checkpoint gives the same order every time), and says so.
        """
        saved = state["generator"].cpu()
        if saved.numel() == self.generator.get_state().numel():
            self.generator.set_state(saved)
            return
        seed = int.from_bytes(hashlib.sha256(saved.numpy().tobytes()).digest()[:8], "little")
        self.generator.manual_seed(seed)
        warnings.warn(f"the checkpoint's data order was drawn on another kind of device than "
                      f"this {self.generator.device.type}: the run continues with a new seeded "
                      "order, so its result will differ slightly from an uninterrupted run's",
                      stacklevel=3)
