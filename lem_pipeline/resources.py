"""Dagster resources: where the market data comes from, where everything is written
(lem_pipeline.lake) and where runs are tracked (lem_pipeline.tracking).

Each setting is an environment variable read through ``dg.EnvVar`` (lem_pipeline.settings has
the names and the embedded defaults), so tests and the offline demo point the pipeline
elsewhere without touching code.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from lem_pipeline import settings
from lem_pipeline.lake import DataLake
from lem_pipeline.sources.binance import DEFAULT_BASE_URL, BinanceDataVision
from lem_pipeline.sources.yahoo import CsvDirectorySource, DailyBarSource, YFinanceSource
from lem_pipeline.tracking import MLflowTracking


class BinanceSource(dg.ConfigurableResource):
    """Binance Data Vision; ``base_url`` may be a mirror over HTTP or a ``file://`` folder."""

    base_url: str = DEFAULT_BASE_URL
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_retries: int = 5
    backoff: float = 1.0
    deadline_s: float = 300.0  # one download, retries and a slow body included
    host_give_up_after: int = 3  # consecutive connection failures before the host is given up
    host_cooldown_s: float = 600.0  # how long a given-up host is not tried again (in this process)

    def client(self, cache_dir: Path) -> BinanceDataVision:
        return BinanceDataVision(self.base_url, cache_dir, connect_timeout=self.connect_timeout,
                                 read_timeout=self.read_timeout, max_retries=self.max_retries, backoff=self.backoff,
                                 deadline_s=self.deadline_s, host_give_up_after=self.host_give_up_after,
                                 host_cooldown_s=self.host_cooldown_s)


class YahooSource(dg.ConfigurableResource):
    """Yahoo daily bars: ``yfinance`` unless ``csv_dir`` names a folder of Yahoo-layout CSVs."""

    csv_dir: str = ""
    max_retries: int = 3

    def source(self) -> DailyBarSource:
        if self.csv_dir:
            return CsvDirectorySource(self.csv_dir)
        return YFinanceSource(max_retries=self.max_retries)


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """The resources of the code location, each setting bound to its environment variable (the
    entry points fill in unset ones with ``settings.apply_defaults``; building never does, so
    importing the definitions changes no environment)."""
    return {
        "mlflow": MLflowTracking(tracking_uri=dg.EnvVar(settings.MLFLOW_URI),
                                 artifact_root=dg.EnvVar(settings.MLFLOW_ARTIFACTS)),
        "lake": DataLake(root=dg.EnvVar(settings.DATA_DIR)),
        "binance": BinanceSource(base_url=dg.EnvVar(settings.BINANCE_URL)),
        "yahoo": YahooSource(csv_dir=dg.EnvVar(settings.YAHOO_DIR)),
    }
