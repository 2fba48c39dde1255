"""Is an evaluation's interval a draw of the bootstrap's seed? The summary's paired intervals
(lem_model.paired) come from one seeded draw of resamples; a lower bound within the Monte Carlo
error of 0 clears it or not by the seed. This recomputes the vs-rule intervals of an evaluation
folder with seeds 0..k-1 and prints, per side and minimum period, the spread of the lower bound
and how many seeds put it above 0.

    python benchmarks/bootstrap_seeds.py EVALUATION_DIR [--seeds 50] [--resamples 20000] [--periods 9 10]

EVALUATION_DIR is what an equity evaluation writes (``$LEM_DATA_DIR/evaluation/equity``, or a
``lem evaluate --out`` folder): its ``slippage.npz`` and ``test_index.parquet``. Seconds to a
minute on 2 cores. ``--resamples`` defaults to the summary's (lem_model.paired.DEFAULT_RESAMPLES).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl

from lem_model.evaluate import EvalArrays
from lem_model.paired import DEFAULT_RESAMPLES, comparisons
from lem_pipeline.evaluation_summary import execution_dates
from lem_pipeline.lake import SLIPPAGE_FILE, TEST_INDEX_FILE


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("evaluation")
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES)
    ap.add_argument("--periods", type=int, nargs="*", help="minimum periods to report (default: all)")
    args = ap.parse_args()
    folder = Path(args.evaluation)
    ev = EvalArrays.load(folder / SLIPPAGE_FILE)
    dates = execution_dates(pl.read_parquet(folder / TEST_INDEX_FILE))
    lows: dict[tuple[str, int], list[float]] = {}
    means: dict[tuple[str, int], float] = {}
    for seed in range(args.seeds):
        for side, m, p in comparisons(ev, dates, "rule", resamples=args.resamples, seed=seed):
            if not args.periods or m in args.periods:
                lows.setdefault((side, m), []).append(p.ci95[0])
                means[side, m] = p.mean
    print(f"{folder}: vs rule, lower bound of the 95% interval over seeds 0..{args.seeds - 1}, "
          f"{args.resamples} resamples each")
    for (side, m), v in lows.items():
        v = np.array(v)
        print(f"  {side:4} {m:2}  mean {means[side, m]:+7.3f}  lower bound min {v.min():+7.3f} median "
              f"{np.median(v):+7.3f} max {v.max():+7.3f}  above 0 in {(v > 0).sum()} of {len(v)}")


if __name__ == "__main__":
    main()
