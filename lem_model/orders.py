"""An execution order as a desk states it, and where it sits in the model's output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lem_model.vocabulary import Benchmark, OrderKind, Side, Target

SIDES = tuple(s.name.lower() for s in Side)
BENCHMARKS = tuple(b.name.lower() for b in Benchmark)
TARGETS = tuple(t.name.lower() for t in Target)


def paper_min_rate(n_ahead: int) -> float:
    """The paper's least fraction of the order per bar, 1 / N^2: the rate the model is trained,
    evaluated, registered and served with unless an order states its own."""
    return 1.0 / n_ahead**2


@dataclass(frozen=True)
class Order:
    """One order: buy or sell, a fixed quantity (``volume``) or a fixed ``notional``, beating
    ``vwap`` or ``twap``, trading at least ``min_duration`` bars (None: match the benchmark over
    the whole horizon), at a rate per bar between ``min_rate`` and ``max_rate`` of the order."""

    side: Literal["buy", "sell"] = "buy"
    target: Literal["volume", "notional"] = "volume"
    benchmark: Literal["vwap", "twap"] = "vwap"
    min_duration: int | None = None
    min_rate: float = 0.0
    max_rate: float = 1.0

    def __post_init__(self) -> None:
        if self.side not in SIDES or self.target not in TARGETS or self.benchmark not in BENCHMARKS:
            raise ValueError(f"bad order {self}: side in {SIDES}, target in {TARGETS}, benchmark in {BENCHMARKS}")
        if not 0.0 <= self.min_rate <= self.max_rate:
            raise ValueError(f"rates must satisfy 0 <= min_rate <= max_rate, got {self.min_rate}, {self.max_rate}")

    @property
    def kind(self) -> OrderKind:
        return OrderKind.of(Side[self.side.upper()], Benchmark[self.benchmark.upper()])

    def index(self, n_ahead: int) -> tuple[int, OrderKind, Target]:
        """(model j, kind, target): where this order's schedule sits in the output (B, N, N+1, 4, 2)."""
        if self.min_duration is None:
            j = n_ahead  # the "match the benchmark" model
        elif 1 <= self.min_duration <= n_ahead:
            j = self.min_duration - 1
        else:
            raise ValueError(f"min_duration must be 1..{n_ahead} or None, got {self.min_duration}")
        return j, self.kind, Target[self.target.upper()]
