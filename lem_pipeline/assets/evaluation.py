"""Evaluation: the paper's tables and plots on the test split, logged into the training run
that the upstream model asset's materialisation names."""

import dagster as dg
from dagster import AssetExecutionContext

from lem_pipeline import settings
from lem_pipeline.lake import DataLake
from lem_pipeline.materializations import latest_metadata
from lem_pipeline.model_evaluation import evaluate_on_test
from lem_pipeline.model_training import experiment_name
from lem_pipeline.presets import DATASETS, Preset
from lem_pipeline.registry import CHAMPION, promote, registered_name
from lem_pipeline.seed_spread import evaluate_seeds
from lem_pipeline.tracking import MLflowTracking

ALLOC_CHECK = "allocations_feasible"


def build_evaluation_assets(preset: Preset) -> list[dg.AssetsDefinition]:
    def make(dataset: str) -> dg.AssetsDefinition:
        @dg.asset(name=f"{dataset}_evaluation", deps=[f"{dataset}_lem_model", f"{dataset}_windows"],
                  group_name="evaluation", kinds={"mlflow", "matplotlib"}, pool=settings.TORCH_POOL,
                  check_specs=[dg.AssetCheckSpec(ALLOC_CHECK, asset=f"{dataset}_evaluation",
                                                 description="test-split allocations finite and summing to 1")],
                  description=f"Slippage tables (CSV, Markdown, LaTeX) and plots on the {dataset} test split, "
                              "with TWAP, early-stop-rule, volume-profile and Almgren-Chriss baselines, net of "
                              "impact, fees and a participation cap at three order sizes, by regime, a per-order "
                              "trade log (trades.parquet), the LEM's paired advantage over them "
                              "(block-bootstrap intervals) and summary.json, logged to the training run; when the "
                              "allocations are feasible and the model causal, its registry version becomes the "
                              "champion.")
        def evaluation_asset(context: AssetExecutionContext, lake: DataLake,
                             mlflow: MLflowTracking) -> dg.MaterializeResult:
            trained = latest_metadata(context.instance, f"{dataset}_lem_model")
            out = lake.evaluation_dir(dataset)
            result = evaluate_on_test(dataset, trained["model_dir"], lake.windows_dir(dataset), out,
                                      batch_size=preset.training.batch_size, device=preset.training.device,
                                      tracking=mlflow, experiment=experiment_name(dataset),
                                      run_id=trained["mlflow_run_id"], costs=preset.costs)
            ev = result.arrays
            # Several seeds (training's seed_runs): each evaluated the same way, and the spread.
            seeds = {}
            if len(trained.get("seed_runs") or []) > 1:
                spread = evaluate_seeds(dataset, trained["seed_runs"], result, lake.windows_dir(dataset), out,
                                        batch_size=preset.training.batch_size, device=preset.training.device,
                                        tracking=mlflow, experiment=experiment_name(dataset),
                                        parent_run_id=trained["mlflow_parent_run_id"], costs=preset.costs)
                seeds = {"seed_spread": dg.MetadataValue.md(spread.markdown),
                         "seeds_file": dg.MetadataValue.path(str(spread.path))}
            # Only a causal model serves: a look-ahead one (causal=False, to measure the leak) is
            # evaluated and logged, but lem_model.policy refuses to serve it, so it never becomes champion.
            champion, causal = None, trained.get("causal", True)
            if result.feasible and causal:
                champion = promote(mlflow.tracking_uri, registered_name(dataset), trained["mlflow_run_id"])
                context.log.info(f"models:/{registered_name(dataset)}@{CHAMPION} is now version {champion}")
            not_promoted = "allocations infeasible" if not result.feasible else "a look-ahead model (causal=False)"
            return dg.MaterializeResult(
                metadata={
                    "mlflow_run_id": trained["mlflow_run_id"],
                    "mlflow_run": dg.MetadataValue.url(trained["mlflow_run"]),
                    "test_windows": result.test_windows,
                    "main_table": dg.MetadataValue.md(result.main_markdown),
                    "vs_rule": dg.MetadataValue.md(result.vs_rule_markdown),
                    "costs": dg.MetadataValue.md(result.costs_markdown),
                    "trade_log": dg.MetadataValue.path(str(result.trade_log)),
                    "summaries": dg.MetadataValue.json({k: str(v) for k, v in result.summaries.items()}),
                    "tables": dg.MetadataValue.json({k: str(v) for k, v in result.tables.items()}),
                    "plots": dg.MetadataValue.json([str(p) for p in result.plots]),
                    "match_vwap_std_reduction_vs_twap_volume": result.headline["test_match_vwap_std_reduction"],
                    "path": dg.MetadataValue.path(str(out)),
                    "champion": f"models:/{registered_name(dataset)}@{CHAMPION} = version {champion}" if champion
                    else f"not promoted: {not_promoted}",
                    **seeds,
                },
                check_results=[dg.AssetCheckResult(check_name=ALLOC_CHECK, passed=result.feasible, metadata={
                    "all_finite": ev.all_finite, "max_abs_sum_error": ev.max_sum_error})],
            )

        return evaluation_asset

    return [make(dataset) for dataset in DATASETS]
