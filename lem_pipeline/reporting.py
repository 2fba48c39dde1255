"""Everything the pipeline shows people: tables rendered from one polars frame (CSV, Markdown,
LaTeX) and the evaluation plots (matplotlib, Agg). The numbers come from lem_model.evaluate;
this module only lays them out, so a table looks the same in Dagster, MLflow and RESULTS.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from lem_model.evaluate import STAT_NAMES, EvalArrays, Row, detail_table, main_table
from lem_model.vocabulary import OrderKind, Target
from lem_pipeline.bars import DAILY_MINUTES

MAIN_HEADER = ("Order Type", "Min Period")
DETAIL_HEADER = ("Order Type", "Strategy")
TABLE_DECIMALS = 6  # of the CSV tables, and of summary.json's rows, so both hold the same numbers
PAIRED_COLUMNS = {"Baseline": pl.String, "Side": pl.String, "Min Period": pl.Int64, "Advantage (bps)": pl.Float64,
                  "CI95 lo (bps)": pl.Float64, "CI95 hi (bps)": pl.Float64, "Win rate": pl.Float64,
                  "Windows": pl.Int64, "Dates": pl.Int64, "Block (dates)": pl.Int64}


def frequency_label(freq_min: int) -> str:
    return "daily" if freq_min == DAILY_MINUTES else f"{freq_min}min"


# -- tables ------------------------------------------------------------------------------------
def stats_frame(rows: list[Row], header: tuple[str, str] = MAIN_HEADER, units: bool = True) -> pl.DataFrame:
    """Rows of a slippage table as a frame: the two label columns, then one column per statistic
    (named with its unit, "Mean (bps)", unless ``units`` is False)."""
    cols = [*header, *(f"{s} (bps)" if units else s for s in STAT_NAMES)]
    return pl.DataFrame([[a, b, *vals] for a, b, vals in rows], schema=cols, orient="row")


def _cell(value: object, decimals: int | None) -> str:
    if isinstance(value, float):
        return f"{value:.{decimals}f}" if decimals is not None else f"{value:.6g}"
    return "" if value is None else str(value)


def markdown(frame: pl.DataFrame, decimals: int | None = None) -> str:
    """A Markdown table; floats with ``decimals`` places (None: 6 significant digits)."""
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(_cell(v, decimals) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join(lines)


def latex(frame: pl.DataFrame, decimals: int = 2) -> str:
    """A LaTeX tabular: label columns left-aligned, numbers right-aligned."""
    align = "".join("r" if dtype.is_float() else "l" for dtype in frame.dtypes)
    lines = ["\\begin{tabular}{" + align + "}", "\\hline",
             " & ".join(frame.columns).replace("%", "\\%") + " \\\\", "\\hline"]
    lines += [" & ".join(_cell(v, decimals) for v in row) + " \\\\" for row in frame.iter_rows()]
    return "\n".join([*lines, "\\hline", "\\end{tabular}"])


def write_table(frame: pl.DataFrame, stem: Path) -> dict[str, Path]:
    """CSV (TABLE_DECIMALS), Markdown and LaTeX (2 decimals) of one table; returns the three paths."""
    paths = {"csv": stem.with_suffix(".csv"), "md": stem.with_suffix(".md"), "tex": stem.with_suffix(".tex")}
    frame.write_csv(paths["csv"], float_precision=TABLE_DECIMALS)
    paths["md"].write_text(markdown(frame, decimals=2) + "\n")
    paths["tex"].write_text(latex(frame) + "\n")
    return paths


def write_evaluation_tables(ev: EvalArrays, out: Path, label: str) -> Path:
    """The main table and one detail table per minimum period (and Match); returns the main CSV."""
    main = write_table(stats_frame(main_table(ev)), out / f"{label}_main")
    for j in range(ev.n_ahead + 1):
        name = "match" if j == ev.n_ahead else f"min{j + 1}"
        write_table(stats_frame(detail_table(ev, j), DETAIL_HEADER), out / f"{label}_detail_{name}")
    return main["csv"]


def size_label(size: str | float) -> str:
    """An order size (fraction of ADV) for a column header: "0.01" -> "1% ADV"."""
    return f"{float(size) * 100:g}% ADV"


def _summary_stats(row: dict) -> list[float | None]:
    return [row[k.lower()] for k in STAT_NAMES]


def net_table_stem(label: str, size: str) -> str:
    """The file stem of one order size's net table: "equity_daily_net_adv0_01" (no dot: a suffix)."""
    return f"{label}_net_adv{size.replace('.', '_')}"


def net_frame(rows: list[dict]) -> pl.DataFrame:
    """One order size's rows of summary.json's ``net``, in the paper's layout, then what a desk
    reads beside it: the cost against the arrival price, the fill rate, impact and fees."""
    extra = {"Arrival mean (bps)": "arrival_mean", "Fill rate": "fill_rate", "Impact (bps)": "impact_bps",
             "Fees (bps)": "fees_bps"}
    schema = {h: pl.String for h in MAIN_HEADER} | {f"{s} (bps)": pl.Float64 for s in STAT_NAMES} \
        | {h: pl.Float64 for h in extra}
    return pl.DataFrame([[r["order"], r["min_period"], *_summary_stats(r), *(r[k] for k in extra.values())]
                         for r in rows], schema=schema, orient="row")


