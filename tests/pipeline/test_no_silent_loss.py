"""Issue 14, finding 1: a source that answers nothing never wipes valid data, and a missing
mirror is an error, not a run of empty months that "succeeded"."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from datetime import date

import dagster as dg
import polars as pl
import pytest

from lem_pipeline.definitions import build_definitions
from lem_pipeline.lake import DataLake
from lem_pipeline.local_runs import run_partitions
from lem_pipeline.resources import BinanceSource, YahooSource
from lem_pipeline.sources.binance import BinanceDataVision, DataVisionError
from tests.conftest import YAHOO_DIR, serve
from tests.pipeline.test_ingest_assets import BTC, PRESET, key


def defs_for(tmp_path, binance_url: str, yahoo_dir) -> dg.Definitions:
    return build_definitions(PRESET, resources={"lake": DataLake(root=str(tmp_path / "lake")),
                                                "binance": BinanceSource(base_url=binance_url, backoff=0.01),
                                                "yahoo": YahooSource(csv_dir=str(yahoo_dir))})


def test_finding_01_a_missing_file_mirror_is_an_error(tmp_path, dagster_home):
    with pytest.raises(DataVisionError, match=r"file:///nonexistent/mirror: no such directory"):
        BinanceDataVision("file:///nonexistent/mirror", tmp_path / "cache")
    summary = run_partitions(defs_for(tmp_path, "file:///nonexistent/mirror", YAHOO_DIR), "crypto_ingest_job",
                             dg.DagsterInstance.get(), [key("BTCUSDT", "2020-01")], progress=False)
    assert "no such directory" in summary.failed[key("BTCUSDT", "2020-01")]
    assert not DataLake(root=str(tmp_path / "lake")).klines_file(BTC, date(2020, 1, 1)).exists()


def test_finding_01_a_month_that_answers_404_never_replaces_valid_klines(mirror, tmp_path, dagster_home):
    instance = dg.DagsterInstance.get()
    k = key("BTCUSDT", "2020-01")
    assert run_partitions(defs_for(tmp_path, mirror.url, YAHOO_DIR), "crypto_ingest_job", instance, [k],
                          progress=False).failed == {}
    path = DataLake(root=str(tmp_path / "lake")).klines_file(BTC, date(2020, 1, 1))
    before = path.read_bytes()
    assert pl.read_parquet(path).height == 744
    shutil.rmtree(DataLake(root=str(tmp_path / "lake")).archive_dir())  # no cached archive to fall back on
    empty = tmp_path / "empty_mirror"
    empty.mkdir()
    with contextmanager(serve)(empty) as server:  # every file answers 404 now
        summary = run_partitions(defs_for(tmp_path, server.url, YAHOO_DIR), "crypto_ingest_job", instance, [k],
                                 progress=False)
    assert "refusing to replace" in summary.failed[k] and str(path) in summary.failed[k]
    assert path.read_bytes() == before


def test_finding_01_a_header_only_yahoo_csv_never_replaces_valid_bars(tmp_path, dagster_home):
    instance = dg.DagsterInstance.get()
    assert run_partitions(defs_for(tmp_path, "http://127.0.0.1:9", YAHOO_DIR), "equity_ingest_job", instance, ["KO"],
                          progress=False).failed == {}
    path = DataLake(root=str(tmp_path / "lake")).daily_file("KO")
    rows = pl.read_parquet(path).height
    assert rows > 6000
    bad = tmp_path / "yahoo"
    bad.mkdir()
    (bad / "KO.csv").write_text((YAHOO_DIR / "KO.csv").read_text().splitlines()[0] + "\n")
    summary = run_partitions(defs_for(tmp_path, "http://127.0.0.1:9", bad), "equity_ingest_job", instance, ["KO"],
                             progress=False)
    assert "KO" in summary.failed["KO"] and str(bad / "KO.csv") in summary.failed["KO"]
    assert "no rows" in summary.failed["KO"]
    assert pl.read_parquet(path).height == rows
