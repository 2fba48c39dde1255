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
