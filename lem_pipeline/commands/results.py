"""``lem results``: RESULTS.md from what the runs produced (``lem run``, then ``lem lookahead``
for the look-ahead section). It reads the data lake and the instance's materialisations; it
trains and evaluates nothing."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from lem_model.evaluate import SIDES, EvalArrays, headline, main_table
from lem_model.fileio import atomic_write_text
from lem_model.vocabulary import Target
from lem_pipeline import settings
from lem_pipeline.assets.research import LOOKAHEAD
from lem_pipeline.commands.local import add_preset_argument, open_local
from lem_pipeline.errors import UserError
from lem_pipeline.lake import DataLake
from lem_pipeline.materializations import NotMaterializedError, latest_metadata
from lem_pipeline.paper_results import PAPER_TABLE_1
from lem_pipeline.evaluation_summary import SUMMARY_FILE
from lem_pipeline.reporting import costs_frame, frequency_label, markdown, stats_frame
from lem_pipeline.tracking import MLflowTracking
from lem_pipeline.windows import read_index, read_meta, window_counts

CAUSAL_PARAM = "model.causal"  # the one parameter a look-ahead training differs in


def how(preset: str, out: Path) -> str:
    """The commands that produce a results file, as a reader would type them."""
    flag = "" if preset == settings.DEFAULT_PRESET else f" --preset {preset}"
    dest = "" if out.name == "RESULTS.md" else f" --out {out.name}"
    return f"`lem run{flag} && lem lookahead{flag} && lem results{flag}{dest}`"


def _lookahead_table(causal: EvalArrays, lookahead: EvalArrays, val: dict[bool, float]) -> str:
    N = causal.n_ahead
    rows = []
    for side, kind, _ in SIDES:
        for m in sorted({1, N // 2, N - 2, N}) + [N + 1]:
            a, b = causal.model_bps[:, m - 1, kind, Target.VOLUME], lookahead.model_bps[:, m - 1, kind, Target.VOLUME]
            rows.append([side, "Match VWAP" if m - 1 == N else str(m), a.mean(), a.std(), b.mean(), b.std()])
    table = pl.DataFrame(rows, schema=["order", "min period", "causal mean", "causal std", "look-ahead mean",
                                       "look-ahead std"], orient="row")
    loss = f"| best validation loss | | {val[True]:.5f} | | {val[False]:.5f} | |"
    return markdown(table, decimals=2) + "\n" + loss


PAIRED_NOTE = ("The LEM against the causal rule and TWAP on the same windows, per side and minimum period, and "
               "(\"Fitted rule\", for a model started as it) against the rule with the thresholds fitted on the "
               "training windows: advantage in bps (positive = the LEM is better), 95% interval by a moving-block "
               "bootstrap over execution dates, win rate (summary.json). The rows \"vs arrival\" score the same "
               "pairs against the arrival price (the VWAP of the bar before execution) instead of the VWAP of the bars "
               "each order executed on, which moves with the order's own duration: on a random walk the one-line rule "
               "beats TWAP by about 30 bps on the tables' metric and by nothing against the arrival price (README, "
               "\"What the table metric rewards\"). Side BOTH is the mean of the two sides' advantages per window, "
               "which cancels the drift exposure of a schedule that trades later (or earlier) on both sides.")


COSTS_NOTE = ("Net of trading costs (README, \"Trading costs\"): mean slippage against the benchmark and against the "
              "arrival price (the VWAP of the bar before execution), gross and at three order sizes (fraction of ADV: "
              "square-root impact, fees, a 20% participation cap), with the fill rate; side-less baselines scored as "
              "buys. Rows: minimum periods 1, N/2 and Match VWAP, and the baselines; every row, the net tables in the "
              "paper's layout, the regimes and the trade log are in the evaluation's files.")


def _paired(evaluation_dir: Path, label: str, summary_path: Path | None) -> list[str]:
    """The evaluation's paired table (lem_pipeline.reporting.write_paired_table) and its costs
    table (a few rows of lem_pipeline.reporting.costs_frame), where it has them; ``summary_path``:
    that frequency's summary.json, as the evaluation asset's metadata names it."""
    table = evaluation_dir / f"{label}_paired.md"
    parts = [PAIRED_NOTE, "", table.read_text(), ""] if table.is_file() else []
    if summary_path is not None and summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("net"):
            n_ahead = max(int(r["min_period"]) for r in summary["rows"] if r["min_period"].isdigit())
            shown = {"1", str(n_ahead // 2), "Match VWAP", "All"}
            frame = costs_frame(summary).filter(pl.col("Min Period").is_in(shown))
            parts += [COSTS_NOTE, "", markdown(frame, decimals=2), ""]
    return parts


# What early stopping watched, by TrainConfig.selection, for the preset line.
WATCHED = {"objective": "validation loss", "vs_rule": "validation advantage over the causal rule"}
MIN_TEST_WINDOWS = 200  # below this a frequency's table rests on too few independent periods


def _crypto_section(lake: DataLake, instance, preset) -> list[str]:
    meta = read_meta(lake.windows_dir("crypto"))
    c = meta["config"]
    counts = window_counts(read_index(lake.windows_dir("crypto")))
    evaluation = latest_metadata(instance, "crypto_evaluation")
    tables = {Path(csv).stem: Path(csv).with_suffix(".md") for csv in evaluation["tables"].values()}
    summaries = {label: Path(path) for label, path in (evaluation.get("summaries") or {}).items()}
    parts = ["## Crypto (Binance spot)", "",
             f"Windows: {meta['counts']} (stride {c['stride']}, test stride {c.get('test_stride') or c['stride']}; "
             f"validation from {c['val_start']}, test from {c['test_start']}). Per split, frequency and symbol:", "",
             markdown(counts), ""]
    for freq in preset.crypto_frequencies:
        label = frequency_label(freq)
        n_test = int(counts.filter((pl.col("split") == "test") & (pl.col("freq_min") == freq))["windows"].sum())
        table = tables.get(f"crypto_{label}_main")
        if n_test == 0 or table is None:
            parts += [f"### {label}: no test windows", "", "Nothing to evaluate at this frequency.", ""]
            continue
        warning = f", fewer than {MIN_TEST_WINDOWS}: read with care" if n_test < MIN_TEST_WINDOWS else ""
        parts += [f"### {label} ({n_test} test windows{warning})", "", table.read_text(), "",
                  *_paired(lake.evaluation_dir("crypto"), f"crypto_{label}", summaries.get(f"crypto_{label}"))]
    return parts


PAPER_NOTE = ("The paper's Table 1 (its 30 Dow stocks, test from 2020; its model has the reference's one-bar "
              "look-ahead, see the look-ahead section) beside ours, mean and std in bps. Our universe and model size "
              "are the preset's (above), so only the shape compares: rows by minimum period and the Match VWAP risk.")


def _paper_table(ev: EvalArrays) -> str:
    """Mean and std of the paper's Table 1 rows beside the same rows of ours."""
    ours = {(order, period): values for order, period, values in main_table(ev)}
    rows = [[order, period, paper[0], paper[1], *(ours[(order, period)][:2] if (order, period) in ours else [None] * 2)]
            for order, period, paper in PAPER_TABLE_1]
    frame = pl.DataFrame(rows, schema={"Order Type": pl.String, "Min Period": pl.String, "Paper mean": pl.Float64,
                                       "Paper std": pl.Float64, "Ours mean": pl.Float64, "Ours std": pl.Float64},
                         orient="row")
    return markdown(frame, decimals=2)


