"""``summary.json`` (a contract, docs/DESIGN.md "Evaluation summary and `lem evaluate`"): what
one evaluation of one frequency found, in a form a program can read without parsing tables.

Keys: ``dataset``, ``frequency`` (e.g. "daily", "60min"), ``freq_min``, ``windows``,
``first_start`` / ``last_start`` (ISO dates of the windows' execution starts), ``rows`` (the main
table: ``order``, ``min_period`` and its seven statistics, to the CSV's decimals), ``vs_rule`` and
``vs_twap`` (the LEM's paired advantage over the causal rule and over TWAP in volume, per side
and minimum period: ``side``, ``min_period``, ``advantage_bps``, ``ci95``, ``win_rate``, and what
the interval rests on: ``windows``, ``dates``, ``block_length``) and ``match_vwap_std_reduction``;
``vs_fitted_rule``, the same against the rule with the thresholds fitted on the training windows,
only for a model whose finish gate started as that rule (LEMConfig.rule_prior "fitted").
Issue 13 adds, from the trade log (lem_pipeline.trade_log): ``rows`` gain the baselines
"VWAP Profile" and (costs on) "Almgren-Chriss" and every row an ``arrival_mean``; ``net`` (per
order size as a fraction of ADV, "0.001": rows net of impact and fees, each with ``fill_rate``,
``impact_bps`` and ``fees_bps``); ``regimes`` (the rows per volatility tercile and trend sign);
``costs`` (the cost model used). ``vs_rule_arrival`` and ``vs_twap_arrival`` (from the trade
log): the pairs of ``vs_rule`` and ``vs_twap`` scored against the arrival price instead, per side
and, as side "BOTH", the mean of the two sides' advantages on each window (see
:data:`ARRIVAL_KEYS`). Later issues add keys, never rename them. A number that does not
exist (NaN) is ``null``.

Every evaluation writes one per frequency: ``summary.json`` when it has one frequency (equity,
or a single crypto frequency), else ``summary_<frequency>.json`` for each.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl

from lem_model.costs import CostConfig
from lem_model.evaluate import STAT_NAMES, EvalArrays, main_table, match_vwap_std_reduction, stats
from lem_model.ledger import ALL, ALMGREN_CHRISS, LEM, PROFILE, RULE, SIDE_NAMES, TWAP
from lem_model.paired import DEFAULT_RESAMPLES, Paired, advantage, comparisons, paired
from lem_model.vocabulary import Side
from lem_pipeline.reporting import TABLE_DECIMALS, frequency_label
from lem_pipeline.trade_log import ORDER_KEYS, VOLATILITY_REGIMES

SUMMARY_FILE = "summary.json"
STAT_KEYS = tuple(s.lower() for s in STAT_NAMES)  # mean, std, median, p5, p95, q25, q75
# summary.json's paired lists, by the baseline each compares against (lem_model.paired.BASELINES).
# vs_fitted_rule only where the evaluation scored the fitted rule (a model started as one).
PAIRED_KEYS = {"vs_rule": "rule", "vs_twap": "twap", "vs_fitted_rule": "fitted_rule"}
# The same pairs against the arrival price (the VWAP of the bar before execution), from the trade
# log. The tables' benchmark, the VWAP of the bars an order executed on, moves with the order's
# own duration: an order that stops when the last price beat its average paid gains against it
# even on a random walk (about 30 bps for the one-line rule over TWAP, README "What the table
# metric rewards"). The arrival price does not move with the order, so on a random walk no
# causal stop gains against it; what a schedule gains there is foresight or exposure to the
# drift. Side "BOTH" averages the two sides' advantages on each window: a schedule that only
# trades later (or earlier) than its baseline on both sides gains on one side what it loses on
# the other in a trending market, so BOTH cancels that drift exposure.
ARRIVAL_KEYS = {"vs_rule_arrival": RULE, "vs_twap_arrival": TWAP}
BOTH_SIDES = "BOTH"
PAIRED_LABELS = {"vs_rule": "Rule", "vs_twap": "TWAP Volume", "vs_fitted_rule": "Fitted rule",
                 "vs_rule_arrival": "Rule, vs arrival", "vs_twap_arrival": "TWAP Volume, vs arrival"}  # in the paired table


# The trade-log order (strategy, side, target) of each main-table row; side-less baselines are
# scored as buys (a cost raises them).
TABLE_ORDERS = {"TWAP Volume": (TWAP, "BUY", "volume"), "TWAP Notional": (TWAP, "BUY", "notional"),
                "BUY": (LEM, "BUY", "volume"), "SELL": (LEM, "SELL", "volume"),
                "RULE BUY": (RULE, "BUY", "volume"), "RULE SELL": (RULE, "SELL", "volume"),
                "VWAP Profile": (PROFILE, "BUY", "volume"), "Almgren-Chriss": (ALMGREN_CHRISS, "BUY", "volume")}
REGIMES = {"volatility": VOLATILITY_REGIMES, "trend": ("up", "down")}


def size_key(size: float) -> str:
    """An order size as ``net``'s key: 0.01 -> "0.01"."""
    return format(size, "g")