def costs_frame(summary: dict) -> pl.DataFrame:
    """Gross against net, one row per table row: the mean slippage against the benchmark and
    against the arrival price, gross and at each order size, with the fill rate."""
    net = summary.get("net", {})
    schema = {h: pl.String for h in MAIN_HEADER} | {"Gross mean (bps)": pl.Float64, "Gross arrival (bps)": pl.Float64}
    for size in net:
        schema |= {f"Net mean @{size_label(size)}": pl.Float64, f"Net arrival @{size_label(size)}": pl.Float64,
                   f"Fill rate @{size_label(size)}": pl.Float64}
    by_size = {size: {(r["order"], r["min_period"]): r for r in rows} for size, rows in net.items()}
    out = []
    for r in summary["rows"]:
        key = (r["order"], r["min_period"])
        line = [r["order"], r["min_period"], r["mean"], r.get("arrival_mean")]
        for size in net:
            n = by_size[size].get(key, {})
            line += [n.get("mean"), n.get("arrival_mean"), n.get("fill_rate")]
        out.append(line)
    return pl.DataFrame(out, schema=schema, orient="row")


def regimes_frame(entries: list[dict]) -> pl.DataFrame:
    """summary.json's ``regimes``: the table rows again per volatility tercile and trend sign."""
    schema = {"Regime": pl.String, "Label": pl.String, **{h: pl.String for h in MAIN_HEADER}, "Windows": pl.Int64} \
        | {f"{s} (bps)": pl.Float64 for s in STAT_NAMES} | {"Arrival mean (bps)": pl.Float64}
    return pl.DataFrame([[e["regime"], e["label"], e["order"], e["min_period"], e["windows"], *_summary_stats(e),
                          e["arrival_mean"]] for e in entries], schema=schema, orient="row")


def write_cost_tables(summary: dict, out: Path, label: str) -> list[Path]:
    """Beside the paper's tables: the net table per order size, the gross-against-net table and
    the regime table (CSV, Markdown, LaTeX each); returns the CSVs."""
    paths = [write_table(costs_frame(summary), out / f"{label}_costs")["csv"]]
    for size, rows in summary.get("net", {}).items():
        paths.append(write_table(net_frame(rows), out / net_table_stem(label, size))["csv"])
    if summary.get("regimes"):
        paths.append(write_table(regimes_frame(summary["regimes"]), out / f"{label}_regimes")["csv"])
    return paths


def paired_frame(comparisons: dict[str, list[dict]]) -> pl.DataFrame:
    """The paired comparisons of summary.json (``{baseline label: its entries}``, e.g. the
    ``vs_rule`` and ``vs_twap`` lists) as one table: advantage (positive = the LEM is better),
    95% interval, win rate, and what the interval rests on."""
    rows = [[baseline, e["side"], e["min_period"], e["advantage_bps"], *e["ci95"], e["win_rate"], e["windows"],
             e["dates"], e["block_length"]] for baseline, entries in comparisons.items() for e in entries]
    return pl.DataFrame(rows, schema=PAIRED_COLUMNS, orient="row")


def write_paired_table(comparisons: dict[str, list[dict]], stem: Path) -> dict[str, Path]:
    """The paired table beside the main one (CSV, Markdown, LaTeX)."""
    return write_table(paired_frame(comparisons), stem)


