"""Where tensors live and in which precision: CUDA when there is one, bf16 autocast there."""

from __future__ import annotations

import contextlib
import ctypes
import os

import torch


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA when available; under torchrun each rank takes its LOCAL_RANK's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; float32 on the CPU (bf16 matmuls are slower than fp32 there)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# glibc malloc's settings that keep_freed_memory applies: (mallopt parameter number, from malloc.h;
# value; the environment variable that sets it in a process glibc starts, e.g. a benchmark's child).
FREED_MEMORY_SETTINGS = ((-4, 0, "MALLOC_MMAP_MAX_"), (-1, 2**31 - 1, "MALLOC_TRIM_THRESHOLD_"))


def keep_freed_memory_env() -> dict[str, str]:
    """keep_freed_memory's settings as environment variables, for a child process."""
    return {name: str(value) for _, value, name in FREED_MEMORY_SETTINGS}


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    A train step allocates and frees the same large tensors every step; by default glibc maps
    each large block fresh (mmap) and returns it on free, so every step page-faults all of them
    in again, which cost about a tenth of a paper-config CPU step (benchmarks/model_throughput.py).
    Process-wide, so the training entry point and the benchmark call it, not the model. Returns
    whether it applied (False off glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all([bool(libc.mallopt(parameter, value)) for parameter, value, _ in FREED_MEMORY_SETTINGS])
