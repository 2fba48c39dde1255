"""The main job: materialise every partition of the preset's graph on the local instance.

Dagster runs one partition per run; this walks the partitions in order, in process (a
subprocess per step costs seconds each on two cores), recording every run in the instance under
``DAGSTER_HOME`` so the UI shows them afterwards.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

import dagster as dg
from tqdm import tqdm

from lem_pipeline.run_health import host_tags


@dataclass
class RunSummary:
    job: str
    succeeded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def run_partitions(defs: dg.Definitions, job_name: str, instance: dg.DagsterInstance,
                   partition_keys: Iterable[str] | None = None, progress: bool = True,
                   log_level: str = "WARNING", run_config: dict | None = None) -> RunSummary:
    job = defs.resolve_job_def(job_name)
    if job.partitions_def is None:
        keys: list[str | None] = [None]
    else:
        keys = list(partition_keys) if partition_keys is not None else job.partitions_def.get_partition_keys(
            dynamic_partitions_store=instance)
    summary = RunSummary(job_name)
    bar = tqdm(keys, desc=job_name, unit="partition", disable=not progress, file=sys.stderr)
    for key in bar:
        bar.set_postfix_str(key or "")
        result = job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False,
                                        tags=host_tags(),  # with Dagster's pid event: lets the next `lem run` see if this one died
                                        run_config={**(run_config or {}),
                                                    "loggers": {"console": {"config": {"log_level": log_level}}}})
        if result.success:
            summary.succeeded.append(key or job_name)
        else:
            summary.failed[key or job_name] = _first_error(result)
    return summary


def _first_error(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_failure and event.event_specific_data is not None:
            err = getattr(event.event_specific_data, "error", None)
            if err is not None:
                # Dagster wraps user errors; the first cause that is not Dagster's carries our
                # message (the URL, the file, the row).
                while err.cause is not None and (err.cls_name or "").startswith("Dagster"):
                    err = err.cause
                return err.message.strip()
    return "failed (see the run in the Dagster UI)"
