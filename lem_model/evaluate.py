"""Evaluation: slippage of every test window for every order, the baselines on the same windows,
and the paper's tables and plots.

Baselines, so every table shows what a one-line rule achieves beside the model:
  - TWAP in volume and TWAP in notional against the full-horizon VWAP;
  - a causal early-stop rule: trade TWAP (1/N per bar) through the minimum duration, then finish
    the whole remainder at bar k as soon as bar k-1's VWAP is below (buy) or above (sell) the
    average price achieved so far. It decides with bars before k only.
Slippage is (achieved / benchmark - 1) * 1e4 with the benchmark over the bars the order
executed on (lem_model.metrics.slippage_bps), so model and rule are scored the same way.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lem_model.metrics import slippage_bps
from lem_model.model import LargeExecutionModel
from lem_model.train import autocast

STAT_NAMES = ("Mean", "Std", "Median", "P5", "P95", "Q25", "Q75")
BUY_VWAP, BUY_TWAP, SELL_VWAP, SELL_TWAP = range(4)
VOLUME, NOTIONAL = 0, 1


@dataclass
class EvalArrays:
    model_bps: np.ndarray  # (n, N+1, 4, 2)
    rule_bps: np.ndarray  # (n, N+1, 4, 2): the early-stop rule (model N: plain TWAP)
    twap_volume_bps: np.ndarray  # (n,) against the full-horizon VWAP
    twap_notional_bps: np.ndarray  # (n,)
    mean_alloc: np.ndarray  # (N, N+1, 4, 2) mean allocation per step
    max_sum_error: float  # max |sum over steps - 1| of the model's allocations
    all_finite: bool

    def save(self, path: Path) -> None:
        np.savez_compressed(path, **{k: np.asarray(v) for k, v in self.__dict__.items()})

    @classmethod
    def load(cls, path: Path) -> EvalArrays:
        z = np.load(path)
        return cls(**{k: (z[k].item() if z[k].ndim == 0 else z[k]) for k in z.files})

    def subset(self, rows: np.ndarray) -> EvalArrays:
        return EvalArrays(self.model_bps[rows], self.rule_bps[rows], self.twap_volume_bps[rows],
                          self.twap_notional_bps[rows], self.mean_alloc, self.max_sum_error, self.all_finite)


def twap_baselines(volumes: torch.Tensor, prices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(TWAP volume, TWAP notional) slippage in bps against the full-horizon VWAP, per window."""
    vwap = (volumes * prices).sum(1) / volumes.sum(1)
    twap_volume = prices.mean(1)  # equal quantity per bar: the average price
    twap_notional = prices.shape[1] / (1.0 / prices).sum(1)  # equal notional per bar: the harmonic mean
    return (twap_volume / vwap - 1) * 1e4, (twap_notional / vwap - 1) * 1e4


def early_stop_rule(prices: torch.Tensor, n_models: int) -> torch.Tensor:
    """The rule's allocations (B, N, N+1, 4, 2). For model j < N (minimum duration j+1) the
    rule trades 1/N per bar through bar j, then finishes at bar k > j when the previous bar's
    VWAP beats the average achieved so far; model N is plain TWAP."""
    B, N = prices.shape
    out = prices.new_zeros(B, N, n_models, 4, 2)
    for j in range(n_models):
        for side, kinds in ((1.0, (BUY_VWAP, BUY_TWAP)), (-1.0, (SELL_VWAP, SELL_TWAP))):
            for target in (VOLUME, NOTIONAL):
                done = prices.new_zeros(B)
                paid = prices.new_zeros(B)  # volume target: notional spent; notional target: volume bought
                alloc = prices.new_zeros(B, N)
                for k in range(N):
                    a = torch.full_like(done, 1.0 / N)
                    if k == N - 1:
                        a = 1 - done
                    elif j < N and k > j:
                        average = paid / done if target == VOLUME else done / paid
                        better = side * (prices[:, k - 1] - average) < 0  # cheaper to buy, dearer to sell
                        a = torch.where(better, 1 - done, a)
                    a = torch.minimum(a, 1 - done).clamp(min=0)
                    alloc[:, k] = a
                    done = done + a
                    paid = paid + (a * prices[:, k] if target == VOLUME else a / prices[:, k])
                for c in kinds:
                    out[:, :, j, c, target] = alloc
    return out


