"""How far a simple causal volume forecast takes a match-the-VWAP schedule below TWAP's risk: the
yardstick for the LEM's Match VWAP head (summary ``match_vwap_std_reduction``).

At each step the schedule forecasts every remaining bar's volume from the bars before that step
only: the mean of the last ``level`` bars plus phi^h times the last bar's deviation from it
(h bars ahead), and trades the remainder's share that the forecast gives this bar; the last
step takes what is left. (level, phi) is chosen on the training windows, then scored on the
validation windows (never the test split): the std reduction against TWAP in volume, as the
evaluation reports it, 1 - std(schedule's slippage to VWAP) / std(TWAP's).

The same forecast also runs scaled by a static curve: the minimum-variance schedule of the
training windows, the weights a (summing to 1) that minimise the variance across windows of
a . p / VWAP (each window's bar prices over its VWAP), a = C^-1 1 / (1' C^-1 1) with C their
covariance. Alone that curve is a static schedule; times the forecast, a causal one. The LEM's
Match head, as trained by dow30_cpu, allocates almost the same curve in every window (per step,
a spread across windows of 0.0001 to 0.004 around 0.069 .. 0.136), so this is its yardstick.

``--calendar`` (daily equity windows) also scales each bar's forecast by what its date is known
in advance to be: a quarterly expiry (third Friday of March, June, September, December), a
monthly one, the month's last session, the session before a market holiday, or the year-end
weeks, each by its median volume against the 60 sessions before the window on the training
windows. The LEM's inputs carry no such thing about bars still to come: this measures what they
would be worth to a volume forecast. The sessions' dates are the windows' own (index.parquet),
so the trading calendar is the one the data traded on.

``--model DIR`` (a trained model directory of these windows, e.g. ``data/models/equity``) also
prints its Match VWAP head's allocations on the validation windows (buy, volume target): per
step the mean and the spread across windows, its std reduction, and that of its mean curve
played as a static schedule.

    python benchmarks/volume_forecast_baseline.py WINDOWS_DIR [--calendar] [--model DIR]

WINDOWS_DIR is a windows directory, e.g. the equity one ``lem run --preset dow30_cpu`` builds
(``$LEM_DATA_DIR/windows/equity``). Under a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import numpy as np
import polars as pl
import torch

from lem_model import baselines
from lem_model.baselines import schedule_slippage_bps, volume_forecasts
from lem_model.saved_model import load_model
from lem_model.vocabulary import OrderKind, Target
from lem_model.window_dataset import WindowDataset

LEVELS = (10, 20, 60)
PHIS = (0.5, 0.7, 0.8, 0.9)
CALENDAR_LEVEL = 60  # the sessions before the window a calendar multiplier is measured against


class Session(IntEnum):
    """What a session's date says of its volume before it trades (the first that applies)."""

    ORDINARY = 0
    QUARTERLY_EXPIRY = 1
    MONTHLY_EXPIRY = 2
    MONTH_END = 3
    BEFORE_HOLIDAY = 4
    YEAR_END = 5  # 24 December to 2 January


def session_kind(day: dt.date, next_session: dt.date) -> Session:
    third_friday = day.weekday() == 4 and 15 <= day.day <= 21
    if third_friday:
        return Session.QUARTERLY_EXPIRY if day.month % 3 == 0 else Session.MONTHLY_EXPIRY
    if next_session.month != day.month:
        return Session.MONTH_END
    if (next_session - day).days > (3 if day.weekday() == 4 else 1):
        return Session.BEFORE_HOLIDAY
    if (day.month, day.day) >= (12, 24) or (day.month, day.day) <= (1, 2):
        return Session.YEAR_END
    return Session.ORDINARY


@dataclass
class Split:
    history: np.ndarray  # (B, L+N) volumes of rows r-L .. r+N-1
    volumes: np.ndarray  # (B, N) the execution bars'
    prices: np.ndarray  # (B, N)
    lookback: int
    n_ahead: int
    sessions: np.ndarray | None = None  # (B, N) Session of each execution bar, with --calendar


