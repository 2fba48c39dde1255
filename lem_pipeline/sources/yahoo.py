"""Yahoo Finance daily bars: live through ``yfinance``, or offline from Yahoo-layout CSVs.

Both paths return the same columns so everything downstream is indifferent to the source.
``quote_volume = volume * adj_close`` is the paper's proxy for traded notional (Yahoo has no
notional field).
"""

from __future__ import annotations

import logging
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Protocol

import polars as pl

log = logging.getLogger(__name__)

DAILY_COLUMNS = ["date", "open", "high", "low", "close", "adj_close", "volume", "quote_volume"]
_CSV_NAMES = {"Date": "date", "Open": "open", "High": "high", "Low": "low", "Close": "close",
              "Adj Close": "adj_close", "Volume": "volume"}


class YahooSourceError(RuntimeError):
    """A ticker that could not be loaded; the message names the ticker and the source."""


class DailyBarSource(Protocol):
    def load(self, ticker: str, start: date, end: date) -> pl.DataFrame: ...

    def describe(self, ticker: str) -> str: ...


_PRICES = ["open", "high", "low", "close", "adj_close"]
_VALUES = [*_PRICES, "volume"]


def _finish(df: pl.DataFrame, start: date, end: date, what: str) -> pl.DataFrame:
    """Common tail of both sources: types, date filter (end inclusive), notional proxy, order.

    A date is the exchange's local date: a timestamp with an offset keeps its own day, never the
    UTC one (``2020-01-02 00:00+09:00`` is 2020-01-02). Yahoo marks a day it has no prices for
    with a row of null prices (its volume null or 0), and some days come with prices and no
    volume: those rows are dropped and logged with their dates. A row with some prices and not
    others is corrupt, and is an error naming it.
    """
    when = pl.col("date")
    if df.schema["date"] == pl.String:
        when = when.str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False)
    elif isinstance(df.schema["date"], pl.Datetime) and df.schema["date"].time_zone is not None:
        when = when.dt.replace_time_zone(None)
    try:
        typed = df.with_columns(when.cast(pl.Date).alias("date"), *[pl.col(c).cast(pl.Float64) for c in _VALUES])
    except pl.exceptions.PolarsError as e:
        raise YahooSourceError(f"{what}: a column is not numeric: {e}") from e
    undated = typed.filter(pl.col("date").is_null())
    if len(undated):
        row = df.with_row_index("row").filter(typed["date"].is_null())
        raise YahooSourceError(f"{what}: {len(undated)} row(s) without a YYYY-MM-DD date, the first "
                               f"{row['date'][0]!r} (data row {row['row'][0] + 1})")
    typed = typed.filter(pl.col("date").is_between(start, end, closed="both"))
    missing_prices = pl.sum_horizontal(pl.col(_PRICES).is_null())
    partial = typed.filter((missing_prices > 0) & (missing_prices < len(_PRICES)))
    if len(partial):
        raise YahooSourceError(f"{what}: {len(partial)} row(s) with some prices missing, the first on "
                               f"{partial['date'][0]}; refused (a day Yahoo has no prices for has none)")
    for label, dropped in (("no prices for", missing_prices == len(_PRICES)),
                           ("prices but no volume for", (missing_prices == 0) & pl.col("volume").is_null())):
        days = typed.filter(dropped)["date"]
        if len(days):
            log.warning("%s: dropped %d day(s) Yahoo gives %s: %s", what, len(days), label,
                        ", ".join(str(d) for d in days.head(10)) + (", ..." if len(days) > 10 else ""))
    return (
        typed.filter(pl.sum_horizontal(pl.col(_VALUES).is_null()) == 0)
        .with_columns((pl.col("volume") * pl.col("adj_close")).alias("quote_volume"))
        .select(DAILY_COLUMNS)
        .sort("date")
    )


class CsvDirectorySource:
    """Offline source: ``{directory}/{TICKER}.csv`` in Yahoo's download layout."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def describe(self, ticker: str) -> str:
        return str(self.directory / f"{ticker}.csv")

    def load(self, ticker: str, start: date, end: date) -> pl.DataFrame:
        path = self.directory / f"{ticker}.csv"
        if not path.is_file():
            raise YahooSourceError(f"{ticker}: no file {path} in the offline Yahoo directory")
        try:
            raw = pl.read_csv(path, null_values=["null", "NaN", ""], infer_schema=False)  # typed in _finish
        except pl.exceptions.PolarsError as e:
            raise YahooSourceError(f"{ticker}: cannot parse {path}: {e}") from e
        missing = set(_CSV_NAMES) - set(raw.columns)
        if missing:
            raise YahooSourceError(f"{ticker}: {path} lacks the columns {sorted(missing)}")
        out = _finish(raw.rename(_CSV_NAMES).select(list(_CSV_NAMES.values())), start, end, f"{ticker}: {path}")
        if out.is_empty():
            raise YahooSourceError(f"{ticker}: {path} has no rows between {start} and {end}")
        return out


class YFinanceSource:
    """Live source through ``yfinance.download`` (``auto_adjust=False`` keeps ``Adj Close``).

    yfinance reports failures by logging and returning an empty frame, so an empty answer is
    retried and then raised as an error naming the ticker.
    """

    def __init__(self, max_retries: int = 3, backoff: float = 2.0, timeout: float = 30.0) -> None:
        self.max_retries = max_retries
        self.backoff = backoff
        self.timeout = timeout

    def describe(self, ticker: str) -> str:
        return f"yfinance:{ticker}"

    def load(self, ticker: str, start: date, end: date) -> pl.DataFrame:
        import yfinance as yf

        last_error: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                frame = yf.download(
                    ticker,
                    start=start.isoformat(),
                    end=(end + timedelta(days=1)).isoformat(),  # yfinance's end is exclusive
                    interval="1d",
                    auto_adjust=False,
                    actions=False,
                    progress=False,
                    threads=False,
                    multi_level_index=True,
                    timeout=self.timeout,
                )
            except Exception as e:  # yfinance raises many kinds on network trouble
                last_error = e
                continue
            if frame is None or len(frame) == 0:
                last_error = YahooSourceError(f"{ticker}: yfinance returned no rows")
                continue
            out = _finish(from_yfinance_frame(frame, ticker), start, end, self.describe(ticker))
            if out.is_empty():
                raise YahooSourceError(f"{ticker}: yfinance returned no priced rows between {start} and {end}")
            return out
        raise YahooSourceError(f"{ticker}: yfinance download failed after {self.max_retries + 1} attempts: {last_error}")


def from_yfinance_frame(frame: Any, ticker: str) -> pl.DataFrame:
    """Flatten yfinance's pandas frame (DatetimeIndex 'Date'; columns either flat or a
    (Price, Ticker) MultiIndex) into our column names."""
    columns = frame.columns
    if getattr(columns, "nlevels", 1) > 1:
        level = list(columns.names).index("Ticker") if "Ticker" in columns.names else 1
        frame = frame.xs(ticker, axis=1, level=level)
    missing = set(_CSV_NAMES) - {"Date"} - set(frame.columns)
    if missing:
        raise YahooSourceError(f"{ticker}: yfinance frame lacks {sorted(missing)} (is auto_adjust off?)")
    pdf = frame.reset_index()
    date_col = pdf.columns[0]
    out = pl.from_pandas(pdf[[date_col, *[c for c in _CSV_NAMES if c != "Date"]]])
    return out.rename({date_col: "date", **{k: v for k, v in _CSV_NAMES.items() if k != "Date"}})