def training_differences(tracking_uri: str, causal_run: str, lookahead_run: str) -> list[str]:
    """What two trainings differ in besides causality: their parameters (model, training,
    windows config, preset), or the windows they trained and validated on (MLflow's dataset
    digests). Empty: a like-for-like pair, as the look-ahead section claims."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    a, b = client.get_run(causal_run), client.get_run(lookahead_run)
    pa, pb = a.data.params, b.data.params
    params = sorted(k for k in pa.keys() | pb.keys() if k != CAUSAL_PARAM and pa.get(k) != pb.get(k))
    da, db = ({d.dataset.name: d.dataset.digest for d in r.inputs.dataset_inputs} for r in (a, b))
    return params + [f"the {name} windows" for name in sorted(da.keys() | db.keys()) if da.get(name) != db.get(name)]


def _equity_section(lake: DataLake, instance, preset) -> tuple[list[str], dict]:
    equity = latest_metadata(instance, "equity_lem_model")
    evaluated = latest_metadata(instance, "equity_evaluation")["mlflow_run_id"]
    if evaluated != equity["mlflow_run_id"]:  # the lake's tables are the evaluated model's
        raise UserError(f"the latest equity evaluation is of MLflow run {evaluated}, the latest trained model is run "
                        f"{equity['mlflow_run_id']} (its evaluation failed or has not run): run `lem run --preset "
                        f"{preset.name}` again")
    causal = EvalArrays.load(lake.slippage_file("equity"))
    h = headline(causal)
    eq = read_meta(lake.windows_dir("equity"))
    c = eq["config"]
    return [
        f"## Equity (daily, {', '.join(preset.tickers)})",
        "",
        f"Windows: {eq['counts']} (lookback {c['lookback']}, horizon {c['n_ahead']}, stride {c['stride']}; validation "
        f"from {c['val_start']}, test from {c['test_start']}). MLflow run `{equity['mlflow_run_id']}`.",
        "",
        markdown(stats_frame(main_table(causal), units=False), decimals=2),
        "",
        f"Match VWAP std {h['test_match_vwap_std_bps']:.2f} bps against TWAP volume {h['test_twap_volume_std_bps']:.2f} "
        f"bps: a reduction of {100 * h['test_match_vwap_std_reduction']:.1f}%.",
        "",
        *_paired(lake.evaluation_dir("equity"), "equity_daily", lake.evaluation_dir("equity") / SUMMARY_FILE),
        PAPER_NOTE,
        "",
        _paper_table(causal),
        "",
    ], equity


def _lookahead_section(lake: DataLake, instance, equity: dict) -> list[str]:
    parts = ["## The look-ahead finding", ""]
    try:
        lookahead = latest_metadata(instance, "equity_lookahead_evaluation")
    except NotMaterializedError:
        return parts + ["Not measured yet: run `lem lookahead`, then `lem results` again.", ""]
    differ = training_differences(MLflowTracking.from_environment().tracking_uri, equity["mlflow_run_id"],
                                  lookahead["mlflow_run_id"])
    if differ:
        return parts + [
            f"Not comparable now: the look-ahead model (MLflow run `{lookahead['mlflow_run_id']}`) was not trained as "
            f"the causal one (`{equity['mlflow_run_id']}`); they differ in {', '.join(differ)}. Run `lem lookahead` "
            "again for a like-for-like measurement.", ""]
    return parts + [
        "The reference `lems` 0.1.1 decides execution step k from the bar it trades in (docs/DESIGN.md). Same "
        "data, same settings, same seed, trained twice: `causal=True` (ours) and `causal=False` (the reference "
        "alignment). The look-ahead model's numbers are not achievable in live trading. MLflow runs: causal "
        f"`{equity['mlflow_run_id']}`, look-ahead `{lookahead['mlflow_run_id']}`.",
        "",
        _lookahead_table(EvalArrays.load(lake.slippage_file("equity")), EvalArrays.load(lake.slippage_file(LOOKAHEAD)),
                         {True: float(equity["best_val_loss"]), False: float(lookahead["best_val_loss"])}),
        "",
    ]


def generate(local, lake: DataLake, out: Path) -> None:
    preset, instance = local.preset, local.instance
    size, training = preset.model, preset.training
    parts = [
        f"# Results ({preset.name} preset)",
        "",
        f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by {how(preset.name, out)} (see README; offline: with "
        "`LEM_BINANCE_URL` and `LEM_YAHOO_DIR` pointing at `../shared/data`). Every number below was measured by "
        "those commands on this repository's code; nothing was tuned on the test split.",
        "",
        f"Preset `{preset.name}`: {preset.description} Model: hidden {size.hidden_size}, embedding "
        f"{size.num_embedding}, {size.num_heads} heads, fused hidden {size.fused_hidden}; training: "
        f"{training.epochs} epochs max, batch {training.batch_size}, lr {training.lr}, early stopping on the "
        f"{WATCHED[training.selection]}. Slippage in bps against the benchmark over the bars each order executed "
        "(VWAP, volume target, unless said otherwise). Buys want negative numbers, sells positive.",
        "",
    ]
    equity = None
    if preset.tickers:
        section, equity = _equity_section(lake, instance, preset)
        parts += section
    if preset.streams:
        parts += _crypto_section(lake, instance, preset)
    if equity is not None:
        parts += _lookahead_section(lake, instance, equity)
    atomic_write_text(out, "\n".join(parts))


def results(args: argparse.Namespace) -> int:
    local = open_local(args.preset)
    try:
        generate(local, DataLake.from_environment(), Path(args.out))
    except NotMaterializedError as e:  # lem results only reads what lem run produced
        raise UserError(f"{e}: run `lem run --preset {local.preset.name}` first") from e
    print(f"lem results: wrote {args.out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("results", help="write RESULTS.md from what `lem run` (and `lem lookahead`) produced")
    add_preset_argument(p)
    p.add_argument("--out", default="RESULTS.md")
    p.set_defaults(func=results)
