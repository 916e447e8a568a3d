"""Does `torch.compile` pay for itself? Eager against compiled, for a train step and for inference.

For each mode it reports the compile time (the first calls, which trace and generate code), the
steady-state images per second of both, and how many images it takes before the compiled
version has made up its compile time. Both run at the precision `fit` and `predict` choose for
this CPU (bf16 autocast where the hardware has it, else fp32) and channels_last. Inference runs
on the BatchNorm-folded model, as `inception.evaluate.predict` does. Random images: only the
speed is of interest. Eager and compiled share one process, as they would in a notebook.
Inductor's on-disk caches are bypassed, so the compile time is what a first run pays (a warm
cache from an earlier run cut it from ~100 s to ~5 s here, which would flatter compile).

    python benchmarks/compile.py      # googlenet_cifar_small at width 0.125, batch 64: the
                                      # earlier cpu preset's, as measured in the README
    python benchmarks/compile.py --width 0.25 --batch-size 128
"""

from __future__ import annotations

import argparse
import time

import torch
import torch._inductor.config

from inception.model import fold_batchnorm
from inception.runtime import autocast_dtype, choose_precision, eval_batch_size
from inception.train import TrainConfig, loss_fn, make_optimizer


def _seconds(step, x: torch.Tensor, calls: int) -> float:
    """Wall time of `calls` calls of `step(x)`."""
    start = time.perf_counter()
    for _ in range(calls):
        step(x)
    return time.perf_counter() - start


def make_train_step(forward, model: torch.nn.Module, config: TrainConfig,
                    dtype: torch.dtype | None):
    """One SGD step of `model` through `forward` (the model itself or its compiled version)."""
    optimizer = make_optimizer(model, config)
    labels = torch.randint(0, 10, (config.batch_size,))

    def step(x: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss, _ = loss_fn(forward(x), labels, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def measure(eager, compiled, x: torch.Tensor, steps: int) -> tuple[float, float, float]:
    """Eager and compiled images per second (best of two alternating rounds, so that machine
    noise hits both alike) and the compile time (the first calls minus their share of work)."""
    calls = 3
    _seconds(eager, x, calls)
    warm = _seconds(compiled, x, calls)  # for the compiled step, mostly compilation
    eager_s, compiled_s = [], []
    for _ in range(2):
        eager_s.append(_seconds(eager, x, steps))
        compiled_s.append(_seconds(compiled, x, steps))
    eager_rate, compiled_rate = (steps * len(x) / min(s) for s in (eager_s, compiled_s))
    return eager_rate, compiled_rate, warm - calls * len(x) / compiled_rate


def make_inference(forward, dtype: torch.dtype | None):
    """A no-grad forward pass through `forward` at the given autocast dtype."""
    def infer(x: torch.Tensor) -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            forward(x)
    return infer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="googlenet_cifar_small")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size")
    parser.add_argument("--steps", type=int, default=20, help="timed calls per measurement")
    args = parser.parse_args()
    torch._inductor.config.force_disable_caches = True  # time a cold compile, every run
    config = TrainConfig(model=args.model, width=args.width, batch_size=args.batch_size)
    cl = torch.channels_last
    precision = choose_precision("cpu")
    dtype = autocast_dtype(precision)
    print(f"{args.model} width {args.width} | {precision} | torch {torch.__version__} | "
          f"{torch.get_num_threads()} threads")
    print(f"{'mode':<10}{'eager img/s':>12}{'compiled img/s':>16}{'compile s':>11}"
          f"{'break-even images':>19}")

    torch.manual_seed(0)
    model = config.build_model(10).to(memory_format=cl).train()
    x = torch.randn(args.batch_size, 3, 32, 32).to(memory_format=cl)
    rows = [("train", *measure(make_train_step(model, model, config, dtype),
                               make_train_step(torch.compile(model), model, config, dtype),
                               x, args.steps))]
    net = fold_batchnorm(config.build_model(10).to(memory_format=cl))
    x = torch.randn(eval_batch_size("cpu"), 3, 32, 32).to(memory_format=cl)
    rows.append(("inference", *measure(make_inference(net, dtype),
                                       make_inference(torch.compile(net), dtype), x, args.steps)))

    for mode, eager, compiled, compile_s in rows:
        # Images after which compiling (compile_s, then 1/compiled s per image) has caught up.
        saved_per_image = 1 / eager - 1 / compiled
        even = f"{compile_s / saved_per_image:,.0f}" if saved_per_image > 0 else "never"
        print(f"{mode:<10}{eager:>12.1f}{compiled:>16.1f}{compile_s:>11.1f}{even:>19}",
              flush=True)


if __name__ == "__main__":
    main()
