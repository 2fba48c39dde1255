"""The paired comparison's interval (lem_model.paired): a moving-block bootstrap over dates covers
the true mean of a dependent series about as often as it says; a plain (i.i.d.) bootstrap of the
same data does not, which is why the evaluation resamples blocks of dates. And the sign and win
rate on a case small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lem_model.evaluate import EvalArrays, match_vwap_std, match_vwap_std_reduction
from lem_model.paired import advantage, block_bootstrap_mean, block_length, comparisons, paired, win_rate
from lem_model.vocabulary import OrderKind, Side, Target

TRUE_MEAN = 3.0
PHI = 0.8  # persistence of the date-level component
DATES = 500  # about two years of trading days
PER_DATE = 4  # windows per execution date, sharing the date's component
TRIALS = 100


def ar1_windows(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-window values: the true mean + a stationary AR(1) over dates (phi = PHI, unit
    innovations) shared by the date's windows + independent window noise; and their dates."""
    rng = np.random.default_rng(seed)
    shocks = rng.standard_normal(DATES)
    level = np.empty(DATES)
    level[0] = shocks[0] / math.sqrt(1 - PHI**2)
    for t in range(1, DATES):
        level[t] = PHI * level[t - 1] + shocks[t]
    dates = np.repeat(np.arange(DATES), PER_DATE)
    return TRUE_MEAN + level[dates] + rng.standard_normal(len(dates)), dates


def test_block_interval_covers_the_true_mean_and_iid_does_not():
    block_hits = iid_hits = 0
    blocks = []
    for seed in range(TRIALS):
        values, dates = ar1_windows(seed)
        p = paired(values, dates, seed=seed)
        blocks.append(p.block_length)
        block_hits += p.ci95[0] <= TRUE_MEAN <= p.ci95[1]
        # The same bootstrap treating every window as its own date with blocks of one: i.i.d.
        lo, hi = block_bootstrap_mean(values, np.arange(len(values)), block=1, seed=seed, resamples=2000)
        iid_hits += lo <= TRUE_MEAN <= hi
    print(f"\n95% intervals covering the true mean in {TRIALS} AR(1) trials (phi {PHI}, {DATES} dates x "
          f"{PER_DATE} windows): moving-block over dates {block_hits}, i.i.d. {iid_hits}; "
          f"block length {min(blocks)}..{max(blocks)} dates")
    assert block_hits >= 90
    assert iid_hits <= 70


def test_advantage_sign_and_win_rate_by_hand():
    lem = np.array([10.0, -5.0, 2.0, 4.0])
    rule = np.array([12.0, -5.0, 1.0, 0.0])
    # A buyer wants low slippage: rule - LEM = [2, 0, -1, -4]; won, tie, lost, lost.
    buy = advantage(lem, rule, Side.BUY)
    np.testing.assert_array_equal(buy, [2.0, 0.0, -1.0, -4.0])
    assert win_rate(buy) == pytest.approx((1 + 0.5) / 4)
    # A seller wants it high: LEM - rule = [-2, 0, 1, 4].
    sell = advantage(lem, rule, Side.SELL)
    np.testing.assert_array_equal(sell, [-2.0, 0.0, 1.0, 4.0])
    assert win_rate(sell) == pytest.approx((2 + 0.5) / 4)
    p = paired(sell, np.array(["2020-01-02", "2020-01-02", "2020-01-03", "2020-01-06"]), resamples=200)
    assert p.mean == pytest.approx(0.75) and p.windows == 4 and p.dates == 3
    assert p.ci95[0] <= p.ci95[1] and p.win_rate == pytest.approx(0.625)


