"""Data-parallel training under torchrun: the process group, the ranks, and stopping together.

Owns joining and leaving the process group torchrun describes (gloo on the CPU, NCCL on CUDA),
which rank is the main one, how the validation images are shared out between the ranks, and
the one small message per step that makes every rank stop at the same step. It does not train,
load data or print (how a rank takes its share of each training batch is the data loader's
business: `inception.data.shard_indices`). With one process every function here does nothing,
so `fit` reads the same with or without DDP.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from inception.errors import ConfigError, DistributedError, first_line

# How long a rank waits in a collective for the others before it gives up. A rank that dies is
# noticed at once (its sockets close), and torchrun stops the other ranks on its own node within
# a second; this bound is for the rest: a rank that hangs, or a whole node that disappears. It
# must exceed the longest legitimate wait: the main rank writing a checkpoint while the others
# wait at the next step, or rank 0 downloading the dataset before the others read it. Ten
# minutes is also torch's own default for NCCL.
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run: rank 0 of 1 when not under torchrun."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # the rank's index on its own machine (its GPU under NCCL)
    timeout_s: float = DEFAULT_TIMEOUT_S
    control: object | None = None  # the CPU (gloo) group for stop messages; None: the default

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints, writes checkpoints and history, and downloads."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


SINGLE = World()  # one process, no torchrun


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"the environment variable {name}={text!r} is not a whole number; "
                          "it is set by torchrun: launch with torchrun, or unset it") from None


def from_env() -> World:
    """The ranks torchrun announced in RANK, WORLD_SIZE and LOCAL_RANK (one rank without them)."""
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if size < 1 or not 0 <= rank < size or local_rank < 0:
        raise ConfigError(f"torchrun's environment is inconsistent (RANK={rank}, "
                          f"WORLD_SIZE={size}, LOCAL_RANK={local_rank}): launch with torchrun, "
                          "or unset these variables")
    return World(rank=rank, size=size, local_rank=local_rank)


def rank_device(device: torch.device, world: World) -> torch.device:
    """The device this rank trains on: cuda:LOCAL_RANK on a GPU node, the CPU otherwise."""
    if not world.parallel or device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ConfigError(f"data-parallel training runs on cpu or cuda, not {device.type}")
    if device.index not in (None, world.local_rank):
        raise ConfigError(f"under torchrun each rank uses the GPU of its LOCAL_RANK (rank "
                          f"{world.rank} uses cuda:{world.local_rank}), so --device {device} "
                          "cannot hold: pass --device cuda, and choose GPUs with "
                          "CUDA_VISIBLE_DEVICES")
    if world.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK {world.local_rank} has no GPU: this machine has "
                          f"{torch.cuda.device_count()}; start at most that many processes "
                          "per node (torchrun --nproc_per_node)")
    return torch.device("cuda", world.local_rank)


@contextmanager
def process_group(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[World]:
    """Join the process group torchrun describes for the body of the `with`, then leave it.

    gloo on the CPU, NCCL on CUDA (each rank on the GPU of its LOCAL_RANK). One process sets
    nothing up. Inside another `process_group` (the command line's, around `fit`'s) the outer
    one is used; a group joined some other way (a test, a notebook) is used as it is and left
    for its owner to close. Stop messages travel on a gloo group of their own when the main
    group is NCCL, so agreeing on them never waits for queued GPU work.
    """
    global _current
    if _current is not None:
        yield _current
        return
    if dist.is_available() and dist.is_initialized():
        world = World(rank=dist.get_rank(), size=dist.get_world_size(),
                      local_rank=_env_int("LOCAL_RANK", dist.get_rank()), timeout_s=timeout_s)
        with _control_group(world) as world, _as_current(world):
            yield world
        return
    world = from_env()
    if not world.parallel:
        yield World(timeout_s=timeout_s)
        return
    if not dist.is_available():
        raise ConfigError("this build of torch has no torch.distributed: install the standard "
                          "build from pytorch.org to train with torchrun")
    device = rank_device(device, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            timeout=timedelta(seconds=timeout_s))
    try:
        world = World(world.rank, world.size, world.local_rank, timeout_s)
        with _control_group(world) as world, _as_current(world):
            yield world
    finally:
        dist.destroy_process_group()


_current: World | None = None  # the World of the `process_group` block being run, if any


@contextmanager
def _as_current(world: World) -> Iterator[None]:
    global _current
    _current = world
    try:
        yield
    finally:
        _current = None


@contextmanager
def _control_group(world: World) -> Iterator[World]:
    """`world` with a gloo group for stop messages, when the default group is not gloo already."""
    if world.size == 1 or dist.get_backend() == "gloo":
        yield world
        return
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=world.timeout_s))
    try:
        yield World(world.rank, world.size, world.local_rank, world.timeout_s, group)
    finally:
        dist.destroy_process_group(group)


def wrap(model: nn.Module, world: World, device: torch.device,
         sync_batchnorm: bool) -> nn.Module:
    """The module the training step calls: `model` itself, or `model` inside DDP.

    DDP copies rank 0's weights to every rank, then averages the gradients across ranks during
    `backward`, overlapped with it, so every rank takes the same optimizer step. With
    `sync_batchnorm`, BatchNorm normalises with statistics over the global batch instead of each
    rank's share (torch's SyncBatchNorm, which runs on GPUs only). The layers are converted in
    place; their parameters and buffers keep their names, so checkpoints are unchanged.
    """
    if not world.parallel:
        return model
    if sync_batchnorm:
        if device.type != "cuda":
            raise ConfigError("sync_batchnorm needs CUDA: torch's SyncBatchNorm does not run on "
                              "the CPU. Train without it (each rank then normalises over its "
                              "own per-rank batch)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                   else None)


def shard_range(n: int, world: World) -> slice:
    """This rank's contiguous part of n items (validation images); sizes differ by one at most."""
    return slice(n * world.rank // world.size, n * (world.rank + 1) // world.size)


def sum_over_ranks(values: Tensor, world: World) -> Tensor:
    """`values` summed over every rank, on each rank (one all-reduce; nothing with one rank)."""
    if world.parallel:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def agree(world: World, seconds: float, stop: bool) -> tuple[float, bool]:
    """One clock and one stop decision for all ranks: the latest clock; stop if any rank asks.

    Called after every step. Each rank reads its own clock, so a learning rate or a budget taken
    from it would differ by rank (and then the weights would), and a Ctrl-C reaches the ranks at
    different moments. Sharing both in one all-reduce of two numbers makes every rank decide the
    same thing after the same step.
    """
    if not world.parallel:
        return seconds, stop
    both = torch.tensor([seconds, float(stop)], dtype=torch.float64)
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=world.control)
    return both[0].item(), bool(both[1].item())


