"""Features: regular bars per (symbol, frequency), then windows, targets and time splits."""

from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
from dagster import AssetExecutionContext

from lem_pipeline.bars import ResampleConfig, daily_bars, resample_klines
from lem_pipeline.presets import Preset
from lem_pipeline.resources import DataLake, write_parquet_atomic
from lem_pipeline.sources.binance import interval_seconds
from lem_pipeline.tables import markdown_table
from lem_pipeline.windows import SPLITS, TIME_COLUMNS, BuildReport, WindowConfig, build_windows

FINITE_CHECK = "finite_windows"
SPLIT_CHECK = "windows_inside_splits"
_CHUNK = 4096


def _read_bars(folder: Path) -> list[pl.DataFrame]:
    return [pl.read_parquet(f) for f in sorted(folder.glob("*.parquet"))]


def _windows_result(report: BuildReport, cfg: WindowConfig) -> dg.MaterializeResult:
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(report.directory)),
            **{f"{s}_windows": report.counts[s] for s in SPLITS},
            "dropped_bad_normaliser": report.dropped_bad_normaliser,
            "counts": dg.MetadataValue.md(markdown_table(report.per_group)),
            "lookback": cfg.lookback, "n_ahead": cfg.n_ahead, "norm_window": cfg.norm_window,
            "val_start": cfg.val_start.isoformat(), "test_start": cfg.test_start.isoformat(),
        },
        check_results=[_finite_check(report.directory), _split_check(report.directory, cfg)],
    )


def _finite_check(directory: Path) -> dg.AssetCheckResult:
    bad = {}
    for split in SPLITS:
        for name in ("x", "volumes", "prices"):
            arr = np.load(directory / f"{split}_{name}.npy", mmap_mode="r")
            n_bad = sum(int((~np.isfinite(arr[i : i + _CHUNK])).sum()) for i in range(0, len(arr), _CHUNK))
            if n_bad:
                bad[f"{split}_{name}"] = n_bad
    return dg.AssetCheckResult(check_name=FINITE_CHECK, passed=not bad, metadata={"non_finite_values": bad or "none"})


def _split_check(directory: Path, cfg: WindowConfig) -> dg.AssetCheckResult:
    index = pl.read_parquet(directory / "index.parquet")
    val = pl.lit(cfg.val_start).cast(pl.Datetime("us", "UTC"))
    test = pl.lit(cfg.test_start).cast(pl.Datetime("us", "UTC"))
    inside = (pl.when(pl.col("split") == "train").then(pl.col("end_time") < val)
              .when(pl.col("split") == "val").then((pl.col("first_time") >= val) & (pl.col("end_time") < test))
              .otherwise(pl.col("first_time") >= test))
    outside = index.filter(~inside)
    return dg.AssetCheckResult(check_name=SPLIT_CHECK, passed=outside.is_empty(),
                               metadata={"windows_outside_their_split": len(outside),
                                         "examples": dg.MetadataValue.md(markdown_table(outside.head(10).select(
                                             "split", "symbol", "freq_min", *TIME_COLUMNS)))})


def _checks(asset: str) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(FINITE_CHECK, asset=asset, blocking=True, description="no NaN or inf in any array"),
            dg.AssetCheckSpec(SPLIT_CHECK, asset=asset, blocking=True,
                              description="every window's bars lie inside its split (purged boundaries)")]


def _bars_result(out_dir: Path, rows: list[dict]) -> dg.MaterializeResult:
    summary = pl.DataFrame(rows)
    return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(out_dir)),
                                          "series": dg.MetadataValue.md(markdown_table(summary)),
                                          "bars": int(summary["bars"].sum()) if rows else 0})


def build_feature_assets(preset: Preset) -> list[dg.AssetsDefinition]:
    @dg.asset(deps=["binance_klines"], group_name="features", kinds={"polars", "parquet"},
              description="Klines resampled per symbol and frequency on a UTC grid; VWAP; contiguous segments.")
    def crypto_bars(context: AssetExecutionContext, lake: DataLake) -> dg.MaterializeResult:
        out_dir = lake.path / "bars" / "crypto"
        rows = []
        for stream in preset.streams:
            files = lake.klines_files(stream)
            klines = pl.concat([pl.read_parquet(f) for f in files]) if files else pl.DataFrame()
            if klines.is_empty():
                context.log.warning(f"{stream.symbol}: no klines materialised yet; skipped")
                continue
            cfg = ResampleConfig(base_minutes=interval_seconds(stream.interval) // 60,
                                 max_missing_base=preset.max_missing_base)
            for freq in preset.crypto_frequencies:
                bars = resample_klines(klines.filter(pl.col("volume").is_not_null()), freq, cfg)
                write_parquet_atomic(bars, out_dir / f"{stream.symbol}_{freq}m.parquet")
                rows.append({"symbol": stream.symbol, "freq_min": freq, "bars": len(bars),
                             "segments": bars["segment"].n_unique(), "zero_volume_bars": int((bars["volume"] == 0).sum())})
        return _bars_result(out_dir, rows)

    @dg.asset(deps=["yahoo_daily_bars"], group_name="features", kinds={"polars", "parquet"},
              description="Daily bars: VWAP = adjusted close, quote volume = volume x adjusted close.")
    def equity_bars(context: AssetExecutionContext, lake: DataLake) -> dg.MaterializeResult:
        out_dir = lake.path / "bars" / "equity"
        rows = []
        for ticker in preset.tickers:
            src = lake.daily_file(ticker)
            if not src.exists():
                context.log.warning(f"{ticker}: no daily bars materialised yet; skipped")
                continue
            bars = daily_bars(pl.read_parquet(src))
            write_parquet_atomic(bars, out_dir / f"{ticker}_1440m.parquet")
            rows.append({"symbol": ticker, "bars": len(bars)})
        return _bars_result(out_dir, rows)

    def windows_asset(dataset: str, bars_asset: dg.AssetsDefinition, cfg: WindowConfig) -> dg.AssetsDefinition:
        @dg.asset(name=f"{dataset}_windows", deps=[bars_asset], group_name="features", kinds={"numpy", "parquet"},
                  check_specs=_checks(f"{dataset}_windows"),
                  description=f"{dataset.capitalize()} windows of every series merged, with targets, "
                              "split by date with purging.")
        def _windows(context: AssetExecutionContext, lake: DataLake) -> dg.MaterializeResult:
            report = build_windows(_read_bars(lake.path / "bars" / dataset), cfg, lake.path / "windows" / dataset)
            context.log.info(f"{dataset} windows: {report.counts}, dropped (bad normaliser): "
                             f"{report.dropped_bad_normaliser}")
            return _windows_result(report, cfg)

        return _windows

    crypto_windows = windows_asset("crypto", crypto_bars, preset.crypto_windows)
    equity_windows = windows_asset("equity", equity_bars, preset.equity_windows)
    return [crypto_bars, equity_bars, crypto_windows, equity_windows]
