"""One live order, decided bar by bar from the bars seen so far.

The batch model is causal (the allocation for step k reads only bars before it), so the live
decision for step k is the batch forward over the rows seen so far, with the unseen rows
filled by anything: they cannot reach step k. Re-running the forward each bar keeps the live
schedule identical to the one the model was trained and evaluated on, at the cost of one
forward per bar (milliseconds), which is nothing at bar frequency.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lem_model.model import LargeExecutionModel
from lem_model.orders import Order


@dataclass(frozen=True)
class Decision:
    step: int  # 0-based execution step this allocation trades in
    fraction: float  # of the whole order, to trade in the next bar
    executed: float  # fraction traded in earlier steps
    remaining_after: float


class LivePolicy:
    def __init__(self, model: LargeExecutionModel, order: Order) -> None:
        if not model.cfg.causal:
            raise ValueError("a live policy needs a causal model (LEMConfig(causal=True)); causal=False reads the bar it trades")
        self.model = model.eval()
        self.order = order
        self.cfg = model.cfg
        self.index = order.index(self.cfg.n_ahead)

    @torch.no_grad()
    def schedule_so_far(self, rows: np.ndarray) -> np.ndarray:
        """Allocations for steps 0..k from ``rows`` (L + k, D): the lookback and the k bars traded."""
        cfg = self.cfg
        rows = np.asarray(rows, dtype=np.float32)
        k = rows.shape[0] - cfg.lookback
        if rows.ndim != 2 or rows.shape[1] != cfg.n_features or not 0 <= k < cfg.n_ahead:
            raise ValueError(f"rows must be (L + k, D) = ({cfg.lookback} + 0..{cfg.n_ahead - 1}, {cfg.n_features}), "
                             f"got {rows.shape}")
        x = np.zeros((1, cfg.seq_len, cfg.n_features), dtype=np.float32)
        x[0, : min(rows.shape[0], cfg.seq_len)] = rows[: cfg.seq_len]
        dev = next(self.model.parameters()).device
        alloc = self.model(torch.from_numpy(x).to(dev), torch.tensor([self.order.min_rate], device=dev),
                           torch.tensor([self.order.max_rate], device=dev))
        j, c, t = self.index
        return alloc[0, : k + 1, j, c, t].float().cpu().numpy()

    def decide(self, rows: np.ndarray) -> Decision:
        """The allocation for the next bar, given the lookback and the bars traded so far."""
        sched = self.schedule_so_far(rows)
        executed = float(sched[:-1].sum())
        return Decision(step=len(sched) - 1, fraction=float(sched[-1]), executed=executed,
                        remaining_after=1.0 - executed - float(sched[-1]))
