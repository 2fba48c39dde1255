"""The finish gate fed the early-stop rule's signal (LEMConfig.rule_signal): the signal is the
rule's own quantity, and the prior it starts from finishes where the rule would."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lem_model import LargeExecutionModel, LEMConfig
from lem_model.config import FITTED_RULE_GATE, SMALL_SIZE, AllocatorSwitches
from lem_model.vocabulary import OrderKind, Target
from tests.model.test_model_behaviour import TINY, inputs

RULE = dataclasses.replace(TINY, finish_gate=True, fused_init="independent", rule_signal=True)
BUYS = [OrderKind.BUY_VWAP, OrderKind.BUY_TWAP]
SELLS = [OrderKind.SELL_VWAP, OrderKind.SELL_TWAP]


def test_the_signal_is_the_last_price_against_the_average_paid_in_bps():
    prices = torch.tensor([[1.00, 1.02, 0.97]], dtype=torch.float64)
    a = 0.25  # three equal fills
    done = torch.full((1, 1, 2, 4), 3 * a, dtype=torch.float64)
    traded = torch.empty_like(done)
    traded[:, :, Target.VOLUME] = a * prices.sum()  # notional paid by the quantity orders
    traded[:, :, Target.NOTIONAL] = a * (1 / prices).sum()  # volume bought by the notional orders
    signal = LargeExecutionModel.rule_signal_bps(prices[:, -1], done, traded)
    mean, harmonic = prices.mean(), 3 / (1 / prices).sum()
    torch.testing.assert_close(signal[0, 0, Target.VOLUME], ((0.97 / mean - 1) * 1e4).expand(4), rtol=1e-12, atol=0)
    torch.testing.assert_close(signal[0, 0, Target.NOTIONAL], ((0.97 / harmonic - 1) * 1e4).expand(4), rtol=1e-12, atol=0)
    nothing = LargeExecutionModel.rule_signal_bps(prices[:, -1], torch.zeros_like(done), torch.zeros_like(traded))
    assert torch.equal(nothing, torch.zeros_like(nothing))  # nothing done yet: no average to compare with


def test_the_prior_finishes_a_buy_as_the_rule_does_when_prices_fall():
    """Prices fall 2% a bar. The rule (from step max(j, 1), on the bar before) finishes buys at
    step 2 (at step 1 the last price is the only one paid: a tie), never sells early, head j only
    from step j on, and the Match head never."""
    torch.manual_seed(0)
    model = LargeExecutionModel(RULE).eval()
    L, N = RULE.lookback, RULE.n_ahead
    x = inputs(RULE, 4, 0)
    x[:, L:, -2] = 0.98 ** torch.arange(RULE.seq_len - L, dtype=x.dtype)
    with torch.no_grad():
        alloc = model(x, torch.full((4,), 1 / N**2), torch.ones(4))
    for j in range(3):  # finished at step 2
        assert (alloc[:, 2, j, BUYS] > 0).all() and (alloc[:, 3:, j, BUYS] == 0).all(), j
        assert (alloc[:, 3:, j, SELLS].sum(1) > 0.1).all(), j  # a sell still has much left
    assert (alloc[:, 3, 3, BUYS] > 0).all() and (alloc[:, 4:, 3, BUYS] == 0).all()  # head 3: from step 3
    assert (alloc[:, 3:, N].sum(1) > 0.1).all()  # the Match head does not finish early
    torch.testing.assert_close(alloc.sum(1), torch.ones_like(alloc.sum(1)), atol=1e-6, rtol=0)


def test_without_the_prior_the_signal_starts_unused():
    cfg = dataclasses.replace(RULE, rule_signal_init=0.0)
    torch.manual_seed(1)
    with_signal = LargeExecutionModel(cfg).eval()
    plain = LargeExecutionModel(dataclasses.replace(cfg, rule_signal=False)).eval()
    plain.load_state_dict({k: v for k, v in with_signal.state_dict().items() if k != "rule_weight"})
    x = inputs(cfg, 3, 1)
    rates = (torch.full((3,), 0.02), torch.ones(3))
    with torch.no_grad():
        assert torch.equal(with_signal(x, *rates), plain(x, *rates))


def test_the_signal_needs_the_finish_gate():
    with pytest.raises(ValueError, match="needs finish_gate=True"):
        LEMConfig(rule_signal=True)


FITTED = dataclasses.replace(RULE, rule_prior="fitted", rule_signal_scale=16.0)


def vwap_buy_finishes_at_step_2(model: LargeExecutionModel, x: torch.Tensor, head: int) -> bool:
    """Whether the head's VWAP buy in quantity has nothing left after step 2."""
    N = model.cfg.n_ahead
    with torch.no_grad():
        alloc = model(x, torch.full((len(x),), 1 / N**2), torch.ones(len(x)))
    return bool((alloc[:, 3:, head, OrderKind.BUY_VWAP, Target.VOLUME] == 0).all())


