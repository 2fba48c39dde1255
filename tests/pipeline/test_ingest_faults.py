"""The reliability findings of the adversarial ingest test, one reproduction each (named by the
finding's number). Real files, the real loopback server (tests.conftest.serve) and a real Dagster
instance; each failed on the code before its fix."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from lem_pipeline.definitions import build_definitions
from lem_pipeline.lake import DataLake
from lem_pipeline.local_runs import run_partitions
from lem_pipeline.presets import PRESETS
from lem_pipeline.resources import BinanceSource, YahooSource
from lem_pipeline.sources.binance import (
    MAX_ROW_BYTES,
    BinanceDataVision,
    DataVisionError,
    KlineStream,
    read_klines,
    reset_host_health,
    size_bound,
)
from tests.conftest import BINANCE_MIRROR, REPO, YAHOO_DIR, serve

BTC = KlineStream("BTCUSDT", "spot", "1h")
ALGO = KlineStream("ALGOUSDT", "um", "1m")
NEAR = KlineStream("NEARUSDT", "um", "1m")
JAN_2020 = date(2020, 1, 1)
FEB_2024 = date(2024, 2, 1)
# An open-ended preset whose closed month at AT (2024-02) is in the fixture set for ALGOUSDT.
LIVE = dataclasses.replace(PRESETS["demo"], name="live", crypto_first_month=date(2023, 1, 1), crypto_last_month=None,
                           streams=(ALGO, NEAR), tickers=("AAPL", "KO"))
AT = datetime(2024, 3, 2, 6, 0, tzinfo=timezone.utc)
KLINES = dg.AssetKey("binance_klines")


@pytest.fixture(autouse=True)
def _fresh_host_health():
    """Host give-ups are process-wide by design; a test's closed port must not leak into the next."""
    reset_host_health()
    yield
    reset_host_health()


def key(stream: KlineStream, month: date) -> str:
    return str(dg.MultiPartitionKey({"symbol": stream.symbol, "month": month.strftime("%Y-%m-%d")}))


def defs_for(url: str, tmp_path: Path, preset=LIVE, yahoo_dir: Path = YAHOO_DIR, **binance) -> dg.Definitions:
    return build_definitions(preset, resources={"lake": DataLake(root=str(tmp_path / "lake")),
                                                "binance": BinanceSource(base_url=url, backoff=0.01, **binance),
                                                "yahoo": YahooSource(csv_dir=str(yahoo_dir))})


def seal(zip_path: Path) -> None:
    """A matching .CHECKSUM, as Data Vision publishes beside every archive."""
    zip_path.with_name(zip_path.name + ".CHECKSUM").write_text(
        f"{hashlib.sha256(zip_path.read_bytes()).hexdigest()}  {zip_path.name}\n")


def data_lines(stream: KlineStream, month: date) -> list[str]:
    with zipfile.ZipFile(BINANCE_MIRROR / stream.monthly_path(month)) as zf:
        return [ln for ln in zf.read(zf.namelist()[0]).decode().splitlines() if ln[:1].isdigit()]


def publish(root: Path, stream: KlineStream, month: date, lines: list[str]) -> Path:
    """A CHECKSUM-valid monthly archive of ``lines`` under ``root``."""
    rel = stream.monthly_path(month)
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(Path(rel).with_suffix(".csv").name, "\n".join(lines) + "\n")
    seal(path)
    return path


def negative_volume(lines: list[str], row: int = 5) -> list[str]:
    out = list(lines)
    f = out[row].split(",")
    f[5] = "-3.5"
    out[row] = ",".join(f)
    return out


def materialisations(instance: dg.DagsterInstance, asset: dg.AssetKey) -> list:
    return instance.fetch_materializations(asset, limit=100).records


def refresh(defs: dg.Definitions, instance: dg.DagsterInstance, at: datetime) -> list[dg.RunRequest]:
    schedule = defs.resolve_schedule_def("monthly_klines_refresh")
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=at,
                                   repository_def=defs.get_repository_def()) as context:
        return schedule.evaluate_tick(context).run_requests or []


# -- finding 2: a partition that fails validation is not materialised, and the refresh asks again -----

