"""What trading costs a schedule, beside the paper's cost-free slippage: an order size in units
of average daily volume, a participation cap with carry-forward, square-root market impact and
fees; and the arrival price each execution is also measured against (docs/DESIGN.md,
"Trading costs and the classic baselines").

Everything here is causal: a window's ADV, volatility and arrival price come from its lookback
bars (rows r-L .. r-1), never from the bars it executes on. Volumes enter only as ratios to the
ADV, so the windows' normalised volumes serve as well as raw ones.

Conventions, per child order k of an order of size s (fraction of ADV), allocation a_k (fraction
of the order):
  - the child's quantity in ADV units is q_k = a_k s (a notional-target order buys a_k s
    arrival / p_k, its notional split at the arrival price);
  - participation cap: at most ``participation_cap`` x the bar's market volume fills; the rest is
    carried to the next bar, and what is unfilled after the last bar is reported (fill rate);
  - temporary impact (the square-root law): Y x sigma_daily x sqrt(q_k) as a fraction of the
    bar's price, on the filled quantity;
  - fees: ``fee_bps`` of the notional;
  - a buy pays p_k (1 + impact + fee), a sell receives p_k (1 - impact - fee). Side-less
    baselines (TWAP, the volume profile, Almgren-Chriss) are scored as buys, so costs raise them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lem_model.slippage import no_volume_yet, remaining
from lem_model.vocabulary import Side

DAY_MINUTES = 1440


@dataclass(frozen=True)
class CostConfig:
    """Defaults and their sources are in the README ("Trading costs")."""

    enabled: bool = True
    order_sizes: tuple[float, ...] = (0.001, 0.01, 0.05)  # order quantity / ADV
    participation_cap: float = 0.20  # of a bar's market volume
    impact_coefficient: float = 1.0  # Y of the square-root law
    fee_bps: tuple[tuple[str, float], ...] = (("equity", 1.0), ("crypto", 10.0))  # per venue (dataset)
    adv_days: int = 20  # trailing days of the ADV and of the daily volatility (at most the lookback)
    risk_aversion: float = 0.1  # Almgren-Chriss lambda, per unit of the order's notional
    almgren_chriss_size: float = 0.01  # the order size the Almgren-Chriss schedule is solved for

    def __post_init__(self) -> None:
        if not self.order_sizes or any(s <= 0 for s in self.order_sizes):
            raise ValueError(f"order_sizes must be positive fractions of ADV, got {self.order_sizes}")
        if not 0 < self.participation_cap <= 1:
            raise ValueError(f"participation_cap must be in (0, 1], got {self.participation_cap}")
        if self.impact_coefficient < 0 or self.risk_aversion < 0 or self.adv_days < 1 or self.almgren_chriss_size <= 0:
            raise ValueError(f"bad cost config {self}")

    def fees(self, dataset: str) -> float:
        """The fee of ``dataset``'s venue, as a fraction of notional."""
        fees = dict(self.fee_bps)
        if dataset not in fees:
            raise KeyError(f"no fee for venue {dataset!r}: fee_bps has {sorted(fees)}")
        return fees[dataset] / 1e4


def bars_per_day(freq_min: int) -> float:
    """Bars of ``freq_min`` minutes in a trading day (a daily bar is one; crypto trades 24 h)."""
    return DAY_MINUTES / freq_min


@dataclass
class MarketContext:
    """What is known of each window before its first execution bar, (B,) each."""

    adv: torch.Tensor  # average daily volume, in the units of the windows' volumes
    sigma_daily: torch.Tensor  # std of daily returns (fraction), from the trailing bar returns
    arrival: torch.Tensor  # the VWAP of the last bar before execution, in the units of the windows' prices
    trend: torch.Tensor  # log return over the trailing bars: arrival / the first trailing bar's VWAP


def trailing_bars(lookback: int, freq_min: int, cfg: CostConfig) -> int:
    """How many bars before execution the context reads: ``adv_days`` of them, at most the lookback."""
    return max(3, min(lookback, int(round(cfg.adv_days * bars_per_day(freq_min)))))  # two returns, a std


def market_context(prices: torch.Tensor, volumes: torch.Tensor, freq_min: int) -> MarketContext:
    """From the VWAP and volume of each window's trailing bars (B, n) (:func:`trailing_bars`, the
    last being the bar before execution): the mean volume and the return volatility, scaled to a
    day, the arrival price and the trend."""
    per_day = bars_per_day(freq_min)
    prices, volumes = prices.double(), volumes.double()
    returns = torch.log(prices[:, 1:] / prices[:, :-1])
    return MarketContext(adv=volumes.mean(1) * per_day, sigma_daily=returns.std(1) * math.sqrt(per_day),
                         arrival=prices[:, -1], trend=torch.log(prices[:, -1] / prices[:, 0]))


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (B, N) or (B,) tensor broadcast against ``like`` (B, N, *rest) or (B, *rest)."""
    return t.view(*t.shape, *([1] * (like.dim() - t.dim())))


def child_quantities(alloc: torch.Tensor, prices: torch.Tensor, arrival: torch.Tensor, notional: torch.Tensor,
                     size: float) -> torch.Tensor:
    """q_k / ADV per unit of allocation: s for a quantity order, s arrival / p_k for a notional one.
    ``notional`` is a bool tensor broadcast against alloc's trailing axes (True: notional target)."""
    ratio = _expand(arrival, prices)[:, :1] / prices  # (B, N)
    ratio = _expand(ratio, alloc)
    return size * torch.where(notional, ratio, torch.ones_like(ratio))


