"""Dagster resources: where data lives and where it comes from.

Each has a local default and an environment variable, so tests and the offline demo point them
elsewhere without touching code: ``LEM_DATA_DIR``, ``LEM_BINANCE_URL``, ``LEM_YAHOO_DIR``.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl

from lem_model.fileio import atomic_write

from lem_pipeline.sources.binance import DEFAULT_BASE_URL, BinanceDataVision, KlineStream
from lem_pipeline.sources.yahoo import CsvDirectorySource, DailyBarSource, YFinanceSource


class DataLake(dg.ConfigurableResource):
    """The one data directory: raw archives, Parquet bars, windows. Paths are absolute because
    Dagster steps may run in other working directories."""

    root: str

    @property
    def path(self) -> Path:
        return Path(self.root)

    def archive_dir(self) -> Path:
        return self.path / "raw" / "binance"

    def klines_file(self, stream: KlineStream, month: date) -> Path:
        return self.path / "klines" / stream.market / stream.interval / stream.symbol / f"{month:%Y-%m}.parquet"

    def klines_files(self, stream: KlineStream) -> list[Path]:
        folder = self.path / "klines" / stream.market / stream.interval / stream.symbol
        return sorted(folder.glob("*.parquet"))

    def daily_file(self, ticker: str) -> Path:
        return self.path / "yahoo" / f"{ticker}.parquet"


def write_parquet_atomic(df: pl.DataFrame, path: Path) -> None:
    """Write beside the target and rename: a crash never leaves a half file under the real name."""
    atomic_write(path, lambda tmp: df.write_parquet(tmp, compression="zstd", statistics=True))


class BinanceSource(dg.ConfigurableResource):
    """Binance Data Vision; ``base_url`` may be a mirror over HTTP or a ``file://`` folder."""

    base_url: str = DEFAULT_BASE_URL
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_retries: int = 5
    backoff: float = 1.0

    def client(self, cache_dir: Path) -> BinanceDataVision:
        return BinanceDataVision(self.base_url, cache_dir, connect_timeout=self.connect_timeout,
                                 read_timeout=self.read_timeout, max_retries=self.max_retries, backoff=self.backoff)


class YahooSource(dg.ConfigurableResource):
    """Yahoo daily bars: ``yfinance`` unless ``csv_dir`` names a folder of Yahoo-layout CSVs."""

    csv_dir: str | None = None
    max_retries: int = 3

    def source(self) -> DailyBarSource:
        if self.csv_dir:
            return CsvDirectorySource(self.csv_dir)
        return YFinanceSource(max_retries=self.max_retries)


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources from the environment, with local embedded defaults."""
    yahoo_dir = os.environ.get("LEM_YAHOO_DIR")
    from lem_pipeline.tracking import default_tracking

    return {
        "mlflow": default_tracking(),
        "lake": DataLake(root=str(Path(os.environ.get("LEM_DATA_DIR", "data")).resolve())),
        "binance": BinanceSource(base_url=os.environ.get("LEM_BINANCE_URL", DEFAULT_BASE_URL)),
        "yahoo": YahooSource(csv_dir=str(Path(yahoo_dir).resolve()) if yahoo_dir else None),
    }
