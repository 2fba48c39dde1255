"""Window builder throughput against a baseline on the same series, in one process.

The baseline is the reference ``lems.data_formater.prepare_data_with_ahead_inputs`` when
``lems`` is importable (run this script with an interpreter that has both ``lems`` and this
project), otherwise a plain per-window loop that computes the same windows one at a time.

    python benchmarks/windows.py [--tickers 30]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl

from lem_pipeline.bars import daily_bars
from lem_pipeline.presets import DOW_30
from lem_pipeline.sources.yahoo import CsvDirectorySource
from lem_pipeline.windows import WindowConfig, bar_features, build_windows, plan_series

YAHOO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "yahoo"


def per_window_loop(series: list[pl.DataFrame], cfg: WindowConfig) -> int:
    """The obvious implementation: for each window, slice, normalise and stack its rows."""
    L, N = cfg.lookback, cfg.n_ahead
    names = ["volume_rel", "vwap_return", "day_of_week", "month_of_year", "frequency"]
    out = []
    for bars in series:
        df = bar_features(bars, cfg)
        feats = df.select(names).to_numpy()
        vwap, volume, vol_norm = df["vwap"].to_numpy(), df["volume"].to_numpy(), df["vol_norm"].to_numpy()
        for r in plan_series(bars, cfg).starts["train"]:
            s = vol_norm[r + N - 1]
            rows = []
            for t in range(r - L, r + N - 1):
                rows.append([*feats[t], vwap[t] / vwap[r - L], volume[t] / s])
            out.append((np.asarray(rows, np.float32), np.asarray(volume[r : r + N] / s, np.float32),
                        np.asarray(vwap[r : r + N] / vwap[r - L], np.float32)))
    return len(out)


def reference(series: list[pl.DataFrame], cfg: WindowConfig) -> int | None:
    """lems 0.1.1's window builder on the same per-bar columns (its own 336-bar normalisation)."""
    try:
        from lems.data_formater import prepare_data_with_ahead_inputs
    except ImportError:
        return None
    n = 0
    for bars in series:
        df = bar_features(bars, cfg)
        vwap, volume = df["vwap"].to_numpy(), df["volume"].to_numpy()
        feats = np.column_stack([volume, df.select("frequency", "month_of_year", "day_of_week", "vwap_return").to_numpy(),
                                 vwap, volume])[1:]  # reference layout; the first bar has no return
        x, _, _ = prepare_data_with_ahead_inputs(vwap[1:], volume[1:], feats, df["open_time"].to_numpy()[1:],
                                                 cfg.lookback, cfg.n_ahead)
        n += len(x)
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tickers", type=int, default=30)
    args = ap.parse_args()
    src = CsvDirectorySource(YAHOO)
    series = [daily_bars(src.load(t, date(2000, 1, 3), date(2024, 12, 31)).with_columns(pl.lit(t).alias("ticker")))
              for t in DOW_30[: args.tickers]]
    cfg = WindowConfig(val_start=date(2030, 1, 1), test_start=date(2031, 1, 1))  # every window in one split
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        report = build_windows(series, cfg, Path(d) / "w")
        ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_n = reference(series, cfg)
    if ref_n is not None:
        base, name = time.perf_counter() - t0, "lems.prepare_data_with_ahead_inputs"
    else:
        t0 = time.perf_counter()
        ref_n = per_window_loop(series, cfg)
        base, name = time.perf_counter() - t0, "per-window loop"
    print(f"{len(series)} Dow series, L={cfg.lookback}, N={cfg.n_ahead}: {report.counts['train']} windows")
    print(f"builder (written to .npy): {ours:.3f} s")
    print(f"baseline ({name}, {ref_n} windows, in memory): {base:.3f} s")
    print(f"ratio: {base / ours:.1f}x")


if __name__ == "__main__":
    main()
