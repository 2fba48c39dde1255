"""The summary.json contract (docs/DESIGN.md, "Evaluation summary and `lem evaluate`"), checked
key by key, and its rows compared with the main table CSV written beside it."""

from __future__ import annotations

import csv
import math
from datetime import date
from pathlib import Path

ORDERS = ("TWAP Volume", "TWAP Notional", "BUY", "SELL", "RULE BUY", "RULE SELL", "VWAP Profile", "Almgren-Chriss")
SIZES = ("0.001", "0.01", "0.05")  # the default order sizes, as fractions of ADV
STATS = ("mean", "std", "median", "p5", "p95", "q25", "q75")
SIDES = ("BUY", "SELL")
PAIRED = ("vs_rule", "vs_twap")
OPTIONAL_PAIRED = ("vs_fitted_rule",)  # a model started as the fitted rule (LEMConfig.rule_prior "fitted")
ARRIVAL_PAIRED = ("vs_rule_arrival", "vs_twap_arrival")  # against the arrival price, with side BOTH too


def _number(x) -> bool:
    return isinstance(x, float | int) and not isinstance(x, bool) and math.isfinite(x)


def check_summary(s: dict, n_ahead: int) -> None:
    """Raise AssertionError naming the first key that breaks the contract."""
    assert isinstance(s["dataset"], str) and s["dataset"]
    assert isinstance(s["windows"], int) and s["windows"] > 0
    first, last = date.fromisoformat(s["first_start"]), date.fromisoformat(s["last_start"])
    assert first <= last
    periods = {"All", "Match VWAP", *(str(m) for m in range(1, n_ahead + 1))}
    assert s["rows"], "rows"
    for row in s["rows"]:
        assert row["order"] in ORDERS, row
        assert row["min_period"] in periods, row
        assert all(_number(row[k]) for k in STATS) and _number(row["arrival_mean"]), row
    assert {("VWAP Profile", "All"), ("Almgren-Chriss", "All")} <= {(r["order"], r["min_period"]) for r in s["rows"]}
    assert set(s["net"]) == set(SIZES)
    for size, rows in s["net"].items():
        assert [(r["order"], r["min_period"]) for r in rows] == [(r["order"], r["min_period"]) for r in s["rows"]], size
        for row in rows:
            assert all(_number(row[k]) for k in (*STATS, "arrival_mean", "impact_bps", "fees_bps")), row
            assert 0 < row["fill_rate"] <= 1, row
    assert {(e["regime"], e["label"]) for e in s["regimes"]} <= {("volatility", "low"), ("volatility", "mid"),
                                                                 ("volatility", "high"), ("trend", "up"),
                                                                 ("trend", "down")}
    for regime in ("volatility", "trend"):
        rows = [e for e in s["regimes"] if e["regime"] == regime and (e["order"], e["min_period"]) == ("TWAP Volume", "All")]
        assert sum(e["windows"] for e in rows) == s["windows"], regime
    for key in PAIRED + tuple(k for k in OPTIONAL_PAIRED if k in s) + ARRIVAL_PAIRED:
        entries = s[key]
        sides = SIDES + ("BOTH",) if key in ARRIVAL_PAIRED else SIDES
        assert {(e["side"], e["min_period"]) for e in entries} == {(side, m) for side in sides
                                                                   for m in range(1, n_ahead + 1)}, key
        for e in entries:
            assert isinstance(e["min_period"], int) and _number(e["advantage_bps"]), e
            lo, hi = e["ci95"]
            assert _number(lo) and _number(hi) and lo <= hi, e
            assert _number(e["win_rate"]) and 0 <= e["win_rate"] <= 1, e
    assert _number(s["match_vwap_std_reduction"]) and s["match_vwap_std_reduction"] < 1


def assert_rows_match_main_table(s: dict, main_csv: Path, atol: float = 1e-9) -> None:
    with open(main_csv) as f:
        table = list(csv.reader(f))[1:]
    assert [(r[0], r[1]) for r in table] == [(r["order"], r["min_period"]) for r in s["rows"]]
    for csv_row, row in zip(table, s["rows"]):
        for text, key in zip(csv_row[2:], STATS):
            assert abs(float(text) - row[key]) <= atol, (row["order"], row["min_period"], key, text, row[key])
