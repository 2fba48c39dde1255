"""Evaluation: the paper's tables and plots on the test split, into the training run's MLflow
artifacts and the asset's metadata."""

import json
import shutil

import dagster as dg
import mlflow
import numpy as np
import polars as pl
from dagster import AssetExecutionContext

from lem_model.checkpoint import load_model
from lem_model.data import WindowDataset
from lem_model.evaluate import (detail_table, evaluate, headline, main_table, plot_distributions,
                                plot_execution_curves, write_table)
from lem_model.train import resolve_device
from lem_pipeline.assets.training import RUN_FILE, model_dir
from lem_pipeline.presets import Preset
from lem_pipeline.resources import DataLake
from lem_pipeline.tracking import MLflowTracking

ALLOC_CHECK = "allocations_feasible"


def _freq_label(freq_min: int) -> str:
    return "daily" if freq_min == 1440 else f"{freq_min}min"


def evaluate_dataset(context: AssetExecutionContext, dataset: str, preset: Preset, lake: DataLake,
                     tracking: MLflowTracking) -> dg.MaterializeResult:
    run_info = json.loads((model_dir(lake, dataset) / RUN_FILE).read_text())
    model = load_model(run_info["model_dir"])
    windows = lake.path / "windows" / dataset
    test = WindowDataset(windows, "test")
    index = pl.read_parquet(windows / "index.parquet").filter(pl.col("split") == "test").sort("row")
    n_ahead = model.cfg.n_ahead
    ev = evaluate(model, test, min_rate=1.0 / n_ahead**2, batch_size=preset.training.batch_size,
                  device=resolve_device(preset.training.device))
    out = lake.path / "evaluation" / dataset
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    ev.save(out / "slippage.npz")
    index.write_parquet(out / "test_index.parquet")
    freqs = index["freq_min"].to_numpy()
    tables, plots = {}, []
    for freq in sorted(set(freqs.tolist())):
        label = f"{dataset}_{_freq_label(freq)}"
        sub = ev.subset(np.nonzero(freqs == freq)[0])
        tables[label] = write_table(main_table(sub), ("Order Type", "Min Period"), out / f"{label}_main")
        for j in range(n_ahead + 1):
            name = "match" if j == n_ahead else f"min{j + 1}"
            write_table(detail_table(sub, j), ("Order Type", "Strategy"), out / f"{label}_detail_{name}")
        title = f"{dataset} {_freq_label(freq)}"
        plots.append(plot_distributions(sub, out / f"{label}_slippage.png", title))
        plots.append(plot_execution_curves(sub, out / f"{label}_execution_curves.png", title))
    summary = headline(ev)
    with tracking.run(f"lem-{dataset}", run_id=run_info["run_id"]):
        mlflow.log_metrics(summary)
        mlflow.log_artifacts(str(out), "evaluation")
        mlflow.set_tag("lem.stage", "evaluated")
    first = next(iter(tables.values()))
    passed = ev.all_finite and ev.max_sum_error < 1e-4
    return dg.MaterializeResult(
        metadata={
            "mlflow_run_id": run_info["run_id"],
            "mlflow_run": dg.MetadataValue.url(tracking.run_url(run_info["experiment_id"], run_info["run_id"])),
            "test_windows": len(test),
            "main_table": dg.MetadataValue.md(first["md"].read_text()),
            "tables": dg.MetadataValue.json({k: str(v["csv"]) for k, v in tables.items()}),
            "plots": dg.MetadataValue.json([str(p) for p in plots]),
            "match_vwap_std_reduction_vs_twap_volume": summary["test_match_vwap_std_reduction"],
            "path": dg.MetadataValue.path(str(out)),
        },
        check_results=[dg.AssetCheckResult(check_name=ALLOC_CHECK, passed=passed, metadata={
            "all_finite": ev.all_finite, "max_abs_sum_error": ev.max_sum_error})],
    )


def build_evaluation_assets(preset: Preset) -> list[dg.AssetsDefinition]:
    assets = []
    for dataset in ("crypto", "equity"):
        def make(dataset: str):
            @dg.asset(name=f"{dataset}_evaluation", deps=[f"{dataset}_lem_model", f"{dataset}_windows"],
                      group_name="evaluation", kinds={"mlflow", "matplotlib"},
                      check_specs=[dg.AssetCheckSpec(ALLOC_CHECK, asset=f"{dataset}_evaluation",
                                                     description="test-split allocations finite and summing to 1")],
                      description=f"Slippage tables (CSV, Markdown, LaTeX) and plots on the {dataset} test split, "
                                  "with TWAP and early-stop-rule baselines, logged to the training run.")
            def evaluation_asset(context: AssetExecutionContext, lake: DataLake,
                                 mlflow: MLflowTracking) -> dg.MaterializeResult:
                return evaluate_dataset(context, dataset, preset, lake, mlflow)

            return evaluation_asset

        assets.append(make(dataset))
    return assets
