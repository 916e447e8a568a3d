"""Data-parallel training on the CPU: two gloo ranks against one process, files, resume, failure.

Most tests fork their ranks from the test process: torch is imported already, so a rank starts
in milliseconds. Each rank runs with one thread and joins the process group through the same
environment variables torchrun sets. Two tests run torchrun itself, as a user would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import inception.train as T
from inception import distributed
from inception.data import DeviceLoader, load_cifar, shard_indices
from inception.errors import ConfigError, DistributedError
from inception.model import ConvBNReLU, build_model
from inception.train import TrainConfig, fit, load_checkpoint, lr_at

ROOT = Path(__file__).resolve().parents[1]
RANK_TIMEOUT_S = 600  # a generous bound on any one forked run, so a hang fails instead of waiting

# 48 images: 3 global batches of 16 per epoch (2 ranks x 8, or 1 process x 16). Every random
# augmentation is on, so the test also proves the ranks draw it as one process would.
# fp32 everywhere: bf16 autocast (chosen on CPUs that have it) would round far more coarsely.
CONFIG = TrainConfig(width=0.125, epochs=2, batch_size=8, lr=0.02, train_limit=48,
                     eval_limit=20, cutout=8, ema_decay=0.9, seed=3, precision="fp32")


@pytest.fixture(scope="module")
def synthetic():
    return load_cifar(source="synthetic", train_limit=48, eval_limit=20)


# ---------------------------------------------------------------------------------------------
# Without processes: the data order, the checks, the learning-rate rule.


def test_shards_are_the_slices_of_each_global_batch():
    order = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    parts = [shard_indices(order, 4, rank, 3) for rank in range(3)]
    assert all(part.shape == (4, 4) for part in parts)  # 50 // 12 = 4 global batches of 12
    batches = torch.cat(parts, dim=1)  # rank 0's 4, then rank 1's, then rank 2's
    assert torch.equal(batches, order[:48].view(4, 12))  # one process's batches, in order


def test_each_rank_loads_its_share_of_what_one_process_loads(synthetic):
    """Images, labels and every augmentation: rank r of 2 (batch 4) yields exactly rows 4r to
    4r+3 of the batches one process with batch 8 yields, epoch after epoch."""
    images, labels = synthetic.train_images[:40], synthetic.train_labels[:40]
    kwargs = dict(mean=synthetic.mean, std=synthetic.std, train=True, cutout_size=8, seed=5)
    one = DeviceLoader(images, labels, batch_size=8, **kwargs)
    ranks = [DeviceLoader(images, labels, batch_size=4, rank=r, world_size=2, **kwargs)
             for r in (0, 1)]
    assert len(one) == len(ranks[0]) == 5
    for _ in range(2):  # the second epoch draws a new order: the shards change
        for (x, y), (x0, y0), (x1, y1) in zip(one, *ranks, strict=True):
            assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))
    with pytest.raises(ConfigError, match="only a training loader"):
        DeviceLoader(images, labels, batch_size=4, rank=0, world_size=2, mean=synthetic.mean,
                     std=synthetic.std)


def test_torchrun_settings_are_checked(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError, match=r"inconsistent \(RANK=2, WORLD_SIZE=2"):
        distributed.from_env()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ConfigError, match="RANK='one' is not a whole number"):
        distributed.from_env()
    two = distributed.World(rank=1, size=2, local_rank=1)
    with pytest.raises(ConfigError, match="SyncBatchNorm does not run on the CPU"):
        distributed.wrap(build_model("googlenet_cifar_small", width=0.125), two,
                         torch.device("cpu"), sync_batchnorm=True)


def test_learning_rate_rule_for_the_global_batch():
    assert T.lr_scale(CONFIG, 1) == (1.0, "one process")
    assert T.lr_scale(CONFIG, 4)[0] == 4.0  # SGD: linear in the global batch
    assert T.lr_scale(replace(CONFIG, optimizer="adamw"), 4)[0] == 2.0  # AdamW: square root


# ---------------------------------------------------------------------------------------------
# Forked ranks in a real gloo process group.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, fn, world_size: int, port: int, args: tuple) -> None:
    torch.set_num_threads(1)  # two ranks share two cores; and OpenMP is not fork-safe otherwise
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    fn(rank, *args)


def run_ranks(fn, *args, world_size: int = 2) -> None:
    """Run fn(rank, *args) in `world_size` forked processes, as torchrun would announce them.

    A rank that raises fails the test with its traceback; ranks still running after
    RANK_TIMEOUT_S are killed and fail it too.
    """
    ranks = mp.start_processes(_rank_main, args=(fn, world_size, _free_port(), args),
                               nprocs=world_size, join=False, start_method="fork")
    deadline = time.monotonic() + RANK_TIMEOUT_S
    while not ranks.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail(f"the ranks were still running after {RANK_TIMEOUT_S} s")


def _per_image_model(config: TrainConfig) -> nn.Module:
    """The config's network with GroupNorm in place of BatchNorm, and no dropout.

    Each image's output then depends on that image alone, so a batch split between ranks
    computes exactly what the whole batch computes in one process. BatchNorm on a rank
    normalises over its own 8 images rather than the global 16 (torch's SyncBatchNorm, which
    would fix that, runs on GPUs only), and dropout masks are drawn per rank. GroupNorm with
    one group normalises each image over all its channels (Wu & He 2018).
    """
    torch.manual_seed(config.seed)
    model = build_model(config.model, width=config.width, dropout=0.0, dropout_aux=0.0)
    for module in model.modules():
        if isinstance(module, ConvBNReLU):
            module.bn = nn.GroupNorm(1, module.bn.num_features)
    return model


def _fit_per_image(rank: int, data, config: TrainConfig, out: Path) -> None:
    result = fit(_per_image_model(config), data, config, device="cpu", progress=False)
    torch.save({"model": result.model.state_dict(), "history": result.history.to_dict("list")},
               out / f"rank{rank}.pt")


def test_two_ranks_match_one_process_with_twice_the_batch(synthetic, tmp_path):
    """Two ranks of batch 8 and one process of batch 16 (learning rate doubled, the linear
    scaling rule the ranks apply themselves) train the same weights in 6 steps over 2 epochs.

    The data order is designed for this: both draw each epoch's permutation and every
    augmentation number from the same seeded generator, for the whole global batch of 16, and
    rank r keeps images 8r to 8r+7 of each batch (`inception.data.shard_indices`). DDP averages the
    two ranks' mean gradients, which is the mean gradient over the 16 images. What is left is
    float rounding, as the ranks sum in another order: the weights agree within 2e-4 (3.6e-5
    measured, in fp32), where a learning rate left unscaled already differs by 1e-2 in 3 steps.
    """
    (tmp_path / "two").mkdir()
    (tmp_path / "one").mkdir()
    run_ranks(_fit_per_image, synthetic, CONFIG, tmp_path / "two")
    single = replace(CONFIG, batch_size=16, lr=2 * CONFIG.lr)
    run_ranks(_fit_per_image, synthetic, single, tmp_path / "one", world_size=1)

    two = [torch.load(tmp_path / "two" / f"rank{r}.pt") for r in (0, 1)]
    one = torch.load(tmp_path / "one" / "rank0.pt")
    start = _per_image_model(CONFIG).state_dict()
    assert one["model"].keys() == two[0]["model"].keys() == start.keys()
    assert all(torch.equal(two[0]["model"][k], two[1]["model"][k]) for k in start)  # in step
    gap = max((two[0]["model"][k] - one["model"][k]).abs().max().item() for k in start)
    moved = max((one["model"][k] - start[k]).abs().max().item() for k in start)
    assert gap < 2e-4, gap
    assert moved > 1e-3  # the weights did train: the match is not two untouched models
    for column in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        assert two[0]["history"][column] == pytest.approx(one["history"][column], rel=1e-4)


def _fit_to(rank: int, data, config: TrainConfig, out: Path, resume: bool) -> None:
    torch.manual_seed(config.seed)
    model = config.build_model(len(data.classes))
    fit(model, data, config, device="cpu", out_dir=out,
        resume=out / "checkpoint.pt" if resume else None, progress=False)


def test_one_checkpoint_resumes_across_world_sizes(synthetic, tmp_path):
    """1 process, then 2 ranks, then 1 process again, each resuming the checkpoint before.

    The config (8 images per rank) stays the same, so the global batch changes: 8, 16, 8. A
    checkpoint holds nothing that depends on the number of ranks but its global batch, from
    which the resumed run recounts the steps, so the schedule goes on where it was.
    """
    config = replace(CONFIG, epochs=1, cutout=0, ema_decay=None)
    run_ranks(_fit_to, synthetic, config, tmp_path, False, world_size=1)
    run_ranks(_fit_to, synthetic, replace(config, epochs=2), tmp_path, True)
    saved = T.read_checkpoint(tmp_path / "checkpoint.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # rank 0 alone wrote
    assert (saved["epoch"], saved["step"], saved["world_size"], saved["global_batch"]) == (
        2, 6, 2, 16)  # 6 steps of 8 in epoch 1 count as 3 of 16, then 3 more
    assert saved["history"][1]["lr"] == pytest.approx(2 * lr_at(5 / 6, config))

    run_ranks(_fit_to, synthetic, replace(config, epochs=3), tmp_path, True, world_size=1)
    model, meta = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (meta["epoch"], meta["step"]) == (3, 18)  # 6 steps of 16 are 12 of 8, then 6 more
    assert list(meta["history"].epoch) == [1, 2, 3]
    assert meta["history"].lr.iloc[2] == pytest.approx(lr_at(17 / 18, config))
    assert T.nonfinite_tensors(model) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def _stop_one_rank(rank: int, data, config: TrainConfig, how: str, out: Path) -> None:
    """Train; on rank 1 only, press Ctrl-C or run out of budget during step 2."""
    real_loss, real_time, steps = T.loss_fn, T.time, [0]

    class LateClock:  # rank 1's clock jumps past the budget during step 2
        @staticmethod
        def perf_counter() -> float:
            return real_time.perf_counter() + (1e6 if steps[0] >= 2 else 0.0)

    def loss_fn(outputs, labels, config):
        steps[0] += 1
        if rank == 1 and steps[0] == 2:
            if how == "ctrl-c":
                os.kill(os.getpid(), signal.SIGINT)  # as torchrun forwards a Ctrl-C
            else:
                T.time = LateClock
        return real_loss(outputs, labels, config)

    T.loss_fn = loss_fn
    torch.manual_seed(config.seed)
    try:
        result = fit(config.build_model(10), data, config, device="cpu", progress=False)
        outcome = result.stopped_by
    except KeyboardInterrupt:
        outcome = "interrupted"
    (out / f"rank{rank}.txt").write_text(f"{outcome} {steps[0]}")


@pytest.mark.parametrize("how, outcome", [("ctrl-c", "interrupted"), ("budget", "budget")])
def test_a_stop_on_one_rank_stops_every_rank_after_the_same_step(synthetic, tmp_path, how,
                                                                 outcome):
    config = replace(CONFIG, epochs=5, budget_min=60.0 if how == "budget" else None)
    run_ranks(_stop_one_rank, synthetic, config, how, tmp_path)
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == [f"{outcome} 2"] * 2


def _hang_rank_1(rank: int, data, config: TrainConfig, out: Path) -> None:
    real_loss = T.loss_fn

    def loss_fn(outputs, labels, config):
        if rank == 1:  # stop answering: sleep until rank 0 has reported, then leave quietly
            (out / "hung").write_text(str(time.time()))
            while not (out / "rank0.txt").exists():
                time.sleep(0.1)
            os._exit(0)
        return real_loss(outputs, labels, config)

    T.loss_fn = loss_fn
    torch.manual_seed(config.seed)
    with distributed.process_group(torch.device("cpu"), timeout_s=10):
        try:
            fit(config.build_model(10), data, config, device="cpu", progress=False)
        except DistributedError as err:
            (out / "rank0.txt").write_text(f"{time.time()}\n{err}")


def test_a_hung_rank_makes_the_others_stop_with_a_clear_error_within_the_timeout(synthetic,
                                                                                  tmp_path):
    run_ranks(_hang_rank_1, synthetic, CONFIG, tmp_path)
    stopped, message = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    assert float(stopped) - float((tmp_path / "hung").read_text()) >= 10  # not before timing out
    assert "rank 0 of 2 lost the other ranks" in message
    assert "did not answer for 10 s" in message  # the timeout it was given, not the default
    assert "Nothing of this run was saved" in message


# ---------------------------------------------------------------------------------------------
# torchrun itself.


def _torchrun(args: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 ARGS` with this checkout's package."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INCEPTION_")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_torchrun_trains_the_quick_preset_and_rank_0_alone_writes(tmp_path):
    out = tmp_path / "run"
    done = _torchrun(["-m", "inception", "train", "--preset", "quick", "--synthetic",
                      "--max-steps", "3", "--device", "cpu", "--out", str(out)], cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "history.csv"]
    printed = done.stdout
    assert printed.count("train_loss") == 1 and printed.count("stopped by max_steps") == 1
    assert "data-parallel: 2 ranks x batch 32 = global batch 64" in printed
    assert "peak lr 0.1 = 0.05 x 2, the linear scaling rule" in printed
    model, meta = load_checkpoint(out / "checkpoint.pt")
    assert meta["step"] == 3 and len(meta["history"]) == 1


WORKER = """
import os, sys, time
import inception.train as T
from inception.cli import main

real_loss, steps = T.loss_fn, [0]

def loss_fn(outputs, labels, config):
    steps[0] += 1
    if os.environ["RANK"] == "1" and steps[0] == 2:
        open(sys.argv[1], "w").write(str(time.time()))
        raise RuntimeError("rank 1 fails on purpose")
    return real_loss(outputs, labels, config)

T.loss_fn = loss_fn
sys.exit(main(sys.argv[2:]))
"""


def test_a_rank_that_raises_makes_torchrun_exit_non_zero_promptly(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    failed_at = tmp_path / "failed_at"
    done = _torchrun(["worker.py", str(failed_at), "train", "--preset", "quick", "--synthetic",
                      "--device", "cpu", "--out", str(tmp_path / "run"),
                      "--dist-timeout", "300"], cwd=tmp_path)
    ended = time.time()
    assert done.returncode != 0 and failed_at.is_file()
    assert "[rank 1 of 2] error: unexpected RuntimeError: rank 1 fails on purpose" in done.stderr
    # torchrun stops rank 0 as soon as rank 1 has failed, not after rank 0's 300-second timeout
    # (rank 0's message reads the same either way; only the time tells them apart)
    assert ended - float(failed_at.read_text()) < 60
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