def test_comparisons_pair_each_head_with_the_rules_same_head_by_row():
    n, N = 6, 2
    rng = np.random.default_rng(1)
    model, rule = rng.normal(size=(n, N + 1, 4, 2)), rng.normal(size=(n, N + 1, 4, 2))
    ev = EvalArrays(model, rule, rng.normal(size=n), rng.normal(size=n), np.zeros((N, N + 1, 4, 2)), 0.0, True)
    dates = np.arange(n) // 2
    vs_rule = {(side, m): p for side, m, p in comparisons(ev, dates, "rule", resamples=100)}
    vs_twap = {(side, m): p for side, m, p in comparisons(ev, dates, "twap", resamples=100)}
    assert sorted(vs_rule) == [("BUY", 1), ("BUY", 2), ("SELL", 1), ("SELL", 2)]
    buy2 = rule[:, 1, OrderKind.BUY_VWAP, Target.VOLUME] - model[:, 1, OrderKind.BUY_VWAP, Target.VOLUME]
    assert vs_rule["BUY", 2].mean == pytest.approx(buy2.mean())
    sell1 = model[:, 0, OrderKind.SELL_VWAP, Target.VOLUME] - ev.twap_volume_bps
    assert vs_twap["SELL", 1].mean == pytest.approx(sell1.mean())
    assert vs_twap["SELL", 1].win_rate == pytest.approx(win_rate(sell1))
    with pytest.raises(ValueError, match="aligned"):
        paired(np.zeros(3), np.zeros(2))


def test_too_few_dates_give_no_interval_rather_than_a_zero_wide_one():
    """One or two dates (a short `lem evaluate --test-end`): every resample is the data again, so
    the interval would be zero wide and read as clearing 0. It is NaN (null in summary.json)."""
    rng = np.random.default_rng(0)
    values = 1.0 + 5 * rng.standard_normal(300)
    for n_dates in (1, 2):
        p = paired(values, np.arange(300) % n_dates)
        assert p.mean == pytest.approx(values.mean()) and all(math.isnan(b) for b in p.ci95)
    lo, hi = paired(values, np.arange(300) % 3).ci95
    assert lo < values.mean() - 0.1 and hi > values.mean() + 0.1
    assert all(math.isnan(b) for b in block_bootstrap_mean(values, np.arange(300) % 30, block=29))



def test_the_block_floor_holds_when_the_dates_are_few():
    """Twenty dates of windows that span twelve: the floor (the horizon) wins over n / 3, and with
    twenty dates a block of twelve still leaves nine positions to resample; with twelve dates,
    one position: no interval."""
    rng = np.random.default_rng(0)
    assert block_length(rng.standard_normal(20), min_length=12) == 12
    assert block_length(rng.standard_normal(300), min_length=12) >= 12
    assert block_length(rng.standard_normal(300)) <= 100
    values = rng.standard_normal(240)
    assert paired(values, np.arange(240) % 20, min_block=12).block_length == 12
    assert all(math.isnan(b) for b in paired(values, np.arange(240) % 12, min_block=12).ci95)


def test_match_vwap_risk_is_the_mean_of_the_buy_and_sell_std_not_their_pooled_std():
    """The contract's ``match_vwap_std_reduction``: 1 - mean(std buy, std sell) / std(TWAP). Two
    sides each with std 1 but means +5 and -5 pooled would read std sqrt(26), a risk no order has."""
    n, N = 4000, 2
    rng = np.random.default_rng(3)
    model = np.zeros((n, N + 1, 4, 2))
    model[:, N, OrderKind.BUY_VWAP, Target.VOLUME] = 5 + rng.normal(size=n)
    model[:, N, OrderKind.SELL_VWAP, Target.VOLUME] = -5 + rng.normal(size=n)
    twap = 2 * rng.normal(size=n)
    ev = EvalArrays(model, model, twap, twap, np.zeros((N, N + 1, 4, 2)), 0.0, True)
    stds = [model[:, N, k, Target.VOLUME].std() for k in (OrderKind.BUY_VWAP, OrderKind.SELL_VWAP)]
    assert match_vwap_std(ev) == pytest.approx(np.mean(stds))
    assert match_vwap_std_reduction(ev) == pytest.approx(1 - np.mean(stds) / twap.std())
    assert match_vwap_std_reduction(ev) == pytest.approx(0.5, abs=0.03)
