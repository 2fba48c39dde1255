"""``lem results``: RESULTS.md from what the runs produced (``lem run``, then ``lem lookahead``
for the look-ahead section). It reads the data lake and the instance's materialisations; it
trains and evaluates nothing."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from lem_model.evaluate import SIDES, EvalArrays, headline, main_table
from lem_model.window_dataset import SPLITS
from lem_model.vocabulary import Target
from lem_pipeline.assets.research import LOOKAHEAD
from lem_pipeline.commands.local import add_preset_argument, open_local
from lem_pipeline.lake import DataLake
from lem_pipeline.materializations import NotMaterializedError, latest_metadata
from lem_pipeline.reporting import frequency_label, markdown, stats_frame
from lem_pipeline.windows import read_index, read_meta

HOW = "`lem run && lem lookahead && lem results`"


def _lookahead_table(causal: EvalArrays, lookahead: EvalArrays, val: dict[bool, float]) -> str:
    N = causal.n_ahead
    lines = ["| order | min period | causal mean | causal std | look-ahead mean | look-ahead std |",
             "|---|---|---|---|---|---|"]
    for side, kind, _ in SIDES:
        for m in sorted({1, N // 2, N - 2, N}) + [N + 1]:
            j = m - 1
            label = "Match VWAP" if j == N else str(m)
            a, b = causal.model_bps[:, j, kind, Target.VOLUME], lookahead.model_bps[:, j, kind, Target.VOLUME]
            lines.append(f"| {side} | {label} | {a.mean():.2f} | {a.std():.2f} | {b.mean():.2f} | {b.std():.2f} |")
    lines.append(f"| best validation loss | | {val[True]:.5f} | | {val[False]:.5f} | |")
    return "\n".join(lines)


MIN_TEST_WINDOWS = 200  # below this a frequency's table rests on too few independent periods


def window_counts(windows_dir: Path) -> pl.DataFrame:
    """Windows per split and frequency, with the first and last execution start."""
    return (read_index(windows_dir).group_by("split", "freq_min")
            .agg(pl.len().alias("windows"), pl.col("start_time").min().dt.date().alias("first_start"),
                 pl.col("start_time").max().dt.date().alias("last_start"))
            .sort("freq_min", pl.col("split").replace_strict({s: i for i, s in enumerate(SPLITS)})))


def _crypto_section(lake: DataLake, preset) -> list[str]:
    meta = read_meta(lake.windows_dir("crypto"))
    c = meta["config"]
    counts = window_counts(lake.windows_dir("crypto"))
    parts = ["## Crypto (Binance spot, from 1h candles)", "",
             f"Windows: {meta['counts']} (stride {c['stride']}, test stride {c.get('test_stride') or c['stride']}; "
             f"validation from {c['val_start']}, test from {c['test_start']}). Per split and frequency:", "",
             markdown(counts), ""]
    for freq in preset.crypto_frequencies:
        label = frequency_label(freq)
        n_test = int(counts.filter((pl.col("split") == "test") & (pl.col("freq_min") == freq))["windows"].sum())
        table = lake.evaluation_dir("crypto") / f"crypto_{label}_main.md"
        if n_test == 0 or not table.exists():
            parts += [f"### {label}: no test windows", "", "Nothing to evaluate at this frequency.", ""]
            continue
        warning = f", fewer than {MIN_TEST_WINDOWS}: read with care" if n_test < MIN_TEST_WINDOWS else ""
        parts += [f"### {label} ({n_test} test windows{warning})", "", table.read_text(), ""]
    return parts


def generate(local, lake: DataLake, out: Path) -> None:
    preset, instance = local.preset, local.instance
    equity = latest_metadata(instance, "equity_lem_model")
    causal = EvalArrays.load(lake.slippage_file("equity"))
    h = headline(causal)
    size, training = preset.model, preset.training
    eq = read_meta(lake.windows_dir("equity"))
    parts = [
        f"# Results ({preset.name} preset)",
        "",
        f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by {HOW} (see README; offline: with "
        "`LEM_BINANCE_URL` and `LEM_YAHOO_DIR` pointing at `../shared/data`). Every number below was measured by "
        "those commands on this repository's code; nothing was tuned on the test split.",
        "",
        f"Preset `{preset.name}`: {preset.description} Model: hidden {size.hidden_size}, embedding "
        f"{size.num_embedding}, {size.num_heads} heads, fused hidden {size.fused_hidden}; training: "
        f"{training.epochs} epochs max, batch {training.batch_size}, lr {training.lr}, early stopping on validation "
        "loss. Slippage in bps against the benchmark over the bars each order executed (VWAP, volume target, unless "
        "said otherwise). Buys want negative numbers, sells positive.",
        "",
        f"## Equity (daily, {', '.join(preset.tickers)})",
        "",
        f"Windows: {eq['counts']} (lookback {eq['config']['lookback']}, horizon {eq['config']['n_ahead']}, stride "
        f"{eq['config']['stride']}; validation from {eq['config']['val_start']}, test from "
        f"{eq['config']['test_start']}). MLflow run `{equity['mlflow_run_id']}`.",
        "",
        markdown(stats_frame(main_table(causal), units=False), decimals=2),
        "",
        f"Match VWAP std {h['test_match_vwap_std_bps']:.2f} bps against TWAP volume {h['test_twap_volume_std_bps']:.2f} "
        f"bps: a reduction of {100 * h['test_match_vwap_std_reduction']:.1f}%.",
        "",
    ]
    if lake.windows_dir("crypto").exists():
        parts += _crypto_section(lake, preset)
    parts += ["## The look-ahead finding", ""]
    try:
        lookahead = latest_metadata(instance, "equity_lookahead_evaluation")
    except NotMaterializedError:
        parts += ["Not measured yet: run `lem lookahead`, then `lem results` again.", ""]
    else:
        parts += [
            "The reference `lems` 0.1.1 decides execution step k from the bar it trades in (docs/DESIGN.md). Same "
            "data, same settings, same seed, trained twice: `causal=True` (ours) and `causal=False` (the reference "
            "alignment). The look-ahead model's numbers are not achievable in live trading. MLflow runs: causal "
            f"`{equity['mlflow_run_id']}`, look-ahead `{lookahead['mlflow_run_id']}`.",
            "",
            _lookahead_table(causal, EvalArrays.load(lake.slippage_file(LOOKAHEAD)),
                             {True: float(equity["best_val_loss"]), False: float(lookahead["best_val_loss"])}),
            "",
        ]
    out.write_text("\n".join(parts))


def results(args: argparse.Namespace) -> int:
    generate(open_local(args.preset), DataLake.from_environment(), Path(args.out))
    print(f"lem results: wrote {args.out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("results", help="write RESULTS.md from what `lem run` (and `lem lookahead`) produced")
    add_preset_argument(p)
    p.add_argument("--out", default="RESULTS.md")
    p.set_defaults(func=results)
