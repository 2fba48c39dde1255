"""Paired comparisons of the LEM against a baseline on the same test windows: the mean
advantage in bps with a 95% interval, and the win rate.

The windows of a test split overlap in time (a window executes over N bars, and a new one
starts every stride bars), and market regimes persist, so per-window differences are serially
dependent: a plain bootstrap that resamples windows independently treats them as i.i.d. and its
interval is far too narrow (tests/model/test_paired.py measures how much). The interval here is
a moving-block bootstrap over execution *dates*: blocks of consecutive dates are resampled, every
window of a date travelling with its date, so the dependence inside a block is kept. It is
studentized (block-t, :func:`block_bootstrap_mean`): on a persistent series the percentile
interval of a plain moving-block bootstrap still covers a few points below its 95%.

Block length (:func:`block_length`): the Politis-White (2004) automatic selector, with the
Patton-Politis-White (2009) correction for the moving (overlapping) block bootstrap, applied to
the per-date mean series, floored at ``min_length`` (the evaluation passes the horizon N: windows
that start fewer than N bars apart share execution bars, so dependence reaches at least N dates
by construction) and capped at a third of the dates. A fixed rule such as ceil(n ** (1/3)) is the
right *rate* but ignores how persistent the series is; for a persistence like AR(1) with
phi = 0.8 it gives blocks far shorter than the correlation length and the interval under-covers.

Sign convention (:func:`advantage`): positive = the LEM is better. Slippage is (achieved /
benchmark - 1) x 1e4, so a buyer wants it low and a seller high: baseline - LEM for buys,
LEM - baseline for sells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lem_model.evaluate import SIDES, EvalArrays
from lem_model.vocabulary import OrderKind, Side, Target

# A bound's Monte Carlo spread over seeds shrinks as 1 / sqrt(resamples). With 2,000, dow30_cpu's
# lower bound at buys 10 moved between -0.049 and +0.017 bps over 50 seeds (its half-width 0.42),
# above 0 in 15; with 20,000, between -0.015 and +0.000 over 10: small, not nothing, next to a
# bound that close to 0 (benchmarks/bootstrap_seeds.py measures it for any evaluation).
DEFAULT_RESAMPLES = 20_000
DEFAULT_SEED = 0
CONFIDENCE = 0.95
# Politis-White selector constants (their paper's recommendations).
_PW_THRESHOLD = 2.0  # c: an autocorrelation is "zero" below c * sqrt(log10(n) / n)
_PW_MIN_RUN = 5  # K_N: this many consecutive "zero" autocorrelations end the dependence
_MBB_D_FACTOR = 4.0 / 3.0  # D = 4/3 g(0)^2 for the moving / circular block bootstrap
# Fewer distinct blocks than this (one or two dates, or a block nearly as long as the data) and
# every resample is nearly the data itself: its interval would be about zero wide. None is given.
MIN_BLOCK_POSITIONS = 3


@dataclass(frozen=True)
class Paired:
    """The mean advantage (bps), its bootstrap interval and the share of windows won (ties half)."""

    mean: float
    ci95: tuple[float, float]
    win_rate: float
    windows: int
    dates: int
    block_length: int


def advantage(lem_bps: np.ndarray, baseline_bps: np.ndarray, side: Side) -> np.ndarray:
    """Per-window advantage of the LEM over a baseline in bps, positive = the LEM is better."""
    lem, base = np.asarray(lem_bps, np.float64), np.asarray(baseline_bps, np.float64)
    return base - lem if side == Side.BUY else lem - base


def _flat_top(t: np.ndarray) -> np.ndarray:
    """Politis-Romano's trapezoidal flat-top lag window."""
    a = np.abs(t)
    return np.where(a <= 0.5, 1.0, np.where(a <= 1.0, 2.0 * (1.0 - a), 0.0))


