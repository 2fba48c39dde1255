"""Trading costs (lem_model.costs) and the per-order ledger (lem_model.ledger) against values
worked out by hand: square-root impact, the participation cap's carry-forward and fill rate,
fees, the arrival-price cost and the Almgren-Chriss schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lem_model.baselines import VolumeProfile
from lem_model.costs import CostConfig, MarketContext, almgren_chriss, capped_fills, execute, market_context
from lem_model.ledger import ALL, TWAP, order_records, whole_horizon_orders
from lem_model.vocabulary import Side, Target

T = torch.tensor


def context(adv: float = 10_000.0, sigma: float = 0.02, arrival: float = 100.0) -> MarketContext:
    return MarketContext(adv=T([adv], dtype=torch.float64), sigma_daily=T([sigma], dtype=torch.float64),
                         arrival=T([arrival], dtype=torch.float64), trend=T([0.0], dtype=torch.float64))


def one_order(alloc: list[float], volumes: list[float], prices: list[float], *, side: Side = Side.BUY,
              size: float = 0.01, cfg: CostConfig = CostConfig(), fee: float = 0.0, ctx: MarketContext | None = None):
    """One quantity order (B=1, one slot) of the given per-bar allocation."""
    a = T(alloc, dtype=torch.float64).view(1, -1, 1)
    return execute(a, T([volumes], dtype=torch.float64), T([prices], dtype=torch.float64), ctx or context(),
                   side=T([side]), notional=T([False]), size=size, cfg=cfg, fee=fee)


def test_square_root_impact_of_a_two_bar_order():
    # 1% of an ADV of 10,000 = 100 shares: 80 then 20, sigma 2%, Y = 1, no cap binding (20% of 1,000).
    ex = one_order([0.8, 0.2], [1000, 1000], [100, 110])
    impact1, impact2 = 0.02 * math.sqrt(80 / 10_000), 0.02 * math.sqrt(20 / 10_000)
    assert ex.fills[0, :, 0].tolist() == [0.8, 0.2]
    assert ex.paid[0, :, 0].tolist() == pytest.approx([100 * (1 + impact1), 110 * (1 + impact2)], rel=1e-12)
    notional = 80 * 100 + 20 * 110
    assert float(ex.impact_bps[0, 0]) == pytest.approx((80 * 100 * impact1 + 20 * 110 * impact2) / notional * 1e4)
    # A sell receives less by the same impact.
    sell = one_order([0.8, 0.2], [1000, 1000], [100, 110], side=Side.SELL)
    assert sell.paid[0, :, 0].tolist() == pytest.approx([100 * (1 - impact1), 110 * (1 - impact2)], rel=1e-12)


def test_participation_cap_carries_forward_and_reports_the_unfilled_rest():
    # 100 shares; the cap fills at most 20% of each bar's volume: 20, 200, 20 shares = 0.2, 2.0, 0.2 of the order.
    ex = one_order([0.6, 0.2, 0.2], [100, 1000, 100], [10, 10, 10])
    assert ex.fills[0, :, 0].tolist() == pytest.approx([0.2, 0.6, 0.2])  # 0.4 carried from bar 0 to bar 1
    assert float(ex.fill_rate[0, 0]) == pytest.approx(1.0)
    short = one_order([0.2, 0.2, 0.6], [1000, 1000, 100], [10, 10, 10])
    assert short.fills[0, :, 0].tolist() == pytest.approx([0.2, 0.2, 0.2])  # 0.4 left when the horizon ends
    assert float(short.fill_rate[0, 0]) == pytest.approx(0.6)
    # The carry never creates fills: nothing is filled beyond the order.
    fills = capped_fills(T([[[0.5], [0.5]]], dtype=torch.float64), T([[1e9, 1e9]], dtype=torch.float64),
                         T([[[0.01]]], dtype=torch.float64), 0.2)
    assert fills.sum().item() == pytest.approx(1.0)


def test_fees_move_buys_up_and_sells_down_by_their_bps():
    no_impact = CostConfig(impact_coefficient=0.0)
    buy = one_order([0.5, 0.5], [1000, 1000], [100, 110], cfg=no_impact, fee=10 / 1e4)
    sell = one_order([0.5, 0.5], [1000, 1000], [100, 110], side=Side.SELL, cfg=no_impact, fee=10 / 1e4)
    assert buy.paid[0, :, 0].tolist() == pytest.approx([100.1, 110.11])
    assert sell.paid[0, :, 0].tolist() == pytest.approx([99.9, 109.89])
    assert float(buy.fees_bps[0, 0]) == 10.0 and float(buy.impact_bps[0, 0]) == 0.0


def test_ledger_net_slippage_and_arrival_cost_by_hand():
    # TWAP over two bars, 1% ADV, sigma 2%, fee 1 bp; arrival price 100 (the bar before execution).
    volumes, prices = T([[1000.0, 3000.0]], dtype=torch.float64), T([[102.0, 104.0]], dtype=torch.float64)
    orders = whole_horizon_orders(TWAP, T([[0.5, 0.5]], dtype=torch.float64), targets=(Target.VOLUME,))
    cfg = CostConfig(order_sizes=(0.01,))
    rec = order_records(orders, volumes, prices, context(), cfg, fee=1e-4)
    assert list(rec["side"]) == ["BUY", "SELL"] and list(rec["min_period"]) == [ALL, ALL]
    vwap = (1000 * 102 + 3000 * 104) / 4000  # 103.5
    achieved = (102 + 104) / 2  # 103
    assert rec["benchmark"].tolist() == pytest.approx([vwap, vwap])
    assert rec["slippage_bps"].tolist() == pytest.approx([(achieved / vwap - 1) * 1e4] * 2, abs=1e-4)
    assert rec["arrival_bps"].tolist() == pytest.approx([(achieved / 100 - 1) * 1e4] * 2, abs=1e-4)  # 300 bps
    cost = 0.02 * math.sqrt(0.005) + 1e-4  # each child is 0.5% of ADV
    buy_paid, sell_paid = achieved * (1 + cost), achieved * (1 - cost)
    assert rec["net_slippage_bps@0.01"].tolist() == pytest.approx(
        [(buy_paid / vwap - 1) * 1e4, (sell_paid / vwap - 1) * 1e4], abs=1e-3)
    assert rec["net_arrival_bps@0.01"].tolist() == pytest.approx([(buy_paid / 100 - 1) * 1e4,
                                                                  (sell_paid / 100 - 1) * 1e4], abs=1e-3)
    assert rec["fill_rate@0.01"].tolist() == [1.0, 1.0]
    assert rec["fees_bps@0.01"].tolist() == pytest.approx([1.0, 1.0])


def test_notional_orders_buy_their_notional_at_the_arrival_price():
    # A notional order of 1% ADV at the arrival price 100: at price 200 a unit of allocation buys half the shares.
    a = T([0.0, 1.0], dtype=torch.float64).view(1, 2, 1)
    ex = execute(a, T([[1000.0, 1000.0]], dtype=torch.float64), T([[100.0, 200.0]], dtype=torch.float64), context(),
                 side=T([Side.BUY]), notional=T([True]), size=0.01, cfg=CostConfig(), fee=0.0)
    assert float(ex.paid[0, 1, 0]) == pytest.approx(200 * (1 + 0.02 * math.sqrt(0.01 * 100 / 200)))
    # Impact in bps of the notional traded: half the notional at each of two prices, each child's impact.
    half = execute(T([0.5, 0.5], dtype=torch.float64).view(1, 2, 1), T([[1000.0, 1000.0]], dtype=torch.float64),
                   T([[100.0, 200.0]], dtype=torch.float64), context(), side=T([Side.BUY]), notional=T([True]),
                   size=0.01, cfg=CostConfig(), fee=0.0)
    impacts = [0.02 * math.sqrt(0.5 * 0.01 * 100 / p) for p in (100.0, 200.0)]
    assert float(half.impact_bps[0, 0]) == pytest.approx((impacts[0] + impacts[1]) / 2 * 1e4)


def test_almgren_chriss_by_hand_and_its_limits():
    cfg = CostConfig(risk_aversion=0.5, almgren_chriss_size=0.01)
    sigma = T([0.02], dtype=torch.float64)
    two = almgren_chriss(sigma, 2, 1440, cfg)[0]
    eta = 0.02 * math.sqrt(0.01 * 2)
    cosh = 1 + 0.5 * 0.02**2 / (2 * eta)
    assert two.tolist() == pytest.approx([1 - 1 / (2 * cosh), 1 / (2 * cosh)], rel=1e-12)  # x1 = sinh k / sinh 2k
    twelve = almgren_chriss(T([0.02, 0.0], dtype=torch.float64), 12, 1440, cfg)
    assert twelve.sum(1).tolist() == pytest.approx([1.0, 1.0])
    assert bool((twelve[0, 1:] < twelve[0, :-1]).all())  # risk aversion front-loads
    assert twelve[1].tolist() == pytest.approx([1 / 12] * 12)  # no volatility: TWAP
    neutral = almgren_chriss(sigma, 12, 1440, CostConfig(risk_aversion=0.0))
    assert neutral[0].tolist() == pytest.approx([1 / 12] * 12)


def test_market_context_reads_only_the_trailing_bars():
    prices = T([[100.0, 101.0, 99.0, 100.0]], dtype=torch.float64)
    volumes = T([[10.0, 20.0, 30.0, 40.0]], dtype=torch.float64)
    ctx = market_context(prices, volumes, freq_min=60)  # 24 bars a day
    assert float(ctx.adv[0]) == pytest.approx(25.0 * 24)
    r = np.log([101 / 100, 99 / 101, 100 / 99])
    assert float(ctx.sigma_daily[0]) == pytest.approx(r.std(ddof=1) * math.sqrt(24))
    assert float(ctx.arrival[0]) == 100.0 and float(ctx.trend[0]) == pytest.approx(0.0)


def test_volume_profile_by_phase():
    volumes = np.array([[1.0, 3.0], [3.0, 1.0], [2.0, 2.0]])
    profile = VolumeProfile.fit(volumes, np.array([0, 1, 1]))
    assert profile.curves[0].tolist() == pytest.approx([0.25, 0.75])
    assert profile.curves[1].tolist() == pytest.approx([0.625, 0.375])
    np.testing.assert_allclose(profile.schedules(np.array([1, 7])), [[0.625, 0.375], [0.5, 0.5]])


def test_without_costs_net_is_the_tables_gross_slippage():
    # The early-stop rule's orders (uneven, early-finishing schedules) on random bars: with no impact,
    # no fees and a cap that never binds, the net columns are the tables' slippage_bps.
    from lem_model.baselines import early_stop_rule
    from lem_model.ledger import RULE, model_orders
    from lem_model.metrics import slippage_bps

    g = torch.Generator().manual_seed(0)
    B, N = 64, 12
    prices = (1 + 0.01 * torch.randn(B, N, generator=g, dtype=torch.float64)).cumprod(1)
    volumes = torch.rand(B, N, generator=g, dtype=torch.float64) + 0.1
    alloc = early_stop_rule(prices, N + 1)
    orders = model_orders(RULE, alloc, slippage_bps(alloc, volumes, prices).float(), N)
    free = CostConfig(order_sizes=(0.01,), impact_coefficient=0.0, participation_cap=1.0)
    # An ADV far below every bar's volume: the orders are tiny against each bar, so the cap never binds.
    ctx = MarketContext(adv=torch.full((B,), 1e-9, dtype=torch.float64), sigma_daily=torch.zeros(B, dtype=torch.float64),
                        arrival=prices[:, 0], trend=torch.zeros(B, dtype=torch.float64))
    rec = order_records(orders, volumes, prices, ctx, free, fee=0.0)
    np.testing.assert_allclose(rec["net_slippage_bps@0.01"], rec["slippage_bps"], atol=2e-3)
    assert (rec["fill_rate@0.01"] == 1).all()
    assert np.abs(rec["slippage_bps"]).max() > 10  # the schedules do differ from their benchmarks
