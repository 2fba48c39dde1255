"""Evaluation arrays and statistics: the slippage of every test window for every order, for the
model and for the baselines (lem_model.baselines) on the same windows, and the numbers of the
paper's tables. Rendering them (CSV, Markdown, LaTeX, plots) is the pipeline's job.

Slippage is (achieved / benchmark - 1) * 1e4 with the benchmark over the bars the order
executed on (lem_model.metrics.slippage_bps), so model and rule are scored the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lem_model.baselines import early_stop_rule, schedule_slippage_bps, twap_baselines
from lem_model.costs import CostConfig, MarketContext, almgren_chriss, market_context, trailing_bars
from lem_model.metrics import slippage_bps
from lem_model.model import LargeExecutionModel
from lem_model.vocabulary import OrderKind, Target

STAT_NAMES = ("Mean", "Std", "Median", "P5", "P95", "Q25", "Q75")
# The tables' sides: (label, the VWAP kind, the TWAP kind).
SIDES = (("BUY", OrderKind.BUY_VWAP, OrderKind.BUY_TWAP), ("SELL", OrderKind.SELL_VWAP, OrderKind.SELL_TWAP))


@dataclass
class EvalArrays:
    model_bps: np.ndarray  # (n, N+1, 4, 2)
    rule_bps: np.ndarray  # (n, N+1, 4, 2): the early-stop rule (model N: plain TWAP)
    twap_volume_bps: np.ndarray  # (n,) against the full-horizon VWAP
    twap_notional_bps: np.ndarray  # (n,)
    mean_alloc: np.ndarray  # (N, N+1, 4, 2) mean allocation per step
    max_sum_error: float  # max |sum over steps - 1| of the model's allocations
    all_finite: bool
    # The schedule baselines of lem_model.baselines against the full-horizon VWAP (n,), empty when
    # not evaluated: the static VWAP of the training volume profile, and Almgren-Chriss.
    profile_bps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    almgren_chriss_bps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    # (n, N+1, 4, 2), empty unless the model's gate started as a fitted rule (LEMConfig.rule_prior
    # "fitted"): that rule, with the model's stop_thresholds, on the same windows.
    fitted_rule_bps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    @property
    def n_ahead(self) -> int:
        return self.model_bps.shape[1] - 1

    def evaluated(self, name: str) -> bool:
        """Whether the per-window array ``name`` (one of PER_WINDOW) holds every window: the
        optional baselines stay empty where they were not evaluated."""
        return len(getattr(self, name)) == len(self.model_bps)

    def save(self, path: Path) -> None:
        np.savez_compressed(path, **{k: np.asarray(v) for k, v in self.__dict__.items()})

    @classmethod
    def load(cls, path: Path) -> EvalArrays:
        z = np.load(path)
        return cls(**{k: (z[k].item() if z[k].ndim == 0 else z[k]) for k in z.files})

    @classmethod
    def combine(cls, parts: list[tuple[np.ndarray, EvalArrays]]) -> EvalArrays:
        """One set from the evaluations of disjoint groups of windows, ``(rows, arrays)`` each:
        every window back at its row, the mean allocation weighted by each group's size."""
        n = sum(len(rows) for rows, _ in parts)
        per_window = {}
        for name in PER_WINDOW:
            like = getattr(parts[0][1], name)
            if any(len(getattr(ev, name)) != len(rows) for rows, ev in parts):
                continue  # not evaluated for every group: left empty
            per_window[name] = np.empty((n, *like.shape[1:]), like.dtype)
            for rows, ev in parts:
                per_window[name][rows] = getattr(ev, name)
        mean_alloc = sum(len(rows) * ev.mean_alloc for rows, ev in parts) / max(n, 1)
        return cls(**per_window, mean_alloc=mean_alloc, max_sum_error=max(ev.max_sum_error for _, ev in parts),
                   all_finite=all(ev.all_finite for _, ev in parts))


PER_WINDOW = ("model_bps", "rule_bps", "twap_volume_bps", "twap_notional_bps", "profile_bps", "almgren_chriss_bps",
              "fitted_rule_bps")


@dataclass(frozen=True)
class ScheduleBaselines:
    """What the schedule baselines need besides the windows: the volume-profile schedule of each
    evaluated window (fitted on the training split, lem_model.baselines.VolumeProfile), and the
    bar length and lookback from which lem_model.costs reads each window's market context."""

    profile: np.ndarray  # (n, N), in the order of the evaluated windows
    freq_min: int
    lookback: int
    costs: CostConfig


