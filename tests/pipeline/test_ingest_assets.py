"""binance_klines and yahoo_daily_bars materialised through a real Dagster instance."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import zipfile
from contextlib import contextmanager
from datetime import date, datetime, timezone
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from lem_pipeline.assets.features import build_feature_assets
from lem_pipeline.definitions import build_definitions
from lem_pipeline.presets import Preset
from lem_pipeline.lake import DataLake
from lem_pipeline.resources import BinanceSource, YahooSource
from lem_pipeline.local_runs import run_partitions
from lem_pipeline.sources.binance import KlineStream
from tests.conftest import BINANCE_MIRROR, YAHOO_DIR, serve

BTC = KlineStream("BTCUSDT", "spot", "1h")
ALGO = KlineStream("ALGOUSDT", "um", "1m")
ADA = KlineStream("ADAUSDT", "spot", "1h")
PRESET = Preset(name="test", description="test universe", streams=(BTC, ALGO, ADA),
                crypto_first_month=date(2019, 1, 1), crypto_last_month=date(2024, 2, 1),
                tickers=("AAPL", "KO"), equity_start=date(2000, 1, 3), equity_end=date(2024, 12, 31))


def key(symbol: str, month: str) -> str:
    return str(dg.MultiPartitionKey({"symbol": symbol, "month": f"{month}-01"}))


def make_defs(url: str, tmp_path: Path) -> dg.Definitions:
    return build_definitions(PRESET, resources={
        "lake": DataLake(root=str(tmp_path / "lake")),
        "binance": BinanceSource(base_url=url, backoff=0.01),
        "yahoo": YahooSource(csv_dir=str(YAHOO_DIR)),
    })


def source_lines(stream: KlineStream, month: str) -> list[str]:
    path = BINANCE_MIRROR / stream.monthly_path(datetime.strptime(month, "%Y-%m").date())
    with zipfile.ZipFile(path) as zf:
        lines = zf.read(zf.namelist()[0]).decode().splitlines()
    return [ln for ln in lines if ln[:1].isdigit()]


def ms(line: str) -> datetime:
    return datetime.fromtimestamp(int(line.split(",")[0]) / 1000, tz=timezone.utc)


def write_checksum(zip_path: Path) -> None:
    """The .CHECKSUM Data Vision publishes beside every archive (a listed archive without one is refused)."""
    zip_path.with_name(zip_path.name + ".CHECKSUM").write_text(
        f"{hashlib.sha256(zip_path.read_bytes()).hexdigest()}  {zip_path.name}\n")


def materialization(instance: dg.DagsterInstance, asset: str, partition: str) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1).records
    return records[0].asset_materialization.metadata


def test_real_months_through_dagster(mirror, dagster_home, tmp_path):
    defs = make_defs(mirror.url, tmp_path)
    instance = dg.DagsterInstance.get()
    assert str(dagster_home) in instance.root_directory
    wanted = [(BTC, "2020-01"), (BTC, "2020-02"), (BTC, "2020-03"), (ALGO, "2024-02")]
    summary = run_partitions(defs, "crypto_ingest_job", instance, [key(s.symbol, m) for s, m in wanted], progress=False)
    assert summary.failed == {} and len(summary.succeeded) == 4
    lake = DataLake(root=str(tmp_path / "lake"))
    for stream, month in wanted:
        lines = source_lines(stream, month)
        df = pl.read_parquet(lake.klines_file(stream, datetime.strptime(month, "%Y-%m").date()))
        assert len(df) == len(lines)
        assert df["open_time"][0] == ms(lines[0]) and df["open_time"][-1] == ms(lines[-1])
        assert df["symbol"].unique().to_list() == [stream.symbol]
        meta = materialization(instance, "binance_klines", key(stream.symbol, month))
        assert meta["rows"].value == len(lines)
        assert meta["first_open_time"].value == str(ms(lines[0]))
        archive = BINANCE_MIRROR / stream.monthly_path(datetime.strptime(month, "%Y-%m").date())
        published = archive.with_name(archive.name + ".CHECKSUM").read_text().split()[0]
        assert published == hashlib.sha256(archive.read_bytes()).hexdigest()
        assert meta["sha256"].value == {f"{mirror.url}/{archive.relative_to(BINANCE_MIRROR).as_posix()}": published}
        assert "dagster/column_schema" in meta
    # February 2020 has 29 days of 24 hours; the ALGO futures month 29 days of 1440 minutes.
    assert len(source_lines(BTC, "2020-02")) == 696 and len(source_lines(ALGO, "2024-02")) == 41760


def test_crypto_bars_read_only_the_presets_months(mirror, dagster_home, tmp_path):
    """A data directory another preset filled (BTCUSDT from January to March 2020): a preset of
    February alone builds its bars from February's klines only."""
    instance = dg.DagsterInstance.get()
    months = [key("BTCUSDT", m) for m in ("2020-01", "2020-02", "2020-03")]
    assert run_partitions(make_defs(mirror.url, tmp_path), "crypto_ingest_job", instance, months,
                          progress=False).failed == {}
    february = dataclasses.replace(PRESET, streams=(BTC,), crypto_first_month=date(2020, 2, 1),
                                   crypto_last_month=date(2020, 2, 1), crypto_frequencies=(60,))
    [bars_asset] = [a for a in build_feature_assets(february) if a.key.to_user_string() == "crypto_bars"]
    lake = DataLake(root=str(tmp_path / "lake"))
    assert dg.materialize([bars_asset], instance=instance, resources={"lake": lake}).success
    times = pl.read_parquet(lake.bars_file("crypto", "BTCUSDT", 60))["open_time"]
    assert times.min() == ms(source_lines(BTC, "2020-02")[0]) and times.max() == ms(source_lines(BTC, "2020-02")[-1])