def test_the_fitted_prior_finishes_exactly_where_its_threshold_says():
    """Bar 1 is 1% below bar 0. At step 2 the gate compares bar 1 with the average the model
    paid on bars 0 and 1: head 2 finishes its VWAP buy in quantity there with a threshold 5 bps below that
    signal's size, and not with one 5 bps above; the untrained network adds nothing."""
    torch.manual_seed(0)
    model = LargeExecutionModel(FITTED).eval()
    L, N, J = FITTED.lookback, FITTED.n_ahead, FITTED.n_models
    x = inputs(FITTED, 1, 0)
    x[:, L:, -2] = 0.99
    x[:, L, -2] = 1.0  # execution bar 0; bars 1.. at 0.99
    shut = torch.full((J, 2), 1e4)  # no head ever finishes early
    model.set_stop_thresholds(shut)
    with torch.no_grad():
        alloc = model(x, torch.full((1,), 1 / N**2), torch.ones(1))
    a0, a1 = alloc[0, 0, 2, OrderKind.BUY_VWAP, Target.VOLUME], alloc[0, 1, 2, OrderKind.BUY_VWAP, Target.VOLUME]
    signal = float((0.99 / ((a0 * 1.0 + a1 * 0.99) / (a0 + a1)) - 1) * 1e4)  # the rule's quantity, < 0
    assert -100 < signal < 0
    for margin, finishes in ((-5.0, True), (5.0, False)):
        thresholds = shut.clone()
        thresholds[2, 0] = -signal + margin  # head 2, buys
        model.set_stop_thresholds(thresholds)
        assert vwap_buy_finishes_at_step_2(model, x, 2) == finishes, margin
        assert torch.equal(model.stop_thresholds, thresholds)


def test_the_fitted_prior_starts_as_that_rule_with_twap_proposals():
    """The allocators' last layer starts at 0: proposals softsign(0) (the base curve), and gates
    that are the fitted rule where it decides and shut elsewhere."""
    torch.manual_seed(1)
    model = LargeExecutionModel(FITTED)
    J, P = FITTED.n_models, 16
    thresholds = torch.arange(2 * J, dtype=torch.float32).view(J, 2) * 8
    model.set_stop_thresholds(thresholds)
    for s, allocator in enumerate(model.allocators):
        assert torch.equal(allocator.w3, torch.zeros_like(allocator.w3))
        assert torch.equal(allocator.b3.view(J, P)[:, :8], torch.zeros(J, 8))
        bias = allocator.b3.view(J, P)[:, 8:].view(J, 2, 4)  # (head, target, kind)
        for j in range(J):
            decides = 1 <= s and max(j, 1) <= s and j < FITTED.n_ahead
            for k in OrderKind:
                want = -thresholds[j, k.side] / 16.0 if decides else FITTED.gate_bias
                assert torch.allclose(bias[j, :, k], torch.full((2,), float(want))), (s, j, k)
    state = model.state_dict()
    assert torch.equal(state["stop_thresholds"], thresholds)  # saved with the weights


def test_the_fitted_prior_needs_the_rule_signal_and_its_switch():
    with pytest.raises(ValueError, match="needs rule_signal=True"):
        dataclasses.replace(TINY, finish_gate=True, rule_prior="fitted")
    with pytest.raises(ValueError, match="rule_prior='fitted'"):
        LargeExecutionModel(RULE).set_stop_thresholds(torch.zeros(RULE.n_models, 2))
    with pytest.raises(ValueError, match="rule_signal_scale"):
        dataclasses.replace(RULE, rule_signal_scale=0.0)


def test_the_allocator_switches_default_to_the_reference_head():
    """AllocatorSwitches groups LEMConfig's head switches for a deployment: its defaults must be
    LEMConfig's (the reference head), field for field, and FITTED_RULE_GATE is the rule prior."""
    defaults = LEMConfig()
    switches = dataclasses.asdict(AllocatorSwitches())
    assert switches == {name: getattr(defaults, name) for name in switches}
    meta = {"features": list(range(TINY.n_features)), "config": {"lookback": TINY.lookback, "n_ahead": TINY.n_ahead}}
    cfg = LEMConfig.for_windows(meta, SMALL_SIZE, FITTED_RULE_GATE, causal=False)
    assert (cfg.finish_gate, cfg.rule_signal, cfg.rule_prior, cfg.fused_init, cfg.causal) == (
        True, True, "fitted", "independent", False)
    assert cfg.rule_signal_scale == FITTED_RULE_GATE.rule_signal_scale == 16.0
