"""A trained model as the pipeline stores it: lem_model's saved model (config.json, model.pt)
plus ``windows.json``, the windows config it was trained on, so that anything serving it
(``lem schedule``) cuts its inputs exactly as training did."""

from __future__ import annotations

import shutil
from pathlib import Path

from lem_model.fileio import replaced_dir
from lem_model.model import LargeExecutionModel
from lem_model.saved_model import load_model, save_model
from lem_pipeline.windows import WindowConfig, meta_file, read_meta

WINDOWS_META = "windows.json"
MLFLOW_ARTIFACT = "model_state"  # where a training run logs this directory


def save_trained(model: LargeExecutionModel, windows_dir: Path, out: Path) -> Path:
    """Write the directory aside and swap it in whole: never a model beside another's config."""
    with replaced_dir(out) as tmp:
        save_model(model, tmp)
        shutil.copyfile(meta_file(windows_dir), tmp / WINDOWS_META)
    return out


def load_trained(source: str) -> tuple[LargeExecutionModel, WindowConfig]:
    """A trained-model directory, or the id of the MLflow run that logged one (the store named
    by LEM_MLFLOW_URI / LEM_MLFLOW_DIR)."""
    path = Path(source)
    if not path.is_dir():
        import mlflow

        from lem_pipeline.tracking import MLflowTracking

        mlflow.set_tracking_uri(MLflowTracking.from_environment().tracking_uri)
        path = Path(mlflow.artifacts.download_artifacts(run_id=source, artifact_path=MLFLOW_ARTIFACT))
    return load_model(path), WindowConfig.from_meta(read_meta(path / WINDOWS_META))
