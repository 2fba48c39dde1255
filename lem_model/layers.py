"""Building blocks of the context network and the allocation head (docs/DESIGN.md, "Model, loss and metrics").

Built bottom-up: GroupedLinear -> Gate -> GateAddNorm -> GRN -> VariableSelection; every Dense
has a glorot-uniform kernel and a zero bias and every LayerNorm uses eps 1e-3, as in the
reference. ``groups`` > 0 runs that many independent copies of a layer in one batched matmul
(the per-feature GRNs of the variable selection) on group-major input (G, N, d): the matmul
reads it in place and carries the bias, where a (..., G, d) layout would be permuted and copied
by every layer. ``part`` (a slice of the groups) runs some of the copies only, on their own rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lem_model.initializers import glorot_uniform_, lecun_normal_
from lem_model.vocabulary import LN_EPS

ALL_GROUPS = slice(None)


class GroupedLinear(nn.Module):
    """``groups`` independent Dense layers, (G, N, d_in) -> (G, N, d_out) in one batched matmul;
    G=0 means a plain Dense on (..., d_in). The per-feature GRNs of variable selection use
    G = n_features. ``part`` selects the groups that ``x`` holds (ignored without groups)."""

    def __init__(self, d_in: int, d_out: int, groups: int = 0) -> None:
        super().__init__()
        self.groups = groups
        shape = (groups, d_in, d_out) if groups else (d_in, d_out)
        self.weight = nn.Parameter(glorot_uniform_(torch.empty(shape), d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(shape[:-2] + (d_out,)))

    def forward(self, x: torch.Tensor, part: slice = ALL_GROUPS) -> torch.Tensor:
        if not self.groups:
            return F.linear(x, self.weight.t(), self.bias)  # the bias added inside the matmul
        return torch.baddbmm(self.bias[part].unsqueeze(1), x, self.weight[part])


class GroupedLayerNorm(nn.Module):
    """LayerNorm over the last axis with one affine per group on (G, N, d); G=0 is nn.LayerNorm.

    Each group is normalised by its own call so the affine stays inside the fused kernel (a
    broadcast multiply and add would be two more passes over the largest tensors of the model,
    forward and backward)."""

    def __init__(self, d: int, groups: int = 0) -> None:
        super().__init__()
        shape = (groups, d) if groups else (d,)
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))
        self.d = d
        self.groups = groups

    def forward(self, x: torch.Tensor, part: slice = ALL_GROUPS) -> torch.Tensor:
        if not self.groups:
            return F.layer_norm(x, (self.d,), self.weight, self.bias, LN_EPS)
        return torch.stack([F.layer_norm(xg, (self.d,), w, b, LN_EPS)
                            for xg, w, b in zip(x.unbind(0), self.weight[part], self.bias[part])])


class Gate(nn.Module):
    """GLU: (x W_a + b_a) * sigmoid(x W_b + b_b), both halves in one matmul.

    Written out rather than ``F.glu``: the forward is the same bit for bit, but F.glu's fused
    backward rounds differently (~1 ulp) and, on the CPU, is slower than the written-out form."""

    def __init__(self, d_in: int, d_out: int, groups: int = 0) -> None:
        super().__init__()
        self.linear = GroupedLinear(d_in, 2 * d_out, groups)
        with torch.no_grad():  # glorot fans of the two separate Dense(d_out) layers
            glorot_uniform_(self.linear.weight, d_in, d_out)

    def forward(self, x: torch.Tensor, part: slice = ALL_GROUPS) -> torch.Tensor:
        a, b = self.linear(x, part).chunk(2, dim=-1)
        return a * torch.sigmoid(b)


class GateAddNorm(nn.Module):
    """LN(skip + GLU(x)): the gated residual step that ends every GRN and the recurrent block."""

    def __init__(self, d_in: int, d_out: int, groups: int = 0) -> None:
        super().__init__()
        self.gate = Gate(d_in, d_out, groups)
        self.norm = GroupedLayerNorm(d_out, groups)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, part: slice = ALL_GROUPS) -> torch.Tensor:
        return self.norm(self.gate(x, part).add_(skip), part)  # in place: the gate's output is fresh


class GRN(nn.Module):
    """LN(Dense_out(x) + GLU(Dense_h(ELU(Dense_h(x))))): the skip is a learned linear projection
    even when the widths match (the reference; the paper's eq. 4 says identity)."""

    def __init__(self, d_in: int, hidden: int, d_out: int | None = None, groups: int = 0) -> None:
        super().__init__()
        d_out = d_out or hidden
        self.skip = GroupedLinear(d_in, d_out, groups)
        self.hidden_in = GroupedLinear(d_in, hidden, groups)
        self.hidden_out = GroupedLinear(hidden, hidden, groups)
        self.gate_norm = GateAddNorm(hidden, d_out, groups)

    def forward(self, x: torch.Tensor, part: slice = ALL_GROUPS) -> torch.Tensor:
        eta = self.hidden_out(F.elu(self.hidden_in(x, part), inplace=True), part)  # in place on a fresh output
        return self.gate_norm(eta, self.skip(x, part), part)


class FeatureEmbedding(nn.Module):
    """One Dense(1 -> E) per feature: (B, T, D) -> (B, T, E, D)."""

    def __init__(self, n_features: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(glorot_uniform_(torch.empty(dim, n_features), 1, dim))
        self.bias = nn.Parameter(torch.zeros(dim, n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-2) * self.weight + self.bias


class VariableSelection(nn.Module):
    """Softmax weights over features from the flattened embeddings, times per-feature GRNs.
    Returns the weights too, so one can see which features the model listens to."""

    # Rows per block of the per-feature GRNs. Their intermediates are the largest tensors of the
    # model; in blocks the allocator reuses memory instead of mapping fresh pages for each
    # (page faults were a quarter of the paper selection's time at batch 256).
    ROW_BLOCK = 4096

    def __init__(self, n_features: int, emb_dim: int, hidden: int) -> None:
        super().__init__()
        self.weights_grn = GRN(emb_dim * n_features, hidden, n_features)
        self.feature_grns = GRN(emb_dim, hidden, hidden, groups=n_features)

    def forward(self, emb: torch.Tensor, n_static: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, E, D) embeddings -> (B, T, H) selected features and (B, T, D) weights.

        The last ``n_static`` features are constant over time (the model's rate limits): their
        GRNs run on the first row only and are broadcast over time, as every row would give the
        same.
        """
        B, T, E, D = emb.shape
        n_dynamic = D - n_static
        v = torch.softmax(self.weights_grn(emb.flatten(-2)), dim=-1)  # (B, T, D); flat index e*D + q
        dynamic = emb[..., :n_dynamic].permute(3, 0, 1, 2).reshape(n_dynamic, B * T, E)
        weights = v.view(B * T, D)[:, :n_dynamic]
        out = torch.cat([self.weighted_dynamic(x, w) for x, w in
                         zip(dynamic.split(self.ROW_BLOCK, dim=1), weights.split(self.ROW_BLOCK))]).view(B, T, -1)
        if n_static:
            static = self.feature_grns(emb[:, 0, :, n_dynamic:].permute(2, 0, 1), slice(n_dynamic, D))  # (S, B, H)
            out.baddbmm_(v[..., n_dynamic:], static.transpose(0, 1))
        return out, v

    def weighted_dynamic(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Sum over the first G features of weight x GRN output: x (G, n, E), weights (n, G) ->
        (n, H), accumulated feature by feature instead of materialising all the products."""
        per_feature = self.feature_grns(x, slice(0, x.shape[0])).unbind(0)  # G x (n, H)
        columns = weights.t().unsqueeze(-1).unbind(0)  # G x (n, 1)
        out = columns[0] * per_feature[0]
        for w, p in zip(columns[1:], per_feature[1:]):
            out.addcmul_(w, p)
        return out


class CausalSelfAttention(nn.Module):
    """Keras MultiHeadAttention with a lower-triangular mask; no residual or norm after it."""

    def __init__(self, d: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Parameter(torch.empty(d, 3 * d))
        for k in range(3):
            glorot_uniform_(self.qkv[:, k * d : (k + 1) * d], d, d)
        self.qkv_bias = nn.Parameter(torch.zeros(3 * d))
        self.out = nn.Parameter(glorot_uniform_(torch.empty(d, d), d, d))
        self.out_bias = nn.Parameter(torch.zeros(d))

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, d) -> (B, R, d): the outputs of the query ``rows`` (default all T, R = T).

        The allocators read a few rows of the context only: queries and the output projection are
        computed for those, keys and values for every row. The mask is explicit because
        ``is_causal`` with fewer queries than keys aligns the triangle at the first key.
        """
        B, T, d = x.shape
        rows = torch.arange(T, device=x.device) if rows is None else rows
        heads, dk = self.num_heads, d // self.num_heads
        q = F.linear(x[:, rows], self.qkv[:, :d].t(), self.qkv_bias[:d]).view(B, -1, heads, dk).transpose(1, 2)
        k, v = F.linear(x, self.qkv[:, d:].t(), self.qkv_bias[d:]).view(B, T, 2, heads, dk).permute(2, 0, 3, 1, 4)
        mask = rows[:, None] >= torch.arange(T, device=x.device)  # (R, T): a row sees itself and earlier
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, heads, R, dk)
        return F.linear(y.transpose(1, 2).reshape(B, -1, d), self.out.t(), self.out_bias)


class FusedMLP(nn.Module):
    """J x P independent 3-layer MLPs (one per minimum-duration model and order path), computed
    as one batched matmul per layer. Input (B, J, F) shared by the paths; output (B, J, P): the
    8 proposal paths in (-1, 1) through softsign, then ``gate_paths`` raw logits (the finish
    gate's, lem_model.allocation.finish_gate)."""

    PATHS = 8

    def __init__(self, n_models: int, d_in: int, hidden: int, tiled_init: bool = True, gate_paths: int = 0,
                 gate_bias: float = 0.0) -> None:
        super().__init__()
        J, P = n_models, self.PATHS + gate_paths
        self.gate_paths = gate_paths
        self.w1 = nn.Parameter(torch.empty(J, d_in, P, hidden))
        self.b1 = nn.Parameter(torch.zeros(J, 1, P * hidden))
        self.w2 = nn.Parameter(torch.empty(J * P, hidden, hidden))
        self.b2 = nn.Parameter(torch.zeros(J * P, 1, hidden))
        self.w3 = nn.Parameter(torch.empty(J * P, hidden, 1))
        self.b3 = nn.Parameter(torch.zeros(J * P, 1, 1))
        with torch.no_grad():
            if tiled_init:  # the reference draws one kernel and tiles it over all J x 8 paths
                self.w1.copy_(glorot_uniform_(torch.empty(d_in, 1, hidden), d_in, hidden).expand_as(self.w1[0]))
                self.w2.copy_(glorot_uniform_(torch.empty(hidden, hidden), hidden, hidden))
                self.w3.copy_(lecun_normal_(torch.empty(hidden, 1), hidden))
            else:
                glorot_uniform_(self.w1, d_in, hidden)
                glorot_uniform_(self.w2, hidden, hidden)
                lecun_normal_(self.w3, hidden)
            if gate_paths:  # start with the gate nearly shut: the base schedule, then learn to open it
                self.b3.view(J, P)[:, self.PATHS:] = gate_bias

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        J, d_in, P, H = self.w1.shape
        B = z.shape[0]
        x = torch.baddbmm(self.b1, z.transpose(0, 1), self.w1.view(J, d_in, P * H))  # (J, B, P*H)
        # ReLU in place, after the copy to path-major: the copy is fresh, and its output is the
        # tensor the next matmul's backward keeps, so the ReLU's backward reads it too (compiled,
        # a ReLU before the copy kept a separate boolean mask, whose store inductor's CPU code
        # runs 10x slower than the ReLU).
        x = x.view(J, B, P, H).transpose(1, 2).reshape(J * P, B, H).relu_()
        x = torch.baddbmm(self.b2, x, self.w2).relu_()  # (J*P, B, H)
        # The last layer has one output per path: a multiply and a sum, not a matmul with an inner
        # size of 1 (whose backward MKL runs as slow outer products).
        x = torch.add(self.b3.view(J * P, 1), (x * self.w3.view(J * P, 1, H)).sum(-1))
        x = x.view(J, P, B).permute(2, 0, 1)  # (B, J, P)
        if not self.gate_paths:
            return F.softsign(x)
        return torch.cat([F.softsign(x[..., : self.PATHS]), x[..., self.PATHS :]], dim=-1)
