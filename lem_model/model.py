"""LargeExecutionModel: a shared causal context network, then one allocator per execution step.

Shapes (docs/DESIGN.md): x (B, L+N-1, D) with the normalised VWAP in x[..., -2] and the
normalised volume in x[..., -1]; rates (B,) or (B, 1). Output alloc (B, N, N+1, 4, 2), whose axes
lem_model.vocabulary names. Allocations are >= 0 and sum to 1 over the steps.
"""

from __future__ import annotations

import torch
from torch import nn

from lem_model.allocation import allocate_step, finish_gate
from lem_model.config import LEMConfig
from lem_model.layers import GRN, CausalSelfAttention, FeatureEmbedding, FusedMLP, GateAddNorm, VariableSelection
from lem_model.tkan import TKAN, RecurrenceSteps
from lem_model.vocabulary import EPS, KIND_BENCHMARKS, LN_EPS, N_KINDS


class LargeExecutionModel(nn.Module):
    def __init__(self, cfg: LEMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D, H, E, N, J = cfg.n_features, cfg.hidden_size, cfg.num_embedding, cfg.n_ahead, cfg.n_models
        # Context network: per-time-step or forward-in-time layers only, then causal attention.
        self.embedding = FeatureEmbedding(D, E)
        self.selection = VariableSelection(D, E, H)
        self.rnn = nn.ModuleList([TKAN(H, H) for _ in range(cfg.rnn_layers)])
        self.rnn_gate_norm = GateAddNorm(H, H, norm=nn.LayerNorm(H, eps=LN_EPS))
        self.enrich = GRN(H, H, H)
        self.attention = CausalSelfAttention(H, cfg.num_heads)
        # Execution head: step s sees the context row, that row's inputs, 4 histories of 4 kinds
        # for each earlier step and 2 market curves: F_s = H + D + 18 s.
        tiled = cfg.fused_init == "tiled"
        gates = 2 * N_KINDS if cfg.finish_gate else 0  # one finish gate per kind and target
        self.allocators = nn.ModuleList(
            [FusedMLP(J, H + D + 18 * s, cfg.fused_hidden, tiled_init=tiled, gate_paths=gates, gate_bias=cfg.gate_bias)
             for s in range(N - 1)])
        self.scale_factor = nn.Parameter(torch.ones(J))
        # Base curves (step, model, [VWAP, TWAP]); row N-1 is never used, as in the reference.
        self.base_volume_curve = nn.Parameter(torch.full((N, J, 2), 1.0 / N))
        self.base_notional_curve = nn.Parameter(torch.full((N, J, 2), 1.0 / N))

    # -- context -------------------------------------------------------------------------------
    def context(self, x: torch.Tensor, min_rate: torch.Tensor, max_rate: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A, S, selection weights): A (B, T, H) where A[:, t] depends on x[:, :t+1] only.

        The price and volume columns are not context inputs: the reference replaces them by the
        two rate limits, so one network serves every rate configuration.
        """
        B, T, _ = x.shape
        rates = torch.stack([min_rate, max_rate], dim=-1).unsqueeze(1).expand(B, T, 2)
        S = torch.cat([x[..., :-2], rates.to(x.dtype)], dim=-1)  # (B, T, D)
        xi, weights = self.selection(self.embedding(S))  # (B, T, H)
        h = xi
        for layer in self.rnn:
            h = layer(h)
        ctx = self.rnn_gate_norm(h, skip=xi)
        return self.attention(self.enrich(ctx)), S, weights

    # -- execution head ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, min_rate: torch.Tensor, max_rate: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        B, T, D = x.shape
        L, N, J = cfg.lookback, cfg.n_ahead, cfg.n_models
        if T != cfg.seq_len or D != cfg.n_features:
            raise ValueError(f"x must be (B, {cfg.seq_len}, {cfg.n_features}) for this config, got {tuple(x.shape)}")
        min_rate = min_rate.reshape(B).to(x.dtype)
        max_rate = max_rate.reshape(B).to(x.dtype)
        A, S, _ = self.context(x, min_rate, max_rate)

        # Row of x the step-s allocator reads (the bar before the one it trades, in causal mode;
        # the traded bar itself in the reference alignment), and the row of the bar step s trades
        # at, as the running price curves see it.
        shift = -1 if cfg.causal else 0
        price, volume = x[..., -2], x[..., -1]
        trade_rows = torch.arange(L + 1 + shift, L + N - 1 + shift, device=x.device)  # N-2 rows
        p_exec, v_exec = price[:, trade_rows], volume[:, trade_rows]  # (B, N-2)
        count = torch.arange(1, N - 1, device=x.device, dtype=x.dtype)
        market_twap = torch.cumsum(p_exec, 1) / count  # (B, N-2) running TWAP after each step
        market_vwap = torch.cumsum(p_exec * v_exec, 1) / (torch.cumsum(v_exec, 1) + EPS)

        r_min = min_rate.view(B, 1, 1)
        r_max = max_rate.view(B, 1, 1)
        gamma = self.scale_factor.view(1, J, 1)
        kinds = torch.tensor(KIND_BENCHMARKS, device=x.device)  # VWAP/TWAP column of the base curves, per kind
        done_v = x.new_zeros(B, J, N_KINDS)
        done_n = x.new_zeros(B, J, N_KINDS)
        notional_v = x.new_zeros(B, J, N_KINDS)  # VTO: notional executed so far
        volume_n = x.new_zeros(B, J, N_KINDS)  # NTO: volume executed so far
        hist_alloc_v, hist_alloc_n, hist_price_v, hist_price_n = [], [], [], []
        steps = []
        # The rows the allocators read, unbound once (indexing per step would cost a full-size
        # zero tensor per step in backward).
        context_rows = torch.cat([A, S], dim=-1)[:, L + shift : L + N - 1 + shift].unbind(1)  # N-1 x (B, H+D)
        exec_prices = p_exec.unbind(1)
        for s in range(N - 1):
            context_row = context_rows[s]
            parts = [context_row[:, None].expand(B, J, -1)]
            if s:
                # Each history (B, J, 4, s) flattened channel-major (index c*s + t), as the reference.
                parts += [torch.stack(h, dim=-1).flatten(-2)
                          for h in (hist_alloc_v, hist_alloc_n, hist_price_v, hist_price_n)]
                market = torch.cat([market_vwap[:, :s], market_twap[:, :s]], dim=-1)  # (B, 2s)
                parts.append(market[:, None].expand(B, J, 2 * s))
            z = torch.cat(parts, dim=-1)  # (B, J, H + D + 18 s)
            out = self.allocators[s](z)  # (B, J, 8 [+ 8 gate logits])
            g = (1 + out[..., : 2 * N_KINDS]) ** gamma  # (B, J, 8)
            raw_v = g[..., :N_KINDS] * self.base_volume_curve[s][:, kinds]
            raw_n = g[..., N_KINDS:] * self.base_notional_curve[s][:, kinds]
            a_v = allocate_step(raw_v, done_v, r_min, r_max, N - s, cfg.soft_clip_scale)
            a_n = allocate_step(raw_n, done_n, r_min, r_max, N - s, cfg.soft_clip_scale)
            if cfg.finish_gate:
                a_v = finish_gate(a_v, out[..., 2 * N_KINDS : 3 * N_KINDS], done_v, r_max)
                a_n = finish_gate(a_n, out[..., 3 * N_KINDS :], done_n, r_max)
            done_v = done_v + a_v
            done_n = done_n + a_n
            steps.append(torch.stack([a_v, a_n], dim=-1))
            if s < N - 2:  # what the next allocator will know after this step trades
                p = exec_prices[s].view(B, 1, 1)
                notional_v = notional_v + a_v * p
                volume_n = volume_n + a_n / p
                hist_alloc_v.append(a_v)
                hist_alloc_n.append(a_n)
                hist_price_v.append(notional_v / (done_v + EPS))
                # Reference quirk: the notional orders' "price curve" is their cumulative notional.
                hist_price_n.append(done_n if cfg.nto_price_curve == "cumulative_notional" else done_n / (volume_n + EPS))
        steps.append(torch.stack([1 - done_v, 1 - done_n], dim=-1))  # the last step takes the remainder
        return torch.stack(steps, dim=1)  # (B, N, J, 4, 2)

    # -- constraints applied after every optimiser step, as the reference's Keras constraints ---
    @torch.no_grad()
    def project_constraints(self) -> None:
        self.scale_factor.clamp_(self.cfg.min_scale_factor, self.cfg.max_scale_factor)
        axis = 1 if self.cfg.base_curve_norm == "models" else 0  # reference: over the models axis
        for curve in (self.base_volume_curve, self.base_notional_curve):
            curve.clamp_(min=0.0)
            curve.div_(curve.sum(dim=axis, keepdim=True) + EPS)

    def compile_recurrence(self) -> LargeExecutionModel:
        """Fuse each TKAN step, forward and backward, with ``torch.compile`` (optional: it takes a
        C++ compiler and about a minute, see benchmarks/model_throughput.py --compile for what
        it buys). The model stays an ordinary module (state dict unchanged)."""
        steps = RecurrenceSteps.compiled()
        for layer in self.rnn:
            layer.steps = steps
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
