"""``lem schedule``: one order scheduled bar by bar from a trained model and recent bars.

Model inputs are cut by the same code that built the training windows (lem_pipeline.windows),
so a live decision sees exactly what the model was trained and evaluated on. Bars not yet
traded are padded (zero volume, last price): the causal model cannot read them.

The bars are checked first (:func:`check_bars`): a model fed a NaN, a zero normaliser, two
symbols interleaved, intraday bars off their grid, or intraday bars to a daily model (or the
reverse) returns a number, not an error, so every such input is refused here, naming the bar,
before it reaches the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone

import numpy as np
import polars as pl

from lem_model.model import LargeExecutionModel
from lem_model.orders import Order
from lem_model.policy import Decision, LivePolicy
from lem_pipeline.bars import BAR_COLUMNS, DAILY_MINUTES
from lem_pipeline.errors import UserError
from lem_pipeline.windows import FEATURE_NAMES, WindowConfig, cut_windows, plan_series

VALUE_COLUMNS = ["volume", "quote_volume", "vwap"]  # finite and >= 0 in every bar a decision reads
POSITIVE_COLUMNS = ["vwap"]  # > 0 as well: the model reads VWAP / VWAP[r-L]
OPTIONAL_FEATURE_COLUMNS = ["bridged"]  # bar columns that only some seasonalities read


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


def as_utc(t: datetime) -> datetime:
    """A naive time is taken as UTC; an aware one is converted to UTC (its offset is kept, not dropped)."""
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _required_columns(cfg: WindowConfig) -> list[str]:
    features = FEATURE_NAMES[cfg.seasonality]
    return [c for c in BAR_COLUMNS if c not in OPTIONAL_FEATURE_COLUMNS or c in features]


def _frequency_label(freq_min: int) -> str:
    return "daily bars" if freq_min == DAILY_MINUTES else f"{freq_min}-minute bars"


def _check_series(bars: pl.DataFrame, cfg: WindowConfig, name: str) -> pl.DataFrame:
    """One symbol at one frequency, the frequency the model was trained on, on unique UTC
    open times: sorted, with open_time in UTC."""
    missing = [c for c in _required_columns(cfg) if c not in bars.columns]
    if missing:
        raise UserError(f"{name}: missing column(s) {', '.join(missing)} "
                        f"(bars need {', '.join(_required_columns(cfg))})")
    if bars.is_empty():
        raise UserError(f"{name}: no bars")
    for column in ("symbol", "freq_min", "segment"):
        if column in bars.columns and bars[column].null_count():
            raise UserError(f"{name}: {bars[column].null_count()} bar(s) without a {column}")
    symbols = sorted(bars["symbol"].cast(pl.String).unique().to_list(), key=str)
    if len(symbols) > 1:
        raise UserError(f"{name}: bars of {len(symbols)} symbols interleaved ({', '.join(map(str, symbols))}); "
                        "schedule one symbol at a time (lem schedule --symbol)")
    freqs = sorted(bars["freq_min"].unique().to_list())
    if len(freqs) > 1:
        raise UserError(f"{name}: bars of several frequencies (freq_min {freqs}); keep one")
    if (freqs[0] == DAILY_MINUTES) != (cfg.seasonality == "daily"):
        trained = "daily bars" if cfg.seasonality == "daily" else "intraday bars"
        raise UserError(f"{name}: {_frequency_label(freqs[0])} (freq_min {freqs[0]}), but the model was trained on "
                        f"{trained} (seasonality {cfg.seasonality!r} in its windows.json)")
    dtype = bars.schema["open_time"]
    if not isinstance(dtype, pl.Datetime):
        raise UserError(f"{name}: open_time must be a datetime column, got {dtype}")
    t = pl.col("open_time")
    bars = bars.with_columns(t.dt.replace_time_zone("UTC") if dtype.time_zone is None
                             else t.dt.convert_time_zone("UTC")).sort("open_time")
    if bars["open_time"].null_count():
        raise UserError(f"{name}: {bars['open_time'].null_count()} bar(s) without an open_time")
    if freqs[0] == DAILY_MINUTES:  # the pipeline's daily bars open at 00:00 UTC: the calendar features read that day
        off = bars.filter(t.dt.time() != time(0))["open_time"]
        if len(off):
            raise UserError(f"{name}: daily bars must open at 00:00 UTC; {len(off)} do not, the first at {off[0]}")
    duplicated = bars.filter(t.is_duplicated())["open_time"]
    if len(duplicated):
        raise UserError(f"{name}: {len(duplicated)} bars share an open time, the first at {duplicated[0]}")
    # Float64 as the pipeline's bars (an equity file may hold whole-number volumes), so the
    # padding of bars not yet traded concatenates; values that are not numbers are named.
    try:
        return bars.with_columns(pl.col(VALUE_COLUMNS).cast(pl.Float64))
    except pl.exceptions.PolarsError as e:
        raise UserError(f"{name}: {', '.join(VALUE_COLUMNS)} must be numbers ({type(e).__name__})") from e


def _start_row(bars: pl.DataFrame, start: datetime | None, name: str) -> int:
    """The execution start's row: the bar opening at ``start``, or one past the last bar (live)."""
    if start is None:
        return len(bars)
    start = as_utc(start)
    times = bars["open_time"]
    matches = np.flatnonzero((times == start).to_numpy())
    if not len(matches):
        raise UserError(f"{name}: no bar opens at {start} (UTC) in the given bars ({times[0]} .. {times[-1]})")
    return int(matches[0])