@torch.no_grad()
def evaluate(model: LargeExecutionModel, data: Dataset, *, min_rate: float, max_rate: float = 1.0,
             batch_size: int = 256, device: str | torch.device = "cpu") -> EvalArrays:
    model.eval().to(device)
    device = torch.device(device)
    N, J = model.cfg.n_ahead, model.cfg.n_models
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("model", "rule", "tv", "tn")}
    alloc_sum = torch.zeros(N, J, 4, 2, dtype=torch.float64)
    max_err, finite, n = 0.0, True, 0
    for x, vol, px in DataLoader(data, batch_size=batch_size):
        x, vol, px = x.to(device), vol.to(device).double(), px.to(device).double()
        B = len(x)
        with autocast(device):
            alloc = model(x, torch.full((B,), min_rate, device=device), torch.full((B,), max_rate, device=device))
        alloc = alloc.double()
        finite &= bool(torch.isfinite(alloc).all())
        max_err = max(max_err, float((alloc.sum(1) - 1).abs().max()))
        alloc_sum += alloc.sum(0).cpu()
        n += B
        parts["model"].append(slippage_bps(alloc, vol, px).float().cpu().numpy())
        parts["rule"].append(slippage_bps(early_stop_rule(px, J), vol, px).float().cpu().numpy())
        tv, tn = twap_baselines(vol, px)
        parts["tv"].append(tv.float().cpu().numpy())
        parts["tn"].append(tn.float().cpu().numpy())
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    return EvalArrays(cat["model"], cat["rule"], cat["tv"], cat["tn"], (alloc_sum / max(n, 1)).numpy(), max_err, finite)


# -- tables ------------------------------------------------------------------------------------
def stats(values: np.ndarray) -> list[float]:
    """Mean, Std (population), Median, P5, P95, Q25, Q75 of a slippage sample in bps."""
    v = np.asarray(values, dtype=np.float64)
    p5, q25, med, q75, p95 = np.percentile(v, [5, 25, 50, 75, 95])
    return [float(v.mean()), float(v.std()), float(med), float(p5), float(p95), float(q25), float(q75)]


Row = tuple[str, str, list[float]]


def main_table(ev: EvalArrays) -> list[Row]:
    """The paper's Table 1 form, plus the early-stop rule's rows under the same periods."""
    N = ev.model_bps.shape[1] - 1
    rows: list[Row] = [("TWAP Notional", "All", stats(ev.twap_notional_bps)),
                       ("TWAP Volume", "All", stats(ev.twap_volume_bps))]
    for name, kind in (("BUY", BUY_VWAP), ("SELL", SELL_VWAP)):
        rows += [(name, str(m + 1), stats(ev.model_bps[:, m, kind, VOLUME])) for m in range(N)]
        rows.append((name, "Match VWAP", stats(ev.model_bps[:, N, kind, VOLUME])))
    for name, kind in (("RULE BUY", BUY_VWAP), ("RULE SELL", SELL_VWAP)):
        rows += [(name, str(m + 1), stats(ev.rule_bps[:, m, kind, VOLUME])) for m in range(N)]
    return rows


def detail_table(ev: EvalArrays, model_index: int) -> list[Row]:
    """The paper's Tables 2-5: one minimum period (or Match, index N), by order kind and target."""
    rows: list[Row] = []
    for side, twap, vwap in (("BUY", BUY_TWAP, BUY_VWAP), ("SELL", SELL_TWAP, SELL_VWAP)):
        for label, c, k in (("TWAP Volume vs TWAP", twap, VOLUME), ("TWAP Notional vs TWAP", twap, NOTIONAL),
                            ("VWAP Volume vs VWAP", vwap, VOLUME), ("VWAP Notional vs VWAP", vwap, NOTIONAL)):
            rows.append((side, label, stats(ev.model_bps[:, model_index, c, k])))
    return rows


