"""Ingest: raw Binance klines (symbol x month) and Yahoo daily bars (ticker), validated on the way in.

Each partition is one Parquet file in the data lake. Validation runs inside the asset as a
blocking check (the frame is already in memory). A partition that fails it raises: the failed
check is recorded with the failing rows, nothing is written and no materialisation is recorded,
so the partition stays missing (the refresh asks for it again) and everything downstream stops.
A Binance archive that fails to parse or to validate is evicted from the archive cache, so the
next run downloads it again.
"""

from datetime import datetime, timedelta, timezone

import dagster as dg
import polars as pl
from dagster import AssetExecutionContext

from lem_model.failpoints import failpoint
from lem_pipeline.lake import DataLake, write_parquet_atomic
from lem_pipeline.partitions import klines_partitions, next_month, ticker_partitions, utc_midnight
from lem_pipeline.presets import Preset
from lem_pipeline.reporting import markdown
from lem_pipeline.resources import BinanceSource, YahooSource
from lem_pipeline.schemas import DailyBars, KlineBars, describe_failures, table_schema, validate
from lem_pipeline.sources.binance import DataVisionError, KlineStream, MonthFiles, interval_seconds, read_month

VALID_CHECK = "valid_bars"
GAPS_CHECK = "no_gaps"
_FAILURE_ROWS_IN_METADATA = 50
_DESCRIPTION_CHARS = 2000


def _validated(context: AssetExecutionContext, model, df: pl.DataFrame, gaps: dict,
               what: str) -> list[dg.AssetCheckResult]:
    """The check results of a frame that passed validation. A frame that fails raises dg.Failure
    (after recording the failed check): a partition is materialised only for data actually
    written and valid, so a failed one is never taken as done."""
    gap = dg.AssetCheckResult(
        check_name=GAPS_CHECK,
        passed=gaps["missing_bars"] == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={k: v for k, v in gaps.items() if k != "gap_list"}
        | {"largest_gaps": dg.MetadataValue.md(gaps["gap_list"])},
    )
    failures = validate(model, df)
    if failures is None:
        return [dg.AssetCheckResult(check_name=VALID_CHECK, passed=True, metadata={"rows": len(df)}), gap]
    error = f"{what}: {len(failures)} failing (check, row) pairs; nothing written\n{describe_failures(failures)}"
    metadata = {
        "failures": len(failures),
        "failing_rows": dg.MetadataValue.md(markdown(failures.head(_FAILURE_ROWS_IN_METADATA))),
        "first_failing_row": int(failures["index"][0]) if failures["index"][0] is not None else -1,
    }
    context.log_event(dg.AssetCheckEvaluation(
        asset_key=context.asset_key, check_name=VALID_CHECK, passed=False, severity=dg.AssetCheckSeverity.ERROR,
        description=error[:_DESCRIPTION_CHARS], metadata=metadata, blocking=True,
        partition=context.partition_key))
    context.log.error(error)
    raise dg.Failure(description=error[:_DESCRIPTION_CHARS], metadata=metadata, allow_retries=False)


def _month_frame(files: MonthFiles, stream: KlineStream, month, sources: str) -> pl.DataFrame:
    """The month's rows with the symbol column first; a listed month without rows is an error."""
    df = read_month(files.paths).with_columns(pl.lit(stream.symbol).alias("symbol"))
    if files.listed and df.is_empty():
        raise dg.Failure(f"{stream.symbol} {month:%Y-%m}: {sources} is listed but holds no rows; nothing written")
    return df.select("symbol", *[c for c in df.columns if c != "symbol"])


def _kline_gaps(df: pl.DataFrame, step: timedelta, start: datetime, end: datetime) -> dict:
    """Candles missing from a month's rows, which open in [start, end): between rows, and before
    the first and after the last (a truncated archive can pass its checksum). A month without
    rows is not listed, which the asset reports on its own."""
    if df.is_empty():
        return {"missing_bars": 0, "gaps": 0, "gap_list": "none"}
    # The period's edges as rows: one step before the start, and the end; a gap is then a diff
    # of more than one step, wherever it is.
    times = pl.concat([pl.Series("open_time", [start - step, end], pl.Datetime("us", "UTC")), df["open_time"]]).sort()
    gaps = times.to_frame().select(
        pl.col("open_time").shift(1).alias("after"),
        (pl.col("open_time").diff().dt.total_seconds() // step.total_seconds() - 1).alias("missing"),
    ).filter(pl.col("missing") > 0).with_columns(
        pl.when(pl.col("after") < start).then(pl.lit("(period start)"))
        .otherwise(pl.col("after").dt.to_string("%Y-%m-%d %H:%M")).alias("after"))
    listing = "none" if gaps.is_empty() else markdown(gaps.sort("missing", descending=True).head(10))
    return {"missing_bars": int(gaps["missing"].sum() or 0), "gaps": len(gaps), "gap_list": listing}


def _bar_checks(asset: str, model: str, gaps: str) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(VALID_CHECK, asset=asset, blocking=True,
                              description=f"{model}: positive prices, OHLC order, volumes, strictly increasing time, "
                                          "VWAP inside [low, high]"),
            dg.AssetCheckSpec(GAPS_CHECK, asset=asset, description=gaps)]


