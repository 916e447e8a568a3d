"""Where and how the code runs: device, numeric precision, seeding, the course's quick mode,
whether a download can reach its server, and how a file is written so that a crash never
leaves half of it.

Owns the decisions every other module asks about (which device, which autocast dtype) so they
are made in one place and unit-tested without the hardware. It does not train or load anything.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

from inception.errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def quick_mode() -> bool:
    """True when INCEPTION_QUICK=1: notebooks and CI then use small data and the quick preset."""
    return os.environ.get("INCEPTION_QUICK", "0") == "1"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU) so runs repeat exactly on the CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def default_device() -> torch.device:
    """The first CUDA GPU when there is one, otherwise the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: torch.device | str | None = None) -> torch.device:
    """`device` as a torch.device that exists here, or a ConfigError naming the fix.

    None means `default_device()`. Checked once, before any work, so a typo or a missing GPU is
    one clear sentence rather than a CUDA traceback minutes into a run.
    """
    if device is None:
        return default_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {str(device)!r}: use cpu, cuda or cuda:N "
                          "(N the GPU's index)") from None
    if resolved.type == "cpu":
        return resolved
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r} asked for, but torch sees no CUDA GPU "
                              f"(torch {torch.__version__}): use --device cpu, or install a "
                              "CUDA build of torch on a machine with an NVIDIA GPU")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ConfigError(f"device {str(device)!r} asked for, but there are only {count} "
                              f"CUDA GPU(s), cuda:0 to cuda:{count - 1}")
        return resolved
    if resolved.type == "mps" and torch.backends.mps.is_available():
        return resolved
    raise ConfigError(f"device {str(device)!r} is not supported here: use cpu or cuda")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX).

    Without it, PyTorch emulates bf16 and autocast is several times *slower* than fp32
    (measured 7x slower for a GoogLeNet train step on a 2-core AVX2 EPYC), so fp32 is kept.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def runs_natively(precision: str, device: torch.device | str, *,
                  cuda_capability: tuple[int, int] | None = None,
                  cpu_bf16: bool | None = None) -> bool:
    """Whether `device` computes `precision` in hardware, rather than emulated or not at all.

    fp32 runs everywhere. fp16 autocast is for CUDA. bf16 is native on Ampere (compute capability
    8.0) and newer GPUs, and on CPUs with AVX-512 BF16 or AMX (see `cpu_has_native_bf16`);
    elsewhere it is emulated and several times slower than fp32. The keyword arguments stand in
    for the hardware probes, so the answer is testable anywhere.
    """
    device_type = torch.device(device).type
    if precision == "fp32":
        return True
    if precision == "fp16":
        return device_type == "cuda"
    if precision == "bf16":
        if device_type == "cuda":
            major, _ = cuda_capability or torch.cuda.get_device_capability(device)
            return major >= 8
        if device_type == "cpu":
            return cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16
        return False
    raise ConfigError(f"precision must be one of {PRECISIONS[1:]}, got {precision!r}")


def choose_precision(device: torch.device | str, requested: str = "auto", *,
                     cuda_capability: tuple[int, int] | None = None,
                     cpu_bf16: bool | None = None) -> str:
    """Resolve "auto" to the fastest precision `device` runs natively: "bf16", "fp16" or "fp32".

    bf16 first: where the hardware has it, it is as fast as fp16 and needs no loss scaler (Ampere
    GPUs, AMX or AVX-512 BF16 CPUs). Then fp16 with a grad scaler, for older GPUs such as Colab's
    T4 (7.5). Otherwise fp32. An explicit precision is returned as asked, except fp16 on a CPU,
    which autocast does not support there. The keyword arguments are `runs_natively`'s.
    """
    if requested not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested != "auto":
        if requested == "fp16" and torch.device(device).type == "cpu":
            raise ConfigError("fp16 autocast is for CUDA; on the CPU use precision 'bf16' or "
                              "'fp32' (or 'auto', which picks the faster of the two)")
        return requested
    return next(p for p in ("bf16", "fp16", "fp32")
                if runs_natively(p, device, cuda_capability=cuda_capability, cpu_bf16=cpu_bf16))


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype for a resolved precision, or None for plain fp32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def eval_batch_size(device: torch.device | str) -> int:
    """Batch size for inference: small on a CPU, where it keeps activations in cache.

    Measured on a 2-core AVX2 CPU (googlenet_cifar_small, folded BatchNorm): batch 64 evaluated
    ~2x faster than batch 500, whose activations spill out of the caches. A GPU wants big ones.
    """
    return 500 if torch.device(device).type == "cuda" else 64


def describe_runtime(device: torch.device | str | None = None, precision: str = "auto") -> str:
    """One line naming the device and the precision training would use on it."""
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        where = f"cuda ({torch.cuda.get_device_name(device)})"
    else:
        threads = torch.get_num_threads()
        where = f"{device.type} ({threads} thread{'s' if threads != 1 else ''})"
    return f"device: {where} | precision: {choose_precision(device, precision)}"


def describe_machine() -> str:
    """The CPU (or GPU) a measurement came from, e.g. 'AMD EPYC, 2 cores, AVX2, no native bf16'.

    Results in this course are labelled with it, because the same run is 2x faster or slower
    on another machine (and bf16 is fast only where the hardware has it).
    """
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    name = "unknown CPU"
    flags: set[str] = set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and name == "unknown CPU":
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:  # not Linux: fall back to what the platform module knows
        import platform

        name = platform.processor() or name
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return f"{name}, {os.cpu_count()} cores, {vector}, {bf16}"


def brief_warnings() -> None:
    """Print warnings as one line, 'UserWarning: message', without the file and line they came from.

    In a notebook that location is a temporary file of the kernel (a long local path that means
    nothing to a learner); the message itself names the problem and the fix.
    """
    import warnings

    warnings.formatwarning = lambda message, category, *_args, **_kw: (
        f"{category.__name__}: {message}\n")


def reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether `url`'s server (or the HTTPS proxy the environment names) answers within `timeout` s.

    Offline, a download waits minutes for name resolution to give up (3 min 41 s on this
    project's offline machine) before it fails. Asking first, in a thread that is abandoned
    after `timeout` seconds, turns that into a message within seconds. A False is only a
    prediction: callers say "could not be downloaded", never that the file does not exist.
    """
    parts = urlparse(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        return False
    answered: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answered.append(True)
        except OSError:
            answered.append(False)

    probe = threading.Thread(target=connect, daemon=True)  # a hung lookup must not block exit
    probe.start()
    probe.join(timeout)
    return answered == [True]


def save_atomically(obj: object, path: str | Path, *, tag: str = "") -> Path:
    """`torch.save(obj)` to `path` so that `path` is always either the old file or the new one.

    The bytes go to a temp file beside `path` (`.NAME<tag>.tmp`), reach the disk (fsync), and
    only then take the name in one atomic rename. A crash, a full disk or a Ctrl-C mid-write
    removes the temp file and re-raises, leaving the previous file as it was. `tag` keeps
    writers that may race for one name (ranks filling a shared cache) off each other's temp file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}{tag}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
