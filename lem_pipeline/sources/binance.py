"""Binance Data Vision: download kline archives safely and parse them.

No Dagster in here: the client is plain Python so it can be used from a notebook, a script or
the Dagster resource alike. Every archive is verified (sha256 against its ``.CHECKSUM``, zip
integrity, member names) before it is renamed into place, so a file under its final name is
always a complete, verified archive.
"""

from __future__ import annotations

import calendar
import hashlib
import io
import logging
import shutil
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import unquote, urlparse

import polars as pl
import requests

from lem_model.fileio import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://data.binance.vision"
Market = Literal["spot", "um"]

# The 12 columns of a Data Vision kline CSV, in file order.
_RAW_COLUMNS = [
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "trades",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
]
# The columns read_klines returns (contract): the file's, less close_time and ignore.
KLINE_COLUMNS = [c for c in _RAW_COLUMNS if c not in ("close_time", "ignore")]
_RAW_DTYPES = {
    "open_time": pl.Int64,
    "open": pl.Float64,
    "high": pl.Float64,
    "low": pl.Float64,
    "close": pl.Float64,
    "volume": pl.Float64,
    "close_time": pl.Int64,
    "quote_volume": pl.Float64,
    "trades": pl.Int64,
    "taker_buy_volume": pl.Float64,
    "taker_buy_quote_volume": pl.Float64,
    "ignore": pl.Float64,
}
# Open times above this are microseconds: 1e14 ms is the year 5138, 1e14 us is 1973.
_MICROSECOND_THRESHOLD = 10**14
_INTERVAL_SECONDS = {"1m": 60, "3m": 180, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600,
                     "2h": 7200, "4h": 14400, "6h": 21600, "8h": 28800, "12h": 43200, "1d": 86400}


class DataVisionError(RuntimeError):
    """A download or archive that must not be used; the message names the URL."""


def interval_seconds(interval: str) -> int:
    try:
        return _INTERVAL_SECONDS[interval]
    except KeyError:
        raise ValueError(f"unknown kline interval {interval!r}; known: {sorted(_INTERVAL_SECONDS)}") from None


@dataclass(frozen=True)
class KlineStream:
    """One symbol on one market at one candle interval: the unit Binance publishes files for."""

    symbol: str
    market: Market = "spot"
    interval: str = "1m"

    def __post_init__(self) -> None:
        if self.market not in ("spot", "um"):
            raise ValueError(f"market must be 'spot' or 'um', got {self.market!r} for {self.symbol}")
        interval_seconds(self.interval)

    @property
    def _root(self) -> str:
        return "spot" if self.market == "spot" else "futures/um"

    def monthly_path(self, month: date) -> str:
        name = f"{self.symbol}-{self.interval}-{month:%Y-%m}.zip"
        return f"data/{self._root}/monthly/klines/{self.symbol}/{self.interval}/{name}"

    def daily_path(self, day: date) -> str:
        name = f"{self.symbol}-{self.interval}-{day:%Y-%m-%d}.zip"
        return f"data/{self._root}/daily/klines/{self.symbol}/{self.interval}/{name}"


@dataclass(frozen=True)
class FetchResult:
    """What happened to one archive. ``path`` is None when the source does not list it."""

    url: str
    status: Literal["downloaded", "cached", "not_listed"]
    path: Path | None = None
    sha256: str | None = None


@dataclass
class MonthFiles:
    """The archives that make up one (stream, month): one monthly file, or the daily files of a
    month that Binance has not closed yet."""

    stream: KlineStream
    month: date
    results: list[FetchResult] = field(default_factory=list)

    @property
    def paths(self) -> list[Path]:
        return [r.path for r in self.results if r.path is not None]

    @property
    def listed(self) -> bool:
        return bool(self.paths)

    @property
    def not_listed(self) -> list[str]:
        return [r.url for r in self.results if r.status == "not_listed"]


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class _NotListed(Exception):
    """The archive answered 404: Data Vision does not have it."""


def _check_archive(path: Path, url: str) -> None:
    """Refuse corrupt or truncated zips and members that would escape a target folder."""
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                p = PurePosixPath(name.replace("\\", "/"))
                if p.is_absolute() or ".." in p.parts or (name[1:2] == ":"):
                    raise DataVisionError(f"{url}: zip member {name!r} would escape the target folder (zip-slip); refused")
            bad = zf.testzip()
            if bad is not None:
                raise DataVisionError(f"{url}: zip member {bad!r} is corrupt (CRC mismatch); refused")
    except zipfile.BadZipFile as e:
        raise DataVisionError(f"{url}: not a valid zip archive ({e}); the download is truncated or corrupt, refused") from e


