"""Research: measurements beside the product graph, materialised on request (``lem lookahead``),
never by ``lem run`` or the retrain job.

``equity_lookahead_evaluation`` trains the equity model again with the reference's one-bar
look-ahead (``causal=False``: step k reads the bar it trades in), same windows, settings and
seed, and evaluates it on the same test windows. Set beside ``equity_evaluation`` (``lem
results``), it says what the leak is worth; its numbers are not achievable in live trading.
"""

import dataclasses

import dagster as dg
from dagster import AssetExecutionContext

from lem_pipeline import settings
from lem_pipeline.lake import DataLake
from lem_pipeline.model_evaluation import evaluate_on_test
from lem_pipeline.model_training import experiment_name, train_for_asset
from lem_pipeline.presets import Preset
from lem_pipeline.tracking import MLflowTracking

LOOKAHEAD = "equity-lookahead"  # its model and evaluation names in the data lake


def build_research_assets(preset: Preset) -> list[dg.AssetsDefinition]:
    @dg.asset(deps=["equity_windows", "equity_evaluation"], group_name="research", kinds={"pytorch", "mlflow"},
              pool=settings.TORCH_POOL,
              description="The equity LEM with the reference's one-bar look-ahead (causal=False), trained and "
                          "evaluated on the same windows and seed: what the leak is worth (lem results).")
    def equity_lookahead_evaluation(context: AssetExecutionContext, lake: DataLake,
                                    mlflow: MLflowTracking) -> dg.MaterializeResult:
        tcfg = dataclasses.replace(preset.training, progress=False)
        trained = train_for_asset("equity", LOOKAHEAD, tcfg, causal=False, preset=preset, lake=lake, tracking=mlflow,
                                  run_id=context.run.run_id, asset_key=context.asset_key.to_user_string(),
                                  log=context.log.info)
        out = lake.evaluation_dir(LOOKAHEAD)
        result = evaluate_on_test(LOOKAHEAD, trained.model_dir, lake.windows_dir("equity"), out,
                                  batch_size=tcfg.batch_size, device=tcfg.device, tracking=mlflow,
                                  experiment=experiment_name("equity"), run_id=trained.run_id, costs=preset.costs)
        return dg.MaterializeResult(metadata={
            "mlflow_run_id": trained.run_id,
            "mlflow_run": dg.MetadataValue.url(mlflow.run_url(trained.experiment_id, trained.run_id)),
            "best_val_loss": trained.result.best_val_loss,
            "test_windows": result.test_windows,
            "main_table": dg.MetadataValue.md(result.main_markdown),
            "path": dg.MetadataValue.path(str(out)),
        })

    return [equity_lookahead_evaluation] if preset.tickers else []