def test_not_listed_month_succeeds_and_is_recorded(mirror, dagster_home, tmp_path):
    defs = make_defs(mirror.url, tmp_path)
    instance = dg.DagsterInstance.get()
    summary = run_partitions(defs, "crypto_ingest_job", instance, [key("ADAUSDT", "2019-01")], progress=False)
    assert summary.failed == {}
    meta = materialization(instance, "binance_klines", key("ADAUSDT", "2019-01"))
    assert meta["rows"].value == 0 and meta["listed"].value is False
    assert meta["not_listed"].value == [f"{mirror.url}/{ADA.monthly_path(date(2019, 1, 1))}"]


def test_second_materialisation_downloads_nothing(mirror, dagster_home, tmp_path):
    defs = make_defs(mirror.url, tmp_path)
    instance = dg.DagsterInstance.get()
    keys = [key("BTCUSDT", "2020-01"), key("BTCUSDT", "2020-02")]
    assert run_partitions(defs, "crypto_ingest_job", instance, keys, progress=False).failed == {}
    first_zips = mirror.count(".zip")
    assert first_zips == 2
    requests_before = len(mirror.requests)
    assert run_partitions(defs, "crypto_ingest_job", instance, keys, progress=False).failed == {}
    assert len(mirror.requests) == requests_before


@pytest.fixture
def bad_month(tmp_path):
    """A real BTCUSDT month with a negative volume in row 5 and row 11 repeating row 10's time."""
    rel = BTC.monthly_path(date(2020, 1, 1))
    lines = source_lines(BTC, "2020-01")
    f = lines[5].split(",")
    f[5] = "-3.5"
    lines[5] = ",".join(f)
    g = lines[11].split(",")
    g[0] = lines[10].split(",")[0]
    lines[11] = ",".join(g)
    root = tmp_path / "bad"
    (root / rel).parent.mkdir(parents=True)
    with zipfile.ZipFile(root / rel, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("BTCUSDT-1h-2020-01.csv", "\n".join(lines) + "\n")
    write_checksum(root / rel)
    yield from serve(root)


def test_bad_rows_fail_the_blocking_check_and_name_the_rows(bad_month, dagster_home, tmp_path):
    defs = make_defs(bad_month.url, tmp_path)
    instance = dg.DagsterInstance.get()
    k = key("BTCUSDT", "2020-01")
    summary = run_partitions(defs, "crypto_ingest_job", instance, [k], progress=False)
    # the asset fails (it does not materialise with a failed check), naming the month, the URL and the rows
    message = summary.failed[k]
    assert f"BTCUSDT 2020-01 ({bad_month.url}/{BTC.monthly_path(date(2020, 1, 1))}): " in message
    assert "row 5 (symbol=BTCUSDT, open_time=2020-01-01 05:00:00+00:00)" in message
    assert not instance.get_materialized_partitions(dg.AssetKey("binance_klines"))
    assert instance.fetch_materializations(dg.AssetKey("binance_klines"), limit=1).records == []
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("binance_klines"), "valid_bars")])[
        dg.AssetCheckKey(dg.AssetKey("binance_klines"), "valid_bars")]
    evaluation = check.event.dagster_event.event_specific_data
    assert evaluation.passed is False and evaluation.severity == dg.AssetCheckSeverity.ERROR
    table = evaluation.metadata["failing_rows"].value
    assert "volume" in table and "-3.5" in table
    assert "2020-01-01 10:00:00" in table  # the duplicated time, named by its row's key
    assert evaluation.metadata["first_failing_row"].value == 5
    assert "row 5 (symbol=BTCUSDT, open_time=2020-01-01 05:00:00+00:00)" in evaluation.description
    assert not DataLake(root=str(tmp_path / "lake")).klines_file(BTC, date(2020, 1, 1)).exists()


