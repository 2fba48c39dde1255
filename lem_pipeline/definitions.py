"""The code location: ``defs`` is what ``workspace.yaml`` and ``dagster dev`` load."""

from __future__ import annotations

import dagster as dg

from lem_pipeline.assets.features import build_feature_assets
from lem_pipeline.assets.ingest import build_ingest_assets, klines_partitions, ticker_partitions
from lem_pipeline.presets import Preset, get_preset
from lem_pipeline.resources import default_resources

# Two cores: at most two step subprocesses at a time when the multiprocess executor is used.
EXECUTOR = dg.multiprocess_executor.configured({"max_concurrent": 2})


def build_definitions(preset: Preset, resources: dict | None = None) -> dg.Definitions:
    ingest = build_ingest_assets(preset)
    features = build_feature_assets(preset)
    crypto_ingest = dg.define_asset_job(
        "crypto_ingest_job", selection=dg.AssetSelection.assets("binance_klines"),
        partitions_def=klines_partitions(preset),
        description="Download and validate one symbol x month of Binance klines.",
    )
    equity_ingest = dg.define_asset_job(
        "equity_ingest_job", selection=dg.AssetSelection.assets("yahoo_daily_bars"),
        partitions_def=ticker_partitions(preset),
        description="Load and validate one ticker's Yahoo daily bars.",
    )
    features_job = dg.define_asset_job(
        "features_job", selection=dg.AssetSelection.groups("features"),
        description="Bars, features, windows and splits from everything ingested.",
    )
    return dg.Definitions(
        assets=[*ingest, *features],
        jobs=[crypto_ingest, equity_ingest, features_job],
        resources=resources if resources is not None else default_resources(),
        executor=EXECUTOR,
    )


defs = build_definitions(get_preset())
