"""Short exchange outages are bridged: real BTCUSDT gaps become flagged zero-volume bars inside
one segment, windows cross them, and nothing downstream divides by their zero volume."""

from __future__ import annotations

import json
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
import torch

from lem_model import LargeExecutionModel, LEMConfig
from lem_model.evaluate import evaluate
from lem_model.loss import lem_loss
from lem_model.metrics import execution_metrics, slippage_bps
from lem_model.window_dataset import WindowDataset
from lem_pipeline.bars import ResampleConfig, resample_klines
from lem_pipeline.sources.binance import KlineStream, read_klines
from lem_pipeline.windows import FEATURE_NAMES, WindowConfig, build_windows
from tests.conftest import BINANCE_MIRROR

BTC_1H = KlineStream("BTCUSDT", "spot", "1h")
SIX_HOURS = 6  # 1h base candles: the presets' default bridge (360 minutes)
CFG = WindowConfig(lookback=48, n_ahead=12, norm_window=48, val_start=date(2030, 1, 1), test_start=date(2031, 1, 1),
                   seasonality="intraday")


def klines(first: str, last: str) -> pl.DataFrame:
    months = pl.date_range(date.fromisoformat(first + "-01"), date.fromisoformat(last + "-01"), "1mo", eager=True)
    return pl.concat([read_klines(BINANCE_MIRROR / BTC_1H.monthly_path(m)) for m in months]).with_columns(
        pl.lit("BTCUSDT").alias("symbol"))


def holes(raw: pl.DataFrame, min_missing: int = 2) -> pl.DataFrame:
    """Gaps of ``min_missing``+ missing hours: (last candle before, first candle after, missing hours)."""
    return (raw.select(pl.col("open_time").shift(1).alias("before"), pl.col("open_time").alias("after"))
            .with_columns(((pl.col("after") - pl.col("before")).dt.total_hours() - 1).alias("missing"))
            .filter(pl.col("missing") >= min_missing))


@pytest.fixture(scope="module")
def april(tmp_path_factory):
    raw = klines("2021-02", "2021-05")
    bars = resample_klines(raw, 60, ResampleConfig(base_minutes=60, max_missing_base=SIX_HOURS))
    out = tmp_path_factory.mktemp("outage") / "w"
    report = build_windows([bars], CFG, out)
    return raw, bars, out, report


def test_real_outages_are_bridged_and_flagged(april):
    raw, bars, _, _ = april
    gaps = holes(raw)
    # the two real outages of April 2021 in this data: 2021-04-20 (2 h) and 2021-04-25 (3 h)
    assert [(g.date(), m) for g, m in zip(gaps["before"], gaps["missing"])] == [(date(2021, 4, 20), 2),
                                                                                (date(2021, 4, 25), 3)]
    assert bars["segment"].n_unique() == 1  # bridged, not cut
    every = holes(raw, min_missing=1)  # the two outages and the single missing hours
    flagged = bars.filter(pl.col("bridged") == 1.0)
    missing_hours = [b + timedelta(hours=h) for b, m in zip(every["before"], every["missing"]) for h in range(1, m + 1)]
    assert len(missing_hours) > 5 and flagged["open_time"].to_list() == missing_hours  # exactly the missing hours
    assert flagged["volume"].to_list() == [0.0] * len(missing_hours)
    for t in missing_hours:  # the last VWAP carried over the outage
        before = bars.filter(pl.col("open_time") == every.filter(pl.col("before") < t)["before"].max())["vwap"]
        assert bars.filter(pl.col("open_time") == t)["vwap"].to_list() == before.to_list()


def test_windows_cross_the_outage_with_the_flag_visible_and_every_value_finite(april):
    raw, _, out, report = april
    index = pl.read_parquet(out / "index.parquet")
    gap = holes(raw).row(1, named=True)  # 2021-04-25
    across = index.filter((pl.col("first_time") < gap["before"]) & (pl.col("end_time") > gap["after"]))
    assert len(across) > CFG.lookback  # windows whose lookback or execution crosses the outage
    data = WindowDataset(out, "train")
    x, volumes, prices = data.gather(across["row"].to_numpy())
    flag = FEATURE_NAMES["intraday"].index("bridged")
    assert (x[:, :, flag] == 1.0).sum(axis=1).min() == gap["missing"]  # every crossing window sees the 3 hours
    assert np.isfinite(x).all() and np.isfinite(volumes).all() and np.isfinite(prices).all()
    assert (volumes == 0).any()  # some execution steps fall inside the outage
    assert report.dropped_no_volume == 0


