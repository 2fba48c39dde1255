"""The Match head's forecast (LEMConfig.match_forecast): the causal volume forecast reads only
rows before each step, the minimum-variance curve is the least-variance static schedule, and the
head at its start trades exactly the forecast-times-curve schedule, written out here on its own."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lem_model import LargeExecutionModel
from lem_model.baselines import min_variance_curve, schedule_slippage_bps, volume_forecasts
from lem_model.vocabulary import OrderKind, Target
from tests.model.test_model_behaviour import TINY, inputs, scrambled

CFG = dataclasses.replace(TINY, match_forecast=True, match_forecast_level=4, match_forecast_phi=0.6)


def forecast_times_curve(volume: np.ndarray, curve: np.ndarray, L: int, N: int, level: int, phi: float) -> np.ndarray:
    """(B, N) the schedule step by step: at step s, forecast bars s..N-1 from rows before r+s,
    weight them by the curve and trade bar s's share of what is left."""
    alloc, done = np.zeros((len(volume), N)), np.zeros(len(volume))
    for s in range(N - 1):
        known = volume[:, L + s - level:L + s]
        mean, last = known.mean(1, keepdims=True), known[:, -1:]
        f = np.maximum(mean + phi ** np.arange(1, N - s + 1) * (last - mean), 1e-9) * curve[s:]
        alloc[:, s] = (1 - done) * f[:, 0] / f.sum(1)
        done += alloc[:, s]
    alloc[:, -1] = 1 - done
    return alloc


def test_the_forecast_of_a_step_reads_only_the_rows_before_it():
    x = inputs(CFG, 3, 0)
    L, N = CFG.lookback, CFG.n_ahead
    before = volume_forecasts(x[..., -1], L, N, 4, 0.6)
    for s in range(N - 1):
        later = x.clone()
        later[:, L + s:, -1] = 50.0  # bar s and after
        after = volume_forecasts(later[..., -1], L, N, 4, 0.6)
        torch.testing.assert_close(after[:, : s + 1], before[:, : s + 1], rtol=0, atol=0)
        assert not torch.equal(after[:, s + 1:], before[:, s + 1:]) or s == N - 2


def test_the_minimum_variance_curve_has_less_variance_than_any_other_static_schedule():
    g = torch.Generator().manual_seed(0)
    B, N = 4000, 6
    # Later bars noisier, volume share tied to the move: the curve is not TWAP.
    prices = 1 + (0.01 * torch.randn(B, N, generator=g) * torch.linspace(0.5, 2, N)).cumsum(1)
    volumes = torch.rand(B, N, generator=g) + 5 * (prices - 1).abs()
    curve = min_variance_curve(volumes, prices)
    assert curve.shape == (N,) and float(curve.sum()) == pytest.approx(1, abs=1e-6) and bool((curve >= 0).all())

    def spread(a: torch.Tensor) -> float:
        return float(schedule_slippage_bps(a.double().expand(B, N), volumes.double(), prices.double()).std())

    best = spread(curve)
    assert best < spread(torch.full((N,), 1 / N)) * 0.95
    for k in range(20):  # any other schedule summing to 1 does worse
        other = (curve + 0.02 * torch.randn(N, generator=g)).clamp(min=0)
        assert spread(other / other.sum()) > best


def test_at_its_start_the_match_head_trades_the_forecast_times_its_curve():
    model = LargeExecutionModel(CFG)
    with torch.no_grad():
        for mlp in model.allocators:  # the network's factor (1 + 0)^gamma = 1, as after set_stop_thresholds
            mlp.w3.zero_()
            mlp.b3.zero_()
    curve = torch.tensor([0.10, 0.12, 0.14, 0.16, 0.20, 0.28])
    model.set_match_curve(curve)
    x = inputs(CFG, 8, 3).double()
    model = model.double()
    B, N, J = len(x), CFG.n_ahead, CFG.n_models
    alloc = model(x, torch.zeros(B, dtype=torch.float64), torch.ones(B, dtype=torch.float64))
    want = forecast_times_curve(x[..., -1].numpy(), curve.double().numpy(), CFG.lookback, N, 4, 0.6)
    for kind in (OrderKind.BUY_VWAP, OrderKind.SELL_VWAP):
        for target in Target:
            np.testing.assert_allclose(alloc[:, :, J - 1, kind, target].detach().numpy(), want, rtol=1e-6)  # EPS in the share
    # The TWAP orders of the Match head and the other heads propose their base curves as before.
    reference = LargeExecutionModel(dataclasses.replace(CFG, match_forecast=False)).double()
    reference.load_state_dict({k: v for k, v in model.state_dict().items() if k != "match_curve"})
    plain = reference(x, torch.zeros(B, dtype=torch.float64), torch.ones(B, dtype=torch.float64))
    torch.testing.assert_close(alloc[:, :, : J - 1], plain[:, :, : J - 1])
    torch.testing.assert_close(alloc[:, :, J - 1, OrderKind.BUY_TWAP], plain[:, :, J - 1, OrderKind.BUY_TWAP])


def test_the_match_curve_is_learnt_and_projected_onto_a_schedule():
    model = scrambled(CFG, 1)
    x = inputs(CFG, 4, 2)
    alloc = model(x, torch.full((4,), 0.02), torch.ones(4))
    alloc[:, :, CFG.n_models - 1, OrderKind.BUY_VWAP, Target.VOLUME].pow(2).sum().backward()
    assert model.match_curve.grad is not None and bool(model.match_curve.grad.abs().sum() > 0)
    with torch.no_grad():
        model.match_curve.add_(torch.tensor([-1.0, 0, 0, 0, 0, 0]))
    model.project_constraints()
    curve = model.match_curve.detach()
    assert bool((curve >= 0).all()) and float(curve.sum()) == pytest.approx(1, abs=1e-6) and float(curve[0]) == 0


def test_match_forecast_rejects_a_level_beyond_the_lookback():
    with pytest.raises(ValueError, match="match_forecast_level must be in 1..lookback"):
        dataclasses.replace(TINY, match_forecast=True, match_forecast_level=TINY.lookback + 1)
    with pytest.raises(ValueError, match="set_match_curve needs"):
        LargeExecutionModel(TINY).set_match_curve(torch.ones(TINY.n_ahead))
