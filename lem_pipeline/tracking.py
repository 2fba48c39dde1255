"""MLflow tracking as a Dagster resource: a local SQLite store with a local artifact root by
default, one experiment per dataset, opened in the UI's model-training view."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from lem_pipeline import settings
from lem_pipeline.errors import UserError, quote
from lem_pipeline.run_health import MLFLOW_REOPENED_TAG, fail_dead_mlflow_runs, mlflow_process_tags


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# A tracking server probed once, without MLflow's retries (up to minutes of backoff for a server
# that is down): the check should answer in seconds; the runs themselves keep MLflow's retries.
PROBE_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """These environment variables set for the block, then as they were."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_store(uri: str) -> None:
    """Open the MLflow store once, so that a LEM_MLFLOW_URI MLflow cannot use (an unknown scheme,
    a driver not installed, a file that is not a database) fails in one line naming it before
    any work, not after minutes of training or after ``lem evaluate`` has written its tables.
    An embedded store not created yet is left to the first run, which creates it."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    store = settings.sqlite_file(uri)
    if store is not None and not store.exists():
        return
    try:
        with _environment(PROBE_HTTP if uri.startswith(("http://", "https://")) else {}):
            mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except (MlflowException, SQLAlchemyError, OSError, ImportError) as e:
        raise UserError(f"{settings.MLFLOW_URI}={uri}: not an MLflow store this install can open ({quote(e)})") from e


class MLflowTracking(dg.ConfigurableResource):
    """``tracking_uri`` must be absolute (Dagster steps run in other working directories)."""

    tracking_uri: str
    artifact_root: str
    ui_url: str = "http://127.0.0.1:5000"

    def _mlflow(self):
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        return mlflow

    def experiment_id(self, name: str) -> str:
        mlflow = self._mlflow()
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            location = Path(self.artifact_root, name).resolve().as_uri()
            return mlflow.create_experiment(name, artifact_location=location,
                                            tags={"mlflow.experimentKind": "custom_model_development"})
        return exp.experiment_id

    @contextmanager
    def run(self, experiment: str, *, run_id: str | None = None, run_name: str | None = None,
            tags: dict[str, str] | None = None, parent_run_id: str | None = None) -> Iterator:
        """A new run in ``experiment`` or, with ``run_id``, the existing one reopened; with
        ``parent_run_id`` (the active run) nested under it. The run records this process
        (lem_pipeline.run_health): if it dies, the next ``lem run`` marks the run FAILED instead
        of leaving it RUNNING; if the block raises, it ends FAILED. A FINISHED run reopened (an
        evaluation logging into its training run) ends FINISHED either way: its own work was
        done, and the failure is the later process's."""
        mlflow = self._mlflow()
        exp_id = self.experiment_id(experiment)
        process = mlflow_process_tags()
        before = self.run_status(run_id) if run_id else None
        try:
            with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else exp_id, run_name=run_name,
                                  nested=parent_run_id is not None, parent_run_id=parent_run_id,
                                  tags={**(tags or {}), **process,
                                        **({MLFLOW_REOPENED_TAG: before} if before else {})}) as active:
                yield active
        except BaseException:
            if before == "FINISHED":
                mlflow.MlflowClient(self.tracking_uri).set_terminated(run_id, status="FINISHED")
            raise

    def fail_dead_runs(self, experiments: Iterable[str]) -> list[str]:
        """Runs of these experiments left RUNNING by a process that died, marked FAILED (or
        FINISHED again, for a finished run the dead process had reopened)."""
        return fail_dead_mlflow_runs(self.tracking_uri, experiments)

    def has_run(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self._mlflow().get_run(run_id)
            return True
        except MlflowException:
            return False

    def run_tags(self, run_id: str) -> dict[str, str]:
        return self._mlflow().get_run(run_id).data.tags

    def run_status(self, run_id: str) -> str:
        return self._mlflow().get_run(run_id).info.status

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.ui_url}/#/experiments/{experiment_id}/runs/{run_id}"

    @classmethod
    def from_environment(cls) -> MLflowTracking:
        """The same store outside Dagster (torchrun, the CLI), from the environment now."""
        settings.apply_defaults()
        return cls(tracking_uri=os.environ[settings.MLFLOW_URI], artifact_root=os.environ[settings.MLFLOW_ARTIFACTS])
