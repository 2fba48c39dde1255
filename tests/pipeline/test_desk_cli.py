"""`lem schedule`: a trained model's schedule for one order, equal to the live policy's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl

from lem_model.window_dataset import WindowDataset
from lem_model.orders import Order
from lem_model.policy import LivePolicy

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    lem = shutil.which("lem", path=str(Path(sys.executable).parent))
    return subprocess.run([lem, "schedule", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_replayed_schedule_equals_the_live_policy(trained_model, small_equity_windows):
    out, model = trained_model
    index = pl.read_parquet(small_equity_windows / "index.parquet").filter(
        (pl.col("split") == "test") & (pl.col("symbol") == "KO"))
    row = index.row(len(index) // 2, named=True)
    order = Order("sell", "notional", "vwap", 3, 1 / 36, 0.6)
    proc = run_cli("--model", str(out / "model"), "--bars", str(out / "KO.parquet"), "--side", "sell",
                   "--target", "notional", "--min-duration", "3", "--min-rate", str(1 / 36), "--max-rate", "0.6",
                   "--start", row["start_time"].strftime("%Y-%m-%dT%H:%M:%S"), "--quantity", "1000", "--json")
    assert proc.returncode == 0, proc.stderr
    steps = json.loads(proc.stdout)["steps"]
    fractions = np.array([s["fraction"] for s in steps])
    N = model.cfg.n_ahead
    assert len(steps) == N and (fractions >= 0).all() and abs(fractions.sum() - 1) < 1e-6
    np.testing.assert_allclose([s["quantity"] for s in steps], fractions * 1000, rtol=1e-12)
    x = WindowDataset(small_equity_windows, "test")[row["row"]][0].numpy()  # the window the model was tested on
    policy = LivePolicy(model, order)
    live = [policy.decide(x[: model.cfg.lookback + k]).fraction for k in range(N)]
    np.testing.assert_allclose(fractions, live, rtol=0, atol=1e-7)


def test_live_next_bar_and_clear_errors(trained_model):
    out, _ = trained_model
    proc = run_cli("--model", str(out / "model"), "--bars", str(out / "KO.parquet"), "--min-duration", "match")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("step  0  bar 2024-03-11")  # the bar after 2024-03-08 (a Friday)
    fraction = float(lines[1].split("trade ")[1].split()[0])
    assert 0 <= fraction <= 1
    bad = run_cli("--model", str(out / "model"), "--bars", str(out / "KO.parquet"), "--start", "1999-01-04T00:00:00")
    assert bad.returncode == 2 and "no bar opens at 1999-01-04" in bad.stderr and "Traceback" not in bad.stderr


def test_the_default_least_rate_is_the_papers_and_whole_number_volumes_are_read(trained_model, tmp_path):
    """Without --min-rate the order is the one the model was trained and evaluated on (1/N^2);
    an equity file whose volumes are whole numbers schedules exactly as the float one."""
    out, model = trained_model
    N = model.cfg.n_ahead
    ko = pl.read_parquet(out / "KO.parquet")
    start = ko["open_time"][-N].strftime("%Y-%m-%dT%H:%M:%S")
    whole = tmp_path / "KO-int.parquet"
    ko.with_columns(pl.col("volume").round().cast(pl.Int64)).write_parquet(whole)
    floats = tmp_path / "KO-rounded.parquet"
    ko.with_columns(pl.col("volume").round()).write_parquet(floats)

    def fractions(bars, *args: str) -> list[float]:
        proc = run_cli("--model", str(out / "model"), "--bars", str(bars), "--start", start, "--json", *args)
        assert proc.returncode == 0, proc.stderr
        return [step["fraction"] for step in json.loads(proc.stdout)["steps"]]

    default = fractions(out / "KO.parquet")
    assert default == fractions(out / "KO.parquet", "--min-rate", repr(1 / N**2))
    assert default != fractions(out / "KO.parquet", "--min-rate", "0")
    assert fractions(whole) == fractions(floats)


def test_intraday_bars_off_their_grid_are_refused_naming_the_bar():
    """A file whose freq_min says 60 but whose bars are not an hour apart inside one segment
    would be read as consecutive bars: refused, naming the first bar off the grid."""
    import re
    from datetime import datetime, timedelta, timezone

    import pytest

    from lem_pipeline.errors import UserError
    from lem_pipeline.order_schedule import check_bars
    from lem_pipeline.windows import WindowConfig

    cfg = WindowConfig(seasonality="intraday", lookback=10, n_ahead=4, norm_window=20)
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    times = [t0 + timedelta(hours=i) for i in range(cfg.first_start + 5)]

    def bars(open_times: list[datetime]) -> pl.DataFrame:
        return pl.DataFrame({"open_time": open_times}).with_columns(
            symbol=pl.lit("BTCUSDT"), freq_min=pl.lit(60, pl.Int32), volume=pl.lit(1.0), quote_volume=pl.lit(100.0),
            vwap=pl.lit(100.0), bridged=pl.lit(False), segment=pl.lit(0))

    _, r = check_bars(bars(times), cfg)  # on the grid: accepted, live (the bar after the last)
    assert r == len(times)
    shifted = times[:-3] + [times[-3] + timedelta(minutes=15)] + times[-2:]
    with pytest.raises(UserError, match=re.escape(f"the bar at {shifted[-3]} is 1:15:00 after the one before in the "
                                                  "same segment; 60-minute bars are 60 minutes apart")):
        check_bars(bars(shifted), cfg)
