"""Bars, features, windows and splits on real data, checked by hand and for leaks."""

from __future__ import annotations

import dataclasses
import math
from datetime import date, datetime, timedelta, timezone

import numpy as np
import polars as pl

from lem_pipeline.bars import ResampleConfig, daily_bars, resample_klines
from lem_pipeline.checks import windows_inside_splits
from lem_pipeline.presets import DOW_30
from lem_pipeline.sources.binance import KlineStream, read_klines
from lem_pipeline.sources.yahoo import CsvDirectorySource
from lem_pipeline.windows import WindowConfig, build_windows, plan_series
from lem_model.window_dataset import WindowDataset
from tests.conftest import BINANCE_MIRROR, FULL_YAHOO_DIR, needs_full_mirror

BTC_1H = KlineStream("BTCUSDT", "spot", "1h")


def klines(stream: KlineStream, months: list[str]) -> pl.DataFrame:
    frames = [read_klines(BINANCE_MIRROR / stream.monthly_path(datetime.strptime(m, "%Y-%m").date())) for m in months]
    return pl.concat(frames).with_columns(pl.lit(stream.symbol).alias("symbol"))


def months(first: str, last: str) -> list[str]:
    out, d = [], datetime.strptime(first, "%Y-%m").date()
    while d.strftime("%Y-%m") <= last:
        out.append(d.strftime("%Y-%m"))
        d = date(d.year + d.month // 12, d.month % 12 + 1, 1)
    return out


def test_hand_computed_features_normalisers_and_targets(tmp_path):
    raw = klines(BTC_1H, ["2020-01"]).head(40)
    bars = resample_klines(raw, 60, ResampleConfig(base_minutes=60))
    cfg = WindowConfig(lookback=4, n_ahead=3, norm_window=5, val_start=date(2030, 1, 1), test_start=date(2031, 1, 1),
                       seasonality="intraday")
    report = build_windows([bars], cfg, tmp_path / "w")
    ds = WindowDataset(tmp_path / "w", "train")
    # By hand, from the CSV rows: bar t has volume v[t], VWAP q[t]/v[t].
    v = [float(x) for x in raw["volume"]]
    vwap = [float(q) / float(x) for q, x in zip(raw["quote_volume"], raw["volume"])]
    times = raw["open_time"].to_list()
    L, N, W = 4, 3, 5

    def norm(t):  # mean volume of the W bars ending L+N bars before t
        return sum(v[t - L - N - W + 1 : t - L - N + 1]) / W

    first_r = 2 * L + N + W - 1
    starts = list(range(first_r, 40 - N + 1))
    assert report.counts == {"train": len(starts), "val": 0, "test": 0} and len(ds) == len(starts) == 23
    for i, r in enumerate(starts):
        s = norm(r + N - 1)
        want_x = []
        for t in range(r - L, r + N - 1):
            want_x.append([v[t] / norm(t), vwap[t] / vwap[t - 1] - 1, times[t].hour / 24, times[t].weekday() / 7,
                           60 / 1440, 0.0, vwap[t] / vwap[r - L], v[t] / s])  # 0.0: no bridged outage here
        want_v = [v[t] / s for t in range(r, r + N)]
        want_p = [vwap[t] / vwap[r - L] for t in range(r, r + N)]
        x, vol, px = ds[i]
        np.testing.assert_allclose(x.numpy(), np.array(want_x, np.float32), rtol=2e-7, atol=0)
        np.testing.assert_allclose(vol.numpy(), np.array(want_v, np.float32), rtol=2e-7, atol=0)
        np.testing.assert_allclose(px.numpy(), np.array(want_p, np.float32), rtol=2e-7, atol=0)


def _window_inputs(plan, r, cfg):
    return (plan.feats[r - cfg.lookback : r], plan.vwap[r - cfg.lookback : r], plan.volume[r - cfg.lookback : r],
            plan.vol_norm[r + cfg.n_ahead - 1], plan.vwap[r - cfg.lookback])


def test_bars_at_or_after_execution_start_do_not_reach_lookback_or_normaliser(tmp_path):
    bars = resample_klines(klines(BTC_1H, months("2020-01", "2020-03")), 60, ResampleConfig(base_minutes=60))
    cfg = WindowConfig(lookback=24, n_ahead=6, norm_window=48, val_start=date(2030, 1, 1), test_start=date(2031, 1, 1),
                       seasonality="intraday")
    base = plan_series(bars, cfg)
    starts = base.starts["train"]
    rng = np.random.default_rng(0)
    for r in rng.choice(starts, 5, replace=False):
        cut = bars["open_time"][int(r)]
        changed = bars.with_columns(
            pl.when(pl.col("open_time") >= cut).then(pl.col("volume") * 7 + 1).otherwise(pl.col("volume")).alias("volume"),
            pl.when(pl.col("open_time") >= cut).then(pl.col("vwap") * 1.3).otherwise(pl.col("vwap")).alias("vwap"))
        after = plan_series(changed, cfg)
        assert int(r) in set(after.starts["train"].tolist())
        before_in, after_in = _window_inputs(base, r, cfg), _window_inputs(after, r, cfg)
        for a, b in zip(before_in, after_in):
            np.testing.assert_array_equal(a, b)  # lookback features, prices, volumes, both normalisers
        # ...and the written window's lookback rows are bit-identical
        build_windows([bars], cfg, tmp_path / "a")
        build_windows([changed], cfg, tmp_path / "b")
        rows = []
        for d in ("a", "b"):
            idx = pl.read_parquet(tmp_path / d / "index.parquet").filter(pl.col("start_time") == cut)
            rows.append(WindowDataset(tmp_path / d, "train")[int(idx["row"][0])])
        np.testing.assert_array_equal(rows[0][0][: cfg.lookback].numpy(), rows[1][0][: cfg.lookback].numpy())
        assert not np.array_equal(rows[0][2].numpy(), rows[1][2].numpy())  # the targets did change


def test_no_training_window_touches_validation_or_test_bars(tmp_path):
    bars = resample_klines(klines(BTC_1H, months("2020-01", "2021-11")), 60, ResampleConfig(base_minutes=60))
    cfg = WindowConfig(lookback=120, n_ahead=12, val_start=date(2021, 5, 1), test_start=date(2021, 8, 1),
                       seasonality="intraday")
    build_windows([bars], cfg, tmp_path / "w")
    index = pl.read_parquet(tmp_path / "w" / "index.parquet")
    val = datetime(2021, 5, 1, tzinfo=timezone.utc)
    test = datetime(2021, 8, 1, tzinfo=timezone.utc)
    train, valid, tst = (index.filter(pl.col("split") == s) for s in ("train", "val", "test"))
    assert len(train) and len(valid) and len(tst)
    assert train["end_time"].max() < val
    assert valid["first_time"].min() >= val and valid["end_time"].max() < test
    assert tst["first_time"].min() >= test
    # purging is real: windows straddling a boundary exist in the data and are dropped
    last_train_start = train["start_time"].max()
    assert last_train_start < val - timedelta(hours=12)
    assert (index["end_time"] - index["first_time"]).max() == timedelta(hours=120 + 12 - 1)  # bars r-L .. r+N-1, one segment


def test_resampling_real_futures_month_equals_direct_sums():
    algo = KlineStream("ALGOUSDT", "um", "1m")
    raw = klines(algo, ["2024-02"])
    bars = resample_klines(raw, 15, ResampleConfig(base_minutes=1))
    sums: dict[datetime, list[float]] = {}
    for t, v, q in zip(raw["open_time"], raw["volume"], raw["quote_volume"]):
        key = t.replace(minute=t.minute - t.minute % 15)
        acc = sums.setdefault(key, [0.0, 0.0])
        acc[0] += v
        acc[1] += q
    assert len(bars) == len(sums) == 29 * 24 * 4
    assert bars["segment"].n_unique() == 1
    for t, v, q, w in zip(bars["open_time"], bars["volume"], bars["quote_volume"], bars["vwap"]):
        assert math.isclose(v, sums[t][0], rel_tol=1e-12) and math.isclose(q, sums[t][1], rel_tol=1e-12)
        assert math.isclose(w, sums[t][1] / sums[t][0], rel_tol=1e-12)


def test_real_outages_cut_segments_and_no_window_spans_one(tmp_path):
    raw = klines(BTC_1H, months("2020-01", "2021-11"))
    step = raw["open_time"].diff()
    holes = raw.with_columns(step.alias("step")).filter(pl.col("step") > timedelta(hours=2))  # 2+ missing hours
    assert len(holes) == 5  # 2020-12-21 (3h), 2021-04-20 (2h), 2021-04-25 (3h), 2021-08-13 (4h), 2021-09-29 (2h)
    bars = resample_klines(raw, 60, ResampleConfig(base_minutes=60, max_missing_base=1))
    assert bars["segment"].n_unique() == len(holes) + 1
    # a single missing hour stays inside its segment, with zero volume and the previous VWAP
    single = raw.with_columns(step.alias("step")).filter(pl.col("step") == timedelta(hours=2))
    assert len(single) >= 1
    filled = bars.filter(pl.col("open_time") == single["open_time"][0] - timedelta(hours=1))
    assert filled["volume"].to_list() == [0.0]
    for freq in (60, 120, 240):
        b = resample_klines(raw, freq, ResampleConfig(base_minutes=60))
        cfg = WindowConfig(lookback=48, n_ahead=12, norm_window=48, val_start=date(2030, 1, 1),
                           test_start=date(2031, 1, 1), seasonality="intraday")
        build_windows([b], cfg, tmp_path / f"w{freq}")
        idx = pl.read_parquet(tmp_path / f"w{freq}" / "index.parquet")
        for hole_end, gap in zip(holes["open_time"], holes["step"]):
            hole_start = hole_end - gap
            spans = idx.filter((pl.col("first_time") <= hole_start) & (pl.col("end_time") >= hole_end))
            assert spans.is_empty(), f"{freq} min window spans the outage before {hole_end}"
        assert len(idx) > 0


@needs_full_mirror
def test_dow_30_sample_counts(tmp_path):
    src = CsvDirectorySource(FULL_YAHOO_DIR)
    series = [daily_bars(src.load(t, date(2000, 1, 3), date(2024, 12, 31)).with_columns(pl.lit(t).alias("ticker")))
              for t in DOW_30]
    cfg = WindowConfig(lookback=120, n_ahead=12)  # validation from 2017-01-01, test from 2020-01-01
    report = build_windows(series, cfg, tmp_path / "dow")
    # Independent count from the trading days alone: a window needs first_start bars before r
    # (normalisers), spans r-L .. r+N-1, and must lie inside one split.
    want = {"train": 0, "val": 0, "test": 0}
    for s in series:
        days = s["open_time"].dt.date().to_list()
        for r in range(cfg.first_start, len(days) - cfg.n_ahead + 1):
            a, b = days[r - cfg.lookback], days[r + cfg.n_ahead - 1]
            if b < cfg.val_start:
                want["train"] += 1
            elif a >= cfg.val_start and b < cfg.test_start:
                want["val"] += 1
            elif a >= cfg.test_start:
                want["test"] += 1
    assert report.counts == want
    assert report.dropped_bad_normaliser == 0
    print("Dow 30 windows:", report.counts, "paper: 100,864 / 22,528 / 37,376")


def test_the_test_split_can_be_denser_than_training():
    bars = resample_klines(klines(BTC_1H, months("2020-01", "2021-11")), 60, ResampleConfig(base_minutes=60))
    cfg = WindowConfig(lookback=120, n_ahead=12, val_start=date(2021, 5, 1), test_start=date(2021, 8, 1),
                       seasonality="intraday")
    every = plan_series(bars, cfg).starts
    sparse = plan_series(bars, dataclasses.replace(cfg, stride=8, test_stride=4)).starts
    phase = min(int(s[0]) for s in every.values() if len(s))  # one phase for the whole series
    for split, step in (("train", 8), ("val", 8), ("test", 4)):
        want = every[split][(every[split] - phase) % step == 0]
        assert len(want) > 10 and np.array_equal(sparse[split], want), split


def test_a_bar_that_opens_before_a_boundary_and_closes_after_it_is_in_no_split(tmp_path):
    """250-minute bars (the paper's) do not divide a day: one opens before midnight of
    val_start and trades after it. A training window must not end with it (its target would hold
    validation-period trades), nor a validation window with the bar over test_start."""
    raw = klines(KlineStream("ALGOUSDT", "um", "1m"), ["2024-02"])
    bars = resample_klines(raw, 250, ResampleConfig(base_minutes=1))
    val, test = datetime(2024, 2, 12, tzinfo=timezone.utc), datetime(2024, 2, 20, tzinfo=timezone.utc)
    bar = timedelta(minutes=250)
    opens = bars["open_time"].to_list()
    assert any(t < val < t + bar for t in opens) and any(t < test < t + bar for t in opens)
    cfg = WindowConfig(lookback=8, n_ahead=4, norm_window=8, val_start=val.date(), test_start=test.date(),
                       seasonality="intraday")
    build_windows([bars], cfg, tmp_path / "w")
    index = pl.read_parquet(tmp_path / "w" / "index.parquet")
    train, valid, tst = (index.filter(pl.col("split") == s) for s in ("train", "val", "test"))
    assert train["end_time"].max() + bar <= val and valid["end_time"].max() + bar <= test
    assert valid["first_time"].min() >= val and tst["first_time"].min() >= test
    # an independent count: every start whose bars all lie inside one split, from opens and closes
    first = cfg.first_start
    want = {"train": 0, "val": 0, "test": 0}
    for r in range(first, len(opens) - cfg.n_ahead + 1):
        a, b = opens[r - cfg.lookback], opens[r + cfg.n_ahead - 1] + bar
        want["train"] += b <= val
        want["val"] += a >= val and b <= test
        want["test"] += a >= test
    assert {s: len(index.filter(pl.col("split") == s)) for s in want} == want
    assert windows_inside_splits(tmp_path / "w", cfg).passed
