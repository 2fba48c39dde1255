"""``lem``: the command line for the desk and for the README's main command."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _setup(preset_name: str):
    """Preset, definitions and the local instance (DAGSTER_HOME, default ./dagster_home)."""
    os.environ["LEM_PRESET"] = preset_name
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path("dagster_home").resolve())))
    home.mkdir(parents=True, exist_ok=True)
    import dagster as dg

    from lem_pipeline.definitions import build_definitions
    from lem_pipeline.presets import get_preset

    preset = get_preset(preset_name)
    return preset, build_definitions(preset), dg.DagsterInstance.get(), home


def _cmd_results(args: argparse.Namespace) -> int:
    from lem_pipeline.resources import default_resources
    from lem_pipeline.results import generate

    preset, defs, instance, _ = _setup(args.preset)
    generate(defs, instance, preset, default_resources()["lake"], Path(args.out))
    print(f"lem results: wrote {args.out}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from lem_pipeline.runner import run_partitions

    preset, defs, instance, home = _setup(args.preset)
    jobs = [j for j, has in (("crypto_ingest_job", preset.streams), ("equity_ingest_job", preset.tickers)) if has]
    jobs.append("features_job")
    jobs += [j for j, has in (("crypto_training_job", preset.streams), ("equity_training_job", preset.tickers)) if has]
    print(f"lem run: preset {preset.name!r} ({preset.description}); DAGSTER_HOME={home}", flush=True)
    failed = 0
    for job in jobs:
        summary = run_partitions(defs, job, instance, progress=not args.quiet)
        print(f"{job}: {len(summary.succeeded)} runs succeeded, {len(summary.failed)} failed", flush=True)
        for key, message in list(summary.failed.items())[:10]:
            print(f"  {key}: {message}", file=sys.stderr)
        failed += len(summary.failed)
        if summary.failed:
            break  # downstream jobs would read incomplete inputs
    if failed:
        print(f"lem run: {failed} runs failed. If a source cannot be reached, point LEM_BINANCE_URL / "
              "LEM_YAHOO_DIR at a local mirror (see README).", file=sys.stderr)
        return 1
    print("lem run: done. Look at the runs with `dagster dev -w workspace.yaml`.")
    return 0


def _cmd_schedule(args: argparse.Namespace) -> int:
    import json as _json
    from datetime import datetime, timezone

    import polars as pl

    from lem_model.orders import Order
    from lem_pipeline.desk import load_trained, schedule_order

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
        print(_json.dumps({"order": order.__dict__, "steps": rows}))
    else:
        print(f"{order}  (model N={cfg.n_ahead}, lookback {cfg.lookback})")
        for row in rows:
            qty = f"  qty {row['quantity']:.6g}" if "quantity" in row else ""
            print(f"step {row['step']:2d}  bar {row['bar']}  trade {row['fraction']:.6f}{qty}  "
                  f"(done before: {row['executed_before']:.6f})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lem", description="Large Execution Models: pipeline and desk tools")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="materialise the preset's asset graph on the local Dagster instance")
    run.add_argument("--preset", default=os.environ.get("LEM_PRESET", "demo"))
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=_cmd_run)
    res = sub.add_parser("results", help="after `lem run`: retrain equity causal and look-ahead, write RESULTS.md")
    res.add_argument("--preset", default=os.environ.get("LEM_PRESET", "demo"))
    res.add_argument("--out", default="RESULTS.md")
    res.set_defaults(func=_cmd_results)
    sch = sub.add_parser("schedule", help="allocation for the next bar (or a replay) of one order, from a trained model")
    sch.add_argument("--model", required=True, help="checkpoint directory or MLflow run id (LEM_MLFLOW_URI)")
    sch.add_argument("--bars", required=True, help="Parquet of bars (data/bars/...): open_time, volume, quote_volume, vwap")
    sch.add_argument("--symbol", help="keep only this symbol's bars")
    sch.add_argument("--side", choices=["buy", "sell"], default="buy")
    sch.add_argument("--target", choices=["volume", "notional"], default="volume")
    sch.add_argument("--benchmark", choices=["vwap", "twap"], default="vwap")
    sch.add_argument("--min-duration", default="match", help="1..N bars, or 'match' to match the benchmark")
    sch.add_argument("--min-rate", type=float, default=0.0)
    sch.add_argument("--max-rate", type=float, default=1.0)
    sch.add_argument("--quantity", type=float, help="order size, to print quantities as well as fractions")
    sch.add_argument("--start", help="execution start (a bar's open time, UTC): replay every step from there")
    sch.add_argument("--json", action="store_true")
    sch.set_defaults(func=_cmd_schedule)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
