"""``lem schedule``: one order scheduled bar by bar from a trained model and recent bars.

Model inputs are cut by the same code that built the training windows (lem_pipeline.windows),
so a live decision sees exactly what the model was trained and evaluated on. Bars not yet
traded are padded (zero volume, last price): the causal model cannot read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from lem_model.model import LargeExecutionModel
from lem_model.orders import Order
from lem_model.policy import Decision, LivePolicy
from lem_pipeline.bars import DAILY_MINUTES
from lem_pipeline.windows import WindowConfig, cut_windows, plan_series


def _next_bar_times(last: datetime, freq_min: int, n: int) -> list[datetime]:
    """Open times of the next ``n`` bars: the next weekdays for daily bars (exchange holidays
    aside), the next grid points for intraday ones."""
    out, t = [], last
    while len(out) < n:
        t = t + timedelta(minutes=freq_min)
        if freq_min == DAILY_MINUTES and t.weekday() >= 5:
            continue
        out.append(t)
    return out


@dataclass
class ScheduledStep:
    step: int
    bar_open_time: datetime
    decision: Decision


def schedule_order(model: LargeExecutionModel, cfg: WindowConfig, bars: pl.DataFrame, order: Order,
                   start: datetime | None = None) -> list[ScheduledStep]:
    """Decisions for every step whose earlier bars are known: from ``start`` (a bar in
    ``bars``: a replay) or, without it, for the bar after the last one (live: one step)."""
    bars = bars.sort("open_time")
    times = bars["open_time"].to_list()
    if start is None:
        r = len(bars)
    else:
        matches = [i for i, t in enumerate(times) if t == start]
        if not matches:
            raise ValueError(f"no bar opens at {start} in the given bars ({times[0]} .. {times[-1]})")
        r = matches[0]
    N = cfg.n_ahead
    known = min(len(bars) - r, N - 1)  # execution bars already traded, whose successors we can decide
    pad_times = _next_bar_times(times[-1], int(bars["freq_min"][-1]), N)
    last = bars.tail(1)
    padding = pl.concat([last.with_columns(pl.lit(t).cast(bars.schema["open_time"]).alias("open_time"),
                                           pl.lit(0.0).alias("volume"), pl.lit(0.0).alias("quote_volume"))
                         for t in pad_times])
    plan = plan_series(pl.concat([bars, padding]), cfg)
    if r < cfg.first_start or not np.isfinite(plan.vol_norm[r + N - 1]):
        raise ValueError(f"need {cfg.first_start} bars of history before the execution start, have {r}")
    x, _, _ = cut_windows(plan, np.array([r]), cfg)
    policy = LivePolicy(model, order)
    all_times = times + pad_times
    return [ScheduledStep(s, all_times[r + s], policy.decide(x[0, : cfg.lookback + s])) for s in range(known + 1)]
