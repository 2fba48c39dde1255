"""Keras initialisers, so a fresh model starts where the reference starts."""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def glorot_uniform_(t: torch.Tensor, fan_in: int, fan_out: int) -> torch.Tensor:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return t.uniform_(-limit, limit)


@torch.no_grad()
def lecun_normal_(t: torch.Tensor, fan_in: int) -> torch.Tensor:
    # Keras: truncated normal at 2 std, std corrected by the truncation factor .8796...
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    return torch.nn.init.trunc_normal_(t, 0.0, std, -2 * std, 2 * std)


@torch.no_grad()
def orthogonal_(t: torch.Tensor) -> torch.Tensor:
    flat = t.view(-1, t.shape[-1]) if t.dim() > 2 else t
    torch.nn.init.orthogonal_(flat)
    return t
