"""Features: regular bars per (symbol, frequency), then windows, targets and time splits."""

import dagster as dg
import polars as pl
from dagster import AssetExecutionContext

from lem_model.window_dataset import SPLITS
from lem_pipeline.bars import DAILY_MINUTES, ResampleConfig, daily_bars, resample_klines
from lem_pipeline.lake import DataLake, write_parquet_atomic
from lem_pipeline.presets import Preset
from lem_pipeline.reporting import markdown
from lem_pipeline.sources.binance import interval_seconds
from lem_pipeline.windows import BuildReport, WindowConfig, build_windows


def _windows_result(report: BuildReport, cfg: WindowConfig) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(report.directory)),
        **{f"{s}_windows": report.counts[s] for s in SPLITS},
        "dropped_bad_normaliser": report.dropped_bad_normaliser,
        "dropped_no_volume": report.dropped_no_volume,
        "dropped_bad_rows": report.dropped_bad_rows,
        "counts": dg.MetadataValue.md(markdown(report.per_group)),
        "lookback": cfg.lookback, "n_ahead": cfg.n_ahead, "norm_window": cfg.norm_window,
        "val_start": cfg.val_start.isoformat(), "test_start": cfg.test_start.isoformat(),
    })


def _bars_result(lake: DataLake, dataset: str, rows: list[dict]) -> dg.MaterializeResult:
    summary = pl.DataFrame(rows)
    return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(lake.bars_dir(dataset))),
                                          "series": dg.MetadataValue.md(markdown(summary)),
                                          "bars": int(summary["bars"].sum()) if rows else 0})


def build_feature_assets(preset: Preset) -> list[dg.AssetsDefinition]:
    @dg.asset(deps=["binance_klines"], group_name="features", kinds={"polars", "parquet"},
              description="Klines resampled per symbol and frequency on a UTC grid; VWAP; segments, with "
                          "short outages bridged (zero-volume bars, flagged).")
    def crypto_bars(context: AssetExecutionContext, lake: DataLake) -> dg.MaterializeResult:
        rows = []
        for stream in preset.streams:
            files = lake.klines_files(stream, preset.crypto_first_month, preset.crypto_last_month)
            klines = pl.concat([pl.read_parquet(f) for f in files]) if files else pl.DataFrame()
            if klines.is_empty():
                context.log.warning(f"{stream.symbol}: no klines materialised yet; skipped")
                continue
            base_minutes = interval_seconds(stream.interval) // 60
            cfg = ResampleConfig(base_minutes=base_minutes, max_missing_base=preset.bridge_minutes // base_minutes)
            for freq in preset.crypto_frequencies:
                bars = resample_klines(klines.filter(pl.col("volume").is_not_null()), freq, cfg)
                write_parquet_atomic(bars, lake.bars_file("crypto", stream.symbol, freq))
                rows.append({"symbol": stream.symbol, "freq_min": freq, "bars": len(bars),
                             "segments": bars["segment"].n_unique(), "zero_volume_bars": int((bars["volume"] == 0).sum()),
                             "bridged_bars": int(bars["bridged"].sum())})
        return _bars_result(lake, "crypto", rows)

    @dg.asset(deps=["yahoo_daily_bars"], group_name="features", kinds={"polars", "parquet"},
              description="Daily bars: VWAP = adjusted close, quote volume = volume x adjusted close.")
    def equity_bars(context: AssetExecutionContext, lake: DataLake) -> dg.MaterializeResult:
        rows = []
        for ticker in preset.tickers:
            src = lake.daily_file(ticker)
            if not src.exists():
                context.log.warning(f"{ticker}: no daily bars materialised yet; skipped")
                continue
            bars = daily_bars(pl.read_parquet(src))
            write_parquet_atomic(bars, lake.bars_file("equity", ticker, DAILY_MINUTES))
            rows.append({"symbol": ticker, "bars": len(bars)})
        return _bars_result(lake, "equity", rows)

    def preset_bars(lake: DataLake, dataset: str) -> list[pl.DataFrame]:
        """The bars of exactly this preset's series (not whatever else a shared data dir holds)."""
        if dataset == "crypto":
            files = [lake.bars_file(dataset, s.symbol, f) for s in preset.streams for f in preset.crypto_frequencies]
        else:
            files = [lake.bars_file(dataset, t, DAILY_MINUTES) for t in preset.tickers]
        return [pl.read_parquet(f) for f in files if f.exists()]

    def windows_asset(dataset: str, bars_asset: dg.AssetsDefinition, cfg: WindowConfig) -> dg.AssetsDefinition:
        @dg.asset(name=f"{dataset}_windows", deps=[bars_asset], group_name="features", kinds={"numpy", "parquet"},
                  description=f"{dataset.capitalize()} windows of every series merged, with targets, "
                              "split by date with purging.")
        def _windows(context: AssetExecutionContext, lake: DataLake) -> dg.MaterializeResult:
            report = build_windows(preset_bars(lake, dataset), cfg, lake.windows_dir(dataset))
            context.log.info(f"{dataset} windows: {report.counts}, dropped (bad normaliser): "
                             f"{report.dropped_bad_normaliser}")
            return _windows_result(report, cfg)

        return _windows

    crypto_windows = windows_asset("crypto", crypto_bars, preset.crypto_windows)
    equity_windows = windows_asset("equity", equity_bars, preset.equity_windows)
    return [crypto_bars, equity_bars, crypto_windows, equity_windows]
