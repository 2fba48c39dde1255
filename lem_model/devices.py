"""Where tensors live and in which precision: CUDA when there is one, bf16 autocast there."""

from __future__ import annotations

import contextlib
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