def table_values(ledger: pl.DataFrame, rows: list[tuple[str, str]], columns: list[str]) -> dict[tuple, dict]:
    """Per main-table row (order, min_period): each of ``columns`` of its trade-log orders, as a
    float64 array in trade-log order."""
    grouped = ledger.group_by(ORDER_KEYS).agg(pl.col(c).cast(pl.Float64) for c in columns)
    found = {tuple(r[:4]): dict(zip(columns, r[4:])) for r in grouped.iter_rows()}
    out = {}
    for order, period in rows:
        hit = found.get((*TABLE_ORDERS[order], period))
        if hit is not None:
            out[(order, period)] = {c: np.asarray(v, dtype=np.float64) for c, v in hit.items()}
    return out


def _stat_row(order: str, period: str, statistics: list[float], **means: np.ndarray) -> dict:
    """One row of a table in summary.json: its seven statistics and the mean of each of ``means``,
    to the CSV's decimals."""
    return {"order": order, "min_period": period,
            **{k: _number(v, TABLE_DECIMALS) for k, v in zip(STAT_KEYS, statistics)},
            **{k: _number(float(np.mean(v)), TABLE_DECIMALS) for k, v in means.items()}}


def cost_sections(ledger: pl.DataFrame, rows: list[tuple[str, str]], costs: CostConfig) -> dict:
    """``net`` per order size and ``regimes``, and each gross row's ``arrival_mean``."""
    cols = ["slippage_bps", "arrival_bps"]
    if costs.enabled:
        for size in costs.order_sizes:
            cols += [f"{c}@{size:g}" for c in ("net_slippage_bps", "net_arrival_bps", "fill_rate", "impact_bps", "fees_bps")]
    values = table_values(ledger, rows, cols)
    out = {"arrival_mean": {k: _number(float(v["arrival_bps"].mean()), TABLE_DECIMALS) for k, v in values.items()}}
    if costs.enabled:
        out["net"] = {size_key(s): [_stat_row(o, m, stats(v[f"net_slippage_bps@{s:g}"]),
                                              arrival_mean=v[f"net_arrival_bps@{s:g}"], fill_rate=v[f"fill_rate@{s:g}"],
                                              impact_bps=v[f"impact_bps@{s:g}"], fees_bps=v[f"fees_bps@{s:g}"])
                                    for (o, m), v in values.items()] for s in costs.order_sizes}
    regimes = []
    for regime, labels in REGIMES.items():
        for label in labels:
            part = ledger.filter(pl.col(f"{regime}_regime") == label)
            for (o, m), v in table_values(part, rows, ["slippage_bps", "arrival_bps"]).items():
                regimes.append({"regime": regime, "label": label, "windows": len(v["slippage_bps"]),
                                **_stat_row(o, m, stats(v["slippage_bps"]), arrival_mean=v["arrival_bps"])})
    out["regimes"] = regimes
    return out


def summary_name(freq_min: int, frequencies: int) -> str:
    """The file of one frequency's summary, among an evaluation's ``frequencies``."""
    if frequencies == 1:
        return SUMMARY_FILE
    stem, suffix = SUMMARY_FILE.rsplit(".", 1)
    return f"{stem}_{frequency_label(freq_min)}.{suffix}"


def execution_dates(index: pl.DataFrame) -> np.ndarray:
    """The UTC date of each window's execution start, in the frame's row order (the test index,
    or trade-log rows: both have ``start_time``)."""
    return index["start_time"].dt.date().to_numpy()


