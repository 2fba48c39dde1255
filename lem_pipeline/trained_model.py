"""A trained model as the pipeline stores it: lem_model's saved model (config.json, model.pt)
plus ``windows.json``, the windows config it was trained on, so that anything serving it
(``lem schedule``) cuts its inputs exactly as training did, and ``lineage.json``, the MLflow run
that trained it and the digest of its weights, so nothing pairs these weights with another
run's metrics."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from lem_model.fileio import replaced_dir
from lem_model.model import LargeExecutionModel
from lem_model.saved_model import load_model, save_model, weights_digest
from lem_pipeline.windows import WindowConfig, meta_file, read_meta

WINDOWS_META = "windows.json"
LINEAGE = "lineage.json"
MLFLOW_ARTIFACT = "model_state"  # where a training run logs this directory


class LineageError(RuntimeError):
    """A model directory that is not the one its supposed training run wrote."""


def save_trained(model: LargeExecutionModel, windows_dir: Path, out: Path, run_id: str) -> Path:
    """Write the directory aside and swap it in whole: never a model beside another's config."""
    with replaced_dir(out) as tmp:
        save_model(model, tmp)
        shutil.copyfile(meta_file(windows_dir), tmp / WINDOWS_META)
        (tmp / LINEAGE).write_text(json.dumps({"mlflow_run_id": run_id, "weights_sha256": weights_digest(model)}))
    return out


def read_lineage(model_dir: Path) -> dict | None:
    """A model directory's lineage.json (``mlflow_run_id``, ``weights_sha256``), None without one."""
    path = Path(model_dir) / LINEAGE
    return json.loads(path.read_text()) if path.is_file() else None


def check_lineage(model: LargeExecutionModel, model_dir: Path, run_id: str) -> None:
    """Refuse a model directory written by another run than ``run_id``, or whose weights are not
    the ones it recorded (a crash between saving and recording, a hand-copied file)."""
    lineage = read_lineage(model_dir)
    if lineage is None:
        raise LineageError(f"{model_dir} has no {LINEAGE}: it cannot be tied to MLflow run {run_id}; retrain it")
    if lineage["mlflow_run_id"] != run_id:
        raise LineageError(f"{model_dir} was trained by MLflow run {lineage['mlflow_run_id']}, not {run_id} (the run "
                           "the latest materialisation names): the training was interrupted after saving; retrain")
    if weights_digest(model) != lineage["weights_sha256"]:
        raise LineageError(f"{model_dir}: the weights do not match the digest recorded by run {run_id}")


def run_id_of(source: str) -> str:
    """The MLflow run a run id or a ``models:/`` URI names (the registry version's run), in the
    store named by LEM_MLFLOW_URI / LEM_MLFLOW_DIR."""
    from lem_pipeline.registry import is_registry_uri, run_of
    from lem_pipeline.tracking import MLflowTracking

    return run_of(source, MLflowTracking.from_environment().tracking_uri) if is_registry_uri(source) else source


def _download(source: str, into: Path) -> Path:
    """A run id or a ``models:/`` URI -> the run's model_state artifact, downloaded into ``into``."""
    import mlflow

    from lem_pipeline.tracking import MLflowTracking

    mlflow.set_tracking_uri(MLflowTracking.from_environment().tracking_uri)
    run_id = run_id_of(source)
    if not mlflow.MlflowClient().list_artifacts(run_id, MLFLOW_ARTIFACT):  # before a download's progress bar
        raise FileNotFoundError(f"run {run_id} logged no {MLFLOW_ARTIFACT}")
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=MLFLOW_ARTIFACT, dst_path=str(into)))


def load_trained(source: str) -> tuple[LargeExecutionModel, WindowConfig]:
    """A trained-model directory, the id of the MLflow run that logged one, or a registry URI
    (``models:/lem-equity@champion``), in the store named by LEM_MLFLOW_URI / LEM_MLFLOW_DIR.
    Only weights are loaded (``weights_only``): never a pickled object. A downloaded copy is
    removed once loaded."""
    path = Path(source)
    if path.is_dir():
        return _load_dir(path)
    with tempfile.TemporaryDirectory(prefix="lem-model-") as tmp:
        return _load_dir(_download(source, Path(tmp)))


def _load_dir(path: Path) -> tuple[LargeExecutionModel, WindowConfig]:
    """The model and its windows config, which must describe the same windows: a model served
    with another horizon or lookback than it was built for would plan silently wrong."""
    model, windows = load_model(path), WindowConfig.from_meta(read_meta(path / WINDOWS_META))
    built = {"lookback": model.cfg.lookback, "n_ahead": model.cfg.n_ahead, "n_features": model.cfg.n_features}
    cut = {"lookback": windows.lookback, "n_ahead": windows.n_ahead, "n_features": windows.n_features}
    if built != cut:
        differ = ", ".join(f"{k} {built[k]!r} in config.json, {cut[k]!r} in {WINDOWS_META}"
                           for k in built if built[k] != cut[k])
        raise ValueError(f"{path}: the model and its windows disagree: {differ}")
    return model, windows
