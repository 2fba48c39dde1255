"""Binance Data Vision: download kline archives safely and parse them.

No Dagster in here: the client is plain Python so it can be used from a notebook, a script or
the Dagster resource alike. Every archive is verified (sha256 against its ``.CHECKSUM``, zip
integrity, member names and sizes) before it is renamed into place, so a file under its final
name is always a complete, verified archive; one that then fails to parse or validate is evicted
(``BinanceDataVision.evict``). Downloads have a total deadline, a host that refuses connections
is given up for a while, and no file is inflated past what its period can hold (``size_bound``).
"""

from __future__ import annotations

import calendar
import hashlib
import io
import logging
import os
import re
import shutil
import threading
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal
from urllib.parse import unquote, urlparse

import polars as pl
import requests
import urllib3

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
# The longest data row in every archive of the mirror is 152 bytes (microsecond times, 8-decimal
# prices); 512 leaves room for longer numbers while a file can never be more than a few times the
# size its period allows, so a zip that inflates to gigabytes is refused before it is read.
MAX_ROW_BYTES = 512
# Data Vision file names: SYMBOL-INTERVAL-YYYY-MM (monthly) or SYMBOL-INTERVAL-YYYY-MM-DD (daily).
_ARCHIVE_NAME = re.compile(r"^[A-Z0-9]+-(?P<interval>[0-9]+[a-zA-Z]+)-(?P<period>\d{4}-\d{2}(?:-\d{2})?)\.(?:zip|csv)$")
_DOWNLOAD_CHUNK = 1 << 20
_MAX_CHECKSUM_BYTES = 4096  # one "<sha256>  <name>" line; anything longer is not a CHECKSUM
_RETRY_AFTER_CAP_S = 60.0


class DataVisionError(RuntimeError):
    """A download or archive that must not be used; the message names the URL."""


def interval_seconds(interval: str) -> int:
    try:
        return _INTERVAL_SECONDS[interval]
    except KeyError:
        raise ValueError(f"unknown kline interval {interval!r}; known: {sorted(_INTERVAL_SECONDS)}") from None


@dataclass(frozen=True)
class SizeBound:
    """The most one kline file can hold: one row per interval of its period (plus a header row),
    each at most ``MAX_ROW_BYTES``. A file past it is a decompression bomb or not a kline file."""

    rows: int
    bytes: int
    period: str  # "1h monthly", for messages


@dataclass(frozen=True)
class FilePeriod:
    """What a Data Vision file's name promises: candles of ``step_s`` seconds opening in
    [start, end), on the epoch-aligned grid."""

    start: datetime
    end: datetime
    step_s: int
    interval: str
    kind: str  # "daily" or "monthly"


def file_period(name: str) -> FilePeriod | None:
    """The period of the Data Vision file called ``name``; None for a name that is not one (a
    CSV a test or a notebook wrote)."""
    m = _ARCHIVE_NAME.match(name)
    if m is None or m["interval"] not in _INTERVAL_SECONDS:
        return None
    first = date.fromisoformat(m["period"] if len(m["period"]) == 10 else m["period"] + "-01")
    days = 1 if len(m["period"]) == 10 else calendar.monthrange(first.year, first.month)[1]
    start = datetime(first.year, first.month, first.day, tzinfo=timezone.utc)
    return FilePeriod(start, start + timedelta(days=days), _INTERVAL_SECONDS[m["interval"]], m["interval"],
                      "daily" if days == 1 else "monthly")


def size_bound(name: str) -> SizeBound:
    """The bound of the Data Vision file called ``name``; a name that is not one gets the largest
    bound any published file has: a 31-day month of 1m bars."""
    period = file_period(name)
    if period is None:
        rows = 31 * 86400 // min(_INTERVAL_SECONDS.values())
        return SizeBound(rows, (rows + 1) * MAX_ROW_BYTES, "largest (31 days of 1m)")
    rows = int((period.end - period.start).total_seconds()) // period.step_s
    return SizeBound(rows, (rows + 1) * MAX_ROW_BYTES, f"{period.interval} {period.kind}")


