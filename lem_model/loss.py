"""The training objectives: ``lem_loss`` (contract), the reference's, differentiable through a
soft completion mask; and ``aligned_loss``, the same terms scored as the tables score them
(docs/DESIGN.md, "Learning the flexible-duration problem")."""

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
    dif = percent_difference(alloc, volumes, prices, soft_alpha=alpha, bench_eps_numerator=True)
    return _objective(dif, volumes.shape[1])


def aligned_loss(alloc: torch.Tensor, volumes: torch.Tensor, prices: torch.Tensor, tau: float = 0.05) -> torch.Tensor:
    """lem_loss's terms with the tables' completion mask: a bar after the order completes is out
    of both the achieved price and the benchmark (the reference keeps half of it in), so an order
    that finishes early at a good price scores as it does in the tables. The mask's gradient is
    a straight-through estimate (lem_model.slippage.straight_through_mask) that differs by
    minimum-duration head from the first step."""
    dif = percent_difference(alloc, volumes, prices, soft_alpha=None, bench_eps_numerator=False,
                             straight_through_tau=tau)
    return _objective(dif, volumes.shape[1])


def _objective(dif: torch.Tensor, N: int) -> torch.Tensor:
    B = dif.shape[0]
    buys = dif[:, :N, OrderKind.BUY_VWAP : OrderKind.BUY_TWAP + 1]  # (B, N, 2, 2): [VWAP, TWAP] x target
    sells = dif[:, :N, OrderKind.SELL_VWAP : OrderKind.SELL_TWAP + 1]
    pnl = F.softplus(buys - sells)
    risk = F.softplus(dif[:, N].abs())  # (B, 4, 2)
    return (pnl.sum() + risk.sum()) / (B * N * 2 * 2 + B * 4 * 2)
