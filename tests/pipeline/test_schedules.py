"""The monthly refresh asks for exactly the new month's missing partitions and the ones a run failed
on; the retrain follows once the latest run of each partition succeeded."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime, timezone

import dagster as dg

from lem_pipeline.definitions import build_definitions
from lem_pipeline.presets import PRESETS
from lem_pipeline.lake import DataLake
from lem_pipeline.resources import BinanceSource, YahooSource
from lem_pipeline.local_runs import run_partitions
from lem_pipeline.schedules import REFRESH_TAG, closed_month
from lem_pipeline.sources.binance import KlineStream
from tests.conftest import YAHOO_DIR

PRESET = dataclasses.replace(
    PRESETS["demo"], name="live", crypto_first_month=date(2023, 1, 1), crypto_last_month=None,  # open-ended
    streams=(KlineStream("ALGOUSDT", "um", "1m"), KlineStream("NEARUSDT", "um", "1m")), tickers=("AAPL", "KO"))
AT = datetime(2024, 3, 2, 6, 0, tzinfo=timezone.utc)


def defs_for(url: str, tmp_path) -> dg.Definitions:
    return build_definitions(PRESET, resources={"lake": DataLake(root=str(tmp_path / "lake")),
                                                "binance": BinanceSource(base_url=url, backoff=0.01),
                                                "yahoo": YahooSource(csv_dir=str(YAHOO_DIR))})


def test_closed_month():
    assert closed_month(datetime(2024, 3, 2)) == date(2024, 2, 1)
    assert closed_month(datetime(2025, 1, 2)) == date(2024, 12, 1)


def test_refresh_requests_exactly_the_new_months_missing_partitions(mirror, dagster_home, tmp_path):
    defs = defs_for(mirror.url, tmp_path)
    instance = dg.DagsterInstance.get()
    algo_feb = str(dg.MultiPartitionKey({"symbol": "ALGOUSDT", "month": "2024-02-01"}))
    near_feb = str(dg.MultiPartitionKey({"symbol": "NEARUSDT", "month": "2024-02-01"}))
    # ALGOUSDT's February is already there (and an older month too, which must not matter). The fixture
    # set ships no NEARUSDT: its months answer 404 and materialise as empty, not-listed partitions, which
    # is all the schedule looks at (is the partition materialised or not).
    older = str(dg.MultiPartitionKey({"symbol": "NEARUSDT", "month": "2023-02-01"}))
    assert run_partitions(defs, "crypto_ingest_job", instance, [algo_feb, older], progress=False).failed == {}

    schedule = defs.resolve_schedule_def("monthly_klines_refresh")
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=AT, repository_def=defs.get_repository_def()) as context:
        requests = schedule.evaluate_tick(context).run_requests
    assert [r.partition_key for r in requests] == [near_feb]
    assert requests[0].tags[REFRESH_TAG] == "2024-02"

    yahoo = defs.resolve_schedule_def("monthly_yahoo_refresh")
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=AT, repository_def=defs.get_repository_def()) as context:
        assert sorted(r.partition_key for r in yahoo.evaluate_tick(context).run_requests) == ["AAPL", "KO"]

    # Materialised, but not listed yet (Binance publishes a month some days into the next): the
    # just-closed month is asked for again by every tick until it is there; the older unlisted
    # NEARUSDT month (the symbol did not trade yet) is not.
    assert run_partitions(defs, "crypto_ingest_job", instance, [near_feb], progress=False).failed == {}
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=AT, repository_def=defs.get_repository_def()) as context:
        assert [r.partition_key for r in schedule.evaluate_tick(context).run_requests] == [near_feb]
    # Two months on, February is no longer recent: only the new closed month's unlisted
    # partitions are asked for again, not February's.
    a_month_later = datetime(2024, 5, 2, 6, 0, tzinfo=timezone.utc)
    april = [str(dg.MultiPartitionKey({"symbol": s, "month": "2024-04-01"})) for s in ("ALGOUSDT", "NEARUSDT")]
    assert run_partitions(defs, "crypto_ingest_job", instance, april, progress=False).failed == {}
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=a_month_later,
                                   repository_def=defs.get_repository_def()) as context:
        requests = schedule.evaluate_tick(context).run_requests
    assert sorted(r.partition_key for r in requests) == april  # April is recent and unlisted in the fixtures


def test_fixed_range_preset_requests_nothing_outside_its_months(dagster_home, tmp_path):
    defs = build_definitions(PRESETS["demo"], resources={"lake": DataLake(root=str(tmp_path / "lake")),
                                                         "binance": BinanceSource(), "yahoo": YahooSource()})
    with dg.build_schedule_context(instance=dg.DagsterInstance.get(), scheduled_execution_time=AT, repository_def=defs.get_repository_def()) as context:
        result = defs.resolve_schedule_def("monthly_klines_refresh").evaluate_tick(context)
    assert result.run_requests == []


def test_retrain_waits_for_the_whole_refresh(mirror, dagster_home, tmp_path):
    defs = defs_for(mirror.url, tmp_path)
    instance = dg.DagsterInstance.get()
    job = defs.resolve_job_def("equity_ingest_job")
    first = job.execute_in_process(partition_key="AAPL", instance=instance, tags={REFRESH_TAG: "2024-02"})
    pending = instance.create_run_for_job(job_def=job, tags={REFRESH_TAG: "2024-02"}, run_config={})  # not yet run
    sensor = defs.resolve_sensor_def("retrain_after_refresh")
    ctx = dg.build_run_status_sensor_context(sensor_name=sensor.name, dagster_instance=instance,
                                             dagster_event=first.get_run_success_event(), dagster_run=first.dagster_run)
    assert "waiting for 1 runs" in sensor(ctx).skip_message
    instance.delete_run(pending.run_id)
    ctx = dg.build_run_status_sensor_context(sensor_name=sensor.name, dagster_instance=instance,
                                             dagster_event=first.get_run_success_event(), dagster_run=first.dagster_run)
    request = sensor(ctx)
    assert isinstance(request, dg.RunRequest) and request.run_key == "retrain-2024-02"


def test_a_failed_partition_is_asked_for_again_until_it_is_there(mirror, dagster_home, tmp_path):
    """A partition a run failed on is not materialised, and is not the new closed month either:
    the next tick asks for it again, and stops once a run has materialised it."""
    defs = defs_for(mirror.url, tmp_path)
    instance = dg.DagsterInstance.get()
    algo_feb = str(dg.MultiPartitionKey({"symbol": "ALGOUSDT", "month": "2024-02-01"}))
    mirror.faults["/" + KlineStream("ALGOUSDT", "um", "1m").monthly_path(date(2024, 2, 1))] = [500] * 50
    assert list(run_partitions(defs, "crypto_ingest_job", instance, [algo_feb], progress=False).failed) == [algo_feb]
    mirror.faults.clear()

    schedule = defs.resolve_schedule_def("monthly_klines_refresh")
    april = datetime(2024, 4, 2, 6, 0, tzinfo=timezone.utc)
    march = [str(dg.MultiPartitionKey({"symbol": s, "month": "2024-03-01"})) for s in ("ALGOUSDT", "NEARUSDT")]

    def requested() -> list[str]:
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=april,
                                       repository_def=defs.get_repository_def()) as context:
            return [r.partition_key for r in schedule.evaluate_tick(context).run_requests]

    assert requested() == march + [algo_feb]
    assert run_partitions(defs, "crypto_ingest_job", instance, [algo_feb], progress=False).failed == {}
    assert requested() == march


def test_a_partition_run_again_with_success_releases_its_refresh(mirror, dagster_home, tmp_path):
    """The retrain waits on the latest run of each partition: a failed run stays failed, but
    once its partition has succeeded since, it no longer holds the month back."""
    defs = defs_for(mirror.url, tmp_path)
    instance = dg.DagsterInstance.get()
    job = defs.resolve_job_def("equity_ingest_job")
    tags = {REFRESH_TAG: "2024-02"}
    failed = instance.create_run_for_job(job_def=job, tags=tags | {"dagster/partition": "AAPL"}, run_config={})
    instance.report_run_failed(failed)
    ko = job.execute_in_process(partition_key="KO", instance=instance, tags=tags)
    sensor = defs.resolve_sensor_def("retrain_after_refresh")

    def evaluate(result: dg.ExecuteInProcessResult):
        return sensor(dg.build_run_status_sensor_context(sensor_name=sensor.name, dagster_instance=instance,
                                                         dagster_event=result.get_run_success_event(),
                                                         dagster_run=result.dagster_run))

    assert "waiting for 1 runs" in evaluate(ko).skip_message
    aapl = job.execute_in_process(partition_key="AAPL", instance=instance, tags=tags)
    request = evaluate(aapl)
    assert isinstance(request, dg.RunRequest) and request.run_key == "retrain-2024-02"
