"""The trained model a command names with ``--model``: a trained-model directory, an MLflow run
id or a registry URI (lem_pipeline.trained_model.load_trained), loaded or refused with a
one-line UserError naming the directory or the run and the store searched. Shared by
``lem schedule`` and ``lem evaluate``."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

from lem_pipeline.errors import UserError, quote

# What loading a damaged model directory raises (bad JSON or config fields: ValueError; a
# truncated or foreign model.pt: RuntimeError, EOFError, UnpicklingError; a missing file: OSError;
# weights of another shape: RuntimeError): the user's file is wrong, not the code.
_CORRUPT_MODEL = (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError)
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # runs:/..., models:/...: not a file path


def _looks_like_path(source: str) -> bool:
    return Path(source).exists() or (os.sep in source and not _URI_SCHEME.match(source))


def check_model_dir(path: Path) -> None:
    """A trained-model directory holds the saved model and the windows config it was trained on."""
    from lem_model.saved_model import CONFIG, WEIGHTS
    from lem_pipeline.trained_model import WINDOWS_META

    if not path.is_dir():
        raise UserError(f"--model {path}: no such trained-model directory")
    missing = [f for f in (CONFIG, WEIGHTS, WINDOWS_META) if not (path / f).is_file()]
    if missing:
        raise UserError(f"--model {path}: not a trained-model directory, missing {', '.join(missing)}")


def _lookup_store(source: str) -> str:
    """The MLflow store a run id is looked up in (LEM_MLFLOW_URI / LEM_MLFLOW_DIR); an embedded one
    must exist: opening a missing one would create it."""
    from lem_pipeline import settings
    from lem_pipeline.tracking import MLflowTracking

    uri = MLflowTracking.from_environment().tracking_uri
    store = settings.sqlite_file(uri)
    if store is not None and not store.is_file():
        raise UserError(f"--model {source}: no such model directory, and no MLflow store at {store} to look it up "
                        f"in as a run id ({settings.MLFLOW_URI} / {settings.MLFLOW_DIR})")
    return uri


def load_model_source(source: str):
    """(model, windows config) from a trained-model directory or an MLflow run id, or a UserError
    naming the directory or the run and the store searched."""
    from mlflow.exceptions import MlflowException

    from lem_pipeline.registry import RegistryError, is_registry_uri
    from lem_pipeline.tracking import MLflowTracking
    from lem_pipeline.trained_model import MLFLOW_ARTIFACT, load_trained

    run_id = None
    if _looks_like_path(source):
        check_model_dir(Path(source))
        where = "corrupt trained-model directory"
    elif is_registry_uri(source):
        where = f"no such registered model version in {_lookup_store(source)}"
    else:
        run_id, uri = source, _lookup_store(source)
        where = f"no such model directory or MLflow run in {uri}"
    try:
        return load_trained(source)
    except (MlflowException, RegistryError, *_CORRUPT_MODEL) as e:
        if run_id is not None and MLflowTracking.from_environment().has_run(run_id):
            where = (f"MLflow run in {uri} without a loadable {MLFLOW_ARTIFACT} artifact (a training run logs "
                     "one; an evaluation's run does not)")
        raise UserError(f"--model {source}: {where} ({quote(e)})") from e


def model_run_id(source: str, model) -> tuple[str | None, str | None]:
    """(run, warning): the MLflow run that trained ``model``, which ``source`` named (after
    :func:`load_model_source` accepted it): the run id itself, a registry version's run, or a
    directory's lineage.json when the weights are the ones it recorded; else None and the warning
    to print once the command goes ahead (a directory without lineage, or whose weights were
    replaced since, is tied to no run). A corrupt lineage.json is a UserError now."""
    from lem_model.saved_model import weights_digest
    from lem_pipeline.trained_model import LINEAGE, read_lineage, run_id_of

    if not _looks_like_path(source):
        return run_id_of(source), None
    try:
        lineage = read_lineage(Path(source))
    except ValueError as e:  # not JSON
        raise UserError(f"--model {source}: corrupt {LINEAGE} ({quote(e)})") from e
    if lineage is None:
        why = f"no {LINEAGE} (a directory the pipeline did not write)"
    elif not isinstance(lineage, dict) or not lineage.get("mlflow_run_id"):
        raise UserError(f"--model {source}: corrupt {LINEAGE} (no mlflow_run_id)")
    elif not lineage.get("weights_sha256"):
        why = f"{LINEAGE} records no weights digest for MLflow run {lineage['mlflow_run_id']}"
    elif lineage["weights_sha256"] != weights_digest(model):
        why = f"the weights are not the ones {LINEAGE} recorded for MLflow run {lineage['mlflow_run_id']}"
    else:
        return lineage["mlflow_run_id"], None
    return None, f"warning: --model {source}: {why}; the evaluation is tied to no training run"
