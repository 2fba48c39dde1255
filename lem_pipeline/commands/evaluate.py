"""``lem evaluate``: a trained model on any universe of bars (Yahoo-layout CSVs, or a Binance
Data Vision tree), with the pipeline's own evaluation (lem_pipeline.model_evaluation), into a
folder and a run of the MLflow experiment ``lem-evaluate`` tagged with the model's training run.

Equity models (daily windows) take ``--yahoo-dir`` and ``--tickers``; crypto models (intraday)
take ``--binance-url``, ``--symbols`` and ``--freq-min`` (a model's windows.json does not record
its frequencies). Every argument is checked before anything is computed; a bad one is a
UserError naming it (one line, exit 2)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import date, datetime, timezone
from pathlib import Path

from lem_pipeline.commands.model_source import load_model_source, model_run_id
from lem_pipeline.errors import UserError
from lem_pipeline.windows import DATASET_BY_SEASONALITY

EXPERIMENT = "lem-evaluate"
MODEL_RUN_TAG = "lem.model_run_id"  # the training run of the evaluated model
MODEL_TEST_START_TAG = "lem.model_test_start"  # the model's own test split: a span before it is not a test
DEFAULT_BATCH = 256


def parse_date(flag: str, text: str | None) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise UserError(f"{flag} {text!r} is not a date (YYYY-MM-DD)") from None


def parse_list(flag: str, text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UserError(f"{flag} {text!r}: give one or more, comma-separated")
    return items


def check_args(args: argparse.Namespace) -> tuple[date, date | None]:
    """The source flags name one universe, the test span is ordered, and --out is ours to replace."""
    from lem_pipeline.commands.local import writable_dir
    from lem_pipeline.lake import SLIPPAGE_FILE

    yahoo, binance = args.yahoo_dir is not None, args.binance_url is not None
    if yahoo == binance:
        raise UserError("give either --yahoo-dir with --tickers (equity) or --binance-url with --symbols (crypto)")
    if yahoo and not args.tickers:
        raise UserError("--yahoo-dir needs --tickers T1,T2,...")
    if binance and not args.symbols:
        raise UserError("--binance-url needs --symbols S1,S2,...")
    if yahoo and not Path(args.yahoo_dir).is_dir():
        raise UserError(f"--yahoo-dir {args.yahoo_dir}: no such directory")
    start, end = parse_date("--test-start", args.test_start), parse_date("--test-end", args.test_end)
    if end is not None and end < start:
        raise UserError(f"--test-end {end} is before --test-start {start}")
    if start > datetime.now(timezone.utc).date():  # the UTC day, as the Data Vision months
        raise UserError(f"--test-start {start} is in the future: no bars to evaluate yet")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: not a directory")
    writable_dir("--out", str(out.parent))  # not found only once the evaluation is computed
    if out.is_dir() and any(out.iterdir()) and not (out / SLIPPAGE_FILE).is_file():
        raise UserError(f"--out {out}: not empty and not an earlier evaluation (no {SLIPPAGE_FILE}); it is replaced "
                        "whole, so give a new or empty folder")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be at least 1")
    if args.freq_min is not None and args.freq_min < 1:
        raise UserError(f"--freq-min {args.freq_min} must be a positive number of minutes")
    check_device(args.device)
    return start, end


def check_device(name: str) -> None:
    """--device names a device this machine has (cpu, cuda, cuda:1, auto)."""
    import torch

    from lem_model.devices import resolve_device

    try:
        device = resolve_device(name)
    except RuntimeError as e:
        raise UserError(f"--device {name!r}: not a device (cpu, cuda or auto)") from e
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: cpu, cuda or auto (the evaluation runs in float64 where MPS has none)")
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise UserError(f"--device {name}: this torch build or machine has no such CUDA device "
                        f"({torch.cuda.device_count() if torch.cuda.is_available() else 0} visible)")


def evaluate(args: argparse.Namespace) -> int:
    from lem_pipeline import evaluation_universe as universe
    from lem_pipeline.model_evaluation import evaluate_windows, log_evaluation
    from lem_pipeline.tracking import MLflowTracking, check_store

    test_start, test_end = check_args(args)
    model, cfg = load_model_source(args.model)
    run_id, lineage_warning = model_run_id(args.model, model)  # a corrupt lineage.json fails here, before any download
    tracking = MLflowTracking.from_environment()
    check_store(tracking.tracking_uri)  # the run is logged after --out is written: a bad store fails now
    dataset = DATASET_BY_SEASONALITY[cfg.seasonality]
    if args.yahoo_dir is not None:
        if dataset != "equity":
            raise UserError(f"--model {args.model}: a {cfg.seasonality} (crypto) model; give --binance-url and "
                            "--symbols, not --yahoo-dir")
        names = parse_list("--tickers", args.tickers)
        series = universe.yahoo_bars(Path(args.yahoo_dir), names, test_end, cfg=cfg, test_start=test_start)
        what = f"--tickers {','.join(names)}"
    else:
        if dataset != "crypto":
            raise UserError(f"--model {args.model}: a daily (equity) model; give --yahoo-dir and --tickers, "
                            "not --binance-url")
        if args.freq_min is None:
            raise UserError(f"--model {args.model}: its windows.json does not record the bar frequency; give "
                            "--freq-min (minutes, one of the frequencies it was trained on)")
        names = parse_list("--symbols", args.symbols)
        series = universe.binance_bars(args.binance_url, names, market=args.market, interval=args.interval,
                                       freq_min=args.freq_min, cfg=cfg, test_start=test_start, test_end=test_end)
        what = f"--symbols {','.join(names)}"
    if lineage_warning:  # after the arguments: a warning is for an evaluation that goes ahead
        print(lineage_warning, file=sys.stderr)
    if test_start < cfg.test_start:
        # Any universe and span may be evaluated, but one that reaches into the model's own
        # training or validation period is not a test: say so, and tag the run.
        print(f"warning: --test-start {test_start} is before the model's own test split ({cfg.test_start}): "
              "these windows may overlap the period it was trained or selected on", file=sys.stderr)
    out = Path(args.out).resolve()
    with tempfile.TemporaryDirectory(prefix="lem-evaluate-windows-") as tmp:
        report = universe.build_test_windows(series, cfg, test_start, test_end, Path(tmp) / dataset, what)
        result = evaluate_windows(dataset, model, report.directory, out, batch_size=args.batch_size,
                                  device=args.device)
    tags = {"lem.model": args.model, "lem.universe": ",".join(names), "lem.test_start": test_start.isoformat(),
            MODEL_TEST_START_TAG: cfg.test_start.isoformat(),
            **({"lem.test_end": test_end.isoformat()} if test_end else {}),
            **({MODEL_RUN_TAG: run_id} if run_id else {})}
    with tracking.run(EXPERIMENT, run_name=f"{dataset} {','.join(names)} from {test_start}", tags=tags) as run:
        log_evaluation(result, out)
        evaluation_run = run.info.run_id
    print(f"{result.test_windows} test windows; tables, plots and {', '.join(p.name for p in result.summaries.values())} "
          f"in {out}; MLflow run {evaluation_run} (experiment {EXPERIMENT})", file=sys.stdout)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a trained model on any universe of bars: tables, plots, "
                                        "summary.json and an MLflow run")
    p.add_argument("--model", required=True, help="trained-model directory, MLflow run id, or registry URI such as "
                                                  "models:/lem-equity@champion")
    p.add_argument("--yahoo-dir", help="equity: a folder of Yahoo-layout CSVs, {TICKER}.csv")
    p.add_argument("--tickers", help="equity: T1,T2,... (files in --yahoo-dir)")
    p.add_argument("--binance-url", help="crypto: a Binance Data Vision tree (https:// or file://)")
    p.add_argument("--symbols", help="crypto: S1,S2,... (e.g. BTCUSDT)")
    p.add_argument("--market", choices=["spot", "um"], default="spot", help="crypto: spot or USD-M futures")
    p.add_argument("--interval", default="1m", help="crypto: the candles to resample (default 1m)")
    p.add_argument("--freq-min", type=int, help="crypto: the bar frequency in minutes (the model's windows.json does "
                                                "not record it)")
    p.add_argument("--test-start", required=True, help="YYYY-MM-DD: test windows start (lookback included) on or "
                                                       "after it; earlier bars are warm-up")
    p.add_argument("--test-end", help="YYYY-MM-DD: only windows whose execution ends on or before it")
    p.add_argument("--out", required=True, help="folder for the tables, plots and summary.json (replaced whole)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.set_defaults(func=evaluate)
