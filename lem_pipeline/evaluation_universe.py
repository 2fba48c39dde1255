"""The bars and test windows of an evaluation universe that the pipeline did not ingest, for
``lem evaluate``: Yahoo-layout CSVs or a Binance Data Vision tree, turned into bars exactly as
the pipeline turns them (lem_pipeline.bars), and into windows with the model's own WindowConfig
(lem_pipeline.windows), only the split dates moved, so a test window here is what a test window
of the same bars would have been in training.

Test span: a window is a test window when its first bar (lookback included) is on or after the
test start, as in training (purged: no input from before the test start); with a test end, only
windows whose last execution bar opens on or before that date count, which is the same as
cutting the bars after it (every feature and normaliser looks back only). Everything before the
test start is warm-up for the volume normaliser; no window there is evaluated.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import polars as pl

from lem_pipeline.bars import DAILY_MINUTES, ResampleConfig, daily_bars, resample_klines
from lem_pipeline.errors import UserError
from lem_pipeline.partitions import next_month, utc_midnight
from lem_pipeline.presets import Preset
from lem_pipeline.schemas import DailyBars, KlineBars, describe_failures, validate
from lem_pipeline.sources.binance import BinanceDataVision, DataVisionError, KlineStream, interval_seconds, read_month
from lem_pipeline.sources.yahoo import CsvDirectorySource, YahooSourceError
from lem_pipeline.windows import BuildReport, WindowConfig, build_windows

BRIDGE_MINUTES = Preset.bridge_minutes  # the presets' default outage bridging (a model does not record its own)


def cut_at(bars: pl.DataFrame, test_end: date | None) -> pl.DataFrame:
    """Bars opening on or before ``test_end`` (all of them without one)."""
    return bars if test_end is None else bars.filter(pl.col("open_time") < utc_midnight(test_end + timedelta(days=1)))


def _validated(model, df: pl.DataFrame, what: str) -> pl.DataFrame:
    """``df`` if it passes the pandera model the pipeline's ingest blocks on; else a one-line
    UserError naming the first failing row (an evaluation of bars the pipeline would refuse is
    not comparable with its tables)."""
    failures = validate(model, df)
    if failures is None:
        return df
    raise UserError(f"{what}: {len(failures)} failing (check, row) pairs, the first {describe_failures(failures, 1)}")


def yahoo_bars(directory: Path, tickers: Sequence[str], test_end: date | None, *, cfg: WindowConfig,
               test_start: date) -> list[pl.DataFrame]:
    """Daily bars of each ticker from ``{directory}/{TICKER}.csv``, all of its history up to
    ``test_end`` (the window starts keep the phase they had in training), validated from the
    warm-up on: the bars a test window reads. An old bad row no test window sees is not ours
    to refuse."""
    source = CsvDirectorySource(directory)
    out = []
    for ticker in tickers:
        if not (directory / f"{ticker}.csv").is_file():
            raise UserError(f"--tickers {ticker}: no file {source.describe(ticker)} in --yahoo-dir {directory}")
        try:
            daily = source.load(ticker, date.min, test_end or date.max)
        except YahooSourceError as e:
            raise UserError(f"--tickers {ticker}: {e}") from e
        daily = daily.select(pl.lit(ticker).alias("ticker"), pl.all())
        read = daily.filter(pl.col("date") >= warmup_start(cfg, DAILY_MINUTES, test_start))
        _validated(DailyBars, read, f"--tickers {ticker}: {source.describe(ticker)}")
        out.append(daily_bars(daily))
    return out


def warmup_start(cfg: WindowConfig, freq_min: int, test_start: date) -> date:
    """The first day whose bars a test window starting at ``test_start`` can need: a window's own
    bars and its normaliser's reach back ``cfg.first_start - cfg.n_ahead`` bars before its first
    bar, doubled for outages and closed markets."""
    bars_before = cfg.first_start - cfg.n_ahead
    return test_start - timedelta(minutes=2 * bars_before * freq_min)


def binance_bars(url: str, symbols: Sequence[str], *, market: str, interval: str, freq_min: int,
                 cfg: WindowConfig, test_start: date, test_end: date | None) -> list[pl.DataFrame]:
    """Bars of ``freq_min`` minutes per symbol from the monthly klines the test span needs (from
    the warm-up to ``test_end``, or to the last published month), resampled as the pipeline does."""
    try:
        streams = [KlineStream(s, market, interval) for s in symbols]
    except ValueError as e:
        raise UserError(f"--market {market} / --interval {interval}: {e}") from e
    base_minutes = interval_seconds(interval) // 60
    if freq_min % base_minutes:
        raise UserError(f"--freq-min {freq_min}: not a multiple of the {interval} candles")
    resample = ResampleConfig(base_minutes=base_minutes, max_missing_base=BRIDGE_MINUTES // base_minutes)
    first = warmup_start(cfg, freq_min, test_start).replace(day=1)
    today = datetime.now(timezone.utc).date()
    last = (test_end or today).replace(day=1)
    out = []
    with tempfile.TemporaryDirectory(prefix="lem-evaluate-klines-") as cache:
        try:
            client = BinanceDataVision(url, cache_dir=cache)
        except (ValueError, DataVisionError) as e:
            raise UserError(f"--binance-url {url}: {e}") from e
        for stream in streams:
            months, month = [], first
            while month <= last:
                try:
                    files = client.fetch_month(stream, month, today=today)
                    frame = read_month(files.paths)
                except DataVisionError as e:
                    raise UserError(f"--symbols {stream.symbol}: {e}") from e
                if files.listed:  # every month to the last, whatever is missing before it
                    months.append(frame)
                month = next_month(month)
            if not months:
                raise UserError(f"--symbols {stream.symbol}: no {market} {interval} klines at --binance-url {url} "
                                f"from {first:%Y-%m} to {last:%Y-%m}")
            klines = _validated(KlineBars, pl.concat(months).select(pl.lit(stream.symbol).alias("symbol"), pl.all()),
                                f"--symbols {stream.symbol}")
            bars = resample_klines(klines, freq_min, resample)
            out.append(cut_at(bars, test_end))
    return out


def evaluation_config(cfg: WindowConfig, test_start: date) -> WindowConfig:
    """The model's windows config with the test split from ``test_start`` (no validation split:
    whatever comes before is warm-up)."""
    return dataclasses.replace(cfg, val_start=test_start, test_start=test_start)


def needed_bars(cfg: WindowConfig) -> tuple[int, int]:
    """Bars one test window needs (on or after the test start, before it): its lookback and
    horizon; and its features' and normaliser's warm-up."""
    return cfg.lookback + cfg.n_ahead, cfg.first_start - cfg.lookback


def build_test_windows(series: Sequence[pl.DataFrame], cfg: WindowConfig, test_start: date, test_end: date | None,
                       directory: Path, what: str) -> BuildReport:
    """Windows of ``series`` into ``directory`` with the test split from ``test_start`` to
    ``test_end``; a UserError naming the bars a window needs when there is not one test window."""
    series = [cut_at(s, test_end) for s in series]
    report = build_windows(series, evaluation_config(cfg, test_start), directory)
    if report.counts["test"]:
        return report
    after, before = needed_bars(cfg)
    t0 = utc_midnight(test_start)
    have = ", ".join(f"{s['symbol'][0]} has {int((s['open_time'] >= t0).sum())} from it and "
                     f"{int((s['open_time'] < t0).sum())} before" for s in series if len(s))
    span = f"from --test-start {test_start}" + (f" to --test-end {test_end}" if test_end else "")
    raise UserError(f"{what}: too few bars for one test window: a window needs {after} bars {span} "
                    f"(lookback {cfg.lookback} + horizon {cfg.n_ahead}) and {before} before it (the normaliser's "
                    f"warm-up); {have or 'there are none'}")