def capped_fills(alloc: torch.Tensor, market: torch.Tensor, units: torch.Tensor, cap: float) -> torch.Tensor:
    """Fills (B, N, *rest) of the allocations under the participation cap: at bar k at most
    cap x market_k (market volume / ADV) in quantity, i.e. cap x market_k / units_k of the order;
    the rest carries to bar k+1. What is left after the last bar stays unfilled."""
    limit = cap * _expand(market, alloc) / units.clamp(min=1e-300)
    fills = torch.empty_like(alloc)
    carry = torch.zeros_like(alloc[:, 0])
    for k in range(alloc.shape[1]):
        want = alloc[:, k] + carry
        fills[:, k] = torch.minimum(want, limit[:, k])
        carry = want - fills[:, k]
    return fills


@dataclass
class Execution:
    """One order size's execution of a set of schedules: per child and per order."""

    fills: torch.Tensor  # (B, N, *rest) fraction of the order filled at each bar
    paid: torch.Tensor  # (B, N, *rest) price per unit after impact and fees
    fill_rate: torch.Tensor  # (B, *rest)
    impact_bps: torch.Tensor  # (B, *rest) impact cost over the filled notional
    fees_bps: torch.Tensor  # (B, *rest)


def execute(alloc: torch.Tensor, volumes: torch.Tensor, prices: torch.Tensor, ctx: MarketContext, *, side: torch.Tensor,
            notional: torch.Tensor, size: float, cfg: CostConfig, fee: float) -> Execution:
    """Schedules ``alloc`` (B, N, *rest; each sums to 1 over N) of an order of ``size`` x ADV on
    bars with market ``volumes`` and VWAP ``prices`` (B, N). ``side`` (Side values) and
    ``notional`` broadcast against the trailing axes."""
    alloc = alloc.double()
    volumes, prices = volumes.double(), prices.double()
    market = volumes / _expand(ctx.adv, volumes).clamp(min=1e-300)  # (B, N) bar volume / ADV
    units = child_quantities(alloc, prices, ctx.arrival, notional, size)
    fills = capped_fills(alloc, market, units, cfg.participation_cap)
    impact = cfg.impact_coefficient * _expand(ctx.sigma_daily, alloc) * torch.sqrt(fills * units)
    sign = torch.where(side == Side.BUY, 1.0, -1.0).to(alloc.dtype)
    p = _expand(prices, alloc)
    paid = p * (1 + sign * (impact + fee))
    notional_filled = torch.where(notional, fills, fills * p)  # a notional order's fills are already notional
    traded = notional_filled.sum(1)
    safe = traded.clamp(min=1e-300)
    return Execution(fills, paid, fills.sum(1), (notional_filled * impact).sum(1) / safe * 1e4,
                     torch.where(traded > 0, fee * 1e4, 0.0).to(alloc.dtype).expand_as(traded).clone())


def executed_mask(fills: torch.Tensor, volumes: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:
    """(B, N, *rest): the bars an order executed on, as the tables count them (lem_model.slippage):
    every bar up to its last fill, at least its ``forced`` bars (N, P) for minimum-duration slot
    P (axis 2 of fills), and every bar up to the first with market volume. A remainder below
    1e-15 of the order is rounding left by the carry, not a fill."""
    N = volumes.shape[1]
    live = remaining(fills) > 1e-15
    f = forced.view(1, N, forced.shape[1], *([1] * (fills.dim() - 3))).bool()
    return live | f | _expand(no_volume_yet(volumes), fills)


def achieved_price(fills: torch.Tensor, paid: torch.Tensor, notional: torch.Tensor) -> torch.Tensor:
    """Average price per unit: notional over quantity. A quantity order's fills are quantities; a
    notional order's are notional amounts."""
    by_quantity = (fills * paid).sum(1) / fills.sum(1)
    by_notional = fills.sum(1) / (fills / paid).sum(1)
    return torch.where(notional, by_notional, by_quantity)


def benchmark_vwap(mask: torch.Tensor, volumes: torch.Tensor, prices: torch.Tensor) -> torch.Tensor:
    """The market VWAP over each order's executed bars."""
    v, p = _expand(volumes.double(), mask), _expand(prices.double(), mask)
    return (mask * v * p).sum(1) / (mask * v).sum(1)


def almgren_chriss(sigma_daily: torch.Tensor, n_steps: int, freq_min: int, cfg: CostConfig) -> torch.Tensor:
    """(B, N): the Almgren-Chriss schedule of each window for the impact model above, linearised
    at TWAP's child size at ``cfg.almgren_chriss_size``: temporary impact eta n^2 per child of fraction
    n with eta = Y sigma_daily sqrt(s N), price variance sigma_daily^2 / bars_per_day per bar, risk
    aversion lambda. Holdings x_k = sinh(kappa (N-k)) / sinh(kappa N), cosh(kappa) = 1 + lambda
    sigma_bar^2 / (2 eta); kappa -> 0 (no risk aversion, no volatility) is TWAP."""
    sigma = sigma_daily.double()
    eta = cfg.impact_coefficient * sigma * math.sqrt(cfg.almgren_chriss_size * n_steps)
    var_bar = sigma**2 / bars_per_day(freq_min)
    ratio = torch.where(eta > 0, cfg.risk_aversion * var_bar / (2 * eta.clamp(min=1e-300)), 0.0)
    kappa = torch.acosh(1 + ratio)  # (B,)
    k = torch.arange(n_steps + 1, dtype=sigma.dtype, device=sigma.device)
    small = kappa < 1e-6
    kap = torch.where(small, 1.0, kappa)[:, None]
    holdings = torch.sinh(kap * (n_steps - k)) / torch.sinh(kap * n_steps)
    holdings = torch.where(small[:, None], (n_steps - k) / n_steps, holdings)
    return holdings[:, :-1] - holdings[:, 1:]
