"""The monthly data refresh, and the retrain that follows it.

Binance publishes a month's archive in the first days of the next month, so on the 2nd the
refresh asks for the month just closed, for every configured symbol, skipping partitions that
are already materialised. It also asks again for every partition still missing after a failed
run (a failed partition is not materialised: ingest records only valid data written), and for
any partition whose latest materialisation names a file that is not on disk (an instance from
before failed partitions stopped being recorded as materialised, or a file deleted since). Run
keys carry the tick's time: a repeated evaluation of one tick is harmless, and a later tick
can retry what failed. The Yahoo bars of every ticker are reloaded in the same refresh. When
the latest run of every partition of a refresh has succeeded, the sensor launches one
retrain-and-evaluate run for it.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path

import dagster as dg

from lem_pipeline.partitions import klines_partitions, utc_midnight
from lem_pipeline.presets import Preset

REFRESH_TAG = "lem/refresh"
REFRESH_CRON = "0 6 2 * *"  # 06:00 UTC on the 2nd of each month
KLINES_JOB = "crypto_ingest_job"
KLINES = dg.AssetKey("binance_klines")
PATH_METADATA = "path"  # the metadata entry of an ingest materialisation that names its Parquet
LISTED_METADATA = "listed"  # binance_klines: whether the source had the month at all
PARTITION_TAG = "dagster/partition"  # the partition key a run of a partitioned job carries


def run_key(kind: str, partition: str, at: datetime) -> str:
    """One run key per (partition, tick): the same tick evaluated twice launches once, a later
    tick may launch again (Dagster never launches a run key it has seen)."""
    return f"{kind}-{partition}-{at:%Y-%m-%dT%H:%M}"


def closed_month(at: datetime) -> date:
    """The calendar month before ``at``: the newest one Binance publishes as one file."""
    first = at.date().replace(day=1)
    return date(first.year - (first.month == 1), (first.month - 2) % 12 + 1, 1)


def partitions_to_ask_again(instance: dg.DagsterInstance, asset_key: dg.AssetKey, recent: set[str]) -> set[str]:
    """Partitions that count as materialised for Dagster but hold nothing: the latest
    materialisation names a file (``path`` metadata) that is not on disk, or, for the ``recent``
    months only, the source did not list the month yet (Binance publishes a month's archive some
    days into the next; an older unlisted month is one the symbol did not trade)."""
    latest = instance.get_latest_storage_id_by_partition(asset_key, dg.DagsterEventType.ASSET_MATERIALIZATION)
    if not latest:
        return set()
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=list(latest.values())), limit=len(latest)).records
    again = set()
    for record in records:
        meta = record.asset_materialization.metadata
        path, listed = meta.get(PATH_METADATA), meta.get(LISTED_METADATA)
        if path is not None and not Path(str(path.value)).exists():
            again.add(record.partition_key)
        elif listed is not None and listed.value is False and record.partition_key.split("|")[0] in recent:
            again.add(record.partition_key)
    return again


def failed_partitions(instance: dg.DagsterInstance, job: str) -> set[str]:
    """Partitions of ``job`` that a run failed or was canceled on: missing unless a later run
    materialised them."""
    runs = instance.get_runs(dg.RunsFilter(job_name=job, statuses=[dg.DagsterRunStatus.FAILURE,
                                                                    dg.DagsterRunStatus.CANCELED]))
    return {r.tags[PARTITION_TAG] for r in runs if PARTITION_TAG in r.tags}


def klines_requests(preset: Preset, instance: dg.DagsterInstance, at: datetime) -> list[dg.RunRequest]:
    """The closed month's partitions not materialised; then, of the preset's partitions, every
    one a run failed on that is still not materialised, and every one that holds nothing
    (:func:`partitions_to_ask_again`; the last two closed months count as recent)."""
    parts = klines_partitions(preset)
    valid = set(parts.get_partition_keys(current_time=at))
    month = closed_month(at)
    new = [str(dg.MultiPartitionKey({"symbol": s.symbol, "month": month.strftime("%Y-%m-%d")})) for s in preset.streams]
    done = instance.get_materialized_partitions(KLINES)
    wanted = [k for k in new if k in valid and k not in done]
    before = closed_month(utc_midnight(month))
    recent = {m.strftime("%Y-%m-%d") for m in (month, before)}
    again = (failed_partitions(instance, KLINES_JOB) - done) | partitions_to_ask_again(instance, KLINES, recent)
    wanted += sorted(k for k in again if k in valid and k not in wanted)
    return [dg.RunRequest(run_key=run_key("klines", k, at), partition_key=k, tags={REFRESH_TAG: month.strftime("%Y-%m")})
            for k in wanted]


def latest_run_per_partition(runs: list[dg.DagsterRun]) -> list[dg.DagsterRun]:
    """The newest run of each (job, partition): a failed run re-executed with success no longer
    holds its refresh back (``get_runs`` lists the newest first)."""
    latest: dict[tuple[str, str | None], dg.DagsterRun] = {}
    for run in runs:
        latest.setdefault((run.job_name, run.tags.get(PARTITION_TAG)), run)
    return list(latest.values())


def build_schedules(preset: Preset, crypto_ingest: dg.UnresolvedAssetJobDefinition,
                    equity_ingest: dg.UnresolvedAssetJobDefinition, retrain: dg.UnresolvedAssetJobDefinition
                    ) -> tuple[list, list]:
    @dg.schedule(name="monthly_klines_refresh", cron_schedule=REFRESH_CRON, execution_timezone="UTC",
                 job=crypto_ingest, description="Request the month just published for every configured symbol.")
    def monthly_klines_refresh(context: dg.ScheduleEvaluationContext):
        at = context.scheduled_execution_time or datetime.now(timezone.utc)
        requests = klines_requests(preset, context.instance, at)
        return requests or dg.SkipReason(f"nothing new for {closed_month(at):%Y-%m}: materialised (files on disk) "
                                         "or outside the preset")

    @dg.schedule(name="monthly_yahoo_refresh", cron_schedule=REFRESH_CRON, execution_timezone="UTC",
                 job=equity_ingest, description="Reload every ticker's Yahoo daily bars.")
    def monthly_yahoo_refresh(context: dg.ScheduleEvaluationContext):
        at = context.scheduled_execution_time or datetime.now(timezone.utc)
        month = closed_month(at).strftime("%Y-%m")
        return [dg.RunRequest(run_key=run_key("yahoo", t, at), partition_key=t, tags={REFRESH_TAG: month})
                for t in preset.tickers] or dg.SkipReason("no tickers in this preset")

    @dg.run_status_sensor(name="retrain_after_refresh", run_status=dg.DagsterRunStatus.SUCCESS,
                          monitored_jobs=[crypto_ingest, equity_ingest], request_job=retrain,
                          description="Once every run of a monthly refresh succeeded, retrain and re-evaluate.")
    def retrain_after_refresh(context: dg.RunStatusSensorContext):
        month = context.dagster_run.tags.get(REFRESH_TAG)
        if month is None:
            return dg.SkipReason("not a refresh run")
        runs = latest_run_per_partition(context.instance.get_runs(dg.RunsFilter(tags={REFRESH_TAG: month})))
        waiting = sum(r.status != dg.DagsterRunStatus.SUCCESS for r in runs)
        if waiting:
            return dg.SkipReason(f"refresh {month}: waiting for {waiting} runs (the latest of each partition)")
        return dg.RunRequest(run_key=f"retrain-{month}", tags={REFRESH_TAG: month})

    return [monthly_klines_refresh, monthly_yahoo_refresh], [retrain_after_refresh]
