"""Training a LEM on a windows directory as one MLflow run: the path shared by the training
assets and by ``torchrun -m lem_pipeline.train_ddp``."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch

from lem_model import LargeExecutionModel, LEMConfig
from lem_model.config import ModelSize
from lem_model.serving import FixedRateLEM
from lem_model.train import TrainConfig, TrainResult, seed_everything, train
from lem_model.window_dataset import WindowDataset
from lem_pipeline.lake import DataLake
from lem_pipeline.presets import Preset
from lem_pipeline.trained_model import MLFLOW_ARTIFACT, save_trained
from lem_pipeline.tracking import MLflowTracking, git_commit
from lem_pipeline.windows import read_index, read_meta


def windows_splits(windows_dir: Path) -> tuple[WindowDataset, WindowDataset]:
    """The training and validation windows (the test split is evaluation's alone)."""
    return WindowDataset(windows_dir, "train"), WindowDataset(windows_dir, "val")


def build_model(windows_meta: dict, size: ModelSize, seed: int, **switches) -> LargeExecutionModel:
    """A fresh model for these windows, drawn from ``seed`` (the same seed gives the same weights)."""
    seed_everything(seed)
    return LargeExecutionModel(LEMConfig.for_windows(windows_meta, size, **switches))


def _flat(prefix: str, d: dict) -> dict[str, str]:
    return {f"{prefix}.{k}": str(v) for k, v in d.items()}


@contextmanager
def tracked_training(tracking: MLflowTracking, experiment: str, model: LargeExecutionModel, train_cfg: TrainConfig,
                     windows_meta: dict, *, tags: dict[str, str], run_name: str | None = None,
                     params: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run holding the whole configuration as parameters; it ends (failed, if the
    block raised) however the block ends."""
    with tracking.run(experiment, run_name=run_name, tags={"git.commit": git_commit(), **tags}) as run:
        mlflow.log_params({**_flat("model", dataclasses.asdict(model.cfg)), **_flat("train", dataclasses.asdict(train_cfg)),
                           **_flat("windows", windows_meta["config"]), **(params or {})})
        yield run


@dataclass
class TrainedModel:
    """What a training run hands to evaluation, through the asset's materialisation metadata."""

    run_id: str
    experiment_id: str
    model_uri: str  # the MLflow model (pyfunc-loadable); falls back to the saved-model artifact
    model_dir: Path  # lem_pipeline.trained_model layout
    result: TrainResult
    parameters: int


def train_on_windows(model: LargeExecutionModel, windows_dir: Path, train_cfg: TrainConfig, *, name: str,
                     tracking: MLflowTracking, experiment: str, out: Path, state_dir: Path, tags: dict[str, str],
                     run_name: str, params: dict[str, str], log: Callable[[str], None]) -> TrainedModel:
    """Train ``model`` on the windows in one MLflow run; save it to ``out`` and log it."""
    train_set, val_set = windows_splits(windows_dir)
    meta = train_set.meta
    with tracked_training(tracking, experiment, model, train_cfg, meta, tags=tags, run_name=run_name,
                          params=params) as run:
        index = read_index(windows_dir)
        for split, context_name in (("train", "training"), ("val", "validation")):
            part = index.filter(index["split"] == split)  # the digest identifies exactly these windows
            mlflow.log_input(mlflow.data.from_polars(part, source=str(windows_dir), name=f"{name}-{split}"),
                             context=context_name)
        log(f"training {name}: {len(train_set)} train / {len(val_set)} validation windows, "
            f"{model.num_parameters():,} parameters, {train_cfg}")
        result = train(model, train_set, val_set, train_cfg, state_dir, resume=False,
                       on_epoch_end=lambda e, m: (mlflow.log_metrics(m, step=e), log(f"epoch {e + 1}: {m}")))
        mlflow.log_metrics({"best_val_loss": result.best_val_loss, "best_epoch": result.best_epoch})
        model.cpu()
        save_trained(model, windows_dir, out)
        model_uri = log_model(model, train_set)
        mlflow.log_artifacts(str(out), MLFLOW_ARTIFACT)  # the saved model + windows config, for `lem schedule`
    shutil.rmtree(state_dir, ignore_errors=True)  # the run succeeded: its resumable state is done with
    return TrainedModel(run.info.run_id, run.info.experiment_id, model_uri, out, result, model.num_parameters())


def train_for_asset(dataset: str, name: str, train_cfg: TrainConfig, *, causal: bool, preset: Preset, lake: DataLake,
                    tracking: MLflowTracking, run_id: str, asset_key: str, log: Callable[[str], None]) -> TrainedModel:
    """A fresh model trained on ``dataset``'s windows as ``name`` in the lake, for the Dagster run
    ``run_id``: what the training and research assets share."""
    windows = lake.windows_dir(dataset)
    model = build_model(read_meta(windows), preset.model, train_cfg.seed, causal=causal)
    tags = {"dagster.run_id": run_id, "dagster.asset_key": asset_key, "preset": preset.name, "lem.stage": "training"}
    return train_on_windows(
        model, windows, train_cfg, name=dataset, tracking=tracking, experiment=f"lem-{dataset}",
        out=lake.model_dir(name), state_dir=lake.training_state_dir(name, run_id), tags=tags,
        run_name=f"{dataset}-{'causal' if causal else 'lookahead'}-{run_id[:8]}",
        params={"preset": preset.name, "dataset": dataset}, log=log)


def log_model(model: LargeExecutionModel, data: WindowDataset) -> str:
    """The model at the paper's rate limits as an MLflow PyTorch model (pickle: the forward has
    Python loops). Returns the URI to load it from; if logging fails, the URI of the saved-model
    artifact, which the caller logs in every case."""
    x, _, _ = data[0]
    example = x.unsqueeze(0).numpy()
    try:
        info = mlflow.pytorch.log_model(FixedRateLEM(model).eval(), name="model",
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                                        serialization_format="pickle", input_example=example)
        return info.model_uri
    except Exception as e:  # noqa: BLE001 - any exporter failure falls back to the saved model
        mlflow.log_text(f"mlflow.pytorch.log_model failed: {e!r}", "model_export_error.txt")
        return f"runs:/{mlflow.active_run().info.run_id}/{MLFLOW_ARTIFACT}"