def _too_big(where: str, size: int, bound: SizeBound, how: str) -> DataVisionError:
    return DataVisionError(
        f"{where}: {how} {size} bytes, more than the {bound.bytes} a {bound.period} file can hold "
        f"({bound.rows} rows x {MAX_ROW_BYTES} bytes); refused (a decompression bomb or not a kline file)")


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


REJECTED_SUFFIX = ".rejected"


def _checksum_file(archive: Path) -> Path:
    return archive.with_name(archive.name + ".CHECKSUM")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class _NotListed(Exception):
    """The archive answered 404: Data Vision does not have it."""


def _check_archive(path: Path, url: str, bound: SizeBound) -> None:
    """Refuse corrupt or truncated zips, members that would escape a target folder and members
    that declare more bytes than the file's period can hold (checked before any is inflated)."""
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = info.filename
                p = PurePosixPath(name.replace("\\", "/"))
                if p.is_absolute() or ".." in p.parts or (name[1:2] == ":"):
                    raise DataVisionError(f"{url}: zip member {name!r} would escape the target folder (zip-slip); refused")
                if info.file_size > bound.bytes:
                    raise _too_big(f"{url}: zip member {name!r}", info.file_size, bound, "declares")
            bad = zf.testzip()
            if bad is not None:
                raise DataVisionError(f"{url}: zip member {bad!r} is corrupt (CRC mismatch); refused")
    except zipfile.BadZipFile as e:
        raise DataVisionError(f"{url}: not a valid zip archive ({e}); the download is truncated or corrupt, refused") from e


