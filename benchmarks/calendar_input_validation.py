"""Whether the LEM can use the calendar of the bars still to come, on the validation split only
(never the test split). The dates of the coming sessions are known in advance: whether the next
one is a quarterly or monthly option expiry, a month's last session, the session before a market
holiday, or in the year-end weeks (benchmarks/volume_forecast_baseline.py's Session; scaled by
it, a simple volume forecast's Match VWAP std reduction rises from 0.073 to 0.082). Today's
inputs give a bar's weekday and month only once the bar is past.

This writes a copy of a daily windows directory whose every bar also carries five 0/1 features,
the kind of the session after it (so the context row an allocator reads before step s says what
bar s will be), trains the preset's model on it with the preset's training (the seed given) and
prints, on the validation windows, the advantage over the one-line rule per side and minimum
period and the Match VWAP std reduction. Compare with the model on the plain windows, e.g. the
preset's own (benchmarks/seed_ensemble_validation.py prints the same lines for it).

    python benchmarks/calendar_input_validation.py WINDOWS_DIR --out DIR [--seed 0] [--preset dow30_cpu]

About 15 minutes on 2 cores for dow30_cpu.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import torch
from seed_ensemble_validation import report, train_seed
from volume_forecast_baseline import Session, session_kind

from lem_model.evaluate import evaluate
from lem_model.saved_model import load_model
from lem_model.window_dataset import BAR_ARRAYS, WindowDataset, bars_file, meta_file, starts_file

SPLITS = ("train", "val", "test")
NEW_FEATURES = [f"next_{k.name.lower()}" for k in Session if k != Session.ORDINARY]


def bar_dates(windows: Path, n_bars: int, lookback: int, n_ahead: int) -> np.ndarray:
    """(n_bars,) each bar's date (datetime64[D]; NaT where no window dates it), from the index:
    a window's first, start and last bars."""
    dates = np.full(n_bars, np.datetime64("NaT"), "datetime64[D]")
    index = pl.read_parquet(windows / "index.parquet")
    for split in SPLITS:
        starts = np.load(starts_file(windows, split))
        rows = index.filter(pl.col("split") == split).sort("row")
        for offset, column in ((-lookback, "first_time"), (0, "start_time"), (n_ahead - 1, "end_time")):
            dates[starts + offset] = rows[column].dt.date().to_numpy().astype("datetime64[D]")
    return dates


def next_session_features(windows: Path, meta: dict) -> np.ndarray:
    """(n_bars, 5): one-hot of the kind of the session after each bar (zeros at a series' end)."""
    n = len(np.load(bars_file(windows, "features"), mmap_mode="r"))
    dates = bar_dates(windows, n, meta["config"]["lookback"], meta["config"]["n_ahead"])
    days = np.unique(dates[~np.isnat(dates)])
    following = np.append(days[1:], days[-1] + 1)
    kind = {d: session_kind(d.astype(object), f.astype(object)) for d, f in zip(days, following)}
    out = np.zeros((n, len(NEW_FEATURES)), np.float32)
    nxt = dates[1:]
    later = ~np.isnat(nxt) & ~np.isnat(dates[:-1]) & (nxt > dates[:-1])  # the next bar is the same series'
    undated = int((np.isnat(dates[:-1]) | np.isnat(nxt)).sum())
    print(f"{windows}: {n} bars, {undated} next to an undated one (no calendar feature there)")
    for i in np.flatnonzero(later):
        k = kind[nxt[i]]
        if k != Session.ORDINARY:
            out[i, k - 1] = 1
    return out


def calendar_windows(windows: Path, out: Path) -> Path:
    """``out``: ``windows`` with the next session's kind among each bar's features."""
    meta = json.loads(meta_file(windows).read_text())
    if meta["config"]["seasonality"] != "daily":
        raise SystemExit(f"{windows}: calendar features need daily windows, not {meta['config']['seasonality']}")
    return windows_with_features(windows, meta, out, next_session_features(windows, meta), NEW_FEATURES)


def windows_with_features(windows: Path, meta: dict, out: Path, columns: np.ndarray, names: list[str]) -> Path:
    """``out``: ``windows`` with ``columns`` (n_bars, len(names)) appended to each bar's features,
    before the price and volume columns (the other arrays linked, not copied)."""
    out.mkdir(parents=True, exist_ok=True)
    features = np.load(bars_file(windows, "features"))
    np.save(bars_file(out, "features"), np.concatenate([features, columns.astype(features.dtype)], axis=1))
    for name in BAR_ARRAYS:
        if name != "features" and not bars_file(out, name).exists():
            os.symlink(bars_file(windows, name).resolve(), bars_file(out, name))
    for split in SPLITS:
        if not starts_file(out, split).exists():
            os.symlink(starts_file(windows, split).resolve(), starts_file(out, split))
    if not (out / "index.parquet").exists():
        os.symlink((windows / "index.parquet").resolve(), out / "index.parquet")
    before = meta["features"]  # the per-bar features, then the price and volume columns
    meta_file(out).write_text(json.dumps(meta | {"features": before[:-2] + names + before[-2:]}, indent=2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("windows", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="where the calendar windows and the model go")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="dow30_cpu")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    windows = calendar_windows(args.windows, args.out / "windows")
    model = load_model(train_seed(windows, args.seed, args.preset, args.out))
    val = WindowDataset(windows, "val")
    N = model.cfg.n_ahead
    print(f"validation, {len(val)} windows, {model.cfg.n_features} features")
    report(f"with the next session's calendar, seed {args.seed}", evaluate(model, val, min_rate=1 / N**2,
                                                                            batch_size=1024))


if __name__ == "__main__":
    main()