@dataclass
class Batch:
    """One batch of an evaluation, everything on the CPU in float64 (slippage: the tables' float32)."""

    first: int  # position of its first window among the evaluated windows
    volumes: torch.Tensor  # (B, N)
    prices: torch.Tensor  # (B, N)
    context: MarketContext
    model_alloc: torch.Tensor  # (B, N, N+1, 4, 2)
    rule_alloc: torch.Tensor
    profile: torch.Tensor  # (B, N)
    almgren_chriss: torch.Tensor | None  # (B, N), when costs are on
    slippage: dict[str, torch.Tensor]  # the tables' per-window numbers of this batch, by EvalArrays field


@torch.no_grad()
def evaluate(model: LargeExecutionModel, data: Dataset, *, min_rate: float, max_rate: float = 1.0,
             batch_size: int = 256, device: str | torch.device = "cpu", baselines: ScheduleBaselines | None = None,
             on_batch: Callable[[Batch], None] | None = None) -> EvalArrays:
    """The slippage of the model and the baselines on every window of ``data``; with
    ``baselines``, the volume profile and (costs on) Almgren-Chriss too, and each batch handed to
    ``on_batch`` (the trade log is built there) after the model ran on it once."""
    model.eval().to(device)
    device = torch.device(device)
    N, J = model.cfg.n_ahead, model.cfg.n_models
    parts: dict[str, list[np.ndarray]] = {k: [] for k in PER_WINDOW}
    alloc_sum = torch.zeros(N, J, len(OrderKind), len(Target), dtype=torch.float64)
    max_err, finite, n = 0.0, True, 0
    thresholds = model.stop_thresholds.cpu() if model.cfg.rule_prior == "fitted" else None
    for x, vol, px in DataLoader(data, batch_size=batch_size):
        x, vol, px = x.to(device), vol.to(device).double(), px.to(device).double()
        B = len(x)
        # float32 on every device (no bf16 autocast on CUDA): the tables score the schedules the
        # live policy serves, which runs in float32.
        alloc = model(x, torch.full((B,), min_rate, device=device), torch.full((B,), max_rate, device=device))
        alloc = alloc.double()
        finite &= bool(torch.isfinite(alloc).all())
        max_err = max(max_err, float((alloc.sum(1) - 1).abs().max()))
        alloc_sum += alloc.sum(0).cpu()
        rule = early_stop_rule(px, J)
        per_window = {"model_bps": slippage_bps(alloc, vol, px).float(), "rule_bps": slippage_bps(rule, vol, px).float()}
        if thresholds is not None:
            fitted = early_stop_rule(px, J, thresholds_bps=thresholds)
            per_window["fitted_rule_bps"] = slippage_bps(fitted, vol, px).float()
        per_window["twap_volume_bps"], per_window["twap_notional_bps"] = (t.float() for t in twap_baselines(vol, px))
        if baselines is not None:
            x, vol, px, alloc, rule = x.cpu(), vol.cpu(), px.cpu(), alloc.cpu(), rule.cpu()
            per_window = {k: v.cpu() for k, v in per_window.items()}  # (a no-op on the CPU)
            L, span = baselines.lookback, trailing_bars(baselines.lookback, baselines.freq_min, baselines.costs)
            ctx = market_context(x[:, L - span:L, -2], x[:, L - span:L, -1], baselines.freq_min)
            profile = torch.from_numpy(baselines.profile[n:n + B]).double()
            per_window["profile_bps"] = schedule_slippage_bps(profile, vol, px).float()
            ac = None
            if baselines.costs.enabled:
                ac = almgren_chriss(ctx.sigma_daily, N, baselines.freq_min, baselines.costs)
                per_window["almgren_chriss_bps"] = schedule_slippage_bps(ac, vol, px).float()
            if on_batch is not None:
                on_batch(Batch(n, vol, px, ctx, alloc, rule, profile, ac, per_window))
        for k, v in per_window.items():
            parts[k].append(v.cpu().numpy())
        n += B
    cat = {k: np.concatenate(v) if v else np.zeros(0, np.float32) for k, v in parts.items()}
    return EvalArrays(cat["model_bps"], cat["rule_bps"], cat["twap_volume_bps"], cat["twap_notional_bps"],
                      (alloc_sum / max(n, 1)).numpy(), max_err, finite, cat["profile_bps"], cat["almgren_chriss_bps"],
                      cat["fitted_rule_bps"])