def test_finding_02_failed_klines_validation_raises_records_no_materialisation_and_is_asked_again(
        tmp_path, dagster_home):
    root = tmp_path / "mirror"
    publish(root, ALGO, FEB_2024, negative_volume(data_lines(ALGO, FEB_2024)))
    instance = dg.DagsterInstance.get()
    with contextmanager(serve)(root) as server:
        defs = defs_for(server.url, tmp_path)
        k = key(ALGO, FEB_2024)
        summary = run_partitions(defs, "crypto_ingest_job", instance, [k], progress=False)
        url = f"{server.url}/{ALGO.monthly_path(FEB_2024)}"
    message = summary.failed[k]
    assert "Failure" in message and f"ALGOUSDT 2024-02 ({url}): 1 failing (check, row) pairs; nothing written" in message
    assert "row 5 (symbol=ALGOUSDT, open_time=2024-02-01 00:05:00+00:00)" in message and "-3.5" in message
    assert materialisations(instance, KLINES) == []
    assert k not in instance.get_materialized_partitions(KLINES)
    assert not DataLake(root=str(tmp_path / "lake")).klines_file(ALGO, FEB_2024).exists()
    check = dg.AssetCheckKey(KLINES, "valid_bars")
    evaluation = instance.event_log_storage.get_latest_asset_check_execution_by_key([check])[
        check].event.dagster_event.event_specific_data
    assert evaluation.passed is False and evaluation.metadata["first_failing_row"].value == 5
    # the refresh of the closed month asks for it (and for NEARUSDT, never run)
    assert sorted(r.partition_key for r in refresh(defs, instance, AT)) == sorted([k, key(NEAR, FEB_2024)])


def test_finding_02_failed_yahoo_validation_raises_and_records_no_materialisation(tmp_path, dagster_home):
    bad = tmp_path / "yahoo"
    bad.mkdir()
    lines = (YAHOO_DIR / "KO.csv").read_text().splitlines()
    f = lines[3].split(",")
    f[6] = "-100"  # a negative volume on 2000-01-05
    lines[3] = ",".join(f)
    (bad / "KO.csv").write_text("\n".join(lines) + "\n")
    instance = dg.DagsterInstance.get()
    summary = run_partitions(defs_for("http://127.0.0.1:9", tmp_path, yahoo_dir=bad), "equity_ingest_job", instance,
                             ["KO"], progress=False)
    assert f"KO ({bad / 'KO.csv'}): " in summary.failed["KO"] and "date=2000-01-05" in summary.failed["KO"]
    assert materialisations(instance, dg.AssetKey("yahoo_daily_bars")) == []
    assert not DataLake(root=str(tmp_path / "lake")).daily_file("KO").exists()


def test_finding_02_refresh_asks_again_for_materialisations_whose_file_is_missing(mirror, tmp_path, dagster_home):
    defs = defs_for(mirror.url, tmp_path)
    instance = dg.DagsterInstance.get()
    lake = DataLake(root=str(tmp_path / "lake"))
    may, june = date(2023, 5, 1), date(2023, 6, 1)
    # A legacy instance: partitions recorded as materialised by the old code, one whose file was never
    # written (failed check) and one whose file is there.
    lake.klines_file(ALGO, june).parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"x": [1]}).write_parquet(lake.klines_file(ALGO, june))
    for month in (may, june):
        instance.report_runless_asset_event(dg.AssetMaterialization(
            KLINES, partition=key(ALGO, month), metadata={"path": dg.MetadataValue.path(str(lake.klines_file(ALGO, month)))}))
    # the closed month is done for ALGOUSDT (file on disk)
    assert run_partitions(defs, "crypto_ingest_job", instance, [key(ALGO, FEB_2024)], progress=False).failed == {}

    first = refresh(defs, instance, AT)
    assert [r.partition_key for r in first] == [key(NEAR, FEB_2024), key(ALGO, may)]
    assert all(r.tags["lem/refresh"] == "2024-02" for r in first)
    # the same tick evaluated again is idempotent; a later tick gets new run keys, so a retry launches
    assert [r.run_key for r in refresh(defs, instance, AT)] == [r.run_key for r in first]
    later = refresh(defs, instance, AT + timedelta(hours=1))
    assert [r.partition_key for r in later] == [r.partition_key for r in first]
    assert not {r.run_key for r in later} & {r.run_key for r in first}
    assert first[1].run_key == f"klines-{key(ALGO, may)}-2024-03-02T06:00"


# -- finding 4: a decompression bomb is refused before it is inflated ------------------------------

