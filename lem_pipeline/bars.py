"""Regular bars from raw candles: resampling, VWAP, and contiguous segments.

A segment is a stretch of the grid with no hole wider than the tolerance. Windows are cut
inside one segment, so a window never spans a long outage. A short outage inside a segment is
bridged: bars wholly inside it have zero volume and keep the previous bar's VWAP (forward fill,
never one from across a segment's end), and every bar missing any of its base candles is
flagged in ``bridged`` (1.0), so the model can see them. Exchange outages of a few hours would
otherwise end a segment, and each new segment needs hundreds of bars of warm-up before its first
window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import polars as pl

DAILY_MINUTES = 1440  # the freq_min of daily bars
BAR_COLUMNS = ["symbol", "freq_min", "open_time", "volume", "quote_volume", "vwap", "bridged", "segment"]


@dataclass(frozen=True)
class ResampleConfig:
    """``max_missing_base``: base candles that may be missing in a row inside a segment (bridged:
    their bars get zero volume, the previous VWAP and the ``bridged`` flag); one more missing
    ends the segment."""

    base_minutes: int
    max_missing_base: int = 1


def resample_klines(klines: pl.DataFrame, freq_min: int, cfg: ResampleConfig) -> pl.DataFrame:
    """Klines of one symbol (``open_time``, ``volume``, ``quote_volume``) -> bars of ``freq_min``
    minutes on the UTC grid (epoch-aligned), each with its segment number."""
    if freq_min % cfg.base_minutes:
        raise ValueError(f"frequency {freq_min} min is not a multiple of the {cfg.base_minutes} min base candles")
    symbol = klines["symbol"][0] if len(klines) else ""
    if klines.is_empty():
        return pl.DataFrame(schema={"symbol": pl.String, "freq_min": pl.Int32, "open_time": pl.Datetime("us", "UTC"),
                                    "volume": pl.Float64, "quote_volume": pl.Float64, "vwap": pl.Float64,
                                    "bridged": pl.Float64, "segment": pl.Int32})
    repeated = klines.filter(pl.col("open_time").is_duplicated())
    if not repeated.is_empty():  # summed into one bucket, they would double its volume
        raise ValueError(f"{symbol}: {len(repeated)} candles share an open_time with another, the first at "
                         f"{repeated['open_time'].min()}; refusing to sum them into one bar")
    base = timedelta(minutes=cfg.base_minutes)
    candles = klines.sort("open_time").with_columns(
        # A new segment starts after more than max_missing_base consecutive missing candles.
        ((pl.col("open_time").diff() > base * (cfg.max_missing_base + 1)).fill_null(False).cum_sum()
         .cast(pl.Int32).alias("segment")),
        _epoch_floor(pl.col("open_time"), freq_min).alias("bucket"),
    )
    per_bucket = freq_min // cfg.base_minutes
    per_segment = []
    for (seg,), part in candles.group_by(["segment"], maintain_order=True):
        sums = part.group_by("bucket").agg(pl.col("volume").sum(), pl.col("quote_volume").sum(), pl.len().alias("n"))
        # A segment that starts or ends inside a bucket leaves it partial: drop those edge buckets.
        edge = (pl.col("bucket") == pl.col("bucket").min()) | (pl.col("bucket") == pl.col("bucket").max())
        sums = sums.filter(~(edge & (pl.col("n") < per_bucket)))
        if sums.is_empty():
            continue
        grid = pl.datetime_range(sums["bucket"].min(), sums["bucket"].max(), f"{freq_min}m", time_zone="UTC",
                                 time_unit="us", eager=True).alias("bucket")
        bars = (grid.to_frame().join(sums, on="bucket", how="left")
                .with_columns(pl.col("volume").fill_null(0.0), pl.col("quote_volume").fill_null(0.0),
                              (pl.col("n").fill_null(0) < per_bucket).cast(pl.Float64).alias("bridged"))
                .with_columns(pl.when(pl.col("volume") > 0).then(pl.col("quote_volume") / pl.col("volume"))
                              .alias("vwap").forward_fill())
                .drop_nulls("vwap")  # leading bars with no trade yet have no price
                .with_columns(pl.lit(seg, pl.Int32).alias("segment")))
        per_segment.append(bars)
    if not per_segment:
        return resample_klines(klines.clear(), freq_min, cfg)
    out = pl.concat(per_segment).rename({"bucket": "open_time"})
    return out.with_columns(pl.lit(symbol).alias("symbol"), pl.lit(freq_min, pl.Int32).alias("freq_min")).select(BAR_COLUMNS)


def _epoch_floor(col: pl.Expr, freq_min: int) -> pl.Expr:
    """Floor to multiples of ``freq_min`` since the Unix epoch (for frequencies that do not divide
    a day, like the paper's 90 and 250 minutes)."""
    step_us = freq_min * 60_000_000
    return ((col.dt.epoch("us") // step_us) * step_us).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def daily_bars(daily: pl.DataFrame) -> pl.DataFrame:
    """Yahoo daily bars -> bars: VWAP = adjusted close, quote volume = volume x adjusted close.
    Trading days form one segment per ticker (weekends and holidays are not holes)."""
    return daily.sort("date").select(
        pl.col("ticker").alias("symbol"),
        pl.lit(DAILY_MINUTES, pl.Int32).alias("freq_min"),
        pl.col("date").cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias("open_time"),
        pl.col("volume"),
        pl.col("quote_volume"),
        pl.col("adj_close").alias("vwap"),
        pl.lit(0.0).alias("bridged"),
        pl.lit(0, pl.Int32).alias("segment"),
    )
