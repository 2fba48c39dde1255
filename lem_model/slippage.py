"""Slippage: the achieved price against the benchmark over the bars an order executed on. The
loss, the reference metrics and the evaluation tables all share this one computation (the
reference's ``lem_loss`` and metric functions; docs/DESIGN.md, "Model, loss and metrics").

Targets stay compact: ``volumes`` and ``prices`` (B, N) for the execution bars. The TWAP orders
use unit volumes, which the reference writes into a tiled (B, N, N+1, 4, 2) target tensor; here
they are broadcast instead of materialised.
"""

from __future__ import annotations

import torch

from lem_model.vocabulary import EPS, Benchmark, OrderKind, Target


def kind_volumes(volumes: torch.Tensor) -> torch.Tensor:
    """(B, N) market volumes -> (B, N, 1, 4): VWAP kinds see the market, TWAP kinds see 1s."""
    ones = torch.ones_like(volumes)
    per_kind = [volumes if kind.benchmark == Benchmark.VWAP else ones for kind in OrderKind]
    return torch.stack(per_kind, dim=-1).unsqueeze(2)


def minimum_duration(n_ahead: int, n_models: int, device: torch.device | None = None) -> torch.Tensor:
    """(N, J) bool: model j < N executes through step j whatever it allocates; model j >= N
    (match the benchmark) through the end."""
    t = torch.arange(n_ahead, device=device)[:, None]
    j = torch.arange(n_models, device=device)[None, :]
    return (t <= j) | (j >= n_ahead)


def no_volume_yet(volumes: torch.Tensor) -> torch.Tensor:
    """(B, N, ...) bool for volumes (B, N, ...): the steps up to and including the first one with
    volume (the reference's volume mask: t == 0 or no volume traded before t)."""
    N = volumes.shape[1]
    # The volume before t as an exclusive cumulative sum: cumsum(v) - v would lose a volume far
    # smaller than the bar's own in float32 and call it "no volume yet".
    before = torch.cat([torch.zeros_like(volumes[:, :1]), torch.cumsum(volumes, dim=1)[:, :-1]], dim=1)
    first = (torch.arange(N, device=volumes.device) == 0).view(1, N, *([1] * (volumes.dim() - 2)))
    return first | (before == 0)


def forced_mask(volumes: torch.Tensor, n_models: int) -> torch.Tensor:
    """(B, N, J, 4): 1 where the order must still be executing regardless of its allocations:
    its minimum duration, and every step up to the first one with market volume."""
    N = volumes.shape[1]
    duration = minimum_duration(N, n_models, volumes.device).to(volumes.dtype).view(1, N, n_models, 1)
    waiting = no_volume_yet(kind_volumes(volumes)).to(volumes.dtype)  # (B, N, 1, 4)
    return duration + (1 - duration) * waiting


def remaining(alloc: torch.Tensor) -> torch.Tensor:
    """C[t] = sum of allocations from step t on (reverse cumulative sum over steps)."""
    return torch.flip(torch.cumsum(torch.flip(alloc, [1]), 1), [1])


def straight_through_mask(c: torch.Tensor, tau: float) -> torch.Tensor:
    """Exactly the tables' mask C > 0 in the forward pass (0 once the order is complete), with
    the gradient of C / (C + tau) in the backward pass. That surrogate's slope tau / (C + tau)^2
    never underflows, unlike sigmoid(50 C), which is exactly 1.0 in float32 for C > 0.35 and so
    gives every early minimum-duration head the same (zero) gradient through the mask."""
    hard = (c > 0).to(c.dtype)
    surrogate = c / (c + tau)
    return hard + (surrogate - surrogate.detach())


def percent_difference(alloc: torch.Tensor, volumes: torch.Tensor, prices: torch.Tensor, *,
                       soft_alpha: float | None, bench_eps_numerator: bool,
                       straight_through_tau: float | None = None) -> torch.Tensor:
    """Dif (B, J, 4, 2) = (achieved / benchmark - 1) * 100 over the bars each order executes on.

    The mask of the bars an order executes on: with ``soft_alpha``, the reference loss's
    sigmoid(alpha * C) (0.5 after completion); with ``straight_through_tau``, the aligned
    objective's :func:`straight_through_mask`; with neither, the metrics' hard mask C > 0.
    """
    J = alloc.shape[2]
    forced = forced_mask(volumes, J).unsqueeze(-1)  # (B, N, J, 4, 1)
    c = remaining(alloc)
    if soft_alpha is not None:
        executing = torch.sigmoid(soft_alpha * c)
    elif straight_through_tau is not None:
        executing = straight_through_mask(c, straight_through_tau)
    else:
        executing = (c > 0).to(alloc.dtype)
    mask = forced + (1 - forced) * executing  # (B, N, J, 4, 2)
    p = prices.view(*prices.shape, 1, 1)  # (B, N, 1, 1)
    v = kind_volumes(volumes)  # (B, N, 1, 4)
    # Per target, on contiguous (B, N, J, 4) tensors in the reference's order of operations: an
    # order that matches its benchmark exactly must give Dif == 0 exactly (|Dif| has a kink there).
    achieved, bench = [], []
    for k in Target:
        executed = alloc[..., k] * mask[..., k]
        if k == Target.VOLUME:  # volume target: average price paid per unit
            achieved.append((executed * p).sum(1) / (executed.sum(1) + EPS))
        else:  # notional target: notional spent per unit bought
            achieved.append(executed.sum(1) / ((executed / p).sum(1) + EPS))
        market = v * mask[..., k]
        top = (market * p).sum(1)
        bench.append((top + EPS if bench_eps_numerator else top) / (market.sum(1) + EPS))
    achieved = torch.stack(achieved, dim=-1)  # (B, J, 4, 2)
    bench = torch.stack(bench, dim=-1)
    return (achieved / bench - 1) * 100
