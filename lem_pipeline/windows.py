"""Features, windows, targets and time splits (paper section 3; docs/DESIGN.md, "Windows,
alignment and causality").

For a window whose execution starts at bar r (lookback L, horizon N):
  x        rows r-L .. r+N-2: features, then VWAP / VWAP[r-L] and volume / s, s = the normaliser
  targets  VWAP and volume of bars r .. r+N-1, scaled the same way
  s        the mean volume of the ``norm_window`` bars ending at bar r-L-1: the paper's rolling
           336-bar window shifted by L+N, evaluated at the window's last bar r+N-1
Per-bar features use only that bar and earlier ones: volume / (the same shifted rolling mean
at that bar), the VWAP return, seasonal codes, the frequency code and, intraday, whether the
bar bridges a short outage (lem_pipeline.bars). A window lies inside one segment (no long
outage inside) and inside one split (purged at the boundaries), and some volume trades over its
execution bars (a benchmark VWAP exists).

Vectorised: polars for the per-bar columns, numpy for the window starts; no Python loop per
window. What is stored is the per-bar arrays and one start row per window
(lem_model.window_dataset, which gathers the windows of a batch on the fly).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
import dataclasses
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from lem_model.failpoints import failpoint
from lem_model.fileio import replaced_dir
from lem_model.window_dataset import BAR_ARRAYS, SPLITS, Bars, bars_file, gather_windows, meta_file, starts_file

INDEX_FILE = "index.parquet"  # one row per window: split, row, symbol, freq_min, times
# Index columns: the window's first bar (r-L), its execution start (r) and its last bar (r+N-1).
TIME_COLUMNS = ["first_time", "start_time", "end_time"]
Seasonality = Literal["intraday", "daily"]
DATASET_BY_SEASONALITY = {"daily": "equity", "intraday": "crypto"}  # which dataset's windows a config builds
FEATURE_NAMES = {
    "intraday": ["volume_rel", "vwap_return", "hour_of_day", "day_of_week", "frequency", "bridged", "price", "volume"],
    "daily": ["volume_rel", "vwap_return", "day_of_week", "month_of_year", "frequency", "price", "volume"],
}


@dataclass(frozen=True)
class WindowConfig:
    lookback: int = 120
    n_ahead: int = 12
    norm_window: int = 336
    stride: int = 1  # keep every stride-th execution start (per series)
    test_stride: int | None = None  # the test split's, when it should be denser (evaluation is cheap); None: stride
    val_start: date = date(2017, 1, 1)
    test_start: date = date(2020, 1, 1)
    seasonality: Seasonality = "daily"

    @property
    def seq_len(self) -> int:
        return self.lookback + self.n_ahead - 1

    @classmethod
    def from_meta(cls, meta: dict) -> WindowConfig:
        """The config a windows directory was built with (its meta.json, see :func:`read_meta`);
        a ValueError naming the fields for one that is not such a config."""
        if not isinstance(meta, dict) or not isinstance(meta.get("config") or {}, dict):
            raise ValueError("not a windows config: meta.json and its config must be JSON objects")
        c = dict(meta.get("config") or {})
        fields = dataclasses.fields(cls)
        names = {f.name for f in fields}
        # the split dates, and what has no default (a field added later keeps its default)
        required = {"val_start", "test_start"} | {f.name for f in fields if f.default is dataclasses.MISSING}
        if c.keys() - names or required - c.keys():
            raise ValueError(f"not a windows config: missing {sorted(required - c.keys())}, "
                             f"unknown {sorted(c.keys() - names)}")
        try:
            for k in ("val_start", "test_start"):
                c[k] = date.fromisoformat(c[k])
        except (TypeError, ValueError) as e:
            raise ValueError(f"not a windows config: {k} {c[k]!r} is not an ISO date") from e
        whole = [k for k in ("lookback", "n_ahead", "norm_window", "stride") if k in c]
        wrong = [f"{k} {c[k]!r}" for k in whole if not isinstance(c[k], int) or isinstance(c[k], bool) or c[k] < 1]
        if c.get("test_stride") is not None and (not isinstance(c["test_stride"], int) or c["test_stride"] < 1):
            wrong.append(f"test_stride {c['test_stride']!r}")
        if c.get("seasonality", cls.seasonality) not in FEATURE_NAMES:
            wrong.append(f"seasonality {c['seasonality']!r} (one of {sorted(FEATURE_NAMES)})")
        if wrong:
            raise ValueError(f"not a windows config: {', '.join(wrong)}")
        return cls(**c)

    @property
    def n_features(self) -> int:
        return len(FEATURE_NAMES[self.seasonality])

    @property
    def first_start(self) -> int:
        """Bars a segment needs before its first execution start: the window's normaliser
        reaches back norm_window bars before r-L, and row r-L's own feature normaliser as far
        before r-L-(L+N)."""
        return 2 * self.lookback + self.n_ahead + self.norm_window - 1


def bar_features(bars: pl.DataFrame, cfg: WindowConfig) -> pl.DataFrame:
    """Per-bar columns of one (symbol, frequency) series, computed inside each segment."""
    shift = cfg.lookback + cfg.n_ahead
    seg = pl.col("segment")
    t = pl.col("open_time")
    if cfg.seasonality == "intraday":
        season = [(t.dt.hour().cast(pl.Float32) / 24).alias("hour_of_day"),
                  ((t.dt.weekday() - 1).cast(pl.Float32) / 7).alias("day_of_week")]
    else:
        season = [((t.dt.weekday() - 1).cast(pl.Float32) / 7).alias("day_of_week"),
                  ((t.dt.month() - 1).cast(pl.Float32) / 12).alias("month_of_year")]
    return bars.sort("open_time").with_columns(
        pl.col("volume").rolling_mean(cfg.norm_window).shift(shift).over(seg).alias("vol_norm"),
        (pl.col("vwap") / pl.col("vwap").shift(1).over(seg) - 1).alias("vwap_return"),
        *season,
        (pl.col("freq_min").cast(pl.Float32) / 1440).alias("frequency"),
    ).with_columns((pl.col("volume") / pl.col("vol_norm")).alias("volume_rel"))


@dataclass
class SeriesWindows:
    """Execution starts of one series, by split, with what is needed to cut the windows."""

    symbol: str
    freq_min: int
    feats: np.ndarray  # (n, D-2) float32 per-bar features, as they are stored
    vwap: np.ndarray  # (n,)
    volume: np.ndarray  # (n,)
    vol_norm: np.ndarray  # (n,)
    open_time: np.ndarray  # (n,) datetime64[us]
    starts: dict[str, np.ndarray]
    dropped_bad_normaliser: int
    dropped_no_volume: int = 0  # windows whose execution bars all have zero volume (inside an outage)
    # windows past their segment's warm-up with a feature row that is not finite: bad data inside a
    # segment (e.g. a normaliser of 0 after norm_window zero-volume bars), not the expected warm-up
    dropped_bad_rows: int = 0


def plan_series(bars: pl.DataFrame, cfg: WindowConfig) -> SeriesWindows:
    """Which execution starts r of this series make valid windows, and in which split."""
    df = bar_features(bars, cfg)
    names = FEATURE_NAMES[cfg.seasonality][:-2]
    feats = df.select(names).to_numpy().astype(np.float32)
    vwap = df["vwap"].to_numpy().astype(np.float64)
    volume = df["volume"].to_numpy().astype(np.float64)
    vol_norm = df["vol_norm"].fill_null(np.nan).to_numpy().astype(np.float64)
    seg = df["segment"].to_numpy()
    times = df["open_time"].dt.replace_time_zone(None).to_numpy()
    n, L, N = len(df), cfg.lookback, cfg.n_ahead
    out = SeriesWindows(str(df["symbol"][0]) if n else "", int(df["freq_min"][0]) if n else 0, feats, vwap, volume,
                        vol_norm, times, {s: np.zeros(0, np.int64) for s in SPLITS}, 0)
    if n < L + N:
        return out
    r = np.arange(L, n - N + 1)
    first, last = r - L, r + N - 1
    same_segment = seg[first] == seg[last]
    # every feature row of the window is finite: a running count of bad rows over [r-L, r+N-2]
    bad_row = ~np.isfinite(feats).all(axis=1)
    bad_before = np.concatenate([[0], np.cumsum(bad_row)])
    rows_ok = (bad_before[last] - bad_before[first]) == 0
    norm = vol_norm[last]
    norm_ok = np.isfinite(norm) & (norm > 0) & (vwap[first] > 0)
    structural = same_segment & rows_ok & np.isfinite(norm)  # windows that exist at all
    segment_first = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])  # each segment's first row
    warmed_up = r - segment_first[np.searchsorted(segment_first, r, side="right") - 1] >= cfg.first_start
    out.dropped_bad_rows = int((same_segment & warmed_up & ~rows_ok).sum())
    out.dropped_bad_normaliser = int((structural & ~norm_ok).sum())
    trading_before = np.concatenate([[0], np.cumsum(volume > 0)])
    traded = (trading_before[last + 1] - trading_before[r]) > 0  # a bar with volume among r .. r+N-1
    out.dropped_no_volume = int((structural & norm_ok & ~traded).sum())
    valid = structural & norm_ok & traded
    r, first, last = r[valid], first[valid], last[valid]
    val_t = np.datetime64(datetime.combine(cfg.val_start, datetime.min.time()), "us")
    test_t = np.datetime64(datetime.combine(cfg.test_start, datetime.min.time()), "us")
    # A window belongs to a split when every bar of it, from the first's open to the last's
    # close, lies inside; an intraday bar of a frequency that does not divide a day (the paper's
    # 90 and 250 min) can open before a boundary and close after it.
    t0, t1 = times[first], times[last] + np.timedelta64(out.freq_min, "m")
    in_split = {"train": t1 <= val_t, "val": (t0 >= val_t) & (t1 <= test_t), "test": t0 >= test_t}
    stride = {"train": cfg.stride, "val": cfg.stride, "test": cfg.test_stride or cfg.stride}
    # every stride-th start of the series (one phase for all splits), inside its split
    out.starts = {split: r[in_split[split] & ((r - r[:1]) % stride[split] == 0)] for split in SPLITS}
    return out


def series_bars(s: SeriesWindows) -> Bars:
    return Bars(s.feats, s.vwap, s.volume, s.vol_norm)


def cut_windows(s: SeriesWindows, starts: np.ndarray, cfg: WindowConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x (n, L+N-1, D), volumes (n, N), prices (n, N)) for the given execution starts, in memory:
    exactly what the WindowDataset of a built directory yields for them."""
    return gather_windows(series_bars(s), starts, cfg.lookback, cfg.n_ahead)


