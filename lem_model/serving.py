"""A one-input view of the model for serving (MLflow pyfunc takes a single array)."""

from __future__ import annotations

import torch
from torch import nn

from lem_model.model import LargeExecutionModel
from lem_model.orders import paper_min_rate


class FixedRateLEM(nn.Module):
    """``x -> alloc`` at fixed trading-rate limits (the paper's 1/N^2 and 1 by default)."""

    def __init__(self, model: LargeExecutionModel, min_rate: float | None = None, max_rate: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.min_rate = min_rate if min_rate is not None else paper_min_rate(model.cfg.n_ahead)
        self.max_rate = max_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        return self.model(x, x.new_full((B,), self.min_rate), x.new_full((B,), self.max_rate))
