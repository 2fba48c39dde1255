"""``lem schedule``: the allocation for the next bar (or a replay) of one order, from a trained
model and recent bars (lem_pipeline.order_schedule)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone


def schedule(args: argparse.Namespace) -> int:
    import polars as pl

    from lem_model.orders import Order
    from lem_pipeline.order_schedule import schedule_order
    from lem_pipeline.trained_model import load_trained

    model, cfg = load_trained(args.model)
    bars = pl.read_parquet(args.bars)
    if args.symbol:
        bars = bars.filter(pl.col("symbol") == args.symbol)
    if bars.is_empty():
        print(f"lem schedule: no bars in {args.bars}" + (f" for {args.symbol}" if args.symbol else ""), file=sys.stderr)
        return 2
    min_duration = None if args.min_duration == "match" else int(args.min_duration)
    order = Order(args.side, args.target, args.benchmark, min_duration, args.min_rate, args.max_rate)
    start = datetime.fromisoformat(args.start).replace(tzinfo=timezone.utc) if args.start else None
    try:
        steps = schedule_order(model, cfg, bars, order, start)
    except ValueError as e:
        print(f"lem schedule: {e}", file=sys.stderr)
        return 2
    rows = [{"step": s.step, "bar": s.bar_open_time.isoformat(), "fraction": s.decision.fraction,
             "executed_before": s.decision.executed, **({"quantity": s.decision.fraction * args.quantity}
                                                        if args.quantity else {})} for s in steps]
    if args.json:
        print(json.dumps({"order": order.__dict__, "steps": rows}))
    else:
        print(f"{order}  (model N={cfg.n_ahead}, lookback {cfg.lookback})")
        for row in rows:
            qty = f"  qty {row['quantity']:.6g}" if "quantity" in row else ""
            print(f"step {row['step']:2d}  bar {row['bar']}  trade {row['fraction']:.6f}{qty}  "
                  f"(done before: {row['executed_before']:.6f})")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("schedule", help="allocation for the next bar (or a replay) of one order, from a trained model")
    p.add_argument("--model", required=True, help="trained-model directory or MLflow run id (LEM_MLFLOW_URI)")
    p.add_argument("--bars", required=True, help="Parquet of bars (data/bars/...): open_time, volume, quote_volume, vwap")
    p.add_argument("--symbol", help="keep only this symbol's bars")
    p.add_argument("--side", choices=["buy", "sell"], default="buy")
    p.add_argument("--target", choices=["volume", "notional"], default="volume")
    p.add_argument("--benchmark", choices=["vwap", "twap"], default="vwap")
    p.add_argument("--min-duration", default="match", help="1..N bars, or 'match' to match the benchmark")
    p.add_argument("--min-rate", type=float, default=0.0)
    p.add_argument("--max-rate", type=float, default=1.0)
    p.add_argument("--quantity", type=float, help="order size, to print quantities as well as fractions")
    p.add_argument("--start", help="execution start (a bar's open time, UTC): replay every step from there")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=schedule)
