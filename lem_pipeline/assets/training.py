"""Training: one LEM per dataset on its windows, tracked as an MLflow run."""

import dataclasses
import json
import shutil
from pathlib import Path

import dagster as dg
import mlflow
import polars as pl
import torch
from dagster import AssetExecutionContext

from lem_model import LargeExecutionModel, LEMConfig
from lem_model.checkpoint import save_model
from lem_model.data import WindowDataset
from lem_model.serving import FixedRateLEM
from lem_model.train import seed_everything, train
from lem_pipeline.desk import WINDOWS_META
from lem_pipeline.presets import Preset
from lem_pipeline.resources import DataLake
from lem_pipeline.tables import markdown_table
from lem_pipeline.tracking import MLflowTracking, git_commit

RUN_FILE = "run.json"


class TrainingRunConfig(dg.Config):
    """Per-run overrides of the preset's training settings (None keeps the preset's value)."""

    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    seed: int | None = None
    causal: bool = True  # False reproduces the reference's one-bar look-ahead, to measure it
    compile_recurrence: bool = False


def model_dir(lake: DataLake, dataset: str) -> Path:
    return lake.path / "models" / dataset


def _flat(prefix: str, d: dict) -> dict[str, str]:
    return {f"{prefix}.{k}": str(v) for k, v in d.items()}


def train_dataset(context: AssetExecutionContext, dataset: str, preset: Preset, config: TrainingRunConfig,
                  lake: DataLake, tracking: MLflowTracking) -> dg.MaterializeResult:
    windows = lake.path / "windows" / dataset
    train_set, val_set = WindowDataset(windows, "train"), WindowDataset(windows, "val")
    wcfg = train_set.meta["config"]
    overrides = {k: v for k, v in (("epochs", config.epochs), ("lr", config.lr), ("batch_size", config.batch_size),
                                   ("seed", config.seed)) if v is not None}
    tcfg = dataclasses.replace(preset.training, **overrides, compile_recurrence=config.compile_recurrence,
                               progress=False)
    mcfg = LEMConfig(n_features=len(train_set.meta["features"]), lookback=wcfg["lookback"], n_ahead=wcfg["n_ahead"],
                     **dataclasses.asdict(preset.model), causal=config.causal)
    seed_everything(tcfg.seed)
    model = LargeExecutionModel(mcfg)
    out = model_dir(lake, dataset)
    ckpt = out / "checkpoints" / context.run_id
    experiment = f"lem-{dataset}"
    tags = {"dagster.run_id": context.run_id, "dagster.asset_key": context.asset_key.to_user_string(),
            "git.commit": git_commit(), "preset": preset.name, "lem.stage": "training"}
    with tracking.run(experiment, run_name=f"{dataset}-{'causal' if mcfg.causal else 'lookahead'}-{context.run_id[:8]}",
                      tags=tags) as run:
        mlflow.log_params({**_flat("model", dataclasses.asdict(mcfg)), **_flat("train", dataclasses.asdict(tcfg)),
                           **_flat("windows", wcfg), "preset": preset.name, "dataset": dataset})
        index = pl.read_parquet(windows / "index.parquet")
        for split, context_name in (("train", "training"), ("val", "validation")):
            part = index.filter(pl.col("split") == split)  # the digest identifies exactly these windows
            mlflow.log_input(mlflow.data.from_polars(part, source=str(windows), name=f"{dataset}-{split}"),
                             context=context_name)
        context.log.info(f"training {dataset}: {len(train_set)} train / {len(val_set)} validation windows, "
                         f"{model.num_parameters():,} parameters, {tcfg}")
        result = train(model, train_set, val_set, tcfg, ckpt, resume=False,
                       on_epoch_end=lambda e, m: (mlflow.log_metrics(m, step=e),
                                                  context.log.info(f"epoch {e + 1}: {m}")))
        mlflow.log_metrics({"best_val_loss": result.best_val_loss, "best_epoch": result.best_epoch})
        model.cpu()
        save_model(model, out / "best")
        shutil.copyfile(windows / "meta.json", out / "best" / WINDOWS_META)  # what `lem schedule` needs
        logged = log_model(model, train_set)
        mlflow.log_artifacts(str(out / "best"), "model_state")  # checkpoint + windows config, for `lem schedule`
        run_info = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "model_uri": logged,
                    "model_dir": str(out / "best"), "causal": mcfg.causal}
        (out / RUN_FILE).write_text(json.dumps(run_info, indent=2))
    history = pl.DataFrame([{k: v for k, v in h.items() if k in ("epoch", "loss", "val_loss", "lr")}
                            for h in result.history])
    return dg.MaterializeResult(metadata={
        "mlflow_run_id": run_info["run_id"],
        "mlflow_run": dg.MetadataValue.url(tracking.run_url(run_info["experiment_id"], run_info["run_id"])),
        "model_uri": logged,
        "best_epoch": result.best_epoch + 1, "best_val_loss": result.best_val_loss,
        "epochs_run": len(result.history), "stopped_early": result.stopped_early, "device": result.device,
        "parameters": model.num_parameters(), "history": dg.MetadataValue.md(markdown_table(history)),
        "model_dir": dg.MetadataValue.path(str(out / "best")),
    })


def log_model(model: LargeExecutionModel, data: WindowDataset) -> str:
    """The model at the paper's rate limits as an MLflow PyTorch model (pickle: the forward has
    Python loops). Returns the URI to load it from; if logging fails, the URI of the plain state
    dict and config, which the caller logs as ``model_state`` in every case."""
    x, _, _ = data[0]
    example = x.unsqueeze(0).numpy()
    try:
        info = mlflow.pytorch.log_model(FixedRateLEM(model).eval(), name="model",
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                                        serialization_format="pickle", input_example=example)
        return info.model_uri
    except Exception as e:  # noqa: BLE001 - any exporter failure falls back to the plain checkpoint
        mlflow.log_text(f"mlflow.pytorch.log_model failed: {e!r}", "model_export_error.txt")
        run = mlflow.active_run()
        return f"runs:/{run.info.run_id}/model_state"


def build_training_assets(preset: Preset) -> list[dg.AssetsDefinition]:
    assets = []
    for dataset in ("crypto", "equity"):
        def make(dataset: str):
            @dg.asset(name=f"{dataset}_lem_model", deps=[f"{dataset}_windows"], group_name="training",
                      kinds={"pytorch", "mlflow"},
                      description=f"The LEM trained on the {dataset} windows (early stopping on validation); "
                                  "an MLflow run with params, per-epoch metrics, dataset digests and the model.")
            def lem_model_asset(context: AssetExecutionContext, config: TrainingRunConfig, lake: DataLake,
                                mlflow: MLflowTracking) -> dg.MaterializeResult:
                return train_dataset(context, dataset, preset, config, lake, mlflow)

            return lem_model_asset

        assets.append(make(dataset))
    return assets