BOMB_BYTES = 480 << 20  # 480 MiB of CSV, as in the finding
_BOMB_SCRIPT = """
import resource, sys
from pathlib import Path
from lem_pipeline.sources.binance import BinanceDataVision, DataVisionError, KlineStream, read_klines
url, cache, mirror = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
stream = KlineStream("BTCUSDT", "spot", "1h")
from datetime import date
for what, attempt in [("fetch", lambda: BinanceDataVision(url, cache, backoff=0.01).fetch_month(stream, date(2020, 1, 1))),
                      ("read", lambda: read_klines(mirror / stream.monthly_path(date(2020, 1, 1))))]:
    try:
        attempt()
        print(f"{what}: ACCEPTED")
    except DataVisionError as e:
        print(f"{what}: refused: {e}")
hwm = [ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM")][0]
print(f"peak_kib {hwm.split()[1]}")
"""


@pytest.fixture(scope="module")
def bomb_mirror(tmp_path_factory) -> Path:
    """A CHECKSUM-valid BTCUSDT 1h January 2020 that inflates to 480 MiB of one real row, repeated."""
    root = tmp_path_factory.mktemp("bomb")
    rel = BTC.monthly_path(JAN_2020)
    path = root / rel
    path.parent.mkdir(parents=True)
    row = (data_lines(BTC, JAN_2020)[0] + "\n").encode()
    block = row * ((8 << 20) // len(row))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, \
            zf.open(Path(rel).with_suffix(".csv").name, "w", force_zip64=True) as f:
        for _ in range(BOMB_BYTES // len(block) + 1):
            f.write(block)
    seal(path)
    return root


def test_finding_04_decompression_bomb_is_refused_with_bounded_memory(bomb_mirror, tmp_path):
    rel = BTC.monthly_path(JAN_2020)
    with zipfile.ZipFile(bomb_mirror / rel) as zf:
        inflated = zf.infolist()[0].file_size
    compressed = (bomb_mirror / rel).stat().st_size
    assert inflated >= BOMB_BYTES and compressed < 4 << 20
    bound = size_bound(Path(rel).name)
    assert bound.rows == 744 and bound.bytes == 745 * MAX_ROW_BYTES
    with contextmanager(serve)(bomb_mirror) as server:
        proc = subprocess.run([sys.executable, "-c", _BOMB_SCRIPT, server.url, str(tmp_path / "cache"), str(bomb_mirror)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        zips = server.count(".zip")
    assert proc.returncode == 0, proc.stderr
    out = dict(line.split(": ", 1) if ": " in line else line.split(" ", 1) for line in proc.stdout.splitlines())
    peak_mib = int(out["peak_kib"]) / 1024
    print(f"\nfinding 4: bomb {compressed / 2**20:.2f} MiB zip -> {inflated / 2**20:.0f} MiB CSV; "
          f"subprocess peak RSS (VmHWM) {peak_mib:.0f} MiB")
    assert out["fetch"] == (f"refused: {server.url}/{rel}: zip member 'BTCUSDT-1h-2020-01.csv': declares {inflated} "
                            f"bytes, more than the {bound.bytes} a 1h monthly file can hold (744 rows x 512 bytes); "
                            "refused (a decompression bomb or not a kline file)")
    assert out["read"].startswith(f"refused: {bomb_mirror / rel} (member 'BTCUSDT-1h-2020-01.csv'): declares {inflated}")
    assert zips == 1
    assert not (tmp_path / "cache" / rel).exists()  # never cached under its final name
    assert peak_mib < 1024


def test_finding_04_more_rows_than_the_period_holds_are_refused(tmp_path):
    lines = data_lines(BTC, JAN_2020)
    assert len(lines) == 744
    padded = publish(tmp_path / "m", BTC, JAN_2020, lines + lines[:56])  # 800 rows: small, but not one month of 1h
    assert padded.stat().st_size < size_bound(padded.name).bytes
    with pytest.raises(DataVisionError, match=rf"{padded}: 800 rows, more than the 744 a 1h monthly file can hold"):
        read_klines(padded)
    day = KlineStream("BTCUSDT", "spot", "1m").daily_path(date(2020, 1, 1))
    src = BINANCE_MIRROR / day
    assert read_klines(src).height == 1440 == size_bound(src.name).rows
    with zipfile.ZipFile(src) as zf:
        day_lines = zf.read(zf.namelist()[0]).decode().splitlines()
    doubled = tmp_path / "d" / src.name
    doubled.parent.mkdir()
    with zipfile.ZipFile(doubled, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("BTCUSDT-1m-2020-01-01.csv", "\n".join(day_lines + day_lines[:1]) + "\n")
    with pytest.raises(DataVisionError, match=r"1441 rows, more than the 1440 a 1m daily file can hold"):
        read_klines(doubled)


# -- finding 8: a bad archive never stays in the cache; a missing or broken CHECKSUM is never a pass -----

@pytest.mark.parametrize("damage", ["validation", "parse"])
def test_finding_08a_a_rejected_archive_is_evicted_and_downloaded_again_once_the_source_is_fixed(
        tmp_path, dagster_home, damage):
    root = tmp_path / "mirror"
    good = data_lines(ALGO, FEB_2024)
    bad = negative_volume(good) if damage == "validation" else [*good[:10], "1706746200000,abc,x,y,z,1,2,3,4,5,6,0"]
    publish(root, ALGO, FEB_2024, bad)
    rel = ALGO.monthly_path(FEB_2024)
    lake = DataLake(root=str(tmp_path / "lake"))
    cached = lake.archive_dir() / rel
    instance = dg.DagsterInstance.get()
    k = key(ALGO, FEB_2024)
    with contextmanager(serve)(root) as server:
        defs = defs_for(server.url, tmp_path)
        failed = run_partitions(defs, "crypto_ingest_job", instance, [k], progress=False).failed
        assert k in failed and (("-3.5" in failed[k]) if damage == "validation" else "cannot parse" in failed[k])
        assert not cached.exists() and not cached.with_name(cached.name + ".CHECKSUM").exists()
        assert cached.with_name(cached.name + ".rejected").read_bytes() == (root / rel).read_bytes()
        # the publisher fixes the file
        for suffix in ("", ".CHECKSUM"):
            shutil.copyfile(BINANCE_MIRROR / (rel + suffix), root / (rel + suffix))
        zips = server.count(".zip")
        assert run_partitions(defs, "crypto_ingest_job", instance, [k], progress=False).failed == {}
        assert server.count(".zip") == zips + 1  # downloaded again, not reused from the cache
    assert pl.read_parquet(lake.klines_file(ALGO, FEB_2024)).height == len(good) == 41760
    assert cached.read_bytes() == (BINANCE_MIRROR / rel).read_bytes()


def test_finding_08b_a_checksum_that_answers_404_is_an_error_not_a_pass(tmp_path):
    root = tmp_path / "mirror"
    rel = BTC.monthly_path(JAN_2020)
    (root / rel).parent.mkdir(parents=True)
    shutil.copyfile(BINANCE_MIRROR / rel, root / rel)  # the archive, and no .CHECKSUM
    with contextmanager(serve)(root) as server:
        with pytest.raises(DataVisionError, match=rf"^{server.url}/{rel}\.CHECKSUM: not found \(404\) while the archive "
                                                  "is listed"):
            BinanceDataVision(server.url, tmp_path / "cache", backoff=0.01).fetch(rel)
    with pytest.raises(DataVisionError, match=r"\.CHECKSUM: not found \(404\)"):
        BinanceDataVision(root.as_uri(), tmp_path / "cache").fetch(rel)  # a file:// mirror alike
    assert not (tmp_path / "cache" / rel).exists()
    assert not list((tmp_path / "cache").rglob("*.part"))
    # a month the source does not list at all (no archive, no CHECKSUM) is still "not listed"
    assert BinanceDataVision(root.as_uri(), tmp_path / "cache").fetch(BTC.monthly_path(date(2019, 1, 1))).status == \
        "not_listed"


@pytest.mark.parametrize("local_checksum", ["", "\n", "garbage"])
def test_finding_08c_an_empty_or_garbage_local_checksum_is_re_verified_against_the_source(
        mirror, tmp_path, local_checksum):
    rel = BTC.monthly_path(JAN_2020)
    client = BinanceDataVision(mirror.url, tmp_path / "cache", backoff=0.01)
    first = client.fetch(rel)
    local = first.path.with_name(first.path.name + ".CHECKSUM")
    local.write_text(local_checksum)
    before = list(mirror.requests)
    again = client.fetch(rel)
    assert again.status == "cached" and again.sha256 == first.sha256
    assert mirror.requests[len(before):] == [f"/{rel}.CHECKSUM"]  # verified against the source, no download
    assert local.read_text().split()[0] == first.sha256  # and the local CHECKSUM repaired


# -- finding 9: deadlines, and a host that refuses connections is given up ------------------------------

@pytest.mark.parametrize("fault", ["trickle", "stall"], ids=["trickling", "hanging"])
def test_finding_09_a_trickling_or_hanging_server_is_cut_at_the_deadline(mirror, tmp_path, fault):
    """Trickle: a byte every 0.25 s, so no read timeout ever fires. Stall: 8 s of silence, under
    the 60 s read timeout. Both are cut at the 2 s total deadline: the error names it (only the
    deadline check raises it), before the stall would have ended (a generous bound, not a speed test)."""
    rel = BTC.monthly_path(JAN_2020)
    mirror.stall_seconds = 8.0
    mirror.faults["/" + rel] = [fault] * 10
    client = BinanceDataVision(mirror.url, tmp_path / "cache", read_timeout=60, backoff=0.01, deadline_s=2.0)
    start = time.monotonic()
    with pytest.raises(DataVisionError, match=rf"{rel}: .*deadline of 2s" if fault == "trickle" else r"deadline of 2s"):
        client.fetch(rel)
    elapsed = time.monotonic() - start
    print(f"\nfinding 9: {fault} server cut after {elapsed:.2f}s (deadline 2s)")
    assert elapsed < mirror.stall_seconds
    assert not (tmp_path / "cache" / rel).exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_finding_09_refused_connections_give_up_on_the_host_for_every_later_partition(tmp_path):
    port = _closed_port()
    url = f"http://127.0.0.1:{port}"
    months = [date(2020, m, 1) for m in range(1, 6)]
    timings, messages, attempts = [], [], []
    for month in months:  # one client per month, as each binance_klines partition makes its own
        client = BinanceDataVision(url, tmp_path / "cache", backoff=0.25)
        calls = []
        real_get = client.session.get
        client.session.get = lambda *a, _real=real_get, _calls=calls, **k: _calls.append(a[0]) or _real(*a, **k)
        start = time.monotonic()
        with pytest.raises(DataVisionError) as e:
            client.fetch_month(BTC, month, today=date(2024, 1, 1))
        timings.append(time.monotonic() - start)
        messages.append(str(e.value))
        attempts.append(len(calls))
    print(f"\nfinding 9: connection refused, {len(months)} months: first {timings[0]:.2f}s "
          f"(3 attempts, backoff 0.25+0.5s), the other {len(months) - 1} {sum(timings[1:]):.3f}s together")
    assert all(f"gave up on host 127.0.0.1:{port} after 3 consecutive connection failures" in m for m in messages)
    assert all("Connection refused" in m or "Max retries" in m for m in messages)
    # the first month tries three times; every later one is refused without a connection attempt
    assert attempts == [3] + [0] * (len(months) - 1)


_FETCHER = """
import sys
from lem_pipeline.sources.binance import BinanceDataVision
BinanceDataVision(sys.argv[1], sys.argv[2]).fetch(sys.argv[3])
"""


def test_finding_12_kill_9_mid_download_leaves_no_archive_and_the_next_fetch_completes(mirror, tmp_path):
    """A process killed -9 while the body is in flight leaves only its pid-tagged temporary; the
    next fetch downloads the verified archive and sweeps that temporary."""
    stream = KlineStream("ALGOUSDT", "um", "1m")
    rel = stream.monthly_path(date(2024, 2, 1))
    mirror.stall_seconds = 30.0
    mirror.faults[f"/{rel}"] = ["stall"]
    cache = tmp_path / "cache"
    child = subprocess.Popen([sys.executable, "-c", _FETCHER, mirror.url, str(cache), rel], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while f"/{rel}" not in mirror.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"/{rel}" in mirror.requests
        child.kill()  # SIGKILL, mid-request
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
    final = cache / rel
    leftovers = [p.name for p in final.parent.iterdir() if p.name.startswith(f".{final.name}.pid{child.pid}.")]
    assert not final.exists() and len(leftovers) == 1
    result = BinanceDataVision(mirror.url, cache).fetch(rel)
    assert result.status == "downloaded" and final.read_bytes() == (BINANCE_MIRROR / rel).read_bytes()
    assert not [p for p in final.parent.iterdir() if p.name.startswith(f".{final.name}.pid")]