def split_arrays(windows: str, split: str, calendar: bool = False) -> Split:
    data = WindowDataset(windows, split)
    x, volumes, prices = data.gather(np.arange(len(data)))
    history = np.concatenate([x[:, :, -1], volumes[:, -1:]], axis=1).astype(np.float64)  # rows r-L .. r+N-1
    out = Split(history, volumes.astype(np.float64), prices.astype(np.float64), data.lookback, data.n_ahead)
    if calendar:
        out.sessions = execution_sessions(Path(windows), split, data.n_ahead)
    return out


def execution_sessions(windows: Path, split: str, n_ahead: int) -> np.ndarray:
    """(B, N) the Session of each window's execution bars, rows in the split's order. The
    trading calendar is every date a window of any symbol starts or ends on or looks back from."""
    index = pl.read_parquet(windows / "index.parquet")
    if index["freq_min"].unique().to_list() != [1440]:
        raise SystemExit(f"--calendar needs daily windows; {windows} holds freq_min "
                         f"{index['freq_min'].unique().to_list()}")
    days = sorted(set().union(*(index[c].dt.date().to_list() for c in ("first_time", "start_time", "end_time"))))
    at = {d: i for i, d in enumerate(days)}
    kinds = np.array([session_kind(d, days[i + 1] if i + 1 < len(days) else d + dt.timedelta(days=1))
                      for i, d in enumerate(days)])
    rows = index.filter(pl.col("split") == split).sort("row")
    first = np.array([at[d] for d in rows["start_time"].dt.date().to_list()])
    last = np.array([at[d] for d in rows["end_time"].dt.date().to_list()])
    if not (last - first == n_ahead - 1).all():
        raise SystemExit(f"{windows}: some {split} windows skip sessions other symbols traded; the calendar "
                         "cannot date their bars")
    return kinds[first[:, None] + np.arange(n_ahead)]


def calendar_multipliers(train: Split) -> np.ndarray:
    """Per Session, the median of an execution bar's volume over the mean of the CALENDAR_LEVEL
    bars before its window, against the same for ordinary sessions (training windows only)."""
    L = train.lookback
    ratio = train.volumes / train.history[:, L - CALENDAR_LEVEL:L].mean(1, keepdims=True)
    ordinary = np.median(ratio[train.sessions == Session.ORDINARY])
    return np.array([np.median(ratio[train.sessions == k]) / ordinary for k in Session])


def forecast_schedule(volume_history: np.ndarray, lookback: int, n_ahead: int, level: int, phi: float,
                      scale: np.ndarray | None = None) -> np.ndarray:
    """(B, N) allocations from (B, L+N) volumes (the window's rows r-L .. r+N-1): step s trades
    bar s's share of what is left under lem_model.baselines.volume_forecasts (rows before r+s
    only) times ``scale`` (B, N), each execution bar's multiplier known in advance (a curve, the
    calendar's)."""
    B = volume_history.shape[0]
    scale = np.ones((B, n_ahead)) if scale is None else scale
    forecasts = volume_forecasts(torch.as_tensor(volume_history), lookback, n_ahead, level, phi).numpy()
    alloc, done = np.zeros((B, n_ahead)), np.zeros(B)
    for s in range(n_ahead - 1):
        weight = forecasts[:, s, s:] * scale[:, s:]
        alloc[:, s] = (1 - done) * weight[:, 0] / weight.sum(1)
        done += alloc[:, s]
    alloc[:, -1] = 1 - done
    return alloc


def min_variance_curve(train: Split) -> np.ndarray:
    """(N,) lem_model.baselines.min_variance_curve of the training windows."""
    return baselines.min_variance_curve(torch.as_tensor(train.volumes), torch.as_tensor(train.prices)).double().numpy()


