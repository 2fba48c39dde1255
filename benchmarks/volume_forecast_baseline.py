"""How far a simple causal volume forecast takes a match-the-VWAP schedule below TWAP's risk: the
yardstick for the LEM's Match VWAP head (summary ``match_vwap_std_reduction``).

At each step the schedule forecasts every remaining bar's volume from the bars before that step
only: the mean of the last ``level`` bars plus phi^h times the last bar's deviation from it
(h bars ahead), and trades the remainder's share that the forecast gives this bar; the last
step takes what is left. (level, phi) is chosen on the training windows, then scored on the
validation windows (never the test split): the std reduction against TWAP in volume, as the
evaluation reports it, 1 - std(schedule's slippage to VWAP) / std(TWAP's).

    python benchmarks/volume_forecast_baseline.py WINDOWS_DIR

WINDOWS_DIR is a windows directory, e.g. the equity one ``lem run --preset dow30_cpu`` builds
(``$LEM_DATA_DIR/windows/equity``). Under a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch

from lem_model.baselines import schedule_slippage_bps
from lem_model.window_dataset import WindowDataset

LEVELS = (10, 20, 60)
PHIS = (0.5, 0.7, 0.8, 0.9)


def forecast_schedule(volume_history: np.ndarray, lookback: int, n_ahead: int, level: int, phi: float) -> np.ndarray:
    """(B, N) allocations from (B, L+N) volumes (the window's rows r-L .. r+N-1): step s reads
    rows before r+s only."""
    B = volume_history.shape[0]
    alloc, done = np.zeros((B, n_ahead)), np.zeros(B)
    for s in range(n_ahead - 1):
        known = lookback + s  # rows 0 .. known-1 are before bar r+s
        mean = volume_history[:, known - level:known].mean(1, keepdims=True)
        last = volume_history[:, known - 1:known]
        h = np.arange(1, n_ahead - s + 1)[None, :]  # bars r+s .. r+N-1 are 1 .. N-s ahead of the last known
        forecast = np.maximum(mean + phi**h * (last - mean), 1e-9)
        alloc[:, s] = (1 - done) * forecast[:, 0] / forecast.sum(1)
        done += alloc[:, s]
    alloc[:, -1] = 1 - done
    return alloc


def split_arrays(windows: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    data = WindowDataset(windows, split)
    x, volumes, prices = data.gather(np.arange(len(data)))
    history = np.concatenate([x[:, :, -1], volumes[:, -1:]], axis=1).astype(np.float64)  # rows r-L .. r+N-1
    return history, volumes.astype(np.float64), prices.astype(np.float64), data.lookback, data.n_ahead


def std_reduction(history, volumes, prices, lookback, n_ahead, level, phi) -> float:
    volumes, prices = torch.as_tensor(volumes), torch.as_tensor(prices)
    twap = schedule_slippage_bps(torch.full_like(volumes, 1 / n_ahead), volumes, prices)
    ours = schedule_slippage_bps(torch.as_tensor(forecast_schedule(history, lookback, n_ahead, level, phi)),
                                 volumes, prices)
    return float(1 - ours.std(correction=0) / twap.std(correction=0))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("windows")
    args = ap.parse_args()
    train = split_arrays(args.windows, "train")
    scores = {(lv, phi): std_reduction(*train, lv, phi) for lv, phi in itertools.product(LEVELS, PHIS)
              if lv <= train[3]}
    for (lv, phi), score in scores.items():
        print(f"train: level {lv:3d}, phi {phi}: std reduction {score:.3f}")
    level, phi = max(scores, key=scores.get)
    val = split_arrays(args.windows, "val")
    print(f"chosen on train: level {level}, phi {phi}; validation ({len(val[0])} windows): "
          f"std reduction {std_reduction(*val, level, phi):.3f}")


if __name__ == "__main__":
    main()