def build_ingest_assets(preset: Preset) -> list[dg.AssetsDefinition]:
    kparts = klines_partitions(preset)
    tparts = ticker_partitions(preset)

    @dg.asset(
        partitions_def=kparts,
        group_name="ingest",
        kinds={"polars", "parquet"},
        check_specs=_bar_checks("binance_klines", "pandera KlineBars",
                                "missing candles in the month, before its first row and after its last included "
                                "(a pair's listing month counts the hours before its listing)"),
        description="Binance Data Vision klines, one Parquet per symbol and month, checksum-verified.",
    )
    def binance_klines(context: AssetExecutionContext, lake: DataLake, binance: BinanceSource):
        keys = context.partition_key.keys_by_dimension
        stream = preset.stream(keys["symbol"])
        month = datetime.strptime(keys["month"], "%Y-%m-%d").date()
        client = binance.client(lake.archive_dir())
        files: MonthFiles = client.fetch_month(stream, month)
        for r in files.results:
            context.log.info(f"{r.status}: {r.url}")
        sources = ", ".join(r.url for r in files.results)
        step = timedelta(seconds=interval_seconds(stream.interval))
        month_start, month_end = utc_midnight(month), utc_midnight(next_month(month))
        # The current month is published in daily files up to yesterday.
        published_end = min(month_end, utc_midnight(datetime.now(timezone.utc).date()))
        try:
            df = _month_frame(files, stream, month, sources)
            gaps = _kline_gaps(df, step, month_start, published_end)
            checks = _validated(context, KlineBars, df, gaps, f"{stream.symbol} {month:%Y-%m} ({sources})")
        except (DataVisionError, dg.Failure):
            client.evict(files.paths)  # a bad archive must be downloaded again, not reused from the cache
            raise
        if not files.listed:
            context.log.warning(f"{stream.symbol} {month:%Y-%m}: not listed at {binance.base_url} (404); recorded, empty partition")
        out = lake.klines_file(stream, month)
        failpoint("ingest")
        write_parquet_atomic(df, out)
        expected = int((month_end - month_start) / step)
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(out)),
                "rows": len(df),
                "listed": files.listed,
                "market": stream.market,
                "interval": stream.interval,
                "first_open_time": str(df["open_time"].min()) if len(df) else "",
                "last_open_time": str(df["open_time"].max()) if len(df) else "",
                "missing_bars": gaps["missing_bars"],
                "expected_bars_in_month": expected,
                "source_urls": dg.MetadataValue.json([r.url for r in files.results]),
                "sha256": dg.MetadataValue.json({r.url: r.sha256 for r in files.results if r.sha256}),
                "not_listed": dg.MetadataValue.json(files.not_listed),
                "dagster/column_schema": table_schema(KlineBars),
                "dagster/row_count": len(df),
            },
            check_results=checks,
        )

    @dg.asset(
        partitions_def=tparts,
        group_name="ingest",
        kinds={"polars", "parquet"},
        check_specs=_bar_checks("yahoo_daily_bars", "pandera DailyBars", "weekdays without a bar (holidays included)"),
        description="Yahoo daily bars with Adj Close and quote_volume = volume x adj_close, one Parquet per ticker.",
    )
    def yahoo_daily_bars(context: AssetExecutionContext, lake: DataLake, yahoo: YahooSource):
        ticker = context.partition_key
        source = yahoo.source()
        df = source.load(ticker, preset.equity_start, preset.equity_end).with_columns(pl.lit(ticker).alias("ticker"))
        df = df.select("ticker", *[c for c in df.columns if c != "ticker"])
        gaps = _weekday_gaps(df)
        checks = _validated(context, DailyBars, df, gaps, f"{ticker} ({source.describe(ticker)})")
        out = lake.daily_file(ticker)
        failpoint("ingest")
        write_parquet_atomic(df, out)
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(out)),
                "rows": len(df),
                "first_date": str(df["date"].min()) if len(df) else "",
                "last_date": str(df["date"].max()) if len(df) else "",
                "missing_bars": gaps["missing_bars"],
                "source": source.describe(ticker),
                "dagster/column_schema": table_schema(DailyBars),
                "dagster/row_count": len(df),
            },
            check_results=checks,
        )

    return [binance_klines, yahoo_daily_bars]


def _weekday_gaps(df: pl.DataFrame) -> dict:
    """Weekdays with no bar between the first and last date: exchange holidays and real holes."""
    if len(df) < 2:
        return {"missing_bars": 0, "gaps": 0, "gap_list": "none"}
    all_days = pl.date_range(df["date"].min(), df["date"].max(), "1d", eager=True).alias("date")
    weekdays = all_days.filter(all_days.dt.weekday() <= 5)
    missing = weekdays.to_frame().join(df.select("date"), on="date", how="anti")
    listing = "none" if missing.is_empty() else markdown(missing.head(10))
    return {"missing_bars": len(missing), "gaps": len(missing), "gap_list": listing}