def _valid(column: str) -> pl.Expr:
    x = pl.col(column).cast(pl.Float64)
    return x.is_finite() & ((x > 0) if column in POSITIVE_COLUMNS else (x >= 0))


def _check_rows_read(bars: pl.DataFrame, cfg: WindowConfig, r: int, known: int, name: str) -> None:
    """The bars the decisions read, [r - first_start, r + known): enough of them, every value
    finite and not negative (VWAP positive), intraday ones on their frequency's grid within a
    segment, and some volume both in the lookback and in the bars whose mean volume scales it."""
    if r < cfg.first_start:
        raise UserError(f"{name}: need {cfg.first_start} bars of history before the execution start, have {r}")
    read = bars.slice(r - cfg.first_start, cfg.first_start + known)
    values = VALUE_COLUMNS + [c for c in OPTIONAL_FEATURE_COLUMNS if c in _required_columns(cfg)]
    for column in values:
        bad = read.filter(~_valid(column).fill_null(False))
        if len(bad):
            value = "null" if bad[column][0] is None else bad[column][0]
            raise UserError(f"{name}: {column} is {value} at {bad['open_time'][0]} ({len(bad)} such bars among the "
                            f"{len(read)} the model reads, from {read['open_time'][0]})")
    freq = int(read["freq_min"][0])
    if freq != DAILY_MINUTES:  # intraday bars of one segment lie on the frequency's grid (outages bridged)
        step = read.with_columns(gap=pl.col("open_time").diff(), same=pl.col("segment") == pl.col("segment").shift())
        off = step.filter(pl.col("same") & (pl.col("gap") != timedelta(minutes=freq)))
        if len(off):
            raise UserError(f"{name}: the bar at {off['open_time'][0]} is {off['gap'][0]} after the one before in the "
                            f"same segment; {_frequency_label(freq)} are {freq} minutes apart")
    L = cfg.lookback
    for what, lo, hi in (("normaliser", r - L - cfg.norm_window, r - L), ("lookback", r - L, r)):
        part = bars.slice(lo, hi - lo)
        if not (part["volume"] > 0).any():
            raise UserError(f"{name}: all-zero volume in the {hi - lo} bars the model reads as its {what} "
                            f"({part['open_time'][0]} .. {part['open_time'][-1]})")


def check_bars(bars: pl.DataFrame, cfg: WindowConfig, start: datetime | None = None, known: int = 0,
               name: str = "bars") -> tuple[pl.DataFrame, int]:
    """Bars a model trained with ``cfg`` can be fed, from the execution start ``start`` with
    ``known`` execution bars already traded: (the bars sorted, in UTC; the start's row).
    Raises UserError naming ``name`` and the offending column, symbol or bar."""
    bars = _check_series(bars, cfg, name)
    r = _start_row(bars, start, name)
    _check_rows_read(bars, cfg, r, min(known, len(bars) - r), name)
    return bars, r


@dataclass
class ScheduledStep:
    step: int
    bar_open_time: datetime
    decision: Decision


def schedule_order(model: LargeExecutionModel, cfg: WindowConfig, bars: pl.DataFrame, order: Order,
                   start: datetime | None = None, name: str = "bars") -> list[ScheduledStep]:
    """Decisions for every step whose earlier bars are known: from ``start`` (a bar in
    ``bars``, naive taken as UTC: a replay) or, without it, for the bar after the last one
    (live: one step). ``name`` is the bars' source, for the messages."""
    N = cfg.n_ahead
    bars, r = check_bars(bars, cfg, start, N - 1, name)
    known = min(len(bars) - r, N - 1)  # execution bars already traded, whose successors we can decide
    times = bars["open_time"].to_list()
    pad_times = _next_bar_times(times[-1], int(bars["freq_min"][-1]), N)
    last = bars.tail(1)
    padding = pl.concat([last.with_columns(pl.lit(t).cast(bars.schema["open_time"]).alias("open_time"),
                                           pl.lit(0.0).alias("volume"), pl.lit(0.0).alias("quote_volume"))
                         for t in pad_times])
    plan = plan_series(pl.concat([bars, padding]), cfg)
    x, _, _ = cut_windows(plan, np.array([r]), cfg)
    all_times = times + pad_times
    # As training keeps a window only when every row it reads is finite: a new segment (a long
    # outage) less than a normaliser's length before a row leaves its normalised volume unknown.
    unknown = np.flatnonzero(~np.isfinite(x[0, : cfg.lookback + N - 1]).all(axis=1))
    if len(unknown) or not np.isfinite(plan.vol_norm[r + N - 1]):
        at = all_times[r - cfg.lookback + unknown[0]] if len(unknown) else all_times[r + N - 1]
        raise UserError(f"{name}: a long outage (a new segment) inside the {cfg.first_start} bars before the "
                        f"execution start {all_times[r]}: the bar at {at} has no normalised volume (fewer than "
                        f"{cfg.norm_window} bars of its segment before it); start later")
    policy = LivePolicy(model, order)
    steps = [ScheduledStep(s, all_times[r + s], policy.decide(x[0, : cfg.lookback + s])) for s in range(known + 1)]
    for s in steps:
        if not math.isfinite(s.decision.fraction):
            raise UserError(f"the model's allocation for step {s.step} ({s.bar_open_time}) is {s.decision.fraction} "
                            "from finite inputs: its weights are not usable")
    return steps
