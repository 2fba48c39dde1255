"""The training objectives: ``lem_loss`` (contract), the reference's, differentiable through a
soft completion mask; and ``aligned_loss``, the same terms scored as the tables score them
(docs/DESIGN.md, "Learning the flexible-duration problem")."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from lem_model.baselines import early_stop_rule
from lem_model.slippage import percent_difference
from lem_model.vocabulary import OrderKind

# Softplus's second-order coefficient at 0 (log 2 + x / 2 + x^2 / 8 + ...): the "tracking" beat
# term's default curvature, so that it charges what softplus would, about the rule instead of 0.
SOFTPLUS_CURVATURE = 1 / 8


def lem_loss(alloc: torch.Tensor, volumes: torch.Tensor, prices: torch.Tensor, alpha: float = 50.0) -> torch.Tensor:
    """Mean of softplus(buy - sell) over the minimum-duration models and softplus(|slippage|) of
    the match-benchmark model: buys want a low achieved price, sells a high one, and the risk
    model wants none at all. Positive sign: the paper's eq. 46 minus is a typo (docs/DESIGN.md,
    "The reference, as specified")."""
    dif = percent_difference(alloc, volumes, prices, soft_alpha=alpha, bench_eps_numerator=True)
    return _objective(dif, volumes.shape[1])


def aligned_loss(alloc: torch.Tensor, volumes: torch.Tensor, prices: torch.Tensor, tau: float = 0.05,
                 sides: Literal["paired", "separate"] = "paired",
                 match_risk: Literal["softplus", "squared"] = "softplus",
                 beat_risk: Literal["softplus", "neutral", "tracking"] = "softplus",
                 tracking_curvature: float = SOFTPLUS_CURVATURE) -> torch.Tensor:
    """lem_loss's terms with the tables' completion mask: a bar after the order completes is out
    of both the achieved price and the benchmark (the reference keeps half of it in), so an order
    that finishes early at a good price scores as it does in the tables. The mask's gradient is
    a straight-through estimate (lem_model.slippage.straight_through_mask) that differs by
    minimum-duration head from the first step.

    ``sides``: "paired" scores each buy against the sell of the same head, kind and target,
    softplus(buy - sell), as the reference; "separate" scores each side against its own
    benchmark, softplus(buy) + softplus(-sell), as the tables do. Under "paired" a change common
    to both sides (both schedules leaning later, a bet on the drift) cancels in the difference,
    so nothing holds it: it wanders in training, and shows in the tables as a gain on one side
    and the mirror loss on the other.

    ``match_risk``: the match-benchmark head's term, "softplus" of |slippage| as the reference
    (about |slippage| / 2 near 0: a mean absolute deviation), or "squared", slippage^2, whose
    mean is the std the tables report for that head plus its squared mean.

    ``beat_risk``: the beat-the-benchmark heads' term, "softplus" as the reference, or
    "neutral", softplus's tangent at 0, log 2 + x / 2. Softplus is log 2 + x / 2 + x^2 / 8 + ...
    at the slippages a day's VWAP sees (tenths of a percent), so besides the mean the tables
    compare it pays for variance: a std cut from 0.5% to 0.4% is worth 2.25 bps of mean to it.
    "neutral" scores the mean slippage alone, as the vs_rule table does; alone it buys mean with
    any amount of variance, a bet on the drift (docs/DESIGN.md). "tracking" keeps the tangent
    and charges a curvature, tracking_curvature x (x - x_rule)^2 (softplus's own 1/8 by
    default), on the distance from the one-line causal rule's slippage on the same window
    instead of on the slippage itself: the paired difference the vs_rule table's interval is
    built from, so a schedule pays for straying from the rule, not for the market's own
    variance. A larger curvature keeps the schedule nearer the rule."""
    dif = percent_difference(alloc, volumes, prices, soft_alpha=None, bench_eps_numerator=False,
                             straight_through_tau=tau)
    reference = None
    if beat_risk == "tracking":
        with torch.no_grad():  # the rule's slippage as the tables score it: hard mask, float64
            rule = early_stop_rule(prices.double(), alloc.shape[2])
            reference = percent_difference(rule, volumes.double(), prices.double(), soft_alpha=None,
                                           bench_eps_numerator=False).to(dif.dtype)
    return _objective(dif, volumes.shape[1], sides, match_risk, beat_risk, reference, tracking_curvature)


def _softplus_tangent(x: torch.Tensor) -> torch.Tensor:
    """Softplus's tangent at 0: the same value and slope there, without its curvature."""
    return math.log(2.0) + x / 2


def _objective(dif: torch.Tensor, N: int, sides: Literal["paired", "separate"] = "paired",
               match_risk: Literal["softplus", "squared"] = "softplus",
               beat_risk: Literal["softplus", "neutral", "tracking"] = "softplus",
               reference: torch.Tensor | None = None,
               tracking_curvature: float = SOFTPLUS_CURVATURE) -> torch.Tensor:
    B = dif.shape[0]

    def beat_terms(d: torch.Tensor) -> list[torch.Tensor]:
        """The beat heads' slippages as their terms score them, each (B, N, 2, 2): [VWAP, TWAP] x
        target. "paired": buy - sell, one term; "separate": buy and -sell, each half the weight."""
        buys = d[:, :N, OrderKind.BUY_VWAP : OrderKind.BUY_TWAP + 1]
        sells = d[:, :N, OrderKind.SELL_VWAP : OrderKind.SELL_TWAP + 1]
        return [buys - sells] if sides == "paired" else [buys, -sells]

    def beat(x: torch.Tensor, x_rule: torch.Tensor | None) -> torch.Tensor:
        if beat_risk == "softplus":
            return F.softplus(x)
        if beat_risk == "neutral":
            return _softplus_tangent(x)
        return _softplus_tangent(x) + tracking_curvature * (x - x_rule).square()  # curvature about the rule

    xs = beat_terms(dif)
    rules = beat_terms(reference) if reference is not None else [None] * len(xs)
    pnl = sum(beat(x, r).sum() for x, r in zip(xs, rules)) / len(xs)  # as many terms as paired
    match = dif[:, N]  # (B, 4, 2)
    risk = match.square() if match_risk == "squared" else F.softplus(match.abs())
    return (pnl + risk.sum()) / (B * N * 2 * 2 + B * 4 * 2)
