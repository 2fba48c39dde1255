"""The code location: ``defs`` is what ``workspace.yaml`` and ``dagster dev`` load."""

from __future__ import annotations

import dagster as dg

from lem_pipeline.assets.evaluation import build_evaluation_assets
from lem_pipeline.assets.features import build_feature_assets
from lem_pipeline.assets.ingest import build_ingest_assets, klines_partitions, ticker_partitions
from lem_pipeline.assets.training import build_training_assets
from lem_pipeline.presets import Preset, get_preset
from lem_pipeline.resources import default_resources
from lem_pipeline.schedules import build_schedules

# Two cores: at most two step subprocesses at a time when the multiprocess executor is used.
EXECUTOR = dg.multiprocess_executor.configured({"max_concurrent": 2})


def build_definitions(preset: Preset, resources: dict | None = None) -> dg.Definitions:
    ingest = build_ingest_assets(preset)
    features = build_feature_assets(preset)
    models = build_training_assets(preset) + build_evaluation_assets(preset)
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
    training_jobs = [
        dg.define_asset_job(f"{d}_training_job", selection=dg.AssetSelection.assets(f"{d}_lem_model", f"{d}_evaluation"),
                            description=f"Train the {d} LEM and evaluate it on the test split (MLflow).")
        for d in ("crypto", "equity")
    ]
    retrain = dg.define_asset_job(
        "retrain_job", selection=dg.AssetSelection.groups("features", "training", "evaluation"),
        description="After a data refresh: rebuild features and windows, retrain and re-evaluate both datasets.")
    schedules, sensors = build_schedules(preset, crypto_ingest, equity_ingest, retrain, klines_partitions(preset))
    return dg.Definitions(
        assets=[*ingest, *features, *models],
        jobs=[crypto_ingest, equity_ingest, features_job, *training_jobs, retrain],
        schedules=schedules,
        sensors=sensors,
        resources=default_resources() | (resources or {}),  # given resources override the embedded defaults
        executor=EXECUTOR,
    )


defs = build_definitions(get_preset())
