"""The monthly data refresh, and the retrain that follows it.

Binance publishes a month's archive in the first days of the next month, so on the 2nd the
refresh asks for the month just closed, for every configured symbol, skipping partitions that
are already materialised (idempotent; run keys make a repeated tick harmless). The Yahoo bars
of every ticker are reloaded in the same refresh. When every run of a refresh has succeeded,
the sensor launches one retrain-and-evaluate run for it.
"""

from __future__ import annotations

from datetime import date, datetime, timezone

import dagster as dg

from lem_pipeline.partitions import klines_partitions
from lem_pipeline.presets import Preset

REFRESH_TAG = "lem/refresh"
REFRESH_CRON = "0 6 2 * *"  # 06:00 UTC on the 2nd of each month
INGEST_JOBS = ("crypto_ingest_job", "equity_ingest_job")


def closed_month(at: datetime) -> date:
    """The calendar month before ``at``: the newest one Binance publishes as one file."""
    first = at.date().replace(day=1)
    return date(first.year - (first.month == 1), (first.month - 2) % 12 + 1, 1)


def klines_requests(preset: Preset, instance: dg.DagsterInstance, at: datetime) -> list[dg.RunRequest]:
    month = closed_month(at)
    month_key = month.strftime("%Y-%m-%d")
    if month_key not in klines_partitions(preset).get_partitions_def_for_dimension("month").get_partition_keys(
            current_time=at):
        return []
    done = instance.get_materialized_partitions(dg.AssetKey("binance_klines"))
    requests = []
    for stream in preset.streams:
        key = dg.MultiPartitionKey({"symbol": stream.symbol, "month": month_key})
        if str(key) in done:
            continue
        requests.append(dg.RunRequest(run_key=f"klines-{key}", partition_key=key,
                                      tags={REFRESH_TAG: month.strftime("%Y-%m")}))
    return requests


def build_schedules(preset: Preset, crypto_ingest: dg.UnresolvedAssetJobDefinition,
                    equity_ingest: dg.UnresolvedAssetJobDefinition, retrain: dg.UnresolvedAssetJobDefinition
                    ) -> tuple[list, list]:
    @dg.schedule(name="monthly_klines_refresh", cron_schedule=REFRESH_CRON, execution_timezone="UTC",
                 job=crypto_ingest, description="Request the month just published for every configured symbol.")
    def monthly_klines_refresh(context: dg.ScheduleEvaluationContext):
        at = context.scheduled_execution_time or datetime.now(timezone.utc)
        requests = klines_requests(preset, context.instance, at)
        return requests or dg.SkipReason(f"nothing new for {closed_month(at):%Y-%m}: materialised or outside the preset")

    @dg.schedule(name="monthly_yahoo_refresh", cron_schedule=REFRESH_CRON, execution_timezone="UTC",
                 job=equity_ingest, description="Reload every ticker's Yahoo daily bars.")
    def monthly_yahoo_refresh(context: dg.ScheduleEvaluationContext):
        at = context.scheduled_execution_time or datetime.now(timezone.utc)
        month = closed_month(at).strftime("%Y-%m")
        return [dg.RunRequest(run_key=f"yahoo-{t}-{month}", partition_key=t, tags={REFRESH_TAG: month})
                for t in preset.tickers] or dg.SkipReason("no tickers in this preset")

    @dg.run_status_sensor(name="retrain_after_refresh", run_status=dg.DagsterRunStatus.SUCCESS,
                          monitored_jobs=[crypto_ingest, equity_ingest], request_job=retrain,
                          description="Once every run of a monthly refresh succeeded, retrain and re-evaluate.")
    def retrain_after_refresh(context: dg.RunStatusSensorContext):
        month = context.dagster_run.tags.get(REFRESH_TAG)
        if month is None:
            return dg.SkipReason("not a refresh run")
        runs = context.instance.get_runs(dg.RunsFilter(tags={REFRESH_TAG: month}))
        if any(r.status != dg.DagsterRunStatus.SUCCESS for r in runs):
            return dg.SkipReason(f"refresh {month}: waiting for {sum(r.status != dg.DagsterRunStatus.SUCCESS for r in runs)} runs")
        return dg.RunRequest(run_key=f"retrain-{month}", tags={REFRESH_TAG: month})

    return [monthly_klines_refresh, monthly_yahoo_refresh], [retrain_after_refresh]
