"""Simple schedules scored beside the model on the same windows, so every table shows what a
one-line rule achieves:

  - TWAP in volume and TWAP in notional, against the full-horizon VWAP;
  - a static VWAP: the average share of the horizon's volume traded at each step, fitted on the
    training windows only (:class:`VolumeProfile`), against the full-horizon VWAP;
  - Almgren-Chriss for the cost model in use (lem_model.costs.almgren_chriss);
  - a causal early-stop rule: trade TWAP (1/N per bar); for minimum duration j+1 (head j),
    finish the whole remainder at the first bar k >= max(j, 1) whose previous bar's VWAP is below
    (buy) or above (sell) the average price achieved so far. It decides with bars before k only,
    and bars 0..j are always in its benchmark (the minimum duration);
  - the same rule with a threshold per head and side fitted on the training windows
    (:func:`fit_stop_thresholds`): finish only when the previous bar beats the average by more
    than the threshold. The LEM's finish gate can start as it (LEMConfig.rule_prior), so it is
    the baseline that shows what the network adds to a better-tuned rule;
  - for matching the VWAP: the minimum-variance static curve of the training windows
    (:func:`min_variance_curve`) and a causal volume forecast (:func:`volume_forecasts`), whose
    product the LEM's Match head can start as (LEMConfig.match_forecast).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lem_model.metrics import slippage_bps
from lem_model.vocabulary import OrderKind, Side, Target

_TIE = 1e-9  # relative: price differences below this are ties (float64 rounding is ~1e-16)


def twap_baselines(volumes: torch.Tensor, prices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(TWAP volume, TWAP notional) slippage in bps against the full-horizon VWAP, per window."""
    vwap = (volumes * prices).sum(1) / volumes.sum(1)
    twap_volume = prices.mean(1)  # equal quantity per bar: the average price
    twap_notional = prices.shape[1] / (1.0 / prices).sum(1)  # equal notional per bar: the harmonic mean
    return (twap_volume / vwap - 1) * 1e4, (twap_notional / vwap - 1) * 1e4


def schedule_slippage_bps(alloc: torch.Tensor, volumes: torch.Tensor, prices: torch.Tensor) -> torch.Tensor:
    """(B,) slippage in bps of one quantity schedule per window (B, N) against the full-horizon VWAP."""
    vwap = (volumes * prices).sum(1) / volumes.sum(1)
    return ((alloc * prices).sum(1) / alloc.sum(1) / vwap - 1) * 1e4


@dataclass(frozen=True)
class VolumeProfile:
    """A static VWAP schedule: step k trades the average share of the horizon's volume that step
    k carried in the training windows of the same phase (the start's hour of day for intraday
    bars; one phase for daily bars). A phase the training split never saw gets the average curve."""

    curves: dict[int, np.ndarray]  # phase -> (N,), summing to 1
    overall: np.ndarray  # (N,)

    @classmethod
    def fit(cls, volumes: np.ndarray, phases: np.ndarray) -> VolumeProfile:
        """From the execution volumes (n, N) of the training windows and their phases (n,)."""
        volumes = np.asarray(volumes, dtype=np.float64)
        if not len(volumes):
            raise ValueError("a volume profile needs training windows: there are none")
        shares = volumes / volumes.sum(1, keepdims=True)

        def curve(rows: np.ndarray) -> np.ndarray:
            c = shares[rows].mean(0)
            return c / c.sum()

        phases = np.asarray(phases)
        return cls({int(p): curve(phases == p) for p in np.unique(phases)}, curve(np.ones(len(shares), bool)))

    def schedules(self, phases: np.ndarray) -> np.ndarray:
        """(B, N): the schedule of each window, by its phase."""
        return np.stack([self.curves.get(int(p), self.overall) for p in phases]) if len(phases) else \
            np.zeros((0, len(self.overall)))


def early_stop_rule(prices: torch.Tensor, n_models: int, *, peek: bool = False,
                    thresholds_bps: torch.Tensor | None = None) -> torch.Tensor:
    """The rule's allocations (B, N, N+1, 4, 2). For model j < N (minimum duration j+1) the
    rule trades 1/N per bar and finishes at the first bar k >= max(j, 1) where the previous
    bar's VWAP beats the average achieved so far (by more than ``thresholds_bps[j, side]`` bps,
    when given: (N+1, 2), sides as :class:`Side`); model N is plain TWAP.

    ``peek=True`` decides at k from bar k itself, the bar it trades in: not achievable live; it
    is the yardstick a training objective must rank above the causal rule."""
    B, N = prices.shape
    margins = (thresholds_bps.double().cpu() * 1e-4 if thresholds_bps is not None
               else torch.zeros(n_models, len(Side), dtype=torch.float64))
    out = prices.new_zeros(B, N, n_models, len(OrderKind), len(Target))
    for j in range(n_models):
        for side in Side:
            sign = 1.0 if side == Side.BUY else -1.0  # buys want lower prices, sells higher
            for target in Target:
                done = prices.new_zeros(B)
                paid = prices.new_zeros(B)  # volume target: notional spent; notional target: volume bought
                alloc = prices.new_zeros(B, N)
                for k in range(N):
                    a = torch.full_like(done, 1.0 / N)
                    if k == N - 1:
                        a = 1 - done
                    elif j < N and k >= max(j, 1):
                        average = paid / done if target == Target.VOLUME else done / paid
                        seen = prices[:, k] if peek else prices[:, k - 1]
                        # Cheaper to buy, dearer to sell, by more than rounding: paid / done is the
                        # price itself give or take an ulp while one price was paid (at k = 1 the
                        # previous bar is that price), and rounding must not decide.
                        better = sign * (seen - average) < -(_TIE + float(margins[j, side])) * average
                        a = torch.where(better, 1 - done, a)
                    a = torch.minimum(a, 1 - done).clamp(min=0)
                    alloc[:, k] = a
                    done = done + a
                    paid = paid + (a * prices[:, k] if target == Target.VOLUME else a / prices[:, k])
                for kind in OrderKind:
                    if kind.side == side:  # the rule ignores the benchmark: VWAP and TWAP orders trade alike
                        out[:, :, j, kind, target] = alloc
    return out


