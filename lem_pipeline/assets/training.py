"""Training: one LEM per dataset on its windows, tracked as an MLflow run (or, with ``seeds`` >
1, one child run per seed under a parent run). The materialisation's metadata (run id, model
directory; with seeds, ``seed_runs``) is what evaluation reads: the handoff is the asset graph."""

import dataclasses

import dagster as dg
import polars as pl
from dagster import AssetExecutionContext

from lem_pipeline import settings
from lem_pipeline.lake import DataLake
from lem_pipeline.presets import DATASETS, Preset
from lem_pipeline.reporting import markdown
from lem_pipeline.seed_training import train_seeds_for_asset
from lem_pipeline.tracking import MLflowTracking


class TrainingRunConfig(dg.Config):
    """Per-run overrides of the preset's training settings (None keeps the preset's value)."""

    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    seed: int | None = None
    seeds: int | None = None  # > 1: that many trainings, seeds seed..seed+seeds-1 (lem_pipeline.seed_training)
    causal: bool = True  # False reproduces the reference's one-bar look-ahead, to measure it
    compile: bool = False  # torch.compile the model (LargeExecutionModel.compile)
    cuda_graphs: bool = False  # on a GPU, replay the train step as a CUDA graph (lem_model.cuda_graphs)


def train_dataset(context: AssetExecutionContext, dataset: str, preset: Preset, config: TrainingRunConfig,
                  lake: DataLake, tracking: MLflowTracking) -> dg.MaterializeResult:
    overrides = {k: v for k, v in (("epochs", config.epochs), ("lr", config.lr), ("batch_size", config.batch_size),
                                   ("seed", config.seed), ("seeds", config.seeds)) if v is not None}
    tcfg = dataclasses.replace(preset.training, **overrides, compile=config.compile,
                               cuda_graphs=config.cuda_graphs, progress=False)
    seeded = train_seeds_for_asset(dataset, dataset, tcfg, causal=config.causal, preset=preset, lake=lake,
                                   tracking=tracking, run_id=context.run.run_id,
                                   asset_key=context.asset_key.to_user_string(), log=context.log.info)
    trained = seeded.model
    result = trained.result
    history = pl.DataFrame([{k: v for k, v in h.items() if k in ("epoch", "loss", "val_loss", "val_vs_rule_bps", "lr")}
                            for h in result.history])
    seeds = {} if seeded.parent_run_id is None else {
        "seed_runs": dg.MetadataValue.json(seeded.seed_runs()),
        "mlflow_parent_run_id": seeded.parent_run_id,
        "mlflow_parent_run": dg.MetadataValue.url(tracking.run_url(trained.experiment_id, seeded.parent_run_id)),
    }
    return dg.MaterializeResult(metadata={
        "mlflow_run_id": trained.run_id,
        "mlflow_experiment_id": trained.experiment_id,
        "mlflow_run": dg.MetadataValue.url(tracking.run_url(trained.experiment_id, trained.run_id)),
        "model_uri": trained.model_uri,
        "causal": config.causal,
        "best_epoch": result.best_epoch + 1, "best_val_loss": result.best_val_loss,
        "epochs_run": len(result.history), "stopped_early": result.stopped_early, "device": result.device,
        "parameters": trained.parameters, "history": dg.MetadataValue.md(markdown(history)),
        "model_dir": dg.MetadataValue.path(str(trained.model_dir)),
        "registered_model": trained.registered,
        "resumed_at_epoch": 0 if result.resumed_from_epoch is None else result.resumed_from_epoch + 1,  # 0: not resumed
        **seeds,
    })


def build_training_assets(preset: Preset) -> list[dg.AssetsDefinition]:
    def make(dataset: str) -> dg.AssetsDefinition:
        @dg.asset(name=f"{dataset}_lem_model", deps=[f"{dataset}_windows"], group_name="training",
                  kinds={"pytorch", "mlflow"}, pool=settings.TORCH_POOL,
                  description=f"The LEM trained on the {dataset} windows (early stopping on validation); "
                              "an MLflow run with params, per-epoch metrics, dataset digests and the model.")
        def lem_model_asset(context: AssetExecutionContext, config: TrainingRunConfig, lake: DataLake,
                            mlflow: MLflowTracking) -> dg.MaterializeResult:
            return train_dataset(context, dataset, preset, config, lake, mlflow)

        return lem_model_asset

    return [make(dataset) for dataset in DATASETS]
