"""lem_loss (contract): the reference training objective, differentiable through a soft mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lem_model.slippage import percent_difference
from lem_model.vocabulary import OrderKind


def lem_loss(alloc: torch.Tensor, volumes: torch.Tensor, prices: torch.Tensor, alpha: float = 50.0) -> torch.Tensor:
    """Mean of softplus(buy - sell) over the minimum-duration models and softplus(|slippage|) of
    the match-benchmark model: buys want a low achieved price, sells a high one, and the risk
    model wants none at all. Positive sign: the paper's eq. 46 minus is a typo (docs/DESIGN.md,
    "The reference, as specified")."""
    B, N = volumes.shape
    dif = percent_difference(alloc, volumes, prices, soft_alpha=alpha, bench_eps_numerator=True)
    buys = dif[:, :N, OrderKind.BUY_VWAP : OrderKind.BUY_TWAP + 1]  # (B, N, 2, 2): [VWAP, TWAP] x target
    sells = dif[:, :N, OrderKind.SELL_VWAP : OrderKind.SELL_TWAP + 1]
    pnl = F.softplus(buys - sells)
    risk = F.softplus(dif[:, N].abs())  # (B, 4, 2)
    return (pnl.sum() + risk.sum()) / (B * N * 2 * 2 + B * 4 * 2)