# The thresholds :func:`fit_stop_thresholds` chooses from, in bps: 0 is the one-line rule.
STOP_THRESHOLD_GRID = tuple(range(0, 161, 8))


@torch.no_grad()
def fit_stop_thresholds(volumes: torch.Tensor, prices: torch.Tensor, n_models: int,
                        grid_bps: tuple[float, ...] = STOP_THRESHOLD_GRID) -> torch.Tensor:
    """(N+1, 2): per head and side, the threshold of the grid whose early-stop rule has the best
    mean slippage on these (training) windows, its VWAP and TWAP orders in both targets taken
    together; the Match head's are 0 (it never stops early).

    The one-line rule finishes on any improvement, however small; on the Dow 30's training
    windows waiting for 60-100 bps is worth 10-15 bps at the short minimum periods, and the best
    threshold falls with the minimum period (docs/DESIGN.md, "The fitted rule as the prior")."""
    volumes, prices = volumes.double(), prices.double()
    sign = torch.tensor([1.0 if k.side == Side.BUY else -1.0 for k in OrderKind], dtype=torch.float64)
    costs = []  # per grid value: (N+1, 2) mean side-signed slippage (lower is better)
    for theta in grid_bps:
        thresholds = torch.full((n_models, len(Side)), float(theta))
        slip = slippage_bps(early_stop_rule(prices, n_models, thresholds_bps=thresholds), volumes, prices)
        per_kind = (slip * sign.view(1, 1, -1, 1)).mean(dim=(0, 3))  # (N+1, 4)
        costs.append(torch.stack([per_kind[:, [k for k in OrderKind if k.side == side]].mean(1) for side in Side], 1))
    best = torch.stack(costs).argmin(0)  # (N+1, 2)
    out = torch.tensor(grid_bps, dtype=torch.float32)[best]
    out[prices.shape[1]:] = 0.0  # the Match head
    return out


def min_variance_curve(volumes: torch.Tensor, prices: torch.Tensor) -> torch.Tensor:
    """(N,) the static schedule whose slippage to the window's VWAP varies least across these
    (training) windows: with y the bars' prices over the window's VWAP, slippage / 1e4 + 1 =
    a . y, so a = C^-1 1 / (1' C^-1 1), C the covariance of y (clipped at 0). On the Dow 30's training windows it
    rises from 0.062 to 0.136: the later bars' prices carry more of the benchmark's noise."""
    volumes, prices = volumes.double(), prices.double()
    y = prices / ((volumes * prices).sum(1, keepdim=True) / volumes.sum(1, keepdim=True))
    w = torch.linalg.solve(torch.cov(y.T), torch.ones(y.shape[1], dtype=torch.float64))
    w = (w / w.sum()).clamp(min=0.0)  # a schedule cannot take back what it traded
    return (w / w.sum()).float()


def volume_forecasts(volume: torch.Tensor, lookback: int, n_ahead: int, level: int, phi: float) -> torch.Tensor:
    """(B, N-1, N): at each step s = 0..N-2, the forecast volume of the execution bars 0..N-1
    (those before s unused) from the rows before bar s only: the mean of the last ``level`` rows
    plus phi^h times the last row's deviation from it, bar t being h = t - s + 1 rows ahead.
    ``volume``: (B, >= L+N-2) the volume column of x (rows r-L onwards); > 0 (at least 1e-9)."""
    L, N = lookback, n_ahead
    known = volume[:, L - level:L + N - 2].unfold(1, level, 1)  # (B, N-1, level): step s's, rows before bar s
    mean, last = known.mean(-1, keepdim=True), known[..., -1:]
    ahead = (torch.arange(N, device=volume.device).view(1, -1) - torch.arange(N - 1, device=volume.device).view(-1, 1)
             + 1).clamp(min=1).to(volume.dtype)  # (N-1, N)
    return (mean + phi ** ahead * (last - mean)).clamp(min=1e-9)
