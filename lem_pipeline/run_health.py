"""Runs whose process died: found and marked failed, so nothing stays STARTED or RUNNING.

A Dagster run or an MLflow run is only as alive as the process that executes it. After a kill
-9 (or a power cut) both keep saying "in progress" forever, and with ``max_concurrent_runs: 1``
one stuck Dagster run starves every schedule, sensor and UI launch. Every run we start records
its process: Dagster records the pid of every run's worker in an engine event (in process or
launched), ``lem run`` adds the host as the ``lem/host`` tag, and MLflow runs opened through
lem_pipeline.tracking carry ``lem.pid``, ``lem.pid_started`` and ``lem.host``. A pid counts as
the run's only if that process started no later than the run (Dagster) or exactly when recorded
(MLflow): a pid reused after a reboot is not the run's worker. Two callers use the check:

- Dagster's run monitoring daemon, through :class:`LocalRunLauncher` (``dagster_home/dagster.yaml``
  turns it on): the stock launcher cannot tell whether its worker lives, ours can.
- ``lem run`` at its start (:func:`fail_dead_runs`), because no daemon runs there.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus

from lem_model.processes import process_alive, started_at

HOST_TAG = "lem/host"
MLFLOW_PID_TAG = "lem.pid"
MLFLOW_STARTED_TAG = "lem.pid_started"
MLFLOW_HOST_TAG = "lem.host"
# On a run reopened by a later process (an evaluation logging into its finished training run, a
# training resumed): the status it had. A reopening process that dies leaves it so, not FAILED.
MLFLOW_REOPENED_TAG = "lem.status_before_reopen"
_IN_PROGRESS = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)


def host_tags() -> dict[str, str]:
    """The Dagster run tag naming this host, for the runs this process executes."""
    return {HOST_TAG: socket.gethostname()}


def mlflow_process_tags() -> dict[str, str]:
    """MLflow run tags naming this process (pid, its start time, host)."""
    pid = os.getpid()
    return {MLFLOW_PID_TAG: str(pid), MLFLOW_STARTED_TAG: str(started_at(pid) or ""), MLFLOW_HOST_TAG: socket.gethostname()}


def _worker_pid(instance: dg.DagsterInstance, run: dg.DagsterRun) -> int | None:
    """The pid of the run's worker, from Dagster's own engine event (a re-executed run copies
    its parent's tags, never its events), or None when unknown or on another host."""
    if run.tags.get(HOST_TAG, socket.gethostname()) != socket.gethostname():
        return None
    for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        data = record.dagster_event.engine_event_data if record.dagster_event else None
        pid = data.metadata.get("pid") if data is not None else None
        if pid is not None:
            return int(pid.value)
    return None


def worker_status(instance: dg.DagsterInstance, run: dg.DagsterRun) -> WorkerStatus:
    pid = _worker_pid(instance, run)
    if pid is None:
        return WorkerStatus.UNKNOWN
    record = instance.get_run_record_by_id(run.run_id)
    began = record.start_time if record is not None else None
    return WorkerStatus.RUNNING if process_alive(pid, started_before=began) else WorkerStatus.NOT_FOUND


def fail_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark every in-progress run whose process is gone as failed and free the pool slots it
    held (a held "torch" slot would block every later training); returns their ids."""
    failed = []
    for run in instance.get_runs(dg.RunsFilter(statuses=list(_IN_PROGRESS))):
        if worker_status(instance, run) == WorkerStatus.NOT_FOUND:
            instance.report_run_failed(run, f"the process running it ({_worker_pid(instance, run)}) is gone "
                                            "(killed or crashed); marked failed")
            if instance.event_log_storage.supports_global_concurrency_limits:
                instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            failed.append(run.run_id)
    return failed


def fail_dead_mlflow_runs(tracking_uri: str, experiments: Iterable[str]) -> list[str]:
    """Mark the MLflow runs still RUNNING whose process is gone as FAILED (a finished run that a
    later process reopened, as FINISHED again: its own work was done); returns their ids."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    ids = [e.experiment_id for name in experiments if (e := client.get_experiment_by_name(name)) is not None]
    if not ids:
        return []
    host = socket.gethostname()
    failed = []
    for run in client.search_runs(ids, filter_string="attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if tags.get(MLFLOW_HOST_TAG) == host and tags.get(MLFLOW_PID_TAG) and not mlflow_run_alive(tags):
            finished = tags.get(MLFLOW_REOPENED_TAG) == "FINISHED"
            client.set_terminated(run.info.run_id, status="FINISHED" if finished else "FAILED")
            failed.append(run.info.run_id)
    return failed


def mlflow_run_alive(tags: dict[str, str]) -> bool:
    """Whether the process recorded in an MLflow run's tags is still running it."""
    started = tags.get(MLFLOW_STARTED_TAG)
    return process_alive(int(tags[MLFLOW_PID_TAG]), started=float(started) if started else None)


class LocalRunLauncher(DefaultRunLauncher):
    """The default launcher (a subprocess of the code server on this host), plus the worker
    health check that Dagster's run monitoring needs to fail runs whose process died."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        status = worker_status(self._instance, run)
        return CheckRunHealthResult(status, None if status != WorkerStatus.NOT_FOUND else "run worker process is gone")
