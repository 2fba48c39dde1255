"""How the ingest assets are partitioned: one Binance month per (symbol, month), one Yahoo file
per ticker. The schedules ask for partitions by the same definitions."""

from __future__ import annotations

from datetime import date, datetime, timezone

import dagster as dg

from lem_pipeline.presets import Preset


def klines_partitions(preset: Preset) -> dg.MultiPartitionsDefinition:
    last = preset.crypto_last_month
    months = dg.MonthlyPartitionsDefinition(
        start_date=preset.crypto_first_month.strftime("%Y-%m-%d"),
        end_date=(next_month(last).strftime("%Y-%m-%d") if last else None),
    )
    symbols = dg.StaticPartitionsDefinition([s.symbol for s in preset.streams] or ["NONE"])
    return dg.MultiPartitionsDefinition({"symbol": symbols, "month": months})


def ticker_partitions(preset: Preset) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(list(preset.tickers) or ["NONE"])


def next_month(d: date) -> date:
    return date(d.year + d.month // 12, d.month % 12 + 1, 1)


def utc_midnight(d: date) -> datetime:
    """The start of day ``d`` in UTC, the clock of Data Vision's files and of the bars."""
    return datetime.combine(d, datetime.min.time(), timezone.utc)