def block_length(series: np.ndarray, min_length: int = 1) -> int:
    """Moving-block length for the mean of ``series`` (one value per date, in time order): the
    Politis-White / Patton-Politis-White estimate, at least ``min_length``, at most n / 3 unless
    that is below ``min_length``: the floor keeps windows that share bars in one block, and a
    series too short for it gets too few block positions and no interval (block_bootstrap_mean),
    not a narrower one."""
    x = np.asarray(series, np.float64)
    n = len(x)
    cap = max(1, n // 3, min_length)
    if n < 4 or not np.isfinite(x).all() or x.std() == 0:
        return max(1, min(min_length, cap))
    x = x - x.mean()
    max_lag = min(n - 1, math.ceil(math.sqrt(n)) + _PW_MIN_RUN)
    gamma = np.array([x[: n - k] @ x[k:] / n for k in range(max_lag + 1)])
    rho = gamma / gamma[0]
    small = np.abs(rho[1:]) < _PW_THRESHOLD * math.sqrt(math.log10(n) / n)
    m_hat = max_lag  # first lag followed by K_N insignificant autocorrelations
    for k in range(len(small) - _PW_MIN_RUN + 1):
        if small[k: k + _PW_MIN_RUN].all():
            m_hat = k
            break
    M = min(2 * max(m_hat, 1), max_lag)
    lags = np.arange(-M, M + 1)
    weights = _flat_top(lags / M) * gamma[np.abs(lags)]
    G = float((weights * np.abs(lags)).sum())
    g0 = float(weights.sum())
    if g0 <= 0:
        return max(1, min(min_length, cap))
    b = (2.0 * G**2 / (_MBB_D_FACTOR * g0**2)) ** (1 / 3) * n ** (1 / 3)
    return int(min(max(math.ceil(b), min_length, 1), cap))


def _date_sums(values: np.ndarray, dates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum and count of the windows of each distinct date, dates in time order."""
    _, inverse = np.unique(dates, return_inverse=True)
    sums = np.bincount(inverse, weights=values)
    counts = np.bincount(inverse).astype(np.float64)
    return sums, counts


def block_bootstrap_mean(values: np.ndarray, dates: np.ndarray, *, block: int, resamples: int = DEFAULT_RESAMPLES,
                         seed: int = DEFAULT_SEED, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Interval of the per-window mean by the studentized moving-block bootstrap (block-t,
    Goetze-Kuensch 1996): blocks of ``block`` consecutive dates (moving, no wrap-around) are drawn
    until the resample has as many dates as the data; each resample's t statistic is centred on
    the bootstrap expectation and scaled by its own block standard error. Studentizing corrects
    the skew of the resampled means to second order; it does not remove the block variance's
    downward bias (the dependence beyond a block, which resampled blocks lack), which is why the
    block is at least the horizon (windows sharing bars stay in one block) and its length is
    chosen from the data (:func:`block_length`)."""
    sums, counts = _date_sums(np.asarray(values, np.float64), np.asarray(dates))
    n = len(sums)
    block = max(1, min(block, n))
    mean = sums.sum() / counts.sum()
    if n - block + 1 < MIN_BLOCK_POSITIONS:  # too few distinct blocks to resample: no interval
        return math.nan, math.nan
    n_blocks = math.ceil(n / block)  # a resample's blocks: at least as many dates as the data
    # Sum and window count of every block of consecutive dates, by its first date.
    csum, ccount = np.concatenate([[0.0], np.cumsum(sums)]), np.concatenate([[0.0], np.cumsum(counts)])
    block_sums, block_counts = csum[block:] - csum[:-block], ccount[block:] - ccount[:-block]
    # The ratio mean, linearised: a block's residual sum is its sum less mean x its windows. The
    # data hold n / block blocks' worth of dates (not the resample's whole blocks).
    data_blocks = n / block
    se = math.sqrt(np.mean((block_sums - mean * block_counts) ** 2) * data_blocks) / (block_counts.mean() * data_blocks)
    if not se > 0:  # every block's residual is 0: the advantage is the same on every date
        return float(mean), float(mean)
    center = block_sums.sum() / block_counts.sum()  # E* of a resample's mean (edge dates are drawn less)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n - block + 1, size=(resamples, n_blocks))
    S, C = block_sums[starts], block_counts[starts]
    means = S.sum(1) / C.sum(1)
    ses = np.sqrt(((S - means[:, None] * C) ** 2).sum(1)) / C.sum(1)
    ok = ses > 0
    if not ok.any():
        return math.nan, math.nan
    t = (means[ok] - center) / ses[ok]
    tail = (1 - confidence) / 2
    t_lo, t_hi = np.quantile(t, [tail, 1 - tail])
    return float(mean - t_hi * se), float(mean - t_lo * se)


def win_rate(advantages: np.ndarray) -> float:
    """Share of windows where the LEM is better (advantage > 0); a tie counts half."""
    a = np.asarray(advantages, np.float64)
    return float(((a > 0).sum() + 0.5 * (a == 0).sum()) / len(a)) if len(a) else float("nan")


def paired(values: np.ndarray, dates: np.ndarray, *, min_block: int = 1, block: int | None = None,
           resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Paired:
    """Mean, 95% moving-block bootstrap interval over dates, and win rate of per-window
    advantages ``values`` whose execution dates are ``dates`` (row-aligned; any sortable type).
    ``block``: the block length in dates; None picks it (:func:`block_length`, at least ``min_block``)."""
    v = np.asarray(values, np.float64)
    d = np.asarray(dates)
    if len(v) != len(d):
        raise ValueError(f"{len(v)} values but {len(d)} dates: they must be aligned by window")
    if not len(v):
        nan = float("nan")
        return Paired(nan, (nan, nan), nan, 0, 0, 0)
    sums, counts = _date_sums(v, d)
    b = block if block is not None else block_length(sums / counts, min_block)
    lo, hi = block_bootstrap_mean(v, d, block=b, resamples=resamples, seed=seed)
    return Paired(float(v.mean()), (lo, hi), win_rate(v), len(v), len(sums), b)


# -- the evaluation's comparisons --------------------------------------------------------------
# vs_rule: the causal early-stop rule; vs_twap: TWAP in volume; vs_fitted_rule: the rule with the
# thresholds the model's gate started from (evaluated only for such a model).
BASELINES = ("rule", "twap", "fitted_rule")
# The paired sides: (label, side, the VWAP order kind), volume target, as the main table.
PAIRED_SIDES = tuple((name, OrderKind(kind).side, kind) for name, kind, _ in SIDES)


def comparisons(ev: EvalArrays, dates: np.ndarray, baseline: str, *, resamples: int = DEFAULT_RESAMPLES,
                seed: int = DEFAULT_SEED) -> list[tuple[str, int, Paired]]:
    """(side, minimum period 1..N, paired advantage) of the LEM's VWAP volume orders over
    ``baseline`` ("rule": the rule's same head; "twap": TWAP in volume; "fitted_rule": the fitted
    rule's same head), blocks at least N dates."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline {baseline!r}: one of {BASELINES}")
    if baseline == "fitted_rule" and not ev.evaluated("fitted_rule_bps"):
        raise ValueError("no fitted rule in this evaluation: the model's gate did not start as one")
    N = ev.n_ahead
    per_head = {"rule": ev.rule_bps, "fitted_rule": ev.fitted_rule_bps}
    out = []
    for name, side, kind in PAIRED_SIDES:
        for m in range(N):
            lem = ev.model_bps[:, m, kind, Target.VOLUME]
            base = per_head[baseline][:, m, kind, Target.VOLUME] if baseline in per_head else ev.twap_volume_bps
            out.append((name, m + 1, paired(advantage(lem, base, side), dates, min_block=N, resamples=resamples,
                                            seed=seed)))
    return out