def std_reduction_of(data: Split, alloc: np.ndarray) -> float:
    """1 - std(slippage to VWAP of ``alloc``) / std(TWAP's), as the evaluation reports it."""
    volumes, prices = torch.as_tensor(data.volumes), torch.as_tensor(data.prices)
    twap = schedule_slippage_bps(torch.full_like(volumes, 1 / data.n_ahead), volumes, prices)
    ours = schedule_slippage_bps(torch.as_tensor(alloc), volumes, prices)
    return float(1 - ours.std(correction=0) / twap.std(correction=0))


def std_reduction(data: Split, level: int, phi: float, curve: np.ndarray | None = None,
                  multipliers: np.ndarray | None = None) -> float:
    """The forecast schedule's, its forecasts scaled by ``curve`` (N,) and the sessions'
    calendar ``multipliers``, where given."""
    scale = np.ones_like(data.volumes)
    if curve is not None:
        scale = scale * curve * data.n_ahead
    if multipliers is not None:
        scale = scale * multipliers[data.sessions]
    return std_reduction_of(data, forecast_schedule(data.history, data.lookback, data.n_ahead, level, phi, scale))


@torch.no_grad()
def match_head_allocations(model_dir: Path, windows: str, split: str, batch_size: int = 1024) -> np.ndarray:
    """(B, N) the model's Match VWAP head (buy, volume target) on every window of ``split``."""
    model, data = load_model(model_dir), WindowDataset(windows, split)
    N, out = model.cfg.n_ahead, []
    for lo in range(0, len(data), batch_size):
        x, _, _ = data.gather(np.arange(lo, min(lo + batch_size, len(data))))
        B = len(x)
        alloc = model(torch.from_numpy(x), torch.full((B,), 1 / N**2), torch.ones(B))
        out.append(alloc[:, :, N, OrderKind.BUY_VWAP, Target.VOLUME].double().numpy())
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("windows")
    ap.add_argument("--calendar", action="store_true", help="also scale the forecasts by the sessions' calendar")
    ap.add_argument("--model", type=Path, default=None, help="a trained model directory: its Match VWAP head beside")
    args = ap.parse_args()
    torch.set_num_threads(2)
    train, val = (split_arrays(args.windows, s, args.calendar) for s in ("train", "val"))
    if args.model is not None:
        match = match_head_allocations(args.model, args.windows, "val")
        print(f"{args.model}'s Match VWAP head on the validation windows: std reduction "
              f"{std_reduction_of(val, match):.3f}; its mean curve as a static schedule "
              f"{std_reduction_of(val, np.tile(match.mean(0), (len(match), 1))):.3f}")
        print("  per step, mean " + " ".join(f"{m:.4f}" for m in match.mean(0)))
        print("  spread (std)   " + " ".join(f"{m:.4f}" for m in match.std(0)))
    curve = min_variance_curve(train)
    print("minimum-variance curve (training windows): " + " ".join(f"{c:.4f}" for c in curve))
    print(f"  alone, a static schedule: validation ({len(val.volumes)} windows) std reduction "
          f"{std_reduction_of(val, np.tile(curve, (len(val.volumes), 1))):.3f}")
    variants: dict[str, dict] = {"persistence": {}, "persistence x curve": {"curve": curve}}
    if args.calendar:
        m = calendar_multipliers(train)
        print("calendar multipliers (training windows): "
              + ", ".join(f"{k.name.lower()} {v:.3f} ({(train.sessions == k).sum()} bars)" for k, v in zip(Session, m)))
        variants |= {"persistence x calendar": {"multipliers": m},
                     "persistence x curve x calendar": {"curve": curve, "multipliers": m}}
    for name, scales in variants.items():
        scores = {(lv, phi): std_reduction(train, lv, phi, **scales) for lv, phi in itertools.product(LEVELS, PHIS)
                  if lv <= train.lookback}
        level, phi = max(scores, key=scores.get)
        print(f"{name}: chosen on train (std reduction {scores[level, phi]:.3f}): level {level}, phi {phi}; "
              f"validation std reduction {std_reduction(val, level, phi, **scales):.3f}")


if __name__ == "__main__":
    main()
