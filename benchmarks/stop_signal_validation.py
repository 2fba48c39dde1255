"""Whether a causal input the one-line rule does not read would improve its stopping decisions, on
the validation split only (never the test split). The LEM starts as the rule with thresholds
fitted on the training windows and moves from there by context; where it cannot beat the rule
with confidence (dow30_cpu's late minimum periods), the question is whether any input carries
information the rule lacks. This asks it of the rule itself, without training a network.

A candidate is one number per bar, known when the bar closes, z-scored on the training bars:

  market  the cross-sectional mean of the bars' VWAP return on that date, over every series of
          the directory (daily windows; known after the close, as the bar's own return)
  return  the bar's own VWAP return (a reversal the rule's signal only partly reflects)
  volume  the bar's volume over its rolling normaliser (the volume_rel feature)

For each candidate, head (minimum period) and side, the rule stops at step k >= max(j, 1) when
sign * (signal_bps + c * z[k-1]) < -threshold, signal_bps the last bar's price against the
average paid (lem_model.baselines.early_stop_rule); threshold and c are fitted on the training
windows by the mean slippage of the VWAP order in volume (the vs_rule table's cell), c = 0 being
the fitted rule. Printed per cell: both fits, the training gain, and on validation the paired
advantage of the candidate's rule over the fitted rule in bps (positive: the candidate helps)
with the summary's 95% block-bootstrap interval over execution dates. First, for scale, per
cell: what one bar of perfect foresight is worth, the rule deciding from the bar it trades
(``peek``, not achievable) over the one-line rule, the most a better stop signal could give it.

    python benchmarks/stop_signal_validation.py WINDOWS_DIR [--candidates market return volume]
        [--market-windows DIR]

``--candidates`` with none: the foresight lines only (a minute).

``--market-windows``: also write a copy of the windows with the market column appended to each
bar's features (the other arrays linked), for rule_prior_validation.py to train the preset's
model on. About 8 minutes on 2 cores for dow30_cpu's windows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl
import torch
from calendar_input_validation import bar_dates, windows_with_features
from rule_prior_validation import validation_dates

from lem_model.baselines import STOP_THRESHOLD_GRID, early_stop_rule
from lem_model.metrics import slippage_bps
from lem_model.paired import paired
from lem_model.vocabulary import OrderKind, Side, Target
from lem_model.window_dataset import WindowDataset, bars_file, meta_file

CANDIDATES = ("market", "return", "volume")
WEIGHTS_BPS = (-40.0, -20.0, -10.0, -5.0, 0.0, 5.0, 10.0, 20.0, 40.0)  # c, bps per std of the candidate
TIE_BPS = 1e-5  # lem_model.baselines' tie: smaller differences are rounding, and rounding must not decide
GAP_BPS = 0.01  # allowed gap from lem_model's slippage: its 1e-7 epsilons in the divisions
SIDE_SIGNS = (("BUY", 1.0), ("SELL", -1.0))  # buys want lower prices, sells higher


def market_column(windows: Path, meta: dict) -> np.ndarray:
    """(n_bars,) the mean VWAP return over the directory's bars of the same date (0 where a bar
    is undated: no window reaches it)."""
    features = np.load(bars_file(windows, "features"), mmap_mode="r")
    own = np.asarray(features[:, meta["features"].index("vwap_return")], np.float64)
    dates = bar_dates(windows, len(own), meta["config"]["lookback"], meta["config"]["n_ahead"])
    frame = pl.DataFrame({"date": dates, "r": own}).with_columns(pl.col("r").fill_nan(None))
    market = frame.select(pl.when(pl.col("date").is_not_null()).then(pl.col("r").mean().over("date")))
    return market.to_series().fill_null(0.0).to_numpy()


def candidate_columns(windows: Path, meta: dict, names: list[str]) -> dict[str, np.ndarray]:
    features = np.load(bars_file(windows, "features"), mmap_mode="r")
    source = {"return": "vwap_return", "volume": "volume_rel"}
    return {name: market_column(windows, meta) if name == "market"
            else np.asarray(features[:, meta["features"].index(source[name])], np.float64) for name in names}


def rule_slippage(prices: np.ndarray, volumes: np.ndarray, z: np.ndarray, j: int, sign: float,
                  thresholds: np.ndarray, weights: np.ndarray, peek: bool = False) -> np.ndarray:
    """(B, G) the slippage in bps of head j's VWAP order in volume under each (threshold, c) of
    the grid (G,): 1/N a bar until it stops, the benchmark over the bars it executed on (to its
    last, and at least its minimum duration; lem_model.metrics.slippage_bps). ``z``: (B, N-1)
    the candidate at the execution bars a decision can read (:func:`decision_candidates`).
    ``peek``: decide at bar k from bar k's own price, the bar it trades (not achievable)."""
    B, N = prices.shape
    G = len(thresholds)
    done, paid = np.zeros((B, G)), np.zeros((B, G))
    last = np.zeros((B, G), np.int64)  # the last bar with an allocation
    for k in range(N):
        a = np.full((B, G), 1.0 / N) if k < N - 1 else 1 - done
        if 1 <= k < N - 1 and k >= j:
            seen = prices[:, k:k + 1] if peek else prices[:, k - 1:k]
            signal = (seen / (paid / done) - 1) * 1e4 + weights * z[:, k - 1:k]
            a = np.where(sign * signal < -(thresholds + TIE_BPS), 1 - done, a)
        a = np.clip(np.minimum(a, 1 - done), 0.0, None)
        last = np.where(a > 0, k, last)
        done += a
        paid += a * prices[:, k:k + 1]
    inside = np.arange(N).reshape(1, N, 1) <= np.maximum(last, j)[:, None, :]  # (B, N, G)
    bench = ((volumes * prices)[:, :, None] * inside).sum(1) / (volumes[:, :, None] * inside).sum(1)
    return (paid / bench - 1) * 1e4


