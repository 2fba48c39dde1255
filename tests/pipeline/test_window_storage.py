"""Per-bar window storage: what a batch yields is, bit for bit, what materialising every window
(the builder before per-bar storage) gave for the same starts, on real Dow and crypto bars."""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl
import pytest
import torch
from torch.utils.data import DataLoader

from lem_model.window_dataset import SPLITS, WindowDataset, bars_file
from lem_pipeline.bars import ResampleConfig, daily_bars, resample_klines
from lem_pipeline.sources.binance import KlineStream, read_klines
from lem_pipeline.sources.yahoo import CsvDirectorySource
from lem_pipeline.windows import SeriesWindows, WindowConfig, build_windows, plan_series
from tests.conftest import BINANCE_MIRROR, YAHOO_DIR


def materialised(s: SeriesWindows, starts: np.ndarray, cfg: WindowConfig):
    """The reference: every window cut with strided views of one series, as the builder wrote
    them to ``{split}_x.npy`` before per-bar storage (kept here, verbatim in its arithmetic)."""
    L, N, T = cfg.lookback, cfg.n_ahead, cfg.seq_len
    first = starts - L
    feats = s.feats
    rows = np.lib.stride_tricks.as_strided(feats, shape=(len(feats) - T + 1, T, feats.shape[1]),
                                           strides=(feats.strides[0], feats.strides[0], feats.strides[1]),
                                           writeable=False)
    x = np.empty((len(starts), T, cfg.n_features), np.float32)
    volumes, prices = np.empty((len(starts), N), np.float32), np.empty((len(starts), N), np.float32)
    x[:, :, :-2] = rows[first]
    view = np.lib.stride_tricks.sliding_window_view
    price_scale = s.vwap[first][:, None]
    vol_scale = s.vol_norm[starts + N - 1][:, None]
    x[:, :, -2] = view(s.vwap, T)[first] / price_scale
    x[:, :, -1] = view(s.volume, T)[first] / vol_scale
    prices[:] = view(s.vwap, N)[starts] / price_scale
    volumes[:] = view(s.volume, N)[starts] / vol_scale
    return x, volumes, prices


def equity_series() -> tuple[list[pl.DataFrame], WindowConfig]:
    src = CsvDirectorySource(YAHOO_DIR)
    series = [daily_bars(src.load(t, date(2000, 1, 3), date(2024, 12, 31)).with_columns(pl.lit(t).alias("ticker")))
              for t in ("AAPL", "KO", "MSFT")]
    return series, WindowConfig(stride=2)  # the paper's L=120, N=12; splits 2017 / 2020


def crypto_series() -> tuple[list[pl.DataFrame], WindowConfig]:
    stream = KlineStream("BTCUSDT", "spot", "1h")
    months = pl.date_range(date(2020, 1, 1), date(2021, 11, 1), "1mo", eager=True).to_list()
    klines = pl.concat([read_klines(BINANCE_MIRROR / stream.monthly_path(m)) for m in months]).with_columns(
        pl.lit("BTCUSDT").alias("symbol"))
    # bridged at the presets' 6 hours: the windows hold flagged zero-volume bars from real outages
    series = [resample_klines(klines, f, ResampleConfig(base_minutes=60, max_missing_base=6)) for f in (60, 120, 240)]
    assert all(s["bridged"].sum() > 0 for s in series)
    return series, WindowConfig(seasonality="intraday", val_start=date(2021, 5, 1), test_start=date(2021, 8, 1))


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32)


@pytest.mark.parametrize("make", [equity_series, crypto_series], ids=["dow", "crypto"])
def test_batches_are_bit_identical_to_materialised_windows(make, tmp_path):
    series, cfg = make()
    build_windows(series, cfg, tmp_path / "w")
    plans = [plan_series(b, cfg) for b in series]
    total = 0
    for split in SPLITS:
        want = [np.concatenate(a) for a in zip(*(materialised(p, p.starts[split], cfg) for p in plans))]
        data = WindowDataset(tmp_path / "w", split)
        assert len(data) == len(want[0])
        total += len(data)
        if not len(data):
            continue
        got = [torch.stack(t).numpy() for t in zip(*data.__getitems__(list(range(len(data)))))]
        for g, w in zip(got, want):
            assert g.dtype == np.float32 and g.shape == w.shape
            assert np.array_equal(bits(g), bits(w))
        # a shuffled batch through the DataLoader: the same windows, in the order asked for
        idx = np.random.default_rng(1).permutation(len(data))[:64]
        x, v, p = next(iter(DataLoader(data, batch_size=64, sampler=idx.tolist())))
        for g, w in zip((x, v, p), want):
            assert np.array_equal(bits(g.numpy()), bits(w[idx]))
    assert total > 1000


def test_storage_is_the_bars_once_not_the_windows(tmp_path):
    series, cfg = equity_series()
    report = build_windows(series, cfg, tmp_path / "w")
    stored = sum(f.stat().st_size for f in (tmp_path / "w").glob("*.npy"))
    materialised_bytes = sum(report.counts.values()) * (cfg.seq_len * cfg.n_features + 2 * cfg.n_ahead) * 4
    n_bars = sum(len(b) for b in series)
    assert np.load(bars_file(tmp_path / "w", "vwap"), mmap_mode="r").shape == (n_bars,)
    assert stored * 30 < materialised_bytes  # the bound, at stride 2 on three stocks
    assert stored < n_bars * 60  # 5 float32 features + 3 float64 per bar, and one int64 per window