@contextmanager
def stop_requests(world: World) -> Iterator[Callable[[], bool]]:
    """Ctrl-C as a request to stop after the current step, when several ranks must stop together.

    Yields a function that says whether a stop was asked for. With one process it never does:
    Ctrl-C raises KeyboardInterrupt at once, as always. Under torchrun each rank gets SIGINT
    (torchrun forwards it, then kills ranks still running 30 s later); a rank that stopped at
    once would leave the others waiting in a collective, so the signal only sets a flag, which
    `agree` shares.
    """
    if not world.parallel or threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    asked: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: asked.append(signum))
    try:
        yield lambda: bool(asked)
    finally:
        signal.signal(signal.SIGINT, previous)


def _is_collective_failure(err: BaseException) -> bool:
    # NCCL failures are DistError; gloo raises a plain RuntimeError naming its own source file
    # ("gloo/transport/tcp/...: Connection closed by peer", "Timed out waiting 600000ms").
    return isinstance(err, dist.DistError) or (isinstance(err, RuntimeError)
                                               and "gloo" in str(err))


@contextmanager
def collective_errors(world: World, saved: str) -> Iterator[None]:
    """Turn a failed collective (another rank died or hung) into one clear DistributedError.

    `saved` says what the user still has, e.g. which checkpoint to resume from.
    """
    try:
        yield
    except Exception as err:
        if not (world.parallel and _is_collective_failure(err)):
            raise
        raise DistributedError(
            f"rank {world.rank} of {world.size} lost the other ranks "
            f"({first_line(err, typed=False, limit=200)}): another "
            f"rank crashed, was stopped, or did not answer for {world.timeout_s:.0f} s. Its "
            f"own error is in its output (torchrun names the rank that failed first). "
            f"{saved}") from None


def reseed_rank(world: World, seed: int, step: int) -> None:
    """Give each rank its own stream of dropout masks (rank 0 keeps the run's own stream).

    Every rank is seeded alike so the initial weights agree; without this each rank would then
    draw the same dropout masks for its different images. A resumed run restores rank 0's
    stream from the checkpoint, and the other ranks restart theirs from the seed and the step.
    """
    if world.parallel and world.rank > 0:
        torch.manual_seed(seed + 1_000_003 * world.rank + step)


def share_buffers(module: nn.Module, world: World) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP hands rank 0's buffers to the others before each forward pass, but the last pass of an
    epoch leaves each rank's statistics updated by its own batch. Sharing them before validation
    makes every rank score the model rank 0 saves.
    """
    if world.parallel:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


@contextmanager
def main_first(world: World) -> Iterator[None]:
    """Rank 0 runs the body first (a download, say); the other ranks run it once it is done."""
    if world.parallel and not world.is_main:
        dist.barrier(group=world.control)
    yield
    if world.parallel and world.is_main:
        dist.barrier(group=world.control)
