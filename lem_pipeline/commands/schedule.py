"""``lem schedule``: the allocation for the next bar (or a replay) of one order, from a trained
model and recent bars (lem_pipeline.order_schedule).

Every argument and input is checked before anything is computed (the ones that depend on the
model, the minimum duration and the rates against its horizon, once it is loaded); a bad one is
a UserError naming it (one line, exit 2: lem_pipeline.cli). The bars themselves are checked by
order_schedule.check_bars, so the library path is protected as well."""

from __future__ import annotations

import argparse
import json
import math
from datetime import datetime
from pathlib import Path

from lem_pipeline.commands.model_source import load_model_source
from lem_pipeline.errors import UserError, quote

MATCH = "match"  # --min-duration: match the benchmark over the whole horizon


def parse_start(text: str | None) -> datetime | None:
    """``--start``: an ISO time; naive is UTC, an offset is converted to UTC."""
    from lem_pipeline.order_schedule import as_utc

    if text is None:
        return None
    try:
        return as_utc(datetime.fromisoformat(text))
    except ValueError:
        raise UserError(f"--start {text!r} is not an ISO date or time (e.g. 2024-03-08 or "
                        "2021-03-01T14:00:00+00:00)") from None


def check_order_args(args: argparse.Namespace) -> None:
    """Rates per bar are fractions of the order: 0 <= min <= max <= 1 with max > 0; a quantity is positive."""
    if args.min_rate is not None and not 0.0 <= args.min_rate <= 1.0:
        raise UserError(f"--min-rate {args.min_rate:g} must be in [0, 1] (a fraction of the order per bar)")
    if not 0.0 < args.max_rate <= 1.0:
        raise UserError(f"--max-rate {args.max_rate:g} must be in (0, 1] (a fraction of the order per bar)")
    if args.min_rate is not None and args.min_rate > args.max_rate:
        raise UserError(f"--min-rate {args.min_rate:g} is above --max-rate {args.max_rate:g}")
    if args.quantity is not None and not (args.quantity > 0 and math.isfinite(args.quantity)):
        raise UserError(f"--quantity {args.quantity:g} must be a number > 0")


def order_rates(args: argparse.Namespace, n_ahead: int) -> tuple[float, float]:
    """(least, most) fraction per bar: the least defaults to the paper's 1 / N^2, the rate the
    model was trained, evaluated and registered with; the most must let the order finish within
    the horizon."""
    from lem_model.orders import paper_min_rate

    least = args.min_rate if args.min_rate is not None else paper_min_rate(n_ahead)
    if least > args.max_rate:
        raise UserError(f"--max-rate {args.max_rate:g} is below the least rate per bar, {least:g} (1/N^2 for the "
                        f"model's horizon N={n_ahead}, unless --min-rate says otherwise)")
    if args.max_rate * n_ahead < 1.0:
        raise UserError(f"--max-rate {args.max_rate:g}: at most that per bar, the order cannot finish within the "
                        f"model's horizon of {n_ahead} bars (give at least 1/{n_ahead})")
    return least, args.max_rate


def parse_min_duration(text: str, n_ahead: int) -> int | None:
    """``--min-duration``: 1..N bars of the model's horizon, or 'match' (None)."""
    if text == MATCH:
        return None
    if not text.isdigit() or not 1 <= int(text) <= n_ahead:
        raise UserError(f"--min-duration {text!r} must be 1..{n_ahead} (the model's horizon N) or {MATCH!r}")
    return int(text)


def read_bars(path: str, symbol: str | None):
    """The Parquet of bars, one symbol's rows with ``symbol``."""
    import polars as pl

    if not Path(path).is_file():
        raise UserError(f"--bars {path}: no such file")
    try:
        bars = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as e:
        raise UserError(f"--bars {path}: not a readable Parquet file ({quote(e)})") from e
    if symbol is None or "symbol" not in bars.columns:
        return bars
    kept = bars.filter(pl.col("symbol") == symbol)
    if kept.is_empty():
        raise UserError(f"--bars {path}: no bars for --symbol {symbol} (symbols there: "
                        f"{', '.join(map(str, sorted(bars['symbol'].unique().to_list(), key=str)))})")
    return kept


def schedule(args: argparse.Namespace) -> int:
    from lem_model.orders import Order
    from lem_pipeline.order_schedule import schedule_order

    start = parse_start(args.start)
    check_order_args(args)
    bars = read_bars(args.bars, args.symbol)
    model, cfg = load_model_source(args.model)
    if not model.cfg.causal:
        raise UserError(f"--model {args.model}: a look-ahead model (causal=False, as `lem lookahead` trains to "
                        "measure the leak) reads the bar it trades; it cannot schedule a live order")
    min_duration = parse_min_duration(args.min_duration, cfg.n_ahead)
    order = Order(args.side, args.target, args.benchmark, min_duration, *order_rates(args, cfg.n_ahead))
    steps = schedule_order(model, cfg, bars, order, start, name=f"--bars {args.bars}")
    rows = [{"step": s.step, "bar": s.bar_open_time.isoformat(), "fraction": s.decision.fraction,
             "executed_before": s.decision.executed, **({"quantity": s.decision.fraction * args.quantity}
                                                        if args.quantity else {})} for s in steps]
    if args.json:
        print(json.dumps({"order": order.__dict__, "steps": rows}, allow_nan=False))
    else:
        print(f"{order}  (model N={cfg.n_ahead}, lookback {cfg.lookback})")
        for row in rows:
            qty = f"  qty {row['quantity']:.6g}" if "quantity" in row else ""
            print(f"step {row['step']:2d}  bar {row['bar']}  trade {row['fraction']:.6f}{qty}  "
                  f"(done before: {row['executed_before']:.6f})")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("schedule", help="allocation for the next bar (or a replay) of one order, from a trained model")
    p.add_argument("--model", required=True, help="trained-model directory, MLflow run id, or registry URI such as models:/lem-equity@champion (in the store of LEM_MLFLOW_URI / LEM_MLFLOW_DIR)")
    p.add_argument("--bars", required=True, help="Parquet of bars (data/bars/...): open_time, volume, quote_volume, vwap")
    p.add_argument("--symbol", help="keep only this symbol's bars")
    p.add_argument("--side", choices=["buy", "sell"], default="buy")
    p.add_argument("--target", choices=["volume", "notional"], default="volume")
    p.add_argument("--benchmark", choices=["vwap", "twap"], default="vwap")
    p.add_argument("--min-duration", default=MATCH, help="1..N bars (N: the model's horizon), or 'match' to match "
                                                          "the benchmark")
    p.add_argument("--min-rate", type=float, help="least fraction of the order per bar, in [0, max-rate] (default "
                                                  "1/N^2, the paper's rate, which the model was trained and evaluated "
                                                  "with)")
    p.add_argument("--max-rate", type=float, default=1.0, help="the model's soft cap per bar, in [1/N, 1]: its "
                                                               "soft clip can pass it a little, and the last step "
                                                               "takes whatever remains")
    p.add_argument("--quantity", type=float, help="order size (> 0), to print quantities as well as fractions")
    p.add_argument("--start", help="execution start, a bar's open time in ISO format: replay every step from there. "
                                   "A time without an offset is UTC; one with an offset (+05:00) is converted to UTC")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=schedule)