def headline(ev: EvalArrays) -> dict[str, float]:
    """The test summary logged as metrics: mean and std per side and minimum period, and the
    Match VWAP risk against TWAP in volume."""
    N = ev.model_bps.shape[1] - 1
    out: dict[str, float] = {}
    for name, kind in (("buy", BUY_VWAP), ("sell", SELL_VWAP)):
        for m in range(N + 1):
            label = "match" if m == N else f"min{m + 1}"
            v = ev.model_bps[:, m, kind, VOLUME]
            out[f"test_{name}_{label}_mean_bps"], out[f"test_{name}_{label}_std_bps"] = float(v.mean()), float(v.std())
    match_std = float(np.concatenate([ev.model_bps[:, N, BUY_VWAP, VOLUME], ev.model_bps[:, N, SELL_VWAP, VOLUME]]).std())
    twap_std = float(ev.twap_volume_bps.std())
    out.update({"test_twap_volume_std_bps": twap_std, "test_match_vwap_std_bps": match_std,
                "test_match_vwap_std_reduction": 1 - match_std / twap_std if twap_std else float("nan")})
    return out


def write_table(rows: list[Row], header: tuple[str, str], stem: Path) -> dict[str, Path]:
    """CSV, Markdown and LaTeX of one table; returns the three paths."""
    cols = [*header, *(f"{s} (bps)" for s in STAT_NAMES)]
    paths = {"csv": stem.with_suffix(".csv"), "md": stem.with_suffix(".md"), "tex": stem.with_suffix(".tex")}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows([a, b, *(f"{v:.6f}" for v in vals)] for a, b, vals in rows)
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join([a, b, *(f"{v:.2f}" for v in vals)]) + " |" for a, b, vals in rows]
    paths["md"].write_text("\n".join(md) + "\n")
    tex = ["\\begin{tabular}{ll" + "r" * len(STAT_NAMES) + "}", "\\hline",
           " & ".join(cols).replace("%", "\\%") + " \\\\", "\\hline"]
    tex += [" & ".join([a, b, *(f"{v:.2f}" for v in vals)]) + " \\\\" for a, b, vals in rows]
    tex += ["\\hline", "\\end{tabular}"]
    paths["tex"].write_text("\n".join(tex) + "\n")
    return paths


# -- plots ------------------------------------------------------------------------------------
def _panels(n_ahead: int, title: str, plot_one, path: Path, xlabel: str, ylabel: str | None = None) -> Path:
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
    lo, hi = np.percentile(np.concatenate([ev.model_bps[:, :, [0, 2], 0].ravel(), ev.twap_volume_bps]), [1, 99])
    bins = np.linspace(lo, hi, 60)

    def one(ax, m: int) -> None:
        ax.hist(ev.twap_volume_bps, bins=bins, histtype="step", label="TWAP volume", color="grey")
        ax.hist(ev.model_bps[:, m, BUY_VWAP, VOLUME], bins=bins, histtype="step", label="LEM buy", color="tab:green")
        ax.hist(ev.model_bps[:, m, SELL_VWAP, VOLUME], bins=bins, histtype="step", label="LEM sell", color="tab:red")

    return _panels(ev.model_bps.shape[1] - 1, f"{title} - slippage distributions", one, path,
                   "slippage vs VWAP (bps)")


def plot_execution_curves(ev: EvalArrays, path: Path, title: str) -> Path:
    """Mean cumulative execution per minimum period (buy and sell, VWAP volume) against TWAP."""
    N = ev.mean_alloc.shape[0]
    steps = np.arange(1, N + 1)

    def one(ax, m: int) -> None:
        ax.plot(steps, steps / N, color="grey", ls="--", label="TWAP")
        ax.plot(steps, np.cumsum(ev.mean_alloc[:, m, BUY_VWAP, VOLUME]), color="tab:green", label="LEM buy")
        ax.plot(steps, np.cumsum(ev.mean_alloc[:, m, SELL_VWAP, VOLUME]), color="tab:red", label="LEM sell")
        ax.set_ylim(0, 1.02)

    return _panels(N, f"{title} - execution curves", one, path, "execution step", "cumulative fraction executed")
