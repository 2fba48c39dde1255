"""The model's vocabulary, named once: what each axis of the output means and the constants
the reference divides by. Every module that indexes an allocation or a slippage array uses
these names instead of literal positions.

The allocation tensor is ``(B, N, N+1, 4, 2)``:
  axis 0  batch
  axis 1  execution step s = 0..N-1 (the bar it trades in is r+s)
  axis 2  model j: j < N means "minimum duration j+1 steps"; j = N means "match the benchmark"
  axis 3  order kind (:class:`OrderKind`)
  axis 4  target (:class:`Target`)
Slippage and evaluation arrays drop the step axis: ``(B, N+1, 4, 2)``.
"""

from __future__ import annotations

from enum import IntEnum

EPS = 1e-7  # keras.backend.epsilon(): added wherever the reference divides
LN_EPS = 1e-3  # Keras LayerNormalization's epsilon (PyTorch's default is 1e-5)


class Side(IntEnum):
    BUY = 0
    SELL = 1


class Benchmark(IntEnum):
    VWAP = 0
    TWAP = 1


class OrderKind(IntEnum):
    """Axis 3 of the output: side-major, then benchmark (index = 2 * side + benchmark)."""

    BUY_VWAP = 0
    BUY_TWAP = 1
    SELL_VWAP = 2
    SELL_TWAP = 3

    @classmethod
    def of(cls, side: Side, benchmark: Benchmark) -> OrderKind:
        return cls(2 * side + benchmark)

    @property
    def side(self) -> Side:
        return Side(self // 2)

    @property
    def benchmark(self) -> Benchmark:
        return Benchmark(self % 2)


class Target(IntEnum):
    """Axis 4 of the output: a fixed quantity (volume) or a fixed notional."""

    VOLUME = 0
    NOTIONAL = 1


N_KINDS = len(OrderKind)
N_TARGETS = len(Target)
# Per order kind, the benchmark column (VWAP or TWAP) of the base curves and of the market volumes.
KIND_BENCHMARKS = tuple(int(k.benchmark) for k in OrderKind)