class BinanceDataVision:
    """Client for a Data Vision tree served over HTTP(S) or from a local ``file://`` folder.

    Retries cover what a flaky network produces (connection errors, timeouts, 429 and 5xx,
    including a body that stops mid-way); a 404 is an answer, not a fault: that file is not
    listed. Files land under ``cache_dir`` with the same relative paths as on the server.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        cache_dir: str | Path = "data/binance",
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.cache_dir = Path(cache_dir)
        self.timeout = (connect_timeout, read_timeout)
        self.max_retries = max_retries
        self.backoff = backoff
        self.session = session or requests.Session()
        self.session.headers.setdefault("User-Agent", "lem-pipeline/0.1 (+Binance Data Vision client)")
        parsed = urlparse(self.base_url)
        self._local_root = Path(unquote(parsed.path)) if parsed.scheme == "file" else None
        if parsed.scheme not in ("http", "https", "file"):
            raise ValueError(f"Binance base URL must be http(s):// or file://, got {base_url!r}")
        if self._local_root is not None and not self._local_root.is_dir():
            # Every file would answer "not listed": a missing mirror must not pass for empty months.
            raise DataVisionError(f"{base_url}: no such directory (LEM_BINANCE_URL must point at a Data Vision tree)")

    def url(self, rel_path: str) -> str:
        return f"{self.base_url}/{rel_path}"

    # -- transport ------------------------------------------------------------------------
    def _get(self, rel_path: str, dest: Path | None) -> bytes | None:
        """GET one path. Returns the body (``dest`` None) or writes it to ``dest``; None on 404."""
        url = self.url(rel_path)
        if self._local_root is not None:
            src = self._local_root / rel_path
            if not src.is_file():
                return None
            if dest is None:
                return src.read_bytes()
            shutil.copyfile(src, dest)
            return b""
        last_error: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self.backoff * 2 ** (attempt - 1)
                log.warning("retrying %s in %.1fs (attempt %d/%d): %s", url, delay, attempt, self.max_retries, last_error)
                time.sleep(delay)
            try:
                with self.session.get(url, timeout=self.timeout, stream=True) as resp:
                    if resp.status_code == 404:
                        return None
                    if resp.status_code == 429 or resp.status_code >= 500:
                        last_error = DataVisionError(f"{url}: HTTP {resp.status_code}")
                        retry_after = resp.headers.get("Retry-After", "")
                        if retry_after.isdigit():
                            time.sleep(min(float(retry_after), 60.0))
                        continue
                    if resp.status_code != 200:
                        raise DataVisionError(f"{url}: unexpected HTTP {resp.status_code}")
                    if dest is None:
                        return resp.content
                    with open(dest, "wb") as f:
                        for chunk in resp.iter_content(chunk_size=1 << 20):
                            f.write(chunk)
                    expected = resp.headers.get("Content-Length")
                    if expected is not None and dest.stat().st_size != int(expected):
                        last_error = DataVisionError(
                            f"{url}: body ended after {dest.stat().st_size} of {expected} bytes")
                        continue
                    return b""
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
                last_error = e
        raise DataVisionError(f"{url}: failed after {self.max_retries + 1} attempts: {last_error}") from last_error

    def _expected_sha256(self, rel_path: str) -> str | None:
        body = self._get(rel_path + ".CHECKSUM", None)
        if body is None:
            return None
        text = body.decode("ascii", errors="replace").strip()
        digest = text.split()[0].lower() if text else ""
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise DataVisionError(f"{self.url(rel_path)}.CHECKSUM: not a sha256 line: {text[:80]!r}")
        return digest

    # -- one archive ----------------------------------------------------------------------
    def fetch(self, rel_path: str) -> FetchResult:
        """Make sure the archive at ``rel_path`` is on disk, verified, under its final name.

        An archive already on disk with a matching local ``.CHECKSUM`` costs no request at all:
        published Data Vision archives never change.
        """
        url = self.url(rel_path)
        final = self.cache_dir / rel_path
        checksum_file = final.with_name(final.name + ".CHECKSUM")
        if final.is_file() and checksum_file.is_file():
            recorded = checksum_file.read_text().split()[0]
            if _sha256(final) == recorded:
                return FetchResult(url, "cached", final, recorded)
        expected = self._expected_sha256(rel_path)
        if final.is_file() and expected is not None and _sha256(final) == expected:
            atomic_write_text(checksum_file, f"{expected}  {final.name}")
            return FetchResult(url, "cached", final, expected)

        actual = ""

        def download_verified(tmp: str) -> None:
            nonlocal actual
            if self._get(rel_path, Path(tmp)) is None:
                raise _NotListed
            actual = _sha256(Path(tmp))
            if expected is not None and actual != expected:
                raise DataVisionError(f"{url}: sha256 {actual} does not match .CHECKSUM {expected}; refused")
            _check_archive(Path(tmp), url)

        try:
            atomic_write(final, download_verified)
        except _NotListed:
            return FetchResult(url, "not_listed")
        if expected is not None:
            atomic_write_text(checksum_file, f"{expected}  {final.name}")
        return FetchResult(url, "downloaded", final, actual)

    # -- one month of one stream ----------------------------------------------------------
    def fetch_month(self, stream: KlineStream, month: date, *, today: date | None = None) -> MonthFiles:
        """The monthly archive, or for the current month (not yet published as one file) the
        daily archives of its finished days."""
        month = month.replace(day=1)
        today = today or datetime.now(timezone.utc).date()
        out = MonthFiles(stream, month)
        monthly = self.fetch(stream.monthly_path(month))
        out.results.append(monthly)
        is_current = (month.year, month.month) == (today.year, today.month)
        if monthly.status == "not_listed" and is_current:
            out.results.clear()
            last_day = min(today.day - 1, calendar.monthrange(month.year, month.month)[1])
            for d in range(1, last_day + 1):
                out.results.append(self.fetch(stream.daily_path(month.replace(day=d))))
        return out


def _read_csv_bytes(data: bytes, source: str) -> pl.DataFrame:
    first = data.split(b"\n", 1)[0]
    has_header = not first[:1].isdigit()
    try:
        df = pl.read_csv(
            io.BytesIO(data),
            has_header=has_header,
            new_columns=_RAW_COLUMNS,
            schema_overrides=_RAW_DTYPES,
        )
    except (pl.exceptions.ComputeError, pl.exceptions.ShapeError) as e:
        raise DataVisionError(f"{source}: cannot parse as a Data Vision kline CSV: {e}") from e
    if df.width != len(_RAW_COLUMNS):
        raise DataVisionError(f"{source}: expected {len(_RAW_COLUMNS)} columns, found {df.width}")
    return df


def read_klines(path: str | Path) -> pl.DataFrame:
    """Read one Data Vision kline zip or CSV into the pipeline's kline columns. (contract)

    Accepts files with or without Binance's header row and ``open_time`` in milliseconds or
    microseconds (Binance's spot files switched to microseconds on 2025-01-01).
    """
    path = Path(path)
    if path.suffix == ".zip":
        try:
            with zipfile.ZipFile(path) as zf:
                members = [n for n in zf.namelist() if n.lower().endswith(".csv")]
                if len(members) != 1:
                    raise DataVisionError(f"{path}: expected one CSV member, found {members}")
                data = zf.read(members[0])
        except zipfile.BadZipFile as e:
            raise DataVisionError(f"{path}: not a valid zip archive ({e})") from e
    else:
        data = path.read_bytes()
    if not data.strip():
        return empty_klines()
    raw = _read_csv_bytes(data, str(path))
    unit = pl.when(pl.col("open_time") >= _MICROSECOND_THRESHOLD)
    return raw.select(
        unit.then(pl.col("open_time")).otherwise(pl.col("open_time") * 1000)
        .cast(pl.Datetime("us"))
        .dt.replace_time_zone("UTC")
        .alias("open_time"),
        *[pl.col(c) for c in KLINE_COLUMNS[1:]],
    )


def empty_klines() -> pl.DataFrame:
    schema = {"open_time": pl.Datetime("us", "UTC")} | {
        c: (pl.Int64 if c == "trades" else pl.Float64) for c in KLINE_COLUMNS[1:]
    }
    return pl.DataFrame(schema=schema)


def read_month(files: Iterable[Path]) -> pl.DataFrame:
    """Concatenate the archives of one month (one monthly or several daily files), in time order."""
    frames = [read_klines(p) for p in files]
    if not frames:
        return empty_klines()
    return pl.concat(frames, how="vertical").sort("open_time")
