"""An execution order, and where it sits in the model's output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SIDES = ("buy", "sell")
BENCHMARKS = ("vwap", "twap")
TARGETS = ("volume", "notional")


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

    def index(self, n_ahead: int) -> tuple[int, int, int]:
        """(model j, kind c, target k) in the output (B, N, N+1, 4, 2)."""
        if self.min_duration is None:
            j = n_ahead
        elif 1 <= self.min_duration <= n_ahead:
            j = self.min_duration - 1
        else:
            raise ValueError(f"min_duration must be 1..{n_ahead} or None, got {self.min_duration}")
        c = 2 * SIDES.index(self.side) + BENCHMARKS.index(self.benchmark)
        return j, c, TARGETS.index(self.target)