def check_against_the_library(prices: np.ndarray, volumes: np.ndarray, n: int = 2000) -> None:
    """With c = 0 :func:`rule_slippage` is the fitted rule as lem_model scores it: compare on the
    first ``n`` windows at two thresholds, every head and side."""
    px, vol = torch.as_tensor(prices[:n]), torch.as_tensor(volumes[:n])
    N = px.shape[1]
    for theta, peek in ((0.0, False), (48.0, False), (0.0, True)):
        alloc = early_stop_rule(px, N + 1, peek=peek, thresholds_bps=torch.full((N + 1, len(Side)), theta))
        library = slippage_bps(alloc, vol, px).numpy()
        for j in range(N):
            for (side, sign), kind in zip(SIDE_SIGNS, (OrderKind.BUY_VWAP, OrderKind.SELL_VWAP)):
                ours = rule_slippage(prices[:n], volumes[:n], np.zeros((len(px), N - 1)), j, sign,
                                     np.array([theta]), np.zeros(1), peek)[:, 0]
                gap = np.abs(ours - library[:, j, kind, Target.VOLUME]).max()
                if gap > GAP_BPS:
                    raise AssertionError(f"{side} {j + 1} at {theta} bps (peek {peek}): {gap:.3g} bps "
                                         "from lem_model's rule")


def decision_candidates(data: WindowDataset, column: np.ndarray) -> np.ndarray:
    """(B, N-1) the candidate at each window's execution bars r .. r+N-2: those a decision
    reads (the bar before the one it trades; the last bar only takes the remainder)."""
    return column[data.starts[:, None] + np.arange(data.n_ahead - 1)]


def write_market_windows(windows: Path, meta: dict, out: Path) -> None:
    """``out``: ``windows`` with the market column appended to each bar's features."""
    windows_with_features(windows, meta, out, market_column(windows, meta)[:, None], ["market_return"])
    print(f"{out}: the windows with the market column among the features")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("windows", type=Path)
    ap.add_argument("--candidates", nargs="*", choices=CANDIDATES, default=list(CANDIDATES))
    ap.add_argument("--market-windows", type=Path)
    args = ap.parse_args()
    meta = json.loads(meta_file(args.windows).read_text())
    if meta["config"]["seasonality"] != "daily":
        raise SystemExit(f"{args.windows}: the candidates need daily windows, not {meta['config']['seasonality']}")
    if args.market_windows:
        write_market_windows(args.windows, meta, args.market_windows)
    train, val = WindowDataset(args.windows, "train"), WindowDataset(args.windows, "val")
    (_, v_tr, p_tr), (_, v_va, p_va) = (d.gather(np.arange(len(d))) for d in (train, val))
    v_tr, p_tr, v_va, p_va = (a.astype(np.float64) for a in (v_tr, p_tr, v_va, p_va))
    check_against_the_library(p_va, v_va)
    dates = validation_dates(str(args.windows), len(val))
    grid_t, grid_c = (g.ravel() for g in np.meshgrid(np.array(STOP_THRESHOLD_GRID, np.float64),
                                                     np.array(WEIGHTS_BPS), indexing="ij"))
    plain = grid_c == 0
    N = train.n_ahead
    print(f"{args.windows}: {len(train)} training and {len(val)} validation windows; VWAP orders in volume")
    no_input = np.zeros((len(val), N - 1))
    for j in range(N - 1):  # what one bar of foresight is worth: the most any input could give a stop
        for side, sign in SIDE_SIGNS:
            slip = np.concatenate([rule_slippage(p_va, v_va, no_input, j, sign, np.array([0.0]), np.zeros(1), peek)
                                   for peek in (False, True)], axis=1)
            p = paired((slip[:, 0] - slip[:, 1]) * sign, dates, min_block=N)
            print(f"  peek   {side:4} {j + 1:2}: the rule deciding from the bar it trades, over the rule: "
                  f"{p.mean:+6.2f} [{p.ci95[0]:+6.2f}, {p.ci95[1]:+6.2f}]", flush=True)
    for name, column in candidate_columns(args.windows, meta, args.candidates).items():
        in_train = decision_candidates(train, column)
        mean, std = in_train.mean(), in_train.std()
        z_tr, z_va = (in_train - mean) / std, (decision_candidates(val, column) - mean) / std
        print(f"{name}: mean {mean:.4g}, std {std:.4g} over the training windows' decision bars")
        for j in range(N - 1):
            for side, sign in SIDE_SIGNS:
                cost = rule_slippage(p_tr, v_tr, z_tr, j, sign, grid_t, grid_c).mean(0) * sign
                fitted = np.flatnonzero(plain)[np.argmin(cost[plain])]
                best = int(np.argmin(cost))
                chosen = [fitted, best]
                val_slip = rule_slippage(p_va, v_va, z_va, j, sign, grid_t[chosen], grid_c[chosen])
                p = paired((val_slip[:, 0] - val_slip[:, 1]) * sign, dates, min_block=N)
                print(f"  {name:6} {side:4} {j + 1:2}: fitted rule {grid_t[fitted]:3.0f} bps; with the candidate "
                      f"{grid_t[best]:3.0f} bps, c {grid_c[best]:+5.1f}; training gain {cost[fitted] - cost[best]:5.2f}"
                      f"; validation {p.mean:+6.2f} [{p.ci95[0]:+6.2f}, {p.ci95[1]:+6.2f}]", flush=True)


if __name__ == "__main__":
    main()
