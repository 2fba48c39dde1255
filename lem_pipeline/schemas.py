"""pandera models for the raw bars, and the helpers that turn their failures into reports.

The same models feed the blocking asset checks and the ``dagster/column_schema`` metadata, so
what the UI shows is exactly what is enforced.
"""

from __future__ import annotations

from typing import Annotated

import dagster as dg
import pandera.polars as pa
import polars as pl

# quote_volume / volume is an average traded price: it must lie inside the bar's [low, high].
# Exchanges round both fields, so allow a small relative slack, plus the error of a volume
# rounded to two decimals (some exports do; e.g. BTCUSDT 2017-08-20 13:00, volume 1.26, puts the
# ratio 0.1% under the low), which only matters for tiny volumes.
VWAP_TOLERANCE = 1e-3
VOLUME_QUANTUM = 0.005


def _ohlc_consistent(lf: pl.LazyFrame) -> pl.LazyFrame:
    lo, hi = pl.col("low"), pl.col("high")
    return lf.select(
        ((lo <= pl.col("open")) & (lo <= pl.col("close")) & (pl.col("open") <= hi) & (pl.col("close") <= hi))
        .alias("ohlc_consistent")
    )


def _vwap_inside_range(lf: pl.LazyFrame) -> pl.LazyFrame:
    vwap = pl.col("quote_volume") / pl.col("volume")
    slack = VWAP_TOLERANCE + VOLUME_QUANTUM / pl.col("volume")
    inside = (vwap >= pl.col("low") * (1 - slack)) & (vwap <= pl.col("high") * (1 + slack))
    return lf.select(((pl.col("volume") <= 0) | inside).alias("vwap_inside_range"))


def _strictly_increasing(time_col: str, by: str) -> pl.Expr:
    return (pl.col(time_col).diff().over(by) > pl.duration(microseconds=0)).fill_null(True)


class KlineBars(pa.DataFrameModel):
    """One Binance kline per row (the stored form of ``binance_klines``)."""

    symbol: str
    open_time: Annotated[pl.Datetime, "us", "UTC"] = pa.Field(description="bar open, UTC")
    open: float = pa.Field(gt=0)
    high: float = pa.Field(gt=0)
    low: float = pa.Field(gt=0)
    close: float = pa.Field(gt=0)
    volume: float = pa.Field(ge=0, description="base asset volume")
    quote_volume: float = pa.Field(ge=0, description="quote asset volume (notional)")
    trades: int = pa.Field(ge=0)
    taker_buy_volume: float = pa.Field(ge=0)
    taker_buy_quote_volume: float = pa.Field(ge=0)

    class Config:
        strict = True
        coerce = True
        unique = ["symbol", "open_time"]

    @pa.dataframe_check
    def ohlc_consistent(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return _ohlc_consistent(data.lazyframe)

    @pa.dataframe_check
    def time_strictly_increasing(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(_strictly_increasing("open_time", "symbol").alias("increasing"))

    @pa.dataframe_check
    def vwap_inside_range(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return _vwap_inside_range(data.lazyframe)


class DailyBars(pa.DataFrameModel):
    """One Yahoo daily bar per row (the stored form of ``yahoo_daily_bars``)."""

    ticker: str
    date: pl.Date
    open: float = pa.Field(gt=0)
    high: float = pa.Field(gt=0)
    low: float = pa.Field(gt=0)
    close: float = pa.Field(gt=0)
    adj_close: float = pa.Field(gt=0, description="split- and dividend-adjusted close")
    volume: float = pa.Field(ge=0)
    quote_volume: float = pa.Field(ge=0, description="volume x adj_close, the paper's notional proxy")

    class Config:
        strict = True
        coerce = True
        unique = ["ticker", "date"]

    @pa.dataframe_check
    def ohlc_consistent(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return _ohlc_consistent(data.lazyframe)

    @pa.dataframe_check
    def time_strictly_increasing(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(
            (pl.col("date").diff().over("ticker") > pl.duration(days=0)).fill_null(True).alias("increasing"))

    @pa.dataframe_check
    def vwap_inside_range(cls, data: pa.PolarsData) -> pl.LazyFrame:
        # quote_volume / volume = adj_close, which is *not* inside the unadjusted [low, high] once
        # dividends are back-adjusted; the meaningful check is against the adjusted range.
        ratio = pl.col("adj_close") / pl.col("close")
        vwap = pl.col("quote_volume") / pl.col("volume")
        inside = (vwap >= pl.col("low") * ratio * (1 - VWAP_TOLERANCE)) & (
            vwap <= pl.col("high") * ratio * (1 + VWAP_TOLERANCE))
        return data.lazyframe.select(((pl.col("volume") <= 0) | inside).alias("vwap_inside_range"))


def validate(model: type[pa.DataFrameModel], df: pl.DataFrame) -> pl.DataFrame | None:
    """Validate eagerly (a LazyFrame would skip the value checks) and return the failures, one
    row per failing (check, row), with the offending row's key columns; None when valid."""
    try:
        model.validate(df, lazy=True)
        return None
    except pa.errors.SchemaErrors as e:
        cases = e.failure_cases
    key_cols = [c for c in ("symbol", "ticker", "open_time", "date") if c in df.columns]
    keys = df.select(key_cols).with_row_index("index").with_columns(pl.col("index").cast(pl.Int32))
    cases = cases.with_columns(pl.col("index").cast(pl.Int32))
    return (
        cases.select("index", "column", "check", pl.col("failure_case").cast(pl.String))
        .join(keys, on="index", how="left")
        .sort("index", nulls_last=True)
    )


def describe_failures(failures: pl.DataFrame, limit: int = 20) -> str:
    lines = []
    for row in failures.head(limit).iter_rows(named=True):
        where = ", ".join(f"{k}={row[k]}" for k in ("symbol", "ticker", "open_time", "date") if row.get(k) is not None)
        lines.append(f"row {row['index']} ({where}): {row['check']} failed on {row['column']} = {row['failure_case']}")
    more = len(failures) - limit
    return "\n".join(lines + ([f"... and {more} more"] if more > 0 else []))


def table_schema(model: type[pa.DataFrameModel]) -> dg.TableSchema:
    """The pandera model as a Dagster column schema, for the UI."""
    schema = model.to_schema()
    return dg.TableSchema(columns=[
        dg.TableColumn(
            name=name,
            type=str(col.dtype),
            description=col.description,
            constraints=dg.TableColumnConstraints(nullable=col.nullable, unique=col.unique,
                                                  other=[str(c) for c in col.checks]),
        )
        for name, col in schema.columns.items()
    ])