def _number(x: float, decimals: int | None = None) -> float | None:
    if not math.isfinite(x):
        return None
    return round(float(x), decimals) if decimals is not None else float(x)


def build_summary(dataset: str, freq_min: int, ev: EvalArrays, index: pl.DataFrame, *,
                  resamples: int = DEFAULT_RESAMPLES, ledger: pl.DataFrame | None = None,
                  costs: CostConfig | None = None, fee_bps: float = 0.0, profile_windows: int = 0) -> dict:
    """The summary of one frequency's evaluation: ``ev`` and ``index`` hold the same windows, row
    by row; ``ledger`` is that frequency's part of the trade log (lem_pipeline.trade_log), evaluated
    with ``costs`` (``fee_bps`` charged; ``profile_windows``: the volume profile's training windows)."""
    if len(index) != len(ev.twap_volume_bps):
        raise ValueError(f"{len(index)} index rows for {len(ev.twap_volume_bps)} evaluated windows")
    dates = execution_dates(index)
    starts = index["start_time"].dt.date()
    out = {
        "dataset": dataset, "frequency": frequency_label(freq_min), "freq_min": int(freq_min),
        "windows": len(index),
        "first_start": starts.min().isoformat() if len(index) else None,
        "last_start": starts.max().isoformat() if len(index) else None,
        "rows": [_stat_row(order, period, values) for order, period, values in main_table(ev)],
    }
    if ledger is not None and costs is not None:
        sections = cost_sections(ledger, [(r["order"], r["min_period"]) for r in out["rows"]], costs)
        for row in out["rows"]:
            row["arrival_mean"] = sections["arrival_mean"].get((row["order"], row["min_period"]))
        if "net" in sections:
            out["net"] = sections["net"]
        out["regimes"] = sections["regimes"]
        out["costs"] = {"enabled": costs.enabled, "order_sizes": list(costs.order_sizes),
                        "participation_cap": costs.participation_cap, "impact_coefficient": costs.impact_coefficient,
                        "fee_bps": fee_bps, "adv_days": costs.adv_days, "risk_aversion": costs.risk_aversion,
                        "almgren_chriss_size": costs.almgren_chriss_size, "volume_profile_windows": profile_windows}
    for key, baseline in PAIRED_KEYS.items():
        if baseline == "fitted_rule" and not ev.evaluated("fitted_rule_bps"):
            continue
        out[key] = [_paired_entry(side, m, p) for side, m, p in comparisons(ev, dates, baseline, resamples=resamples)]
    out["match_vwap_std_reduction"] = _number(match_vwap_std_reduction(ev))
    if ledger is not None:
        for key, strategy in ARRIVAL_KEYS.items():
            out[key] = [_paired_entry(side, m, p) for side, m, p in
                        arrival_comparisons(ledger, ev.n_ahead, strategy, resamples=resamples)]
    return out


def _paired_entry(side: str, min_period: int, p: Paired) -> dict:
    return {"side": side, "min_period": min_period, "advantage_bps": _number(p.mean),
            "ci95": [_number(p.ci95[0]), _number(p.ci95[1])], "win_rate": _number(p.win_rate),
            "windows": p.windows, "dates": p.dates, "block_length": p.block_length}


