"""The step-wise allocation rule: a raw proposal, softly clipped to the trading-rate limits and
to what is left of the order, then hard-clipped so the schedule is always feasible."""

from __future__ import annotations

import torch


def soft_clip(x: torch.Tensor, upper: torch.Tensor, scale: float = 10.0) -> torch.Tensor:
    """SC(x, u) = x * s + u * (1 - s) with s = sigmoid(scale * (u - x)): a convex mix of x and u.

    Very soft at the scale of one step's allocation (about 1/N): it pulls x towards u from both
    sides, so the hard clip after it is what guarantees feasibility.
    """
    s = torch.sigmoid(scale * (upper - x))
    return x * s + upper * (1 - s)


def allocate_step(
    raw: torch.Tensor,
    done: torch.Tensor,
    min_rate: torch.Tensor,
    max_rate: torch.Tensor,
    steps_left: int,
    scale: float = 10.0,
) -> torch.Tensor:
    """One step's allocation for every order, given the fraction already ``done``.

    ``steps_left`` counts this step and the ones after it (N - s). The catch-up term adds what
    the maximum rate alone could not finish in the remaining steps.
    """
    remaining = 1.0 - done
    a = soft_clip(raw + min_rate, max_rate, scale)
    catch_up = torch.clamp(remaining / steps_left - max_rate, min=0.0)
    a = soft_clip(a + catch_up, remaining, scale)
    return torch.minimum(torch.clamp(a, min=0.0), remaining)


def share_step(share: torch.Tensor, done: torch.Tensor, min_rate: torch.Tensor, max_rate: torch.Tensor,
               steps_left: int) -> torch.Tensor:
    """One step's allocation that trades ``share`` of what is left, clipped hard (no soft clip,
    so a schedule stated as shares of the remainder is traded as stated): to the rates, plus
    the catch-up of :func:`allocate_step`, and to what is left."""
    remaining = 1.0 - done
    a = torch.minimum(torch.clamp(share * remaining, min=0.0).clamp(min=min_rate), max_rate)
    catch_up = torch.clamp(remaining / steps_left - max_rate, min=0.0)
    return torch.minimum(a + catch_up, remaining)


def finish_gate(a: torch.Tensor, logit: torch.Tensor, done: torch.Tensor, max_rate: torch.Tensor) -> torch.Tensor:
    """Finish now or not: U, the whole remainder as far as the maximum rate allows (never less
    than ``a``, which may exceed the rate to catch up), where ``logit`` > 0, else the step's base
    allocation ``a``. The reference allocator can put at most about 0.225 of the order in one
    step; this one can say "finish now", as the causal rule does.

    The decision is exact in the forward pass, so a finished order's later allocations are
    exactly 0 (the tables count a bar as executed while anything at all is left); its gradient
    is sigmoid(logit)'s (straight-through), as if the step took g U + (1 - g) a. Feasible by
    construction: ``a`` <= U <= what is left.
    """
    remaining = 1.0 - done
    upper = torch.minimum(remaining, torch.maximum(max_rate.expand_as(a), a))
    soft = torch.sigmoid(logit)
    g = (logit > 0).to(a.dtype) + (soft - soft.detach())
    return g * upper + (1 - g) * a
