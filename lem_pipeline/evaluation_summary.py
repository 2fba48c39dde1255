"""``summary.json`` (a contract, docs/DESIGN.md "Evaluation summary and `lem evaluate`"): what
one evaluation of one frequency found, in a form a program can read without parsing tables.

Keys: ``dataset``, ``frequency`` (e.g. "daily", "60min"), ``freq_min``, ``windows``,
``first_start`` / ``last_start`` (ISO dates of the windows' execution starts), ``rows`` (the main
table: ``order``, ``min_period`` and its seven statistics, to the CSV's decimals), ``vs_rule`` and
``vs_twap`` (the LEM's paired advantage over the causal rule and over TWAP in volume, per side
and minimum period: ``side``, ``min_period``, ``advantage_bps``, ``ci95``, ``win_rate``, and what
the interval rests on: ``windows``, ``dates``, ``block_length``) and ``match_vwap_std_reduction``.
Later issues add keys, never rename them. A number that does not exist (NaN) is ``null``.

Every evaluation writes one per frequency: ``summary.json`` when it has one frequency (equity,
or a single crypto frequency), else ``summary_<frequency>.json`` for each.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl

from lem_model.evaluate import STAT_NAMES, EvalArrays, main_table, match_vwap_std_reduction
from lem_model.paired import DEFAULT_RESAMPLES, comparisons
from lem_pipeline.reporting import TABLE_DECIMALS, frequency_label

SUMMARY_FILE = "summary.json"
STAT_KEYS = tuple(s.lower() for s in STAT_NAMES)  # mean, std, median, p5, p95, q25, q75
# summary.json's paired lists, by the baseline each compares against (lem_model.paired.BASELINES).
PAIRED_KEYS = {"vs_rule": "rule", "vs_twap": "twap"}
PAIRED_LABELS = {"vs_rule": "Rule", "vs_twap": "TWAP Volume"}  # in the paired table


def summary_name(freq_min: int, frequencies: int) -> str:
    """The file of one frequency's summary, among an evaluation's ``frequencies``."""
    if frequencies == 1:
        return SUMMARY_FILE
    stem, suffix = SUMMARY_FILE.rsplit(".", 1)
    return f"{stem}_{frequency_label(freq_min)}.{suffix}"


def execution_dates(index: pl.DataFrame) -> np.ndarray:
    """The UTC date of each window's execution start, in the index's (row) order."""
    return index["start_time"].dt.date().to_numpy()


def _number(x: float, decimals: int | None = None) -> float | None:
    if not math.isfinite(x):
        return None
    return round(float(x), decimals) if decimals is not None else float(x)


def build_summary(dataset: str, freq_min: int, ev: EvalArrays, index: pl.DataFrame, *,
                  resamples: int = DEFAULT_RESAMPLES) -> dict:
    """The summary of one frequency's evaluation: ``ev`` and ``index`` hold the same windows, row by row."""
    if len(index) != len(ev.twap_volume_bps):
        raise ValueError(f"{len(index)} index rows for {len(ev.twap_volume_bps)} evaluated windows")
    dates = execution_dates(index)
    starts = index["start_time"].dt.date()
    out = {
        "dataset": dataset, "frequency": frequency_label(freq_min), "freq_min": int(freq_min),
        "windows": len(index),
        "first_start": starts.min().isoformat() if len(index) else None,
        "last_start": starts.max().isoformat() if len(index) else None,
        "rows": [{"order": order, "min_period": period,
                  **{k: _number(v, TABLE_DECIMALS) for k, v in zip(STAT_KEYS, values)}}
                 for order, period, values in main_table(ev)],
    }
    for key, baseline in PAIRED_KEYS.items():
        out[key] = [{"side": side, "min_period": m, "advantage_bps": _number(p.mean),
                     "ci95": [_number(p.ci95[0]), _number(p.ci95[1])], "win_rate": _number(p.win_rate),
                     "windows": p.windows, "dates": p.dates, "block_length": p.block_length}
                    for side, m, p in comparisons(ev, dates, baseline, resamples=resamples)]
    out["match_vwap_std_reduction"] = _number(match_vwap_std_reduction(ev))
    return out


def write_summary(summary: dict, path: Path) -> Path:
    path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return path


def paired_tables(summary: dict) -> dict[str, list[dict]]:
    """The paired lists by their table label (reporting.paired_frame)."""
    return {PAIRED_LABELS[key]: summary[key] for key in PAIRED_KEYS}


def paired_metrics(summary: dict, frequencies: int) -> dict[str, float]:
    """The vs_rule numbers as MLflow metrics, ``test_vs_rule_buy_min6_bps`` and its ``_ci_lo``,
    ``_ci_hi``, ``_win_rate``; with several frequencies the frequency follows ``vs_rule``
    (``test_vs_rule_60min_buy_min6_bps``). Missing (null) numbers are left out."""
    freq = "" if frequencies == 1 else f"_{summary['frequency']}"
    out: dict[str, float] = {}
    for e in summary["vs_rule"]:
        stem = f"test_vs_rule{freq}_{e['side'].lower()}_min{e['min_period']}"
        for name, value in (("bps", e["advantage_bps"]), ("ci_lo", e["ci95"][0]), ("ci_hi", e["ci95"][1]),
                            ("win_rate", e["win_rate"])):
            if value is not None:
                out[f"{stem}_{name}"] = value
    return out
