"""The code location: ``defs`` is what ``workspace.yaml`` and ``dagster dev`` load, lazily, for
the preset named by ``LEM_PRESET``; ``build_definitions`` builds the same for any preset."""

from __future__ import annotations

import dagster as dg

from lem_pipeline import settings
from lem_pipeline.assets.evaluation import build_evaluation_assets
from lem_pipeline.assets.features import build_feature_assets
from lem_pipeline.assets.ingest import build_ingest_assets
from lem_pipeline.assets.research import build_research_assets
from lem_pipeline.assets.training import build_training_assets
from lem_pipeline.checks import build_windows_checks
from lem_pipeline.presets import DATASETS, Preset, get_preset
from lem_pipeline.resources import default_resources
from lem_pipeline.schedules import build_schedules

# Two cores: at most two step subprocesses at a time when the multiprocess executor is used.
EXECUTOR = dg.multiprocess_executor.configured({"max_concurrent": 2})


def build_definitions(preset: Preset, resources: dict | None = None) -> dg.Definitions:
    crypto_ingest = dg.define_asset_job(
        "crypto_ingest_job", selection=dg.AssetSelection.assets("binance_klines"),
        description="Download and validate one symbol x month of Binance klines.")
    equity_ingest = dg.define_asset_job(
        "equity_ingest_job", selection=dg.AssetSelection.assets("yahoo_daily_bars"),
        description="Load and validate one ticker's Yahoo daily bars.")
    features_job = dg.define_asset_job(
        "features_job", selection=dg.AssetSelection.groups("features"),
        description="Bars, features, windows and splits from everything ingested.")
    training_jobs = [
        dg.define_asset_job(f"{d}_training_job", selection=dg.AssetSelection.assets(f"{d}_lem_model", f"{d}_evaluation"),
                            description=f"Train the {d} LEM and evaluate it on the test split (MLflow).")
        for d in DATASETS
    ]
    retrain = dg.define_asset_job(
        "retrain_job", selection=dg.AssetSelection.groups("features", "training", "evaluation"),
        description="After a data refresh: rebuild features and windows, retrain and re-evaluate both datasets.")
    research = build_research_assets(preset)
    research_jobs = [dg.define_asset_job(
        "lookahead_job", selection=dg.AssetSelection.assets(*research),
        description="Train and evaluate the equity LEM with the reference's look-ahead (what the leak is worth).")
    ] if research else []
    schedules, sensors = build_schedules(preset, crypto_ingest, equity_ingest, retrain)
    return dg.Definitions(
        assets=[*build_ingest_assets(preset), *build_feature_assets(preset), *build_training_assets(preset),
                *build_evaluation_assets(preset), *research],
        asset_checks=[*build_windows_checks("crypto", preset.crypto_windows),
                      *build_windows_checks("equity", preset.equity_windows)],
        jobs=[crypto_ingest, equity_ingest, features_job, *training_jobs, retrain, *research_jobs],
        schedules=schedules,
        sensors=sensors,
        resources=default_resources() | (resources or {}),  # given resources override the embedded defaults
        executor=EXECUTOR,
    )


@dg.definitions
def defs() -> dg.Definitions:
    settings.apply_defaults()
    return build_definitions(get_preset())
