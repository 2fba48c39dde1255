"""The early-stop rule with thresholds, and their fit on training windows
(lem_model.baselines.fit_stop_thresholds): the baseline a finish gate started as the fitted rule
(LEMConfig.rule_prior="fitted") is measured against."""

from __future__ import annotations

import pytest
import torch

from lem_model.baselines import early_stop_rule, fit_stop_thresholds
from lem_model.metrics import slippage_bps
from lem_model.vocabulary import OrderKind, Side, Target
from lem_model.window_dataset import WindowDataset

BUY, SELL = OrderKind.BUY_VWAP, OrderKind.SELL_VWAP


def test_zero_thresholds_are_the_one_line_rule():
    g = torch.Generator().manual_seed(0)
    px = (1 + 0.01 * torch.randn(64, 8, generator=g, dtype=torch.float64).cumsum(1))
    assert torch.equal(early_stop_rule(px, 9, thresholds_bps=torch.zeros(9, 2)), early_stop_rule(px, 9))


def test_a_buy_finishes_only_when_the_last_bar_beats_the_average_by_the_threshold():
    """Bar 1 is 100 bps below bar 0, so at step 2 the last price is ~50 bps below the average
    paid (half at each): a 40 bps threshold finishes the buy there, a 60 bps one waits (and,
    the price flat afterwards, trades TWAP to the end). Sells never stop on a fall."""
    px = torch.tensor([[1.0, 0.99, 0.99, 0.99, 0.99, 0.99]], dtype=torch.float64)
    N = px.shape[1]
    for threshold, finishes in ((40.0, True), (60.0, False)):
        thresholds = torch.full((N + 1, 2), threshold)
        alloc = early_stop_rule(px, N + 1, thresholds_bps=thresholds)[0, :, 2, :, Target.VOLUME]  # head 2: (N, 4)
        if finishes:
            torch.testing.assert_close(alloc[:, BUY], torch.tensor([1 / N, 1 / N, 1 - 2 / N, 0, 0, 0], dtype=px.dtype))
        else:
            torch.testing.assert_close(alloc[:, BUY], torch.full((N,), 1 / N, dtype=px.dtype))
        torch.testing.assert_close(alloc[:, SELL], torch.full((N,), 1 / N, dtype=px.dtype))


@pytest.fixture(scope="module")
def real(small_equity_windows):
    data = WindowDataset(small_equity_windows, "train")
    _, vol, px = data.gather(list(range(len(data))))
    return torch.as_tensor(vol).double(), torch.as_tensor(px).double()


def side_cost(vol: torch.Tensor, px: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """(J, 2): mean slippage per head and side, signed so lower is better, over both benchmarks
    and targets, computed independently of the fit."""
    slip = slippage_bps(early_stop_rule(px, px.shape[1] + 1, thresholds_bps=thresholds), vol, px)
    buy = slip[:, :, [OrderKind.BUY_VWAP, OrderKind.BUY_TWAP]].mean(dim=(0, 2, 3))
    sell = -slip[:, :, [OrderKind.SELL_VWAP, OrderKind.SELL_TWAP]].mean(dim=(0, 2, 3))
    return torch.stack([buy, sell], dim=1)


def test_the_fit_picks_each_heads_best_threshold_on_real_windows(real):
    vol, px = real
    N = px.shape[1]
    grid = (0.0, 30.0, 60.0, 120.0)
    fitted = fit_stop_thresholds(vol, px, N + 1, grid_bps=grid)
    assert fitted.shape == (N + 1, 2)
    assert torch.equal(fitted[N], torch.zeros(2))  # the Match head never stops early
    costs = torch.stack([side_cost(vol, px, torch.full((N + 1, 2), t)) for t in grid])  # (grid, J, 2)
    best = costs.min(0).values
    mine = side_cost(vol, px, fitted)
    torch.testing.assert_close(mine[:N], best[:N], rtol=0, atol=1e-9)  # heads do not interact
    # On these windows waiting for a larger move pays at the short minimum periods, as on the
    # Dow 30's: the fit is not the one-line rule there, and it is strictly better.
    assert (fitted[:3] > 0).all(), fitted
    zero = side_cost(vol, px, torch.zeros(N + 1, 2))
    assert (mine[:3] < zero[:3]).all(), (mine[:3], zero[:3])
    assert set(fitted.unique().tolist()) <= set(grid)
    assert Side.BUY == 0 and Side.SELL == 1  # the columns' order


def test_training_starts_the_gate_as_the_fitted_rule_and_evaluation_scores_that_rule(small_equity_windows, tmp_path):
    import numpy as np

    from lem_model import LargeExecutionModel, LEMConfig
    from lem_model.config import FITTED_RULE_GATE, SMALL_SIZE
    from lem_model.evaluate import evaluate
    from lem_model.paired import comparisons
    from lem_model.train import TrainConfig, fit_rule_prior, train

    train_set, val_set = WindowDataset(small_equity_windows, "train"), WindowDataset(small_equity_windows, "val")
    cfg = LEMConfig.for_windows(train_set.meta, SMALL_SIZE, FITTED_RULE_GATE)
    tcfg = TrainConfig(epochs=1, batch_size=64, lr=1e-4, objective="aligned", samples_per_epoch=128, device="cpu",
                       progress=False, rule_fit_windows=500)
    torch.manual_seed(0)
    model = LargeExecutionModel(cfg)
    train(model, train_set, val_set, tcfg, tmp_path / "state", resume=False)
    fitted = fit_rule_prior(model, train_set, tcfg)  # the same seeded draw
    assert torch.equal(model.stop_thresholds, fitted) and fitted.abs().sum() > 0

    ev = evaluate(model, val_set, min_rate=1 / cfg.n_ahead**2)
    _, vol, px = val_set.gather(list(range(len(val_set))))
    vol, px = torch.as_tensor(vol).double(), torch.as_tensor(px).double()
    want = slippage_bps(early_stop_rule(px, cfg.n_models, thresholds_bps=fitted), vol, px).float().numpy()
    np.testing.assert_array_equal(ev.fitted_rule_bps, want)
    dates = np.arange(len(val_set))
    vs_fitted = {(side, m): p for side, m, p in comparisons(ev, dates, "fitted_rule", resamples=50)}
    sell = ev.model_bps[:, 0, SELL, Target.VOLUME].astype(np.float64) - want[:, 0, SELL, Target.VOLUME]
    assert vs_fitted["SELL", 1].mean == pytest.approx(sell.mean())

    plain = evaluate(LargeExecutionModel(LEMConfig.for_windows(train_set.meta, SMALL_SIZE)), val_set,
                     min_rate=1 / cfg.n_ahead**2)
    assert plain.fitted_rule_bps.size == 0
    with pytest.raises(ValueError, match="no fitted rule"):
        comparisons(plain, dates, "fitted_rule", resamples=50)