# -- the numbers of the tables -----------------------------------------------------------------
def stats(values: np.ndarray) -> list[float]:
    """Mean, Std (population), Median, P5, P95, Q25, Q75 of a slippage sample in bps."""
    v = np.asarray(values, dtype=np.float64)
    p5, q25, med, q75, p95 = np.percentile(v, [5, 25, 50, 75, 95])
    return [float(v.mean()), float(v.std()), float(med), float(p5), float(p95), float(q25), float(q75)]


Row = tuple[str, str, list[float]]  # (order, minimum period or strategy, stats)


def main_table(ev: EvalArrays) -> list[Row]:
    """The paper's Table 1 form, plus the early-stop rule's rows under the same periods and the
    schedule baselines' rows (volume profile, Almgren-Chriss) where they were evaluated."""
    N = ev.n_ahead
    rows: list[Row] = [("TWAP Notional", "All", stats(ev.twap_notional_bps)),
                       ("TWAP Volume", "All", stats(ev.twap_volume_bps))]
    for name, vwap_kind, _ in SIDES:
        rows += [(name, str(m + 1), stats(ev.model_bps[:, m, vwap_kind, Target.VOLUME])) for m in range(N)]
        rows.append((name, "Match VWAP", stats(ev.model_bps[:, N, vwap_kind, Target.VOLUME])))
    for name, vwap_kind, _ in SIDES:
        rows += [(f"RULE {name}", str(m + 1), stats(ev.rule_bps[:, m, vwap_kind, Target.VOLUME])) for m in range(N)]
    n = len(ev.twap_volume_bps)
    for order, name in (("VWAP Profile", "profile_bps"), ("Almgren-Chriss", "almgren_chriss_bps")):
        if n and ev.evaluated(name):  # the schedule baselines, where they were evaluated
            rows.append((order, "All", stats(getattr(ev, name))))
    return rows


def detail_table(ev: EvalArrays, model_index: int) -> list[Row]:
    """The paper's Tables 2-5: one minimum period (or Match, index N), by order kind and target."""
    rows: list[Row] = []
    for side, vwap, twap in SIDES:
        for label, kind, target in (("TWAP Volume vs TWAP", twap, Target.VOLUME),
                                    ("TWAP Notional vs TWAP", twap, Target.NOTIONAL),
                                    ("VWAP Volume vs VWAP", vwap, Target.VOLUME),
                                    ("VWAP Notional vs VWAP", vwap, Target.NOTIONAL)):
            rows.append((side, label, stats(ev.model_bps[:, model_index, kind, target])))
    return rows


def headline(ev: EvalArrays) -> dict[str, float]:
    """The test summary logged as metrics: mean and std per side and minimum period, and the
    Match VWAP risk against TWAP in volume, over the windows of ``ev`` (for a crypto evaluation,
    every frequency pooled; lem_pipeline.model_evaluation adds each frequency's own)."""
    N = ev.n_ahead
    out: dict[str, float] = {}
    for name, kind, _ in SIDES:
        for m in range(N + 1):
            label = "match" if m == N else f"min{m + 1}"
            v = ev.model_bps[:, m, kind, Target.VOLUME]
            out[f"test_{name.lower()}_{label}_mean_bps"] = float(v.mean())
            out[f"test_{name.lower()}_{label}_std_bps"] = float(v.std())
    match_std, twap_std = match_vwap_std(ev), float(ev.twap_volume_bps.std())
    out.update({"test_twap_volume_std_bps": twap_std, "test_match_vwap_std_bps": match_std,
                "test_match_vwap_std_reduction": match_vwap_std_reduction(ev)})
    return out


def match_vwap_std(ev: EvalArrays) -> float:
    """Std of the Match VWAP head's slippage (VWAP, volume): the mean of the buy and the sell
    std, as the summary contract defines it. Not the std of both sides pooled: that would add
    the gap between the sides' means, which is no risk either order carries."""
    N = ev.n_ahead
    return float(np.mean([ev.model_bps[:, N, kind, Target.VOLUME].std() for _, kind, _ in SIDES]))


def match_vwap_std_reduction(ev: EvalArrays) -> float:
    """1 - std(Match VWAP, mean of buy and sell) / std(TWAP Volume): the risk the model takes off
    TWAP when it only has to match the VWAP (the paper's headline)."""
    twap_std = float(ev.twap_volume_bps.std())
    return 1 - match_vwap_std(ev) / twap_std if twap_std else float("nan")