@dataclass
class BuildReport:
    counts: dict[str, int]
    per_group: pl.DataFrame  # split, symbol, freq_min, windows, first_start, last_start
    dropped_bad_normaliser: int
    directory: Path
    dropped_no_volume: int = 0
    dropped_bad_rows: int = 0


def build_windows(series: Sequence[pl.DataFrame], cfg: WindowConfig, directory: str | Path) -> BuildReport:
    """Plan every series' windows and write them, merged: the per-bar arrays of all series end
    to end, one start row per window and split, ``index.parquet`` (split, row, symbol, freq_min,
    times) and ``meta.json`` (lem_model.window_dataset). The directory is replaced whole: a
    crash leaves the previous complete set."""
    directory = Path(directory)
    plans = [plan_series(b, cfg) for b in series if len(b)]
    offsets = [int(o) for o in np.cumsum([0] + [len(p.vwap) for p in plans])]
    with replaced_dir(directory) as tmp:
        arrays = {name: np.lib.format.open_memmap(bars_file(tmp, name), mode="w+", dtype=dtype, shape=shape)
                  for name, dtype, shape in (("features", np.float32, (offsets[-1], cfg.n_features - 2)),
                                             ("vwap", np.float64, (offsets[-1],)), ("volume", np.float64, (offsets[-1],)),
                                             ("vol_norm", np.float64, (offsets[-1],)))}
        for p, lo, hi in zip(plans, offsets[:-1], offsets[1:]):
            for name, values in zip(BAR_ARRAYS, (p.feats, p.vwap, p.volume, p.vol_norm)):
                arrays[name][lo:hi] = values
        del arrays  # unmapped; the kernel writes the pages back (a flush here would wait on the disk)
        index_parts = []
        counts = {}
        for split in SPLITS:
            starts = [p.starts[split] + lo for p, lo in zip(plans, offsets[:-1])]
            counts[split] = sum(len(s) for s in starts)
            np.save(starts_file(tmp, split), np.concatenate(starts) if starts else np.zeros(0, np.int64))
            row = 0
            for p in plans:
                r = p.starts[split]
                if not len(r):
                    continue
                index_parts.append(pl.DataFrame({
                    "split": split, "row": np.arange(row, row + len(r)), "symbol": p.symbol, "freq_min": p.freq_min,
                    "first_time": p.open_time[r - cfg.lookback], "start_time": p.open_time[r],
                    "end_time": p.open_time[r + cfg.n_ahead - 1],
                }).with_columns(pl.col(TIME_COLUMNS).dt.replace_time_zone("UTC")))
                row += len(r)
        index = (pl.concat(index_parts) if index_parts else pl.DataFrame(
            schema={"split": pl.String, "row": pl.Int64, "symbol": pl.String, "freq_min": pl.Int64}
            | {c: pl.Datetime("us", "UTC") for c in TIME_COLUMNS}))
        index.write_parquet(tmp / INDEX_FILE)
        dropped = sum(p.dropped_bad_normaliser for p in plans)
        no_volume = sum(p.dropped_no_volume for p in plans)
        bad_rows = sum(p.dropped_bad_rows for p in plans)
        meta = {"config": {k: (v.isoformat() if isinstance(v, date) else v) for k, v in asdict(cfg).items()},
                "features": FEATURE_NAMES[cfg.seasonality], "counts": counts, "bars": int(offsets[-1]),
                "dropped_bad_normaliser": dropped, "dropped_no_volume": no_volume, "dropped_bad_rows": bad_rows,
                "built_at": datetime.now(timezone.utc).isoformat(), "digest": content_digest(tmp)}
        failpoint("windows")
        meta_file(tmp).write_text(json.dumps(meta, indent=2))
    return BuildReport(counts, window_counts(index), dropped, directory, no_volume, bad_rows)


