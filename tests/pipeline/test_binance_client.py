"""The Data Vision client against a real loopback HTTP server, one fault per test."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from datetime import date
from pathlib import Path

import pytest

from lem_pipeline.sources.binance import BinanceDataVision, DataVisionError, KlineStream
from tests.conftest import BINANCE_MIRROR, serve

BTC_1H = KlineStream("BTCUSDT", "spot", "1h")
JAN_2020 = date(2020, 1, 1)
REL = BTC_1H.monthly_path(JAN_2020)


def client(server, tmp_path: Path, **kw) -> BinanceDataVision:
    kw.setdefault("backoff", 0.01)
    return BinanceDataVision(server.url, tmp_path / "cache", **kw)


@pytest.fixture
def overlay(tmp_path: Path):
    """A private copy of one real month (zip + CHECKSUM) that a test may damage, served over HTTP."""
    root = tmp_path / "mirror"
    for suffix in ("", ".CHECKSUM"):
        dst = root / (REL + suffix)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(BINANCE_MIRROR / (REL + suffix), dst)
    yield from serve(root)


def reseal(root: Path, rel: str = REL) -> None:
    """Write a .CHECKSUM that matches the (damaged) archive, as a publisher of a bad file would:
    the damage must be caught by what follows the checksum."""
    digest = hashlib.sha256((root / rel).read_bytes()).hexdigest()
    (root / (rel + ".CHECKSUM")).write_text(f"{digest}  {Path(rel).name}\n")


def test_download_verifies_and_lands_under_final_name(mirror, tmp_path):
    result = client(mirror, tmp_path).fetch(REL)
    assert result.status == "downloaded"
    assert result.path.read_bytes() == (BINANCE_MIRROR / REL).read_bytes()
    assert result.sha256 == (BINANCE_MIRROR / (REL + ".CHECKSUM")).read_text().split()[0]
    assert not list(result.path.parent.glob("*.part"))


def test_read_timeout_then_success_is_retried(mirror, tmp_path):
    mirror.faults["/" + REL] = ["stall"]
    result = client(mirror, tmp_path, read_timeout=0.5).fetch(REL)
    assert result.status == "downloaded"
    assert mirror.requests.count("/" + REL) == 2


def test_server_error_then_success_is_retried(mirror, tmp_path):
    mirror.faults["/" + REL] = [500]
    result = client(mirror, tmp_path).fetch(REL)
    assert result.status == "downloaded"
    assert mirror.requests.count("/" + REL) == 2


def test_rate_limit_then_body_cut_midway_are_retried(mirror, tmp_path):
    mirror.faults["/" + REL] = [429, "cut"]
    result = client(mirror, tmp_path).fetch(REL)
    assert result.status == "downloaded"
    assert mirror.requests.count("/" + REL) == 3


def test_persistent_server_error_fails_naming_the_url(mirror, tmp_path):
    mirror.faults["/" + REL] = [503] * 10
    with pytest.raises(DataVisionError, match=r"BTCUSDT-1h-2020-01\.zip.*3 attempts.*503"):
        client(mirror, tmp_path, max_retries=2).fetch(REL)
    assert not (tmp_path / "cache" / REL).exists()


def test_truncated_zip_with_a_matching_checksum_is_refused(overlay, tmp_path):
    zpath = overlay.root / REL
    zpath.write_bytes(zpath.read_bytes()[:-200])
    reseal(overlay.root)
    with pytest.raises(DataVisionError, match=rf"{overlay.url}/{REL}: not a valid zip"):
        client(overlay, tmp_path).fetch(REL)
    assert not (tmp_path / "cache" / REL).exists()
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_checksum_mismatch_is_refused(overlay, tmp_path):
    (overlay.root / (REL + ".CHECKSUM")).write_text("0" * 64 + "  BTCUSDT-1h-2020-01.zip")
    with pytest.raises(DataVisionError, match=r"BTCUSDT-1h-2020-01\.zip: sha256 .* does not match"):
        client(overlay, tmp_path).fetch(REL)
    assert not (tmp_path / "cache" / REL).exists()


def test_zip_slip_member_is_refused(overlay, tmp_path):
    zpath = overlay.root / REL
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("../../evil.csv", "1577836800000,1,1,1,1,1,1,1,1,1,1,0\n")
    reseal(overlay.root)
    with pytest.raises(DataVisionError, match=r"'\.\./\.\./evil\.csv' would escape"):
        client(overlay, tmp_path).fetch(REL)
    assert not (tmp_path / "cache" / REL).exists()


def test_404_month_is_not_listed_not_an_error(mirror, tmp_path):
    ada = KlineStream("ADAUSDT", "spot", "1h")
    files = client(mirror, tmp_path).fetch_month(ada, date(2019, 1, 1))  # before ADA's listing (no ADA in tests/data at all)
    assert not files.listed
    assert files.not_listed == [f"{mirror.url}/{ada.monthly_path(date(2019, 1, 1))}"]


def test_second_fetch_makes_no_request(mirror, tmp_path):
    c = client(mirror, tmp_path)
    assert c.fetch(REL).status == "downloaded"
    before = len(mirror.requests)
    again = client(mirror, tmp_path).fetch(REL)
    assert again.status == "cached"
    assert len(mirror.requests) == before


def test_current_month_uses_daily_files(mirror, tmp_path):
    stream = KlineStream("BTCUSDT", "spot", "1m")
    files = client(mirror, tmp_path).fetch_month(stream, JAN_2020, today=date(2020, 1, 4))
    assert [p.name for p in files.paths] == [f"BTCUSDT-1m-2020-01-0{d}.zip" for d in (1, 2, 3)]
    assert mirror.count(".zip") == 4  # the monthly file answered 404, then three days


_CRASH_SCRIPT = """
import os, sys
from lem_pipeline.sources import binance
def crash(src, dst):
    os._exit(17)  # the process dies between download and rename: no cleanup runs
os.replace = crash  # the rename of lem_model.fileio.atomic_write, which the client downloads through
binance.BinanceDataVision(sys.argv[1], sys.argv[2]).fetch(sys.argv[3])
"""


def test_crash_between_download_and_rename_leaves_nothing_taken_as_complete(mirror, tmp_path):
    cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-c", _CRASH_SCRIPT, mirror.url, str(cache), REL],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True)
    assert proc.returncode == 17, proc.stderr
    final = cache / REL
    assert not final.exists()
    assert list(final.parent.glob("*.part"))  # the half-finished download is left under a temp name
    zips_before = mirror.count(".zip")
    result = client(mirror, tmp_path).fetch(REL)
    assert result.status == "downloaded"  # not mistaken for a cached file
    assert mirror.count(".zip") == zips_before + 1
    assert result.path.read_bytes() == (BINANCE_MIRROR / REL).read_bytes()


def test_file_url_mirror_needs_no_server(tmp_path):
    c = BinanceDataVision(BINANCE_MIRROR.as_uri(), tmp_path / "cache")
    r = c.fetch(REL)
    assert r.status == "downloaded" and r.path.read_bytes() == (BINANCE_MIRROR / REL).read_bytes()
    assert c.fetch(KlineStream("ADAUSDT", "spot", "1h").monthly_path(date(2019, 1, 1))).status == "not_listed"