class _Transient(Exception):
    """One attempt failed in a way another attempt may fix (connection, timeout, 429/5xx, cut body)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass
class _HostHealth:
    """Consecutive connection failures of one host, shared by every client of the process: ``lem
    run`` makes a client per partition, and a host that refuses connections must cost the
    retries once, not once per partition."""

    failures: int = 0
    down_until: float = 0.0
    last_error: str = ""


_HOSTS: dict[str, _HostHealth] = {}
_HOSTS_LOCK = threading.Lock()


def _host_health(host: str) -> _HostHealth:
    with _HOSTS_LOCK:
        return _HOSTS.setdefault(host, _HostHealth())


def _root_cause(error: Exception) -> str:
    """requests wraps a refused connection three deep; the innermost reason is the readable one."""
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return str(reason or error)[:300]


def reset_host_health() -> None:
    """Forget every host's connection failures (a test, or a long-lived process that knows the
    network is back)."""
    with _HOSTS_LOCK:
        _HOSTS.clear()


def _checksum_digest(text: str) -> str | None:
    """The sha256 of a ``.CHECKSUM`` line (``<sha256>  <name>``), or None when it is not one."""
    words = text.strip().split()
    digest = words[0].lower() if words else ""
    return digest if _is_sha256(digest) else None


def _recorded_sha256(checksum_file: Path) -> str | None:
    """The digest of a local ``.CHECKSUM``, or None when it is missing, empty or not a sha256
    line (a crash or a hand edit): such a file proves nothing, so the archive is re-verified."""
    try:
        return _checksum_digest(checksum_file.read_text(encoding="ascii", errors="replace"))
    except FileNotFoundError:
        return None


def _is_sha256(digest: str) -> bool:
    return len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


class BinanceDataVision:
    """Client for a Data Vision tree served over HTTP(S) or from a local ``file://`` folder.

    Retries cover what a flaky network produces (connection errors, timeouts, 429 and 5xx,
    including a body that stops mid-way); a 404 is an answer, not a fault: that file is not
    listed. Files land under ``cache_dir`` with the same relative paths as on the server.

    Every download has a total ``deadline_s`` across its retries, enforced while the body
    streams in (a server that trickles bytes is cut), and after ``host_give_up_after``
    consecutive connection failures the host is given up for ``host_cooldown_s``: later
    requests to it, from any client of the process, fail at once.
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
        deadline_s: float = 300.0,
        host_give_up_after: int = 3,
        host_cooldown_s: float = 600.0,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.cache_dir = Path(cache_dir)
        self.timeout = (connect_timeout, read_timeout)
        self.max_retries = max_retries
        self.backoff = backoff
        self.deadline_s = deadline_s
        self.host_give_up_after = host_give_up_after
        self.host_cooldown_s = host_cooldown_s
        self.session = session or requests.Session()
        self.session.headers.setdefault("User-Agent", "lem-pipeline/0.1 (+Binance Data Vision client)")
        parsed = urlparse(self.base_url)
        self.host = parsed.netloc
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
        deadline = time.monotonic() + self.deadline_s
        last_error: Exception | None = None
        for attempt in range(self.max_retries + 1):
            self._check_host(url)
            if attempt:
                delay = self.backoff * 2 ** (attempt - 1)
                log.warning("retrying %s in %.1fs (attempt %d/%d): %s", url, delay, attempt, self.max_retries, last_error)
                self._sleep_before(deadline, delay, url, last_error)
            try:
                if dest is None:
                    buf = io.BytesIO()
                    return None if self._attempt(url, buf, deadline, _MAX_CHECKSUM_BYTES) is None else buf.getvalue()
                with open(dest, "wb") as f:
                    return self._attempt(url, f, deadline, None)
            except _Transient as e:
                last_error = e.cause
        raise DataVisionError(f"{url}: failed after {self.max_retries + 1} attempts: {last_error}") from last_error

    def _attempt(self, url: str, out: BinaryIO, deadline: float, limit: int | None) -> bytes | None:
        """One GET into ``out``: b"" when the whole body arrived, None on 404; raises _Transient
        for what a retry may fix and DataVisionError for what it may not."""
        remaining = self._remaining(deadline, url, None)
        timeout = (min(self.timeout[0], remaining), min(self.timeout[1], remaining))
        try:
            resp = self.session.get(url, timeout=timeout, stream=True)
        except (requests.ConnectionError, requests.Timeout) as e:
            self._host_failed(e)
            raise _Transient(e) from e
        self._host_answered()
        with resp:
            if resp.status_code == 404:
                return None
            if resp.status_code == 429 or resp.status_code >= 500:
                retry_after = resp.headers.get("Retry-After", "")
                error = DataVisionError(f"{url}: HTTP {resp.status_code}")
                if retry_after.isdigit():
                    self._sleep_before(deadline, min(float(retry_after), _RETRY_AFTER_CAP_S), url, error)
                raise _Transient(error)
            if resp.status_code != 200:
                raise DataVisionError(f"{url}: unexpected HTTP {resp.status_code}")
            try:
                size = self._stream_body(resp, out, deadline, url, limit)
            except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
                raise _Transient(e) from e
            expected = resp.headers.get("Content-Length")
            if expected is not None and size != int(expected):
                raise _Transient(DataVisionError(f"{url}: body ended after {size} of {expected} bytes"))
            return b""

    def _stream_body(self, resp: requests.Response, out: BinaryIO, deadline: float, url: str,
                     limit: int | None) -> int:
        """Copy the body, one socket read at a time (``read1``), so the deadline is checked
        between reads: a server that sends a byte now and then never hits the read timeout."""
        size = 0
        while chunk := resp.raw.read1(_DOWNLOAD_CHUNK, decode_content=True):
            size += len(chunk)
            if limit is not None and size > limit:
                raise DataVisionError(f"{url}: more than {limit} bytes; not a .CHECKSUM, refused")
            out.write(chunk)
            self._remaining(deadline, url, None, size)
        return size

    def _remaining(self, deadline: float, url: str, last_error: Exception | None, received: int | None = None) -> float:
        """Seconds left before the download's deadline; past it, a DataVisionError."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            got = f" with {received} bytes received" if received is not None else ""
            cause = f" (last error: {last_error})" if last_error is not None else ""
            raise DataVisionError(f"{url}: gave up at the download deadline of {self.deadline_s:g}s{got}{cause}")
        return remaining

    def _sleep_before(self, deadline: float, delay: float, url: str, last_error: Exception | None) -> None:
        """Wait ``delay`` before the next attempt, unless the deadline comes first: then fail now
        rather than sleep into it."""
        if delay >= self._remaining(deadline, url, last_error):
            raise DataVisionError(f"{url}: the next attempt (in {delay:g}s) would pass the download deadline "
                                  f"of {self.deadline_s:g}s; last error: {last_error}")
        time.sleep(delay)

    # -- host health ----------------------------------------------------------------------
    def _check_host(self, url: str) -> None:
        health = _host_health(self.host)
        wait = health.down_until - time.monotonic()
        if wait > 0:
            raise DataVisionError(
                f"{url}: gave up on host {self.host} after {health.failures} consecutive connection failures "
                f"(last: {health.last_error}); not trying it again for {wait:.0f}s")

    def _host_failed(self, error: Exception) -> None:
        health = _host_health(self.host)
        with _HOSTS_LOCK:
            health.failures += 1
            health.last_error = _root_cause(error)
            if health.failures >= self.host_give_up_after:
                health.down_until = time.monotonic() + self.host_cooldown_s
                log.error("giving up on %s for %.0fs after %d consecutive connection failures: %s",
                          self.host, self.host_cooldown_s, health.failures, error)

    def _host_answered(self) -> None:
        health = _host_health(self.host)
        with _HOSTS_LOCK:
            health.failures, health.down_until = 0, 0.0

    def _expected_sha256(self, rel_path: str) -> str | None:
        body = self._get(rel_path + ".CHECKSUM", None)
        if body is None:
            return None
        text = body.decode("ascii", errors="replace")
        digest = _checksum_digest(text)
        if digest is None:
            raise DataVisionError(f"{self.url(rel_path)}.CHECKSUM: not a sha256 line: {text.strip()[:80]!r}")
        return digest

    # -- one archive ----------------------------------------------------------------------
    def fetch(self, rel_path: str) -> FetchResult:
        """Make sure the archive at ``rel_path`` is on disk, verified, under its final name.

        An archive already on disk with a matching local ``.CHECKSUM`` costs no request at all:
        published Data Vision archives never change. Every published archive has a
        ``.CHECKSUM``: one that is missing while its archive is listed is an error, never a
        reason to take the archive unverified.
        """
        url = self.url(rel_path)
        final = self.cache_dir / rel_path
        checksum_file = _checksum_file(final)
        recorded = _recorded_sha256(checksum_file) if final.is_file() else None
        if recorded is not None and _sha256(final) == recorded:
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
            if expected is None:
                raise DataVisionError(f"{url}.CHECKSUM: not found (404) while the archive is listed; an archive that "
                                      "cannot be verified is refused")
            actual = _sha256(Path(tmp))
            if actual != expected:
                raise DataVisionError(f"{url}: sha256 {actual} does not match .CHECKSUM {expected}; refused")
            _check_archive(Path(tmp), url, size_bound(final.name))

        try:
            atomic_write(final, download_verified)
        except _NotListed:
            return FetchResult(url, "not_listed")
        atomic_write_text(checksum_file, f"{expected}  {final.name}")
        return FetchResult(url, "downloaded", final, actual)

    def evict(self, paths: Iterable[Path]) -> list[Path]:
        """Take archives that failed to parse or to validate out of the cache: each is renamed
        to ``<name>.rejected`` (kept for inspection) and its ``.CHECKSUM`` removed, so the next
        run downloads it again instead of reusing it without a request once the source is fixed."""
        moved = []
        for path in paths:
            if not path.is_file():
                continue
            rejected = path.with_name(path.name + REJECTED_SUFFIX)
            _checksum_file(path).unlink(missing_ok=True)
            os.replace(path, rejected)
            log.warning("evicted %s from the archive cache as %s", path, rejected.name)
            moved.append(rejected)
        return moved

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
    except pl.exceptions.PolarsError as e:  # wrong column count, a non-numeric field, ...
        raise DataVisionError(f"{source}: cannot parse as a Data Vision kline CSV: {e}") from e
    if df.width != len(_RAW_COLUMNS):
        raise DataVisionError(f"{source}: expected {len(_RAW_COLUMNS)} columns, found {df.width}")
    return df


def read_klines(path: str | Path) -> pl.DataFrame:
    """Read one Data Vision kline zip or CSV into the pipeline's kline columns. (contract)

    Accepts files with or without Binance's header row and ``open_time`` in milliseconds or
    microseconds (Binance's spot files switched to microseconds on 2025-01-01). A file larger
    than its period can hold (``size_bound``) is refused before it is inflated (by the size its
    zip header declares; zipfile itself never inflates past that size, and a member that lies
    about it fails its CRC), and at most the bound plus one byte is ever read.
    """
    path = Path(path)
    bound = size_bound(path.name)
    data = _read_bounded(path, bound)
    if not data.strip():
        return empty_klines()
    raw = _read_csv_bytes(data, str(path))
    if raw.height > bound.rows:
        raise DataVisionError(f"{path}: {raw.height} rows, more than the {bound.rows} a {bound.period} file can hold; "
                              "refused")
    unit = pl.when(pl.col("open_time") >= _MICROSECOND_THRESHOLD)
    klines = raw.select(
        unit.then(pl.col("open_time")).otherwise(pl.col("open_time") * 1000)
        .cast(pl.Datetime("us"))
        .dt.replace_time_zone("UTC")
        .alias("open_time"),
        *[pl.col(c) for c in KLINE_COLUMNS[1:]],
    )
    period = file_period(path.name)
    if period is not None:
        _check_on_period(klines, period, path)
    return klines


def _check_on_period(klines: pl.DataFrame, period: FilePeriod, path: Path) -> None:
    """Every candle must open inside the file's period and on its interval's grid. Bars are sums
    of the candles in a bucket, so a candle filed in the wrong month (it would be counted twice
    once the months are joined) or at an odd time (two in one slot) would silently inflate a
    bar's volume; the file is refused, naming the first such row, instead."""
    step_us = period.step_s * 1_000_000
    t = pl.col("open_time")
    bad = klines.with_row_index("row").filter(
        (t < period.start) | (t >= period.end) | (t.dt.epoch("us") % step_us != 0))
    if not bad.is_empty():
        row, when = bad["row"][0] + 1, bad["open_time"][0]
        raise DataVisionError(
            f"{path}: {len(bad)} candle(s) outside the file's period [{period.start:%Y-%m-%d}, {period.end:%Y-%m-%d}) "
            f"or off its {period.interval} grid, the first at data row {row} (open_time {when}); refused")


def _read_bounded(path: Path, bound: SizeBound) -> bytes:
    """The CSV bytes of a kline zip or CSV, refusing more than ``bound.bytes``: the declared size
    is checked first, then at most one byte past the bound is read."""
    if path.suffix != ".zip":
        with open(path, "rb") as f:
            return _bounded(f, str(path), os.fstat(f.fileno()).st_size, bound)
    try:
        with zipfile.ZipFile(path) as zf:
            members = [i for i in zf.infolist() if i.filename.lower().endswith(".csv")]
            if len(members) != 1:
                raise DataVisionError(f"{path}: expected one CSV member, found {[i.filename for i in members]}")
            with zf.open(members[0]) as f:
                return _bounded(f, f"{path} (member {members[0].filename!r})", members[0].file_size, bound)
    except zipfile.BadZipFile as e:
        raise DataVisionError(f"{path}: not a valid zip archive ({e})") from e


def _bounded(f: BinaryIO, where: str, declared: int, bound: SizeBound) -> bytes:
    if declared > bound.bytes:
        raise _too_big(where, declared, bound, "declares")
    data = f.read(bound.bytes + 1)
    if len(data) > bound.bytes:
        raise _too_big(where, len(data), bound, "inflates to at least")
    return data


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