def window_counts(index: pl.DataFrame) -> pl.DataFrame:
    """Windows per split, frequency and symbol, with the first and last execution start (UTC date)."""
    order = pl.col("split").replace_strict({s: i for i, s in enumerate(SPLITS)}, return_dtype=pl.Int8)
    return (index.group_by("split", "freq_min", "symbol")
            .agg(pl.len().alias("windows"), pl.col("start_time").min().dt.date().alias("first_start"),
                 pl.col("start_time").max().dt.date().alias("last_start"))
            .sort(order, "freq_min", "symbol"))


def content_digest(directory: Path) -> str:
    """sha256 over every data file of a windows directory (names and bytes; not meta.json, which
    holds the build time): what a training run is keyed by and a model is tied to."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(directory).iterdir() if p.is_file() and p.name != meta_file(directory).name):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


def windows_digest(directory: str | Path) -> str:
    """The digest recorded when the directory was built (computed now for older builds)."""
    return read_meta(directory).get("digest") or content_digest(Path(directory))


def read_meta(path: str | Path) -> dict:
    """A windows directory's meta.json (or a copy of it, given as a file)."""
    path = Path(path)
    return json.loads((meta_file(path) if path.is_dir() else path).read_text())


def read_index(directory: str | Path, split: str | None = None) -> pl.DataFrame:
    """The windows index, or one split's rows of it in row order."""
    index = pl.read_parquet(Path(directory) / INDEX_FILE)
    return index if split is None else index.filter(pl.col("split") == split).sort("row")
