"""Runs whose process died: found and marked failed, so nothing stays STARTED or RUNNING.

A Dagster run or an MLflow run is only as alive as the process that executes it. After a kill
-9 (or a power cut) both keep saying "in progress" forever, and with ``max_concurrent_runs: 1``
one stuck Dagster run starves every schedule, sensor and UI launch. Every run we start records
its process (pid and host: the ``lem/pid`` run tag for ``lem run``'s in-process runs, Dagster's
own "Started process for run (pid: N)" event for launched ones, the ``lem.pid`` tag on MLflow
runs), and two callers use the same check:

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

from lem_model.processes import pid_alive

PID_TAG = "lem/pid"
HOST_TAG = "lem/host"
MLFLOW_PID_TAG = "lem.pid"
MLFLOW_HOST_TAG = "lem.host"
_IN_PROGRESS = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)


def process_tags(pid_tag: str = PID_TAG, host_tag: str = HOST_TAG) -> dict[str, str]:
    """Tags naming this process, for a run it is about to execute."""
    return {pid_tag: str(os.getpid()), host_tag: socket.gethostname()}


def _worker_pid(instance: dg.DagsterInstance, run: dg.DagsterRun) -> int | None:
    """The run's process on this host, or None when it is unknown or on another host."""
    if run.tags.get(PID_TAG):
        return int(run.tags[PID_TAG]) if run.tags.get(HOST_TAG) == socket.gethostname() else None
    for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        data = record.dagster_event.engine_event_data if record.dagster_event else None
        pid = data.metadata.get("pid") if data is not None else None
        if pid is not None:
            return int(pid.value)  # the launcher's worker is a child of a code server on this host
    return None


def worker_status(instance: dg.DagsterInstance, run: dg.DagsterRun) -> WorkerStatus:
    pid = _worker_pid(instance, run)
    if pid is None:
        return WorkerStatus.UNKNOWN
    return WorkerStatus.RUNNING if pid_alive(pid) else WorkerStatus.NOT_FOUND


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
    """Mark the MLflow runs still RUNNING whose process is gone as FAILED; returns their ids."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    ids = [e.experiment_id for name in experiments if (e := client.get_experiment_by_name(name)) is not None]
    if not ids:
        return []
    host = socket.gethostname()
    failed = []
    for run in client.search_runs(ids, filter_string="attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if tags.get(MLFLOW_HOST_TAG) == host and tags.get(MLFLOW_PID_TAG) and not pid_alive(int(tags[MLFLOW_PID_TAG])):
            client.set_terminated(run.info.run_id, status="FAILED")
            failed.append(run.info.run_id)
    return failed


class LocalRunLauncher(DefaultRunLauncher):
    """The default launcher (a subprocess of the code server on this host), plus the worker
    health check that Dagster's run monitoring needs to fail runs whose process died."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        status = worker_status(self._instance, run)
        return CheckRunHealthResult(status, None if status != WorkerStatus.NOT_FOUND else "run worker process is gone")