def test_zero_volume_bars_divide_nothing_by_zero(april):
    raw, _, out, _ = april
    index = pl.read_parquet(out / "index.parquet")
    gap = holes(raw).row(1, named=True)
    # the windows whose first execution bars are the outage's: step 0 trades into zero volume
    rows = index.filter((pl.col("start_time") > gap["before"]) & (pl.col("start_time") < gap["after"]))["row"]
    rows = np.concatenate([rows.to_numpy(), index.filter(
        (pl.col("first_time") < gap["before"]) & (pl.col("end_time") > gap["after"]))["row"].to_numpy()])
    data = WindowDataset(out, "train")
    x, volumes, prices = (torch.from_numpy(a) for a in data.gather(rows))
    assert (volumes[: len(rows) // 10, 0] == 0).any()
    torch.manual_seed(0)
    cfg = LEMConfig(n_features=x.shape[-1], lookback=CFG.lookback, n_ahead=CFG.n_ahead, hidden_size=8,
                    num_embedding=4, num_heads=2, fused_hidden=8)
    model = LargeExecutionModel(cfg)
    lo, hi = torch.full((len(x),), 1 / 144), torch.ones(len(x))
    alloc = model(x, lo, hi)
    loss = lem_loss(alloc, volumes, prices)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        assert torch.isfinite(slippage_bps(alloc.double(), volumes.double(), prices.double())).all()
        assert all(np.isfinite(v) for v in execution_metrics(alloc.double(), volumes.double(), prices.double()).values())
    ev = evaluate(model, torch.utils.data.Subset(data, rows.tolist()), min_rate=1 / 144)
    assert ev.all_finite and np.isfinite(ev.model_bps).all() and np.isfinite(ev.rule_bps).all()
    assert np.isfinite(ev.twap_volume_bps).all() and np.isfinite(ev.twap_notional_bps).all()


def test_a_horizon_without_any_volume_is_not_a_window(tmp_path):
    """A bridged run longer than the horizon leaves windows with no market VWAP to match: they
    are dropped and counted, never written with a 0/0 benchmark."""
    raw = klines("2020-01", "2020-03")
    cut = raw["open_time"][1500]
    holed = raw.filter((pl.col("open_time") < cut) | (pl.col("open_time") >= cut + timedelta(hours=14)))
    bars = resample_klines(holed, 60, ResampleConfig(base_minutes=60, max_missing_base=14))
    assert bars["segment"].n_unique() == 1 and int(bars["bridged"].sum()) == 14
    report = build_windows([bars], CFG, tmp_path / "w")
    assert report.dropped_no_volume == 14 - CFG.n_ahead + 1  # starts whose 12 execution bars are all in the hole
    data = WindowDataset(tmp_path / "w", "train")
    _, volumes, _ = data.gather(np.arange(len(data)))
    assert (volumes.sum(axis=1) > 0).all()


def test_windows_lost_to_bad_rows_inside_a_segment_are_counted(tmp_path):
    """A run of norm_window zero-volume bars inside one segment (an illiquid pair) leaves the
    volume normaliser 0 and the relative volume 0/0: those windows cannot be written, and they are
    counted (meta.json, the asset's metadata), so every window the clean bars make is accounted
    for. Clean bars drop none for this reason: the warm-up is not bad data."""
    bars = resample_klines(klines("2020-01", "2020-03"), 60, ResampleConfig(base_minutes=60, max_missing_base=0))
    assert bars["segment"].n_unique() == 1
    idle = pl.int_range(pl.len()).is_between(900, 900 + CFG.norm_window + 20)
    quiet = bars.with_columns(volume=pl.when(idle).then(0.0).otherwise(pl.col("volume")))
    clean, holed = (build_windows([b], CFG, tmp_path / name) for b, name in ((bars, "clean"), (quiet, "quiet")))
    assert clean.dropped_bad_rows == 0 and holed.dropped_bad_rows > CFG.lookback
    lost = sum(clean.counts.values()) - sum(holed.counts.values())
    assert lost == (holed.dropped_bad_rows + holed.dropped_bad_normaliser - clean.dropped_bad_normaliser
                    + holed.dropped_no_volume - clean.dropped_no_volume)
    assert json.loads((tmp_path / "quiet" / "meta.json").read_text())["dropped_bad_rows"] == holed.dropped_bad_rows