def test_truncated_zip_fails_the_run_with_the_url_and_writes_no_parquet(tmp_path, dagster_home):
    rel = BTC.monthly_path(date(2020, 1, 1))
    root = tmp_path / "trunc"
    (root / rel).parent.mkdir(parents=True)
    shutil.copyfile(BINANCE_MIRROR / rel, root / rel)
    (root / rel).write_bytes((root / rel).read_bytes()[:5000])
    write_checksum(root / rel)  # published truncated: the checksum matches, the zip check refuses it
    for server in serve(root):
        defs = make_defs(server.url, tmp_path)
        summary = run_partitions(defs, "crypto_ingest_job", dg.DagsterInstance.get(), [key("BTCUSDT", "2020-01")],
                                 progress=False)
        (message,) = summary.failed.values()
        assert message == (f"lem_pipeline.sources.binance.DataVisionError: {server.url}/{rel}: not a valid zip archive "
                           "(File is not a zip file); the download is truncated or corrupt, refused")
    assert not DataLake(root=str(tmp_path / "lake")).klines_file(BTC, date(2020, 1, 1)).exists()


def test_yahoo_partitions_through_dagster(dagster_home, tmp_path):
    defs = make_defs("http://127.0.0.1:9", tmp_path)
    instance = dg.DagsterInstance.get()
    assert run_partitions(defs, "equity_ingest_job", instance, ["AAPL", "KO"], progress=False).failed == {}
    aapl = pl.read_parquet(DataLake(root=str(tmp_path / "lake")).daily_file("AAPL"))
    raw = pl.read_csv(YAHOO_DIR / "AAPL.csv")
    assert len(aapl) == len(raw)
    assert str(aapl["date"][0]) == raw["Date"][0] and str(aapl["date"][-1]) == raw["Date"][-1] == "2024-03-08"
    meta = materialization(instance, "yahoo_daily_bars", "KO")
    assert meta["rows"].value == len(pl.read_csv(YAHOO_DIR / "KO.csv"))


def test_gap_check_reports_every_missing_candle_of_a_bridged_month(mirror, dagster_home, tmp_path):
    """Bridging outages downstream hides nothing upstream: the ingest warning check still counts
    every missing candle of April 2021 (the outages of the 20th and 25th among them)."""
    defs = make_defs(mirror.url, tmp_path)
    instance = dg.DagsterInstance.get()
    k = key("BTCUSDT", "2021-04")
    assert run_partitions(defs, "crypto_ingest_job", instance, [k], progress=False).failed == {}
    times = [ms(line) for line in source_lines(BTC, "2021-04")]
    missing = sum(int((b - a).total_seconds() // 3600) - 1 for a, b in zip(times, times[1:]))
    assert missing >= 5  # 2 + 3 hours of outage, and single missing hours
    check_key = dg.AssetCheckKey(dg.AssetKey("binance_klines"), "no_gaps")
    evaluation = instance.event_log_storage.get_latest_asset_check_execution_by_key([check_key])[
        check_key].event.dagster_event.event_specific_data
    assert evaluation.passed is False and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["missing_bars"].value == missing
    assert materialization(instance, "binance_klines", k)["missing_bars"].value == missing


def test_gap_check_counts_a_month_truncated_at_its_end(dagster_home, tmp_path):
    """A truncated archive can carry a valid checksum (Data Vision has published some): the
    warning check counts the candles missing after the last row, not only those between rows."""
    lines = source_lines(BTC, "2020-01")[:-400]  # ends 2020-01-15 07:00
    zip_path = tmp_path / "mirror" / BTC.monthly_path(date(2020, 1, 1))
    zip_path.parent.mkdir(parents=True)
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr(zip_path.name.replace(".zip", ".csv"), "\n".join(lines) + "\n")
    write_checksum(zip_path)
    instance = dg.DagsterInstance.get()
    k = key("BTCUSDT", "2020-01")
    with contextmanager(serve)(tmp_path / "mirror") as server:
        assert run_partitions(make_defs(server.url, tmp_path), "crypto_ingest_job", instance, [k],
                              progress=False).failed == {}
    check_key = dg.AssetCheckKey(dg.AssetKey("binance_klines"), "no_gaps")
    evaluation = instance.event_log_storage.get_latest_asset_check_execution_by_key([check_key])[
        check_key].event.dagster_event.event_specific_data
    assert evaluation.passed is False
    assert evaluation.metadata["missing_bars"].value == 400 and evaluation.metadata["gaps"].value == 1
    assert "| 2020-01-15 07:00 | 400 |" in evaluation.metadata["largest_gaps"].value
    meta = materialization(instance, "binance_klines", k)
    assert meta["rows"].value == 344 and meta["missing_bars"].value == 400
