"""The per-order ledger of an evaluation: every strategy's orders on every window, one record per
(window, strategy, side, target, minimum period), gross and, per order size, net of the costs of
lem_model.costs. The pipeline writes it as the trade log (``trades.parquet``) and derives the
net, arrival-cost and regime tables from it, so every table beside the paper's is a view of it.

A strategy's orders in a batch are one tensor (B, N, P, 2, T): steps, minimum-period slots P
(labelled as the tables label them: "1".."N", "Match VWAP", or "All" for a side-less baseline),
the sides BUY and SELL, and its targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lem_model.costs import CostConfig, MarketContext, achieved_price, benchmark_vwap, execute, executed_mask
from lem_model.slippage import minimum_duration
from lem_model.vocabulary import OrderKind, Side, Target

LEM, RULE, TWAP, PROFILE, ALMGREN_CHRISS = "LEM", "RULE", "TWAP", "VWAP Profile", "Almgren-Chriss"
STRATEGIES = (LEM, RULE, TWAP, PROFILE, ALMGREN_CHRISS)
SIDE_NAMES = tuple(s.name for s in Side)  # BUY, SELL
TARGET_NAMES = {t: t.name.lower() for t in Target}  # volume, notional
ALL = "All"  # the minimum period of a baseline that always trades the whole horizon
MATCH = "Match VWAP"
VWAP_KINDS = [OrderKind.BUY_VWAP, OrderKind.SELL_VWAP]  # the tables' orders: beat or match the VWAP


@dataclass
class Orders:
    """One strategy's orders on a batch of windows."""

    strategy: str
    alloc: torch.Tensor  # (B, N, P, 2, T)
    periods: tuple[str, ...]  # P
    forced: torch.Tensor  # (N, P) bool: the bars each slot executes on whatever it allocates
    targets: tuple[Target, ...]  # T
    gross_bps: torch.Tensor | None = None  # (B, P, 2, T): the tables' own numbers, where they have them


def model_orders(strategy: str, alloc: torch.Tensor, slippage: torch.Tensor, slots: int) -> Orders:
    """The LEM's (slots N+1) or the rule's (slots N: its slot N is plain TWAP) VWAP orders, from
    their allocations (B, N, N+1, 4, 2) and the tables' slippage (B, N+1, 4, 2)."""
    N = alloc.shape[1]
    periods = tuple(MATCH if j == N else str(j + 1) for j in range(slots))
    return Orders(strategy, alloc[:, :, :slots][:, :, :, VWAP_KINDS], periods, minimum_duration(N, slots),
                  tuple(Target), slippage[:, :slots][:, :, VWAP_KINDS])


def whole_horizon_orders(strategy: str, schedule: torch.Tensor, gross_bps: torch.Tensor | None = None,
                         targets: tuple[Target, ...] = (Target.VOLUME,)) -> Orders:
    """A side-less baseline: one schedule per window (B, N) for both sides and ``targets``, over
    the whole horizon; ``gross_bps`` (B, T) where the tables have it."""
    B, N = schedule.shape
    alloc = schedule.view(B, N, 1, 1, 1).expand(B, N, 1, 2, len(targets))
    gross = None if gross_bps is None else gross_bps.view(B, 1, 1, len(targets)).expand(B, 1, 2, len(targets))
    return Orders(strategy, alloc, (ALL,), torch.ones(N, 1, dtype=torch.bool), targets, gross)


def _rows(t: torch.Tensor) -> np.ndarray:
    """(B, P, 2, T) -> (rows,), or (B, N, P, 2, T) -> (rows, N): one row per order, window-major."""
    if t.dim() == 5:
        t = t.permute(0, 2, 3, 4, 1)
        return t.reshape(-1, t.shape[-1]).cpu().numpy()
    return t.reshape(-1).cpu().numpy()


def order_records(orders: Orders, volumes: torch.Tensor, prices: torch.Tensor, ctx: MarketContext, cfg: CostConfig,
                  fee: float) -> dict[str, np.ndarray]:
    """The ledger's columns for ``orders`` (prices in the units of ``prices``, float64), one row per
    (window, slot, side, target), window-major. Per order size s (``cfg.order_sizes``), columns
    suffixed ``@s``: fills, fill_rate, impact_bps, fees_bps, net_slippage_bps, net_arrival_bps.
    Fractions and bps are float32, as the tables' slippage arrays (about 1e-5 bps at 100 bps)."""
    B, N, P, S, T = orders.alloc.shape
    volumes, prices = volumes.double(), prices.double()
    alloc = orders.alloc.double()
    side = torch.tensor([Side.BUY, Side.SELL]).view(1, 1, S, 1)
    notional = torch.tensor([t == Target.NOTIONAL for t in orders.targets]).view(1, 1, 1, T)
    mask = executed_mask(alloc, volumes, orders.forced)
    benchmark = benchmark_vwap(mask, volumes, prices)
    p = prices.view(B, N, 1, 1, 1)
    achieved = achieved_price(alloc, p.expand_as(alloc), notional)
    gross = (achieved / benchmark - 1) * 1e4 if orders.gross_bps is None else orders.gross_bps.double()
    arrival = ctx.arrival.view(B, 1, 1, 1)
    shape = (B, P, S, T)
    out = {
        "window": _rows(torch.arange(B).view(B, 1, 1, 1).expand(shape)),
        "strategy": np.full(B * P * S * T, orders.strategy),
        "side": np.array(SIDE_NAMES)[_rows(torch.arange(S).view(1, 1, S, 1).expand(shape))],
        "target": np.array([TARGET_NAMES[t] for t in orders.targets])[_rows(torch.arange(T).view(1, 1, 1, T).expand(shape))],
        "min_period": np.array(orders.periods)[_rows(torch.arange(P).view(1, P, 1, 1).expand(shape))],
        "allocation": _rows(alloc).astype(np.float32),
        "benchmark": _rows(benchmark),
        "achieved": _rows(achieved),
        "slippage_bps": _rows(gross).astype(np.float32),
        "arrival": _rows(arrival.expand(shape)),
        "arrival_bps": _rows((achieved / arrival - 1) * 1e4).astype(np.float32),
    }
    if not cfg.enabled:
        return out
    for size in cfg.order_sizes:
        ex = execute(alloc, volumes, prices, ctx, side=side, notional=notional, size=size, cfg=cfg, fee=fee)
        net_mask = executed_mask(ex.fills, volumes, orders.forced)
        paid = achieved_price(ex.fills, ex.paid, notional)
        out |= {
            f"fills@{size:g}": _rows(ex.fills).astype(np.float32),
            f"fill_rate@{size:g}": _rows(ex.fill_rate).astype(np.float32),
            f"impact_bps@{size:g}": _rows(ex.impact_bps).astype(np.float32),
            f"fees_bps@{size:g}": _rows(ex.fees_bps).astype(np.float32),
            f"net_slippage_bps@{size:g}": _rows((paid / benchmark_vwap(net_mask, volumes, prices) - 1) * 1e4
                                                 ).astype(np.float32),
            f"net_arrival_bps@{size:g}": _rows((paid / arrival - 1) * 1e4).astype(np.float32),
        }
    return out
