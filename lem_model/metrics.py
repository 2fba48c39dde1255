"""execution_metrics and slippage_bps (contracts): the reference's 10 metrics, and per-sample
slippage for the evaluation tables. Both use the hard completion mask."""

from __future__ import annotations

import torch

from lem_model.slippage import percent_difference
from lem_model.vocabulary import EPS, OrderKind

METRIC_NAMES = (
    "buy_vwap_avg_imp", "buy_twap_avg_imp", "sell_vwap_avg_imp", "sell_twap_avg_imp",
    "buy_vwap_avg_risk", "buy_twap_avg_risk", "sell_vwap_avg_risk", "sell_twap_avg_risk",
    "unsigned_vwap_avg_risk", "unsigned_twap_avg_risk",
)
BUY_VWAP, BUY_TWAP, SELL_VWAP, SELL_TWAP = OrderKind


def slippage_bps(alloc: torch.Tensor, volumes: torch.Tensor, prices: torch.Tensor) -> torch.Tensor:
    """(B, N+1, 4, 2): (achieved / benchmark - 1) * 1e4, the benchmark taken over the bars the
    order executed on (to its last non-zero allocation, and at least its minimum duration)."""
    return percent_difference(alloc, volumes, prices, soft_alpha=None, bench_eps_numerator=False) * 100


@torch.no_grad()
def execution_metrics(alloc: torch.Tensor, volumes: torch.Tensor, prices: torch.Tensor) -> dict[str, float]:
    """The reference metrics: average improvement (percent) and risk against TWAP-in-volume.

    They read the volume and notional targets together (a mean over the last axis)."""
    N = volumes.shape[1]
    dif = slippage_bps(alloc, volumes, prices) / 100  # percent
    d = dif / 100  # fraction
    vwap = (volumes * prices).sum(1) / volumes.sum(1)  # no eps, as the reference
    tv = prices.mean(1) / vwap - 1
    opp = dif[:, :N]  # the minimum-duration models
    out = {
        "buy_vwap_avg_imp": -opp[:, :, BUY_VWAP].mean(),
        "buy_twap_avg_imp": -opp[:, :, BUY_TWAP].mean(),
        "sell_vwap_avg_imp": opp[:, :, SELL_VWAP].mean(),
        "sell_twap_avg_imp": opp[:, :, SELL_TWAP].mean(),
        "buy_vwap_avg_risk": 100 * (d[:, :N, BUY_VWAP].clamp(min=0).mean() / (tv.clamp(min=0).mean() + EPS) - 1),
        "buy_twap_avg_risk": 100 * opp[:, :, BUY_TWAP].abs().mean(),
        "sell_vwap_avg_risk": 100 * ((-d[:, :N, SELL_VWAP]).clamp(min=0).mean() / ((-tv).clamp(min=0).mean() + EPS) - 1),
        "sell_twap_avg_risk": 100 * opp[:, :, SELL_TWAP].abs().mean(),
        "unsigned_vwap_avg_risk": 100 * (((d[:, N, BUY_VWAP].abs() + d[:, N, SELL_VWAP].abs()) / 2).mean()
                                         / (tv.abs().mean() + EPS) - 1),
        "unsigned_twap_avg_risk": 100 * ((opp[:, :, BUY_TWAP].abs() + opp[:, :, SELL_TWAP].abs()) / 2).mean(),
    }
    return {k: float(out[k]) for k in METRIC_NAMES}
