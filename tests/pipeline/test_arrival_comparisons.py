"""summary.json's comparisons against the arrival price (evaluation_summary.arrival_comparisons),
from a trade log whose rows come in any order: each LEM order is paired with its baseline on the
same window, BOTH averages a window's buy and sell advantages, and a log that pairs ambiguously
is refused."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from lem_pipeline.evaluation_summary import arrival_comparisons

N, WINDOWS = 2, 40


def trade_log(rng: np.random.Generator) -> pl.DataFrame:
    """A volume-target trade log of LEM (heads 1..N), RULE (1..N) and TWAP ("All") orders on
    WINDOWS windows, two windows per date, its rows shuffled."""
    rows = []
    start = datetime(2021, 1, 4, tzinfo=timezone.utc)
    for w in range(WINDOWS):
        for strategy, periods in (("LEM", [str(m) for m in range(1, N + 1)]), ("RULE", [str(m) for m in range(1, N + 1)]),
                                  ("TWAP", ["All"])):
            for side in ("BUY", "SELL"):
                for period in periods:
                    rows.append({"window": w, "start_time": start + timedelta(days=w // 2), "strategy": strategy,
                                 "side": side, "target": "volume", "min_period": period,
                                 "arrival_bps": float(rng.normal(0, 10))})
    frame = pl.DataFrame(rows)
    return frame.sample(fraction=1.0, shuffle=True, seed=1)


def arrival(log: pl.DataFrame, strategy: str, side: str, period: str) -> np.ndarray:
    rows = log.filter((pl.col("strategy") == strategy) & (pl.col("side") == side) & (pl.col("min_period") == period))
    return rows.sort("window")["arrival_bps"].to_numpy()


def test_pairs_each_order_with_its_baseline_on_the_same_window_and_both_averages_the_sides():
    log = trade_log(np.random.default_rng(0))
    got = {(side, m): p for side, m, p in arrival_comparisons(log, N, "RULE", resamples=200)}
    assert sorted(got) == sorted((s, m) for s in ("BUY", "SELL", "BOTH") for m in range(1, N + 1))
    buy = arrival(log, "RULE", "BUY", "2") - arrival(log, "LEM", "BUY", "2")  # a buyer wants it low
    sell = arrival(log, "LEM", "SELL", "2") - arrival(log, "RULE", "SELL", "2")  # a seller high
    assert got["BUY", 2].mean == pytest.approx(buy.mean()) and got["SELL", 2].mean == pytest.approx(sell.mean())
    both = (buy + sell) / 2  # window by window: its win rate is not the sides' average
    assert got["BOTH", 2].mean == pytest.approx(both.mean())
    assert got["BOTH", 2].win_rate == pytest.approx(((both > 0).sum() + 0.5 * (both == 0).sum()) / WINDOWS)
    assert got["BOTH", 2].windows == WINDOWS and got["BOTH", 2].dates == WINDOWS // 2
    twap = {(side, m): p for side, m, p in arrival_comparisons(log, N, "TWAP", resamples=200)}
    assert twap["SELL", 1].mean == pytest.approx((arrival(log, "LEM", "SELL", "1") - arrival(log, "TWAP", "SELL", "All")).mean())


def test_a_window_with_two_orders_of_one_head_is_refused():
    log = trade_log(np.random.default_rng(0))
    doubled = log.filter((pl.col("strategy") == "LEM") & (pl.col("side") == "BUY") & (pl.col("min_period") == "1")
                         & (pl.col("window") == 3)).with_columns(arrival_bps=pl.lit(99.0))
    with pytest.raises(ValueError, match="several LEM or RULE orders"):
        arrival_comparisons(pl.concat([log, doubled]), N, "RULE", resamples=50)
    with pytest.raises(ValueError, match="no LEM SELL orders at minimum period 1"):
        arrival_comparisons(log.filter(~((pl.col("strategy") == "LEM") & (pl.col("side") == "SELL"))), N, "RULE")