# -- plots -------------------------------------------------------------------------------------
def _panels(n_ahead: int, title: str, plot_one: Callable, path: Path, xlabel: str, ylabel: str | None = None) -> Path:
    """One panel per shown minimum period (1, N/2, N, Match), drawn by ``plot_one(ax, m)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    periods = sorted({0, n_ahead // 2, n_ahead - 1, n_ahead})
    fig, axes = plt.subplots(1, len(periods), figsize=(4 * len(periods), 3.2), squeeze=False)
    for ax, m in zip(axes[0], periods):
        plot_one(ax, m)
        ax.set_title("Match VWAP" if m == n_ahead else f"Min {m + 1} periods")
        ax.set_xlabel(xlabel)
    if ylabel:
        axes[0][0].set_ylabel(ylabel)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_distributions(ev: EvalArrays, path: Path, title: str) -> Path:
    """Slippage distributions per minimum period: model buy and sell (VWAP, volume) against TWAP."""
    vwap_volume = ev.model_bps[:, :, [OrderKind.BUY_VWAP, OrderKind.SELL_VWAP], Target.VOLUME]
    lo, hi = np.percentile(np.concatenate([vwap_volume.ravel(), ev.twap_volume_bps]), [1, 99])
    bins = np.linspace(lo, hi, 60)

    def one(ax, m: int) -> None:
        ax.hist(ev.twap_volume_bps, bins=bins, histtype="step", label="TWAP volume", color="grey")
        ax.hist(ev.model_bps[:, m, OrderKind.BUY_VWAP, Target.VOLUME], bins=bins, histtype="step", label="LEM buy",
                color="tab:green")
        ax.hist(ev.model_bps[:, m, OrderKind.SELL_VWAP, Target.VOLUME], bins=bins, histtype="step", label="LEM sell",
                color="tab:red")

    return _panels(ev.n_ahead, f"{title} - slippage distributions", one, path, "slippage vs VWAP (bps)")


def plot_execution_curves(ev: EvalArrays, path: Path, title: str) -> Path:
    """Mean cumulative execution per minimum period (buy and sell, VWAP volume) against TWAP."""
    N = ev.mean_alloc.shape[0]
    steps = np.arange(1, N + 1)

    def one(ax, m: int) -> None:
        ax.plot(steps, steps / N, color="grey", ls="--", label="TWAP")
        ax.plot(steps, np.cumsum(ev.mean_alloc[:, m, OrderKind.BUY_VWAP, Target.VOLUME]), color="tab:green",
                label="LEM buy")
        ax.plot(steps, np.cumsum(ev.mean_alloc[:, m, OrderKind.SELL_VWAP, Target.VOLUME]), color="tab:red",
                label="LEM sell")
        ax.set_ylim(0, 1.02)

    return _panels(N, f"{title} - execution curves", one, path, "execution step", "cumulative fraction executed")


def plot_evaluation(ev: EvalArrays, out: Path, label: str, title: str) -> list[Path]:
    return [plot_distributions(ev, out / f"{label}_slippage.png", title),
            plot_execution_curves(ev, out / f"{label}_execution_curves.png", title)]


# Rows of the cost plot: (table order, minimum period); the LEM's and the rule's at the middle period.
def _cost_plot_rows(n_ahead: int) -> list[tuple[str, str, str]]:
    mid = str(n_ahead // 2)
    return [("BUY", "Match VWAP", "LEM buy, Match VWAP"), ("BUY", mid, f"LEM buy, min {mid}"),
            ("RULE BUY", mid, f"rule buy, min {mid}"), ("TWAP Volume", "All", "TWAP"),
            ("VWAP Profile", "All", "VWAP profile"), ("Almgren-Chriss", "All", "Almgren-Chriss")]


def plot_costs(summary: dict, out: Path, label: str, title: str) -> list[Path]:
    """Net against gross by order size: mean slippage against the benchmark and against the
    arrival price, buys (side-less baselines scored as buys), for the LEM and each baseline."""
    net = summary.get("net")
    if not net:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_ahead = max(int(r["min_period"]) for r in summary["rows"] if r["min_period"].isdigit())
    sizes = list(net)
    ticks = ["gross", *(size_label(s) for s in sizes)]
    rows = {(r["order"], r["min_period"]): r for r in summary["rows"]}
    nets = {s: {(r["order"], r["min_period"]): r for r in net[s]} for s in sizes}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for order, period, name in _cost_plot_rows(n_ahead):
        if (order, period) not in rows:
            continue
        for ax, key in zip(axes, ("mean", "arrival_mean")):
            ys = [rows[(order, period)].get(key)] + [nets[s][(order, period)][key] for s in sizes]
            ax.plot(range(len(ticks)), [np.nan if y is None else y for y in ys], marker="o", label=name)
    for ax, what in zip(axes, ("against the benchmark VWAP", "against the arrival price")):
        ax.set_xticks(range(len(ticks)), ticks)
        ax.set_title(f"mean slippage {what}")
        ax.set_ylabel("bps (a buy wants it low)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title} - net of impact and fees by order size")
    fig.tight_layout()
    path = out / f"{label}_net_vs_gross.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


def plot_baseline_curves(curves: dict[tuple, np.ndarray], path: Path, title: str, n_ahead: int) -> Path:
    """Mean cumulative execution of the buy orders (volume target) of the LEM at its minimum
    periods 1, N/2 and Match, of the rule at N/2, and of every whole-horizon baseline. ``curves``:
    (strategy, side, target, min_period) -> mean allocation per step (TradeLog.mean_allocations)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mid = str(n_ahead // 2)
    shown = {("LEM", "1"): "LEM min 1", ("LEM", mid): f"LEM min {mid}", ("LEM", "Match VWAP"): "LEM Match VWAP",
             ("RULE", mid): f"rule min {mid}"}
    fig, ax = plt.subplots(figsize=(6, 4))
    for (strategy, side, target, period), curve in curves.items():
        name = strategy if period == "All" else shown.get((strategy, period))
        if side != "BUY" or target != "volume" or name is None:
            continue
        ax.plot(np.arange(1, len(curve) + 1), np.cumsum(curve), marker=".", label=name)
    ax.set_xlabel("execution step")
    ax.set_ylabel("cumulative fraction executed")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    ax.set_title(f"{title} - execution curves (buys)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
