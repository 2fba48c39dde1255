"""What the tables' metric rewards: the one-line early-stop rule against TWAP, scored as the tables
score it (each order's average price against the VWAP of the bars it executed on) and against the
arrival price (the VWAP of the bar before execution, as the trade log's ``arrival_bps``), paired
on the same windows with the summary's 95% block-bootstrap interval.

First on a random walk (log prices with independent Gaussian steps, constant volumes): no causal
schedule has an edge there, yet the rule beats TWAP on the tables' metric, because that benchmark
moves with the order's own duration: the rule stops at k when the last price is below its average
paid (a buy), and its remainder then trades at a price whose expected value is that last price,
while the benchmark still averages the earlier, dearer bars. Against the arrival price the same
rule gains nothing (BOTH, the mean of its buy and sell advantages, is zero within the interval).
Then, with WINDOWS_DIR, the same on real windows' validation split (never
the test split).

    python benchmarks/table_metric_vs_arrival.py [WINDOWS_DIR] [--windows 20000] [--sigma 0.015]

A few seconds for the random walk; about a minute with dow30_cpu's validation windows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from lem_model.baselines import early_stop_rule
from lem_model.metrics import percent_difference
from lem_model.paired import advantage, paired
from lem_model.vocabulary import OrderKind, Side, Target

SIDES = (("BUY", OrderKind.BUY_VWAP, Side.BUY), ("SELL", OrderKind.SELL_VWAP, Side.SELL))


def rule_over_twap(volumes: torch.Tensor, prices: torch.Tensor, arrival: torch.Tensor, dates: np.ndarray) -> None:
    """Print, per side and minimum period 1..N-1, the rule's paired advantage over TWAP in volume
    (the rule's head N) on the tables' metric and against ``arrival`` (B,), in bps; then BOTH, the
    mean of the two sides' advantages on each window, which cancels the drift exposure of a
    schedule that trades earlier (or later) than TWAP on both sides."""
    B, N = prices.shape
    alloc = early_stop_rule(prices, N + 1)  # (B, N, N+1, 4, 2); head N is plain TWAP
    table = percent_difference(alloc, volumes, prices, soft_alpha=None, bench_eps_numerator=False) * 100
    a = alloc[..., Target.VOLUME]
    versus_arrival = ((a * prices.view(B, N, 1, 1)).sum(1) / arrival.view(B, 1, 1) - 1) * 1e4  # (B, N+1, 4)
    print(f"{'':10} {'tables metric':>26} {'against arrival':>26}")
    for j in range(N - 1):
        both = [0.0, 0.0]
        for name, kind, side in SIDES:
            values = [advantage(score[:, j, kind].numpy(), score[:, N, kind].numpy(), side)
                      for score in (table[..., Target.VOLUME], versus_arrival)]
            both = [b + v / 2 for b, v in zip(both, values)]
            show(f"{name:4} {j + 1:3}", [paired(v, dates, min_block=N) for v in values])
        show(f"BOTH {j + 1:3}", [paired(v, dates, min_block=N) for v in both])


def show(label: str, comparisons: list) -> None:
    print(f"{label}: " + " ".join(f"{q.mean:+7.2f} [{q.ci95[0]:+7.2f}, {q.ci95[1]:+7.2f}]" for q in comparisons),
          flush=True)


def random_walk(windows: int, n_ahead: int, sigma: float, seed: int) -> tuple[torch.Tensor, ...]:
    """(volumes, prices, arrival, dates) of ``windows`` independent random walks of ``n_ahead``
    bars after their arrival bar; each window its own date (they share nothing)."""
    g = torch.Generator().manual_seed(seed)
    log_price = torch.cumsum(sigma * torch.randn(windows, n_ahead + 1, generator=g, dtype=torch.float64), 1)
    prices = torch.exp(log_price)
    return torch.ones(windows, n_ahead, dtype=torch.float64), prices[:, 1:], prices[:, 0], np.arange(windows)


def validation_windows(directory: Path) -> tuple[torch.Tensor, ...]:
    """(volumes, prices, arrival, dates) of a windows directory's validation split, prices in the
    windows' normalisation (the VWAP of the first lookback bar), arrival the bar before execution."""
    from lem_model.window_dataset import WindowDataset
    from rule_prior_validation import validation_dates

    val = WindowDataset(directory, "val")
    _, volumes, prices = val.gather(np.arange(len(val)))
    arrival = val.bars.vwap[val.starts - 1] / val.bars.vwap[val.starts - val.lookback]
    dates = validation_dates(str(directory), len(val))
    return (torch.as_tensor(volumes).double(), torch.as_tensor(prices).double(),
            torch.as_tensor(arrival).double(), dates)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("windows_dir", nargs="?", type=Path, help="also score this directory's validation windows")
    ap.add_argument("--windows", type=int, default=20000, help="random walks")
    ap.add_argument("--n-ahead", type=int, default=12)
    ap.add_argument("--sigma", type=float, default=0.015, help="the random walk's log-price step (about a Dow stock's day)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"random walk: {args.windows} windows of {args.n_ahead} bars, step sigma {args.sigma}, constant volumes; "
          "the rule over TWAP in volume, bps (positive: the rule is better)")
    rule_over_twap(*random_walk(args.windows, args.n_ahead, args.sigma, args.seed))
    if args.windows_dir is not None:
        volumes, prices, arrival, dates = validation_windows(args.windows_dir)
        print(f"{args.windows_dir}: {len(dates)} validation windows; the rule over TWAP in volume, bps")
        rule_over_twap(volumes, prices, arrival, dates)


if __name__ == "__main__":
    main()
