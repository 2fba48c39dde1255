"""lem_loss (contract): the reference training objective, differentiable through a soft mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lem_model.execution import percent_difference


def lem_loss(alloc: torch.Tensor, volumes: torch.Tensor, prices: torch.Tensor, alpha: float = 50.0) -> torch.Tensor:
    """Mean of softplus(buy - sell) over the minimum-duration models and softplus(|slippage|) of
    the match-benchmark model: buys want a low achieved price, sells a high one, and the risk
    model wants none at all. Positive sign: the paper's eq. 46 minus is a typo (TKAN_SPEC 7.1)."""
    B, N = volumes.shape
    dif = percent_difference(alloc, volumes, prices, soft_alpha=alpha, bench_eps_numerator=True)
    pnl = F.softplus(dif[:, :N, 0:2, :] - dif[:, :N, 2:4, :])  # (B, N, 2, 2)
    risk = F.softplus(dif[:, N].abs())  # (B, 4, 2)
    return (pnl.sum() + risk.sum()) / (B * N * 2 * 2 + B * 4 * 2)