def arrival_comparisons(ledger: pl.DataFrame, n_ahead: int, baseline: str, *,
                        resamples: int = DEFAULT_RESAMPLES) -> list[tuple[str, int, Paired]]:
    """(side, minimum period 1..N, paired advantage) of the LEM's VWAP volume orders over
    ``baseline`` (RULE: the rule's same head; TWAP) against the arrival price, from one
    frequency's trade log; then side BOTH, the two sides' mean per window. Blocks of at least N
    dates, as :func:`lem_model.paired.comparisons`."""
    orders = ledger.filter(pl.col("target") == "volume").select(
        "window", "start_time", "strategy", "side", "min_period", pl.col("arrival_bps").cast(pl.Float64))
    groups = orders.partition_by(["strategy", "side", "min_period"], as_dict=True)
    out, per_side = [], {}
    for side in SIDE_NAMES:
        for m in range(1, n_ahead + 1):
            lem = groups.get((LEM, side, str(m)))
            base = groups.get((baseline, side, str(m) if baseline == RULE else ALL))
            if lem is None or base is None:
                raise ValueError(f"the trade log has no {LEM if lem is None else baseline} {side} orders at minimum "
                                 f"period {m}: it is not this evaluation's")
            try:  # one order per window on each side of the pair, every window on both
                pair = lem.join(base.select("window", pl.col("arrival_bps").alias("base")), on="window",
                                validate="1:1").sort("window")
            except pl.exceptions.ComputeError as e:
                raise ValueError(f"{side} at minimum period {m}: a window with several {LEM} or {baseline} "
                                 f"orders in the trade log ({e})") from e
            if not len(pair) == len(lem) == len(base):
                raise ValueError(f"{side} at minimum period {m}: {len(lem)} LEM and {len(base)} {baseline} orders, "
                                 f"{len(pair)} on the same windows")
            per_side[side, m] = pair.select("window", "start_time", advantage=advantage(
                pair["arrival_bps"].to_numpy(), pair["base"].to_numpy(), Side[side]))
            values, dates = per_side[side, m]["advantage"].to_numpy(), execution_dates(per_side[side, m])
            out.append((side, m, paired(values, dates, min_block=n_ahead, resamples=resamples)))
    for m in range(1, n_ahead + 1):
        buy, sell = per_side[SIDE_NAMES[0], m], per_side[SIDE_NAMES[1], m]
        if not buy["window"].equals(sell["window"]):
            raise ValueError(f"minimum period {m}: the buys and the sells are not on the same windows")
        both = (buy["advantage"].to_numpy() + sell["advantage"].to_numpy()) / 2  # window by window
        out.append((BOTH_SIDES, m, paired(both, execution_dates(buy), min_block=n_ahead, resamples=resamples)))
    return out


def write_summary(summary: dict, path: Path) -> Path:
    path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return path


def paired_tables(summary: dict) -> dict[str, list[dict]]:
    """The paired lists by their table label (reporting.paired_frame)."""
    return {label: summary[key] for key, label in PAIRED_LABELS.items() if key in summary}


def paired_metrics(summary: dict, frequencies: int) -> dict[str, float]:
    """The vs_rule numbers as MLflow metrics, ``test_vs_rule_buy_min6_bps`` and its ``_ci_lo``,
    ``_ci_hi``, ``_win_rate``, and vs_rule_arrival's as ``test_vs_rule_arrival_both_min6_bps``...;
    with several frequencies the frequency follows the key (``test_vs_rule_60min_buy_min6_bps``).
    Missing (null) numbers are left out."""
    freq = "" if frequencies == 1 else f"_{summary['frequency']}"
    out: dict[str, float] = {}
    for key in ("vs_rule", "vs_rule_arrival"):
        for e in summary.get(key, []):
            stem = f"test_{key}{freq}_{e['side'].lower()}_min{e['min_period']}"
            for name, value in (("bps", e["advantage_bps"]), ("ci_lo", e["ci95"][0]), ("ci_hi", e["ci95"][1]),
                                ("win_rate", e["win_rate"])):
                if value is not None:
                    out[f"{stem}_{name}"] = value
    return out


def cost_metrics(summary: dict, frequencies: int) -> dict[str, float]:
    """Net of costs, per order size, as MLflow metrics for run comparison: every row's mean net
    slippage, and the fill rate of the whole-horizon rows (Match VWAP and the baselines), e.g.
    ``test_net_0.01_buy_match_mean_bps``, ``test_net_0.01_twap_volume_fill_rate``."""
    freq = "" if frequencies == 1 else f"_{summary['frequency']}"
    out: dict[str, float] = {}
    for size, rows in summary.get("net", {}).items():
        for r in rows:
            period = "match" if r["min_period"] == "Match VWAP" else ("" if r["min_period"] == "All"
                                                                       else f"min{r['min_period']}")
            name = "_".join(x for x in (r["order"].lower().replace(" ", "_").replace("-", "_"), period) if x)
            for stat, value in (("mean_bps", r["mean"]), ("fill_rate", r["fill_rate"])):
                if value is not None and (stat == "mean_bps" or r["min_period"] in ("All", "Match VWAP")):
                    out[f"test_net{freq}_{size}_{name}_{stat}"] = value
    return out
