"""Training a LEM on a windows directory as one MLflow run: the path shared by the training
assets and by ``torchrun -m lem_pipeline.train_ddp``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch

from lem_model import LargeExecutionModel, LEMConfig
from lem_model.config import AllocatorSwitches, ModelSize
from lem_model.failpoints import failpoint
from lem_model.fileio import atomic_write_text
from lem_model.serving import FixedRateLEM
from lem_model.train import TrainConfig, TrainResult, seed_everything, train
from lem_model.training_state import TRAINING_STATE
from lem_model.vocabulary import Side
from lem_model.window_dataset import WindowDataset
from lem_pipeline import settings
from lem_pipeline.lake import DataLake
from lem_pipeline.presets import Preset
from lem_pipeline.registry import registered_name
from lem_pipeline.run_health import MLFLOW_PID_TAG, mlflow_run_alive
from lem_pipeline.trained_model import MLFLOW_ARTIFACT, save_trained
from lem_pipeline.tracking import MLflowTracking, git_commit
from lem_pipeline.windows import read_index, read_meta, windows_digest

# The thresholds (bps per minimum period and side) of the rule a model's finish gate started as,
# logged with its MLflow run (LEMConfig.rule_prior "fitted").
STOP_THRESHOLDS_ARTIFACT = "stop_thresholds.json"

RUN_FILE = "mlflow_run_id"  # in a training state directory: the MLflow run those epochs belong to
RESUMED_TAG = "lem.resumed_at_epoch"  # on a run that resumed: the first epoch (from 1) it trained after the crash
SEED_TAG = "lem.seed"  # on each child run of a several-seed training (lem_pipeline.seed_training): its seed
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the run a nested run belongs to
# Training progress for a person at a terminal: `lem run` prints this logger (the Dagster run log
# gets the same lines through the asset's context.log).
PROGRESS = logging.getLogger("lem.progress")


def windows_splits(windows_dir: Path) -> tuple[WindowDataset, WindowDataset]:
    """The training and validation windows (the test split is evaluation's alone)."""
    return WindowDataset(windows_dir, "train"), WindowDataset(windows_dir, "val")


def build_model(windows_meta: dict, size: ModelSize, seed: int, allocator: AllocatorSwitches | None = None,
                **switches) -> LargeExecutionModel:
    """A fresh model for these windows, drawn from ``seed`` (the same seed gives the same weights)."""
    seed_everything(seed)
    return LargeExecutionModel(LEMConfig.for_windows(windows_meta, size, allocator, **switches))


def _flat(prefix: str, d: dict) -> dict[str, str]:
    return {f"{prefix}.{k}": str(v) for k, v in d.items()}


def train_params(train_cfg: TrainConfig) -> dict:
    """The training config as one training records it. ``seeds`` is left out at 1: it counts
    trainings, so a one-seed run's parameters and training key are what they were before it
    existed."""
    params = dataclasses.asdict(train_cfg)
    if train_cfg.seeds == 1:
        del params["seeds"]
    return params


def experiment_name(dataset: str) -> str:
    return f"lem-{dataset}"


def asset_tags(run_id: str, asset_key: str, preset: Preset) -> dict[str, str]:
    """The tags of a training asset's MLflow runs: which Dagster run and asset, which preset."""
    return {"dagster.run_id": run_id, "dagster.asset_key": asset_key, "preset": preset.name, "lem.stage": "training"}


def asset_run_name(dataset: str, causal: bool, run_id: str) -> str:
    return f"{dataset}-{'causal' if causal else 'lookahead'}-{run_id[:8]}"


@contextmanager
def tracked_training(tracking: MLflowTracking, experiment: str, model: LargeExecutionModel, train_cfg: TrainConfig,
                     windows_meta: dict, *, tags: dict[str, str], run_name: str | None = None,
                     params: dict[str, str] | None = None, resume_run_id: str | None = None,
                     parent_run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run holding the whole configuration as parameters (or, with ``resume_run_id``,
    the interrupted run reopened: its parameters are already there); it ends (failed, if the
    block raised) however the block ends. With ``parent_run_id`` (the active run) it is nested
    under it."""
    with tracking.run(experiment, run_id=resume_run_id, run_name=run_name, parent_run_id=parent_run_id,
                      tags={"git.commit": git_commit(), **tags}) as run:
        if resume_run_id is None:
            mlflow.log_params({**_flat("model", dataclasses.asdict(model.cfg)),
                               **_flat("train", train_params(train_cfg)),
                               **_flat("windows", windows_meta["config"]), **(params or {})})
        yield run


def training_key(model_cfg: LEMConfig, train_cfg: TrainConfig, windows_dir: Path) -> str:
    """What identifies one training (or, with ``seeds`` > 1, a set of seeds): the model and
    training configs and the windows' content. An interrupted run resumes only into a run with
    the same key (never onto other data)."""
    what = {"model": dataclasses.asdict(model_cfg),
            "train": train_params(dataclasses.replace(train_cfg, progress=False)), "windows": windows_digest(windows_dir)}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


class TrainingInProgressError(RuntimeError):
    """Another live process is running this very training (same key): two must not share it."""


def resumable_run(state_dir: Path, tracking: MLflowTracking, parent_run_id: str | None = None) -> str | None:
    """The MLflow run of an interrupted training with saved epochs in ``state_dir``, if any."""
    if not (state_dir / TRAINING_STATE).is_file():
        return None
    return reopenable_run(state_dir, tracking, parent_run_id)


def reopenable_run(state_dir: Path, tracking: MLflowTracking, parent_run_id: str | None = None) -> str | None:
    """The MLflow run named in ``state_dir``/RUN_FILE, to be reopened, if it still exists and
    belongs to ``parent_run_id`` (None: to no parent); a run from another parent is left alone
    (the saved epochs resume in a new run). Refuses a run a live process is training."""
    run_file = state_dir / RUN_FILE
    if not run_file.is_file():
        return None
    run_id = run_file.read_text().strip()
    if not tracking.has_run(run_id):
        return None
    tags = tracking.run_tags(run_id)
    if tags.get(MLFLOW_PID_TAG) and tracking.run_status(run_id) == "RUNNING" and mlflow_run_alive(tags):
        raise TrainingInProgressError(f"{state_dir}: MLflow run {run_id} is training this model on these windows "
                                      f"now (pid {tags[MLFLOW_PID_TAG]}); wait for it or stop it")
    return run_id if tags.get(PARENT_TAG) == parent_run_id else None


def log_missing_epochs(run_id: str, history: list[dict[str, float]]) -> list[int]:
    """Log the epochs of ``history`` that the run has no metrics for, and return them: a process
    killed after saving an epoch's training state but before logging it resumes after that
    epoch, whose metrics only the saved state still holds."""
    logged = {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "val_loss")}
    missing = [h for h in history if h["epoch"] not in logged]
    for h in missing:
        mlflow.log_metrics({k: v for k, v in h.items() if k != "epoch"}, step=int(h["epoch"]))
    return [int(h["epoch"]) for h in missing]


class EpochProgress:
    """One line per epoch for a person watching: losses, seconds per epoch and an ETA."""

    def __init__(self, epochs: int, log: Callable[[str], None]) -> None:
        self.epochs, self.log = epochs, log
        self.started = time.monotonic()
        self.done = 0

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        self.done += 1
        per_epoch = (time.monotonic() - self.started) / self.done
        left = per_epoch * (self.epochs - epoch - 1)
        self.log(f"epoch {epoch + 1}/{self.epochs}: loss {metrics['loss']:.5f}, val_loss {metrics['val_loss']:.5f}, "
                 f"val vs rule {metrics['val_vs_rule_bps']:+.2f} bps, lr {metrics['lr']:.2g}; {per_epoch:.0f} s/epoch, "
                 f"at most {left:.0f} s left (early stopping may end it sooner)")


@dataclass
class TrainedModel:
    """What a training run hands to evaluation, through the asset's materialisation metadata."""

    run_id: str
    experiment_id: str
    model_uri: str  # the MLflow model (pyfunc-loadable); falls back to the saved-model artifact
    model_dir: Path  # lem_pipeline.trained_model layout
    result: TrainResult
    parameters: int
    registered: str | None  # "name/version" in the MLflow model registry; None: not registered


def train_on_windows(model: LargeExecutionModel, windows_dir: Path, train_cfg: TrainConfig, *, name: str,
                     tracking: MLflowTracking, experiment: str, out: Path, state_dir: Path, registered: str | None,
                     tags: dict[str, str], run_name: str, params: dict[str, str], log: Callable[[str], None],
                     parent_run_id: str | None = None) -> TrainedModel:
    """Train ``model`` on the windows (``name``: the dataset) in one MLflow run (nested under
    the active run ``parent_run_id``, if given); save it to ``out``, log it and register it as a
    new version of ``registered`` (None: the saved model is the run's only model, registered
    nowhere).

    ``state_dir`` holds the per-epoch training state and the run's id: a run killed after some
    epochs resumes from the last one, in the same MLflow run, when called again with the same
    ``state_dir`` (lem_pipeline.lake keys it by :func:`training_key`). It is removed on success.
    """
    train_set, val_set = windows_splits(windows_dir)
    meta = train_set.meta
    tracking.fail_dead_runs([experiment])  # a killed run of this experiment is FAILED, not RUNNING
    resume_id = resumable_run(state_dir, tracking, parent_run_id)
    with tracked_training(tracking, experiment, model, train_cfg, meta, tags=tags, run_name=run_name,
                          params=params, resume_run_id=resume_id, parent_run_id=parent_run_id) as run:
        if resume_id is None:
            index = read_index(windows_dir)
            for split, context_name in (("train", "training"), ("val", "validation")):
                part = index.filter(index["split"] == split)  # the digest identifies exactly these windows
                mlflow.log_input(mlflow.data.from_polars(part, source=str(windows_dir), name=f"{name}-{split}"),
                                 context=context_name)
            atomic_write_text(state_dir / RUN_FILE, run.info.run_id)
        log(f"training {name}: {len(train_set)} train / {len(val_set)} validation windows, "
            f"{model.num_parameters():,} parameters, {torch.get_num_threads()} threads, {train_cfg}"
            + (f"; resuming MLflow run {resume_id} from {state_dir}" if resume_id else ""))
        progress = EpochProgress(train_cfg.epochs, log)

        def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
            mlflow.log_metrics(metrics, step=epoch)
            progress(epoch, metrics)
            failpoint("epoch")

        result = train(model, train_set, val_set, train_cfg, state_dir, resume=True, on_epoch_end=on_epoch_end)
        if result.resumed_from_epoch is not None:  # epochs counted from 1 for people, everywhere
            log(f"resumed at epoch {result.resumed_from_epoch + 1} (the epochs before came from {state_dir})")
            mlflow.set_tag(RESUMED_TAG, str(result.resumed_from_epoch + 1))
        if resume_id is not None:  # also a kill after the last epoch was saved: nothing left to train
            log_missing_epochs(run.info.run_id, result.history)
        mlflow.log_metrics({"best_val_loss": result.best_val_loss, "best_epoch": result.best_epoch})
        if model.cfg.rule_prior == "fitted":  # the rule its finish gate started as, fitted on the training windows
            thresholds = model.stop_thresholds.cpu()
            mlflow.log_dict({"minimum_period": list(range(1, len(thresholds))),
                             **{side.name.lower(): thresholds[:-1, side].tolist() for side in Side}},
                            STOP_THRESHOLDS_ARTIFACT)
        model.cpu()
        save_trained(model, windows_dir, out, run.info.run_id)
        mlflow.log_artifacts(str(out), MLFLOW_ARTIFACT)  # the saved model + windows config, for `lem schedule`
        if registered is None:
            model_uri, version = f"runs:/{run.info.run_id}/{MLFLOW_ARTIFACT}", None
        else:
            model_uri, version = log_model(model, train_set, registered)
    shutil.rmtree(state_dir, ignore_errors=True)  # the run succeeded: its resumable state is done with
    return TrainedModel(run.info.run_id, run.info.experiment_id, model_uri, out, result, model.num_parameters(),
                        version)


def train_for_asset(dataset: str, name: str, train_cfg: TrainConfig, *, causal: bool, preset: Preset, lake: DataLake,
                    tracking: MLflowTracking, run_id: str, asset_key: str, log: Callable[[str], None],
                    parent_run_id: str | None = None, register: bool = True) -> TrainedModel:
    """A fresh model trained (seed ``train_cfg.seed``) on ``dataset``'s windows as ``name`` in the
    lake, for the Dagster run ``run_id``: what the training and research assets share. A
    training of the same model on the same windows that was killed resumes from its last epoch.
    ``parent_run_id`` and ``register``: for one seed of several (lem_pipeline.seed_training)."""
    torch.set_num_threads(settings.thread_budget())
    windows = lake.windows_dir(dataset)
    model = build_model(read_meta(windows), preset.model, train_cfg.seed, preset.allocator, causal=causal)
    tags = asset_tags(run_id, asset_key, preset) | ({SEED_TAG: str(train_cfg.seed)} if parent_run_id else {})
    run_name = asset_run_name(dataset, causal, run_id) + (f"-seed{train_cfg.seed}" if parent_run_id else "")

    def log_both(message: str) -> None:
        log(message)
        PROGRESS.info(f"{name}: {message}")

    return train_on_windows(
        model, windows, train_cfg, name=dataset, tracking=tracking, experiment=experiment_name(dataset),
        out=lake.model_dir(name), state_dir=lake.training_state_dir(name, training_key(model.cfg, train_cfg, windows)),
        registered=registered_name(name) if register else None, tags=tags, run_name=run_name,
        params={"preset": preset.name, "dataset": dataset}, log=log_both, parent_run_id=parent_run_id)


def log_model(model: LargeExecutionModel, data: WindowDataset, registered: str) -> tuple[str, str]:
    """The model at the paper's rate limits as an MLflow PyTorch model (pickle: the forward has
    Python loops), registered as a new version of ``registered``. Returns the URI to load it from
    and "name/version"; if the exporter fails, the saved-model artifact (which the caller has
    logged already) is what gets registered."""
    x, _, _ = data[0]
    example = x.unsqueeze(0).numpy()
    run_id = mlflow.active_run().info.run_id
    try:
        info = mlflow.pytorch.log_model(FixedRateLEM(model).eval(), name="model",
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                                        serialization_format="pickle", input_example=example,
                                        registered_model_name=registered)
        return info.model_uri, f"{registered}/{info.registered_model_version}"
    except Exception as e:  # noqa: BLE001 - any exporter failure falls back to the saved model
        mlflow.log_text(f"mlflow.pytorch.log_model failed: {e!r}", "model_export_error.txt")
        client = mlflow.MlflowClient()
        if not client.search_registered_models(f"name = '{registered}'"):
            client.create_registered_model(registered)
        source = f"{mlflow.active_run().info.artifact_uri}/{MLFLOW_ARTIFACT}"
        version = client.create_model_version(registered, source, run_id=run_id)
        return f"runs:/{run_id}/{MLFLOW_ARTIFACT}", f"{registered}/{version.version}"
