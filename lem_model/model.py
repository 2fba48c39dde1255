"""LargeExecutionModel: a shared causal context network, then one allocator per execution step.

Shapes (docs/DESIGN.md): x (B, L+N-1, D) with the normalised VWAP in x[..., -2] and the
normalised volume in x[..., -1]; rates (B,) or (B, 1). Output alloc (B, N, N+1, 4, 2), whose axes
lem_model.vocabulary names. Allocations are >= 0 and sum to 1 over the steps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lem_model.allocation import allocate_step, finish_gate, share_step
from lem_model.baselines import volume_forecasts
from lem_model.config import LEMConfig
from lem_model.layers import GRN, CausalSelfAttention, FeatureEmbedding, FusedMLP, GateAddNorm, VariableSelection
from lem_model.tkan import TKAN, RecurrenceLoops
from lem_model.vocabulary import EPS, KIND_BENCHMARKS, N_KINDS, N_TARGETS, Benchmark, OrderKind, Side


class LargeExecutionModel(nn.Module):
    def __init__(self, cfg: LEMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D, H, E, N, J = cfg.n_features, cfg.hidden_size, cfg.num_embedding, cfg.n_ahead, cfg.n_models
        # Context network: per-time-step or forward-in-time layers only, then causal attention.
        self.embedding = FeatureEmbedding(D, E)
        self.selection = VariableSelection(D, E, H)
        self.rnn = nn.ModuleList([TKAN(H, H) for _ in range(cfg.rnn_layers)])
        self.rnn_gate_norm = GateAddNorm(H, H)
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
        # The VWAP/TWAP column of the base curves, per kind; a buffer so no forward copies it to
        # the device (not saved: it is the vocabulary's, not learnt).
        self.register_buffer("kind_benchmarks", torch.tensor(KIND_BENCHMARKS), persistent=False)
        if cfg.rule_signal:
            # Per step, head, target and kind: the gate logit's weight on the rule's signal,
            # starting as the rule (lem_model.baselines.early_stop_rule) scaled by
            # rule_signal_init: a buy finishes when the last price is below the average paid
            # (signal < 0), a sell when above, head j from step max(j, 1) on, and the Match head
            # never.
            side = torch.tensor([-1.0 if OrderKind(k).side == Side.BUY else 1.0 for k in range(N_KINDS)])
            step, head = torch.arange(N - 1).view(-1, 1), torch.arange(J).view(1, -1)
            active = ((head < N) & (step >= head.clamp(min=1))).to(side.dtype)  # (N-1, J)
            prior = cfg.rule_signal_init * active.view(N - 1, J, 1, 1) * side
            self.rule_weight = nn.Parameter(prior.expand(N - 1, J, N_TARGETS, N_KINDS).clone())
            self.register_buffer("rule_active", active, persistent=False)
        if cfg.rule_prior == "fitted":
            # (J, side) in bps, set by set_stop_thresholds; saved, so an evaluation can score the
            # fitted rule the gate started as.
            self.register_buffer("stop_thresholds", torch.zeros(J, len(Side)))
        if cfg.match_forecast:
            # The Match head's static curve over the N bars (LEMConfig.match_forecast), set to the
            # training windows' minimum-variance curve by set_match_curve before training.
            self.match_curve = nn.Parameter(torch.full((N,), 1.0 / N))
            vwap = torch.tensor([OrderKind(k).benchmark == Benchmark.VWAP for k in range(N_KINDS)])
            self.register_buffer("vwap_kinds", vwap, persistent=False)

    # -- context -------------------------------------------------------------------------------
    # The last two columns of S, the rate limits, are the same in every row of a window.
    N_STATIC = 2

    def context(self, x: torch.Tensor, min_rate: torch.Tensor, max_rate: torch.Tensor,
                rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A, S, selection weights): A (B, R, H) at the ``rows`` of x (default all), where a row
        t depends on x[:, :t+1] only; S (B, T, D) and the weights (B, T, D) cover every row.

        The price and volume columns are not context inputs: the reference replaces them by the
        two rate limits, so one network serves every rate configuration.
        """
        B, T, _ = x.shape
        rates = torch.stack([min_rate, max_rate], dim=-1).unsqueeze(1).expand(B, T, self.N_STATIC)
        S = torch.cat([x[..., :-2], rates.to(x.dtype)], dim=-1)  # (B, T, D)
        xi, weights = self.selection(self.embedding(S), n_static=self.N_STATIC)  # (B, T, H)
        h = xi
        for layer in self.rnn:
            h = layer(h)
        ctx = self.rnn_gate_norm(h, skip=xi)
        return self.attention(self.enrich(ctx), rows), S, weights

    def read_rows(self, device: torch.device) -> torch.Tensor:
        """The rows of x the N-1 allocators read: the bar before the one each step trades, in
        causal mode; the traded bar itself in the reference alignment."""
        L, N = self.cfg.lookback, self.cfg.n_ahead
        shift = -1 if self.cfg.causal else 0
        return torch.arange(L + shift, L + N - 1 + shift, device=device)

    # -- execution head ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, min_rate: torch.Tensor, max_rate: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        B, T, D = x.shape
        if T != cfg.seq_len or D != cfg.n_features:
            raise ValueError(f"x must be (B, {cfg.seq_len}, {cfg.n_features}) for this config, got {tuple(x.shape)}")
        min_rate = min_rate.reshape(B).to(x.dtype)
        max_rate = max_rate.reshape(B).to(x.dtype)
        read_rows = self.read_rows(x.device)
        A, S, _ = self.context(x, min_rate, max_rate, read_rows)  # A (B, N-1, H)
        return self.head(x, torch.cat([A, S[:, read_rows]], dim=-1), min_rate, max_rate)

    def head(self, x: torch.Tensor, context_rows: torch.Tensor, min_rate: torch.Tensor, max_rate: torch.Tensor
             ) -> torch.Tensor:
        """The allocations, (B, N, J, 4, 2), from x and the context rows the N-1 allocators
        read, (B, N-1, H + D): one allocator step per execution bar."""
        cfg = self.cfg
        B = x.shape[0]
        N, J = cfg.n_ahead, cfg.n_models
        price, volume = x[..., -2], x[..., -1]
        trade_rows = self.read_rows(x.device)[1:]  # N-2 rows: step s trades at the row step s+1 reads
        p_exec, v_exec = price[:, trade_rows], volume[:, trade_rows]  # (B, N-2)
        count = torch.arange(1, N - 1, device=x.device, dtype=x.dtype)
        market_twap = torch.cumsum(p_exec, 1) / count  # (B, N-2) running TWAP after each step
        market_vwap = torch.cumsum(p_exec * v_exec, 1) / (torch.cumsum(v_exec, 1) + EPS)
        market = torch.stack([market_vwap, market_twap], dim=1)  # (B, 2, N-2)
        # What a fill of one unit at the traded price adds to the running "traded" tensor: the
        # notional of the volume orders, the volume of the notional orders.
        per_unit = torch.stack([p_exec, 1 / p_exec], dim=-1).view(B, 1, N - 2, N_TARGETS, 1).unbind(2)

        # Inside the loop the allocations are (B, J, target, kind): the allocator's 8 proposal
        # paths in order. Every per-step tensor is unbound once (indexing per step would cost a
        # full-size zero tensor per step in backward).
        r_min = min_rate.view(B, 1, 1, 1)
        r_max = max_rate.view(B, 1, 1, 1)
        gamma = self.scale_factor.view(1, J, 1)
        base_curves = torch.stack([self.base_volume_curve, self.base_notional_curve], dim=2)
        base = base_curves[..., self.kind_benchmarks].unbind(0)  # N x (J, 2, 4)
        context_rows = context_rows.unbind(1)  # N-1 x (B, H+D)
        if cfg.match_forecast:
            shares = self.match_shares(volume).unbind(1)  # N-1 x (B,)
        paths = 2 * N_KINDS
        done = x.new_zeros(B, J, N_TARGETS, N_KINDS)
        traded = x.new_zeros(B, J, N_TARGETS, N_KINDS)
        history = []  # per step (B, J, 4, 4): [alloc_v, alloc_n, price_v, price_n] x kind
        steps = []
        for s in range(N - 1):
            parts = [context_rows[s][:, None].expand(B, J, -1)]
            if s:
                # Each history (B, J, 4, s) flattened channel-major (index c*s + t), as the
                # reference, in the order alloc_v, alloc_n, price_v, price_n; then the market curves.
                parts.append(torch.stack(history, dim=-1).flatten(2))
                parts.append(market[:, None, :, :s].expand(B, J, 2, s).flatten(2))
            # The allocator's outputs in the input precision (float32 under bf16 autocast): the
            # proposals are fractions of the order and the gate logits meet the rule's signal in
            # basis points, finer than bf16's 3 significant digits.
            out = self.allocators[s](torch.cat(parts, dim=-1)).to(x.dtype)  # (B, J, 8 [+ 8 gate logits])
            g = ((1 + out[..., :paths]) ** gamma).view(B, J, N_TARGETS, N_KINDS)
            a = allocate_step(g * base[s], done, r_min, r_max, N - s, cfg.soft_clip_scale)
            if cfg.match_forecast:  # the Match head's VWAP orders: the forecast's share of what is left
                share = share_step(g[:, N] * shares[s].view(B, 1, 1), done[:, N], r_min[:, 0], r_max[:, 0], N - s)
                match = torch.where(self.vwap_kinds, share, a[:, N])
                a = torch.cat([a[:, :N], match.unsqueeze(1)], dim=1)
            if cfg.finish_gate:
                logit = out[..., paths:].view(B, J, N_TARGETS, N_KINDS)
                if cfg.rule_signal and s:
                    signal = self.rule_signal_bps(p_exec[:, s - 1], done, traded) / cfg.rule_signal_scale
                    logit = logit + self.rule_weight[s] * signal
                a = finish_gate(a, logit, done, r_max)
            done = done + a
            steps.append(a)
            if s < N - 2:  # what the next allocator will know after this step trades
                traded = traded + a * per_unit[s]
                history.append(torch.cat([a, self.price_curves(done, traded)], dim=2))
        steps.append(1 - done)  # the last step takes the remainder
        return torch.stack(steps, dim=1).transpose(-1, -2).contiguous()  # (B, N, J, 4, 2)

    def match_shares(self, volume: torch.Tensor) -> torch.Tensor:
        """(B, N-1): per step s, the share of what is left that bar s gets from the causal volume
        forecast times the Match curve, c_s F_s / sum_{t>=s} c_t F_t (``volume``: x's column)."""
        cfg = self.cfg
        N = cfg.n_ahead
        forecast = volume_forecasts(volume, cfg.lookback, N, cfg.match_forecast_level, cfg.match_forecast_phi)
        weight = forecast * self.match_curve.to(forecast.dtype)  # (B, N-1, N)
        step = torch.arange(N - 1, device=volume.device)
        ahead = torch.arange(N, device=volume.device).view(1, -1) >= step.view(-1, 1)  # (N-1, N): bars s..N-1
        return weight[:, step, step] / ((weight * ahead).sum(-1) + EPS)

    @torch.no_grad()
    def set_match_curve(self, curve: torch.Tensor) -> None:
        """Start the Match head's curve (LEMConfig.match_forecast) as ``curve`` (N,), e.g. the
        training windows' minimum-variance curve (lem_model.baselines.min_variance_curve)."""
        if not self.cfg.match_forecast:
            raise ValueError("set_match_curve needs LEMConfig(match_forecast=True)")
        if curve.shape != self.match_curve.shape or bool((curve < 0).any()):
            raise ValueError(f"the Match curve must be ({self.cfg.n_ahead},) and >= 0, got {tuple(curve.shape)}")
        self.match_curve.copy_(curve / curve.sum())

    @staticmethod
    def rule_signal_bps(last_price: torch.Tensor, done: torch.Tensor, traded: torch.Tensor) -> torch.Tensor:
        """(B, J, 2, 4): the last traded bar's price against the average price paid so far, in
        bps, as the early-stop rule reads it (lem_model.baselines.early_stop_rule); 0 where
        nothing is done yet. ``traded`` holds the volume orders' notional and the notional
        orders' volume, so their average prices are traded / done and done / traded."""
        started = done > 1e-6
        average = torch.stack([traded[:, :, 0] / done[:, :, 0].clamp(min=1e-6),
                               done[:, :, 1] / traded[:, :, 1].clamp(min=1e-12)], dim=2)
        signal = (last_price.view(-1, 1, 1, 1) / average - 1) * 1e4
        return torch.where(started, signal, torch.zeros_like(signal))

    @torch.no_grad()
    def set_stop_thresholds(self, thresholds_bps: torch.Tensor) -> None:
        """Start the allocators as the early-stop rule with these thresholds, (J, 2) in bps per
        head and side (lem_model.baselines.fit_stop_thresholds): their last layer starts at
        exactly 0, so each step proposes its base curve (TWAP) and each gate is the rule: where
        the rule decides (step >= max(j, 1), not the Match head) its bias is -threshold / scale,
        elsewhere ``gate_bias`` (shut). Training moves it by context from there (a last layer
        started at zero, so the first updates are small)."""
        cfg = self.cfg
        if cfg.rule_prior != "fitted":
            raise ValueError("set_stop_thresholds needs LEMConfig(rule_prior='fitted')")
        J = cfg.n_models
        thresholds_bps = thresholds_bps.to(self.stop_thresholds)
        if thresholds_bps.shape != (J, len(Side)):
            raise ValueError(f"thresholds must be (J={J}, 2 sides), got {tuple(thresholds_bps.shape)}")
        self.stop_thresholds.copy_(thresholds_bps)
        side = torch.tensor([OrderKind(k).side for k in range(N_KINDS)], device=thresholds_bps.device)
        per_kind = thresholds_bps[:, side].unsqueeze(1).expand(J, N_TARGETS, N_KINDS).reshape(J, -1)  # (J, 8)
        paths = FusedMLP.PATHS
        for s, allocator in enumerate(self.allocators):
            P = allocator.b3.shape[0] // J
            bias = allocator.b3.view(J, P)
            allocator.w3.zero_()
            bias[:, :paths] = 0.0  # proposals softsign(0) = 0: the base curves
            active = self.rule_active[s].to(bias.dtype).unsqueeze(1)  # (J, 1); none at step 0
            bias[:, paths:] = active * (-per_kind / cfg.rule_signal_scale) + (1 - active) * cfg.gate_bias

    def price_curves(self, done: torch.Tensor, traded: torch.Tensor) -> torch.Tensor:
        """The running price curves the allocators see, (B, J, 2, 4) as [volume, notional]
        orders: the average price of the volume orders, and for the notional orders their
        cumulative notional (the reference's quirk) or their average price."""
        vto = traded[:, :, 0] / (done[:, :, 0] + EPS)
        nto = done[:, :, 1]
        if self.cfg.nto_price_curve != "cumulative_notional":
            nto = nto / (traded[:, :, 1] + EPS)
        return torch.stack([vto, nto], dim=2)

    # -- constraints applied after every optimiser step, as the reference's Keras constraints ---
    @torch.no_grad()
    def project_constraints(self) -> None:
        self.scale_factor.clamp_(self.cfg.min_scale_factor, self.cfg.max_scale_factor)
        axis = 1 if self.cfg.base_curve_norm == "models" else 0  # reference: over the models axis
        for curve in (self.base_volume_curve, self.base_notional_curve):
            curve.clamp_(min=0.0)
            curve.div_(curve.sum(dim=axis, keepdim=True) + EPS)
        if self.cfg.match_forecast:
            self.match_curve.clamp_(min=0.0)
            self.match_curve.div_(self.match_curve.sum() + EPS)

    def compile(self, **kwargs: Any) -> LargeExecutionModel:
        """``torch.compile`` this model's forward in place (``nn.Module.compile``: the state dict
        and the module stay as they are), with each TKAN loop, forward and backward, compiled
        whole on its own (lem_model.tkan.run_recurrence). Optional: it takes a C++ compiler and
        a few minutes on 2 cores, again for each new batch size; see
        benchmarks/model_throughput.py --compile for what it buys."""
        loops = RecurrenceLoops.compiled()
        for layer in self.rnn:
            layer.loops = loops
        super().compile(**{"dynamic": False, **kwargs})
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
