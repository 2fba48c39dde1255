"""The fast paths compute the model as it was written before them: a frozen copy of the earlier
forward (per-row GRNs on (..., G, d) with einsum, full causal attention, one allocator call per
target) against today's, on the same parameters. In float64 the two agree to rounding, so any
change of the math shows; in float32 the allocations agree to about 2e-7, and the gradients are as close to the float64
truth as the earlier forward's."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lem_model import LargeExecutionModel, LEMConfig
from lem_model.allocation import allocate_step, finish_gate
from lem_model.layers import GRN, CausalSelfAttention, VariableSelection
from lem_model.vocabulary import EPS, KIND_BENCHMARKS, LN_EPS, N_KINDS
from tests.model.test_model_behaviour import TINY, scrambled

BATCH = 6
# (dtype, allocation tolerance, gradient tolerance as a share of the parameter's largest gradient).
# float64 is the strict check of the math; float32 gradients are held against float64 (below).
PRECISIONS = [(torch.float64, 1e-11, 1e-11), (torch.float32, 1e-6, 1e-5)]


# -- the earlier forward, frozen -------------------------------------------------------------
def reference_linear(layer, x: torch.Tensor) -> torch.Tensor:
    if not layer.groups:
        return x @ layer.weight + layer.bias
    return torch.einsum("...gi,gio->...go", x, layer.weight) + layer.bias


def reference_grn(grn: GRN, x: torch.Tensor) -> torch.Tensor:
    """x (..., G, d) for grouped GRNs, (..., d) otherwise."""
    eta = reference_linear(grn.hidden_out, F.elu(reference_linear(grn.hidden_in, x)))
    a, b = reference_linear(grn.gate_norm.gate.linear, eta).chunk(2, dim=-1)
    norm = grn.gate_norm.norm
    return F.layer_norm(reference_linear(grn.skip, x) + a * torch.sigmoid(b), (norm.d,), eps=LN_EPS) * norm.weight + norm.bias


def reference_selection(vs: VariableSelection, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    v = torch.softmax(reference_grn(vs.weights_grn, emb.flatten(-2)), dim=-1)
    per_feature = reference_grn(vs.feature_grns, emb.transpose(-1, -2))
    return (v.unsqueeze(-1) * per_feature).sum(dim=-2), v


def reference_attention(att: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    B, T, d = x.shape
    q, k, v = (x @ att.qkv + att.qkv_bias).view(B, T, 3, att.num_heads, d // att.num_heads).permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).reshape(B, T, d) @ att.out + att.out_bias


def reference_forward(model: LargeExecutionModel, x: torch.Tensor, min_rate: torch.Tensor,
                      max_rate: torch.Tensor) -> torch.Tensor:
    cfg = model.cfg
    B, T, D = x.shape
    L, N, J, H = cfg.lookback, cfg.n_ahead, cfg.n_models, cfg.hidden_size
    rates = torch.stack([min_rate, max_rate], dim=-1).unsqueeze(1).expand(B, T, 2)
    S = torch.cat([x[..., :-2], rates.to(x.dtype)], dim=-1)
    xi, _ = reference_selection(model.selection, model.embedding(S))
    h = xi
    for layer in model.rnn:
        h = layer(h)
    gate_norm = model.rnn_gate_norm
    a, b = reference_linear(gate_norm.gate.linear, h).chunk(2, dim=-1)
    ctx = F.layer_norm(xi + a * torch.sigmoid(b), (H,), gate_norm.norm.weight, gate_norm.norm.bias, LN_EPS)
    A = reference_attention(model.attention, reference_grn(model.enrich, ctx))

    shift = -1 if cfg.causal else 0
    price, volume = x[..., -2], x[..., -1]
    trade_rows = torch.arange(L + 1 + shift, L + N - 1 + shift)
    p_exec, v_exec = price[:, trade_rows], volume[:, trade_rows]
    count = torch.arange(1, N - 1, dtype=x.dtype)
    market_twap = torch.cumsum(p_exec, 1) / count
    market_vwap = torch.cumsum(p_exec * v_exec, 1) / (torch.cumsum(v_exec, 1) + EPS)
    r_min, r_max = min_rate.view(B, 1, 1), max_rate.view(B, 1, 1)
    gamma = model.scale_factor.view(1, J, 1)
    kinds = torch.tensor(KIND_BENCHMARKS)
    done_v, done_n = x.new_zeros(B, J, N_KINDS), x.new_zeros(B, J, N_KINDS)
    notional_v, volume_n = x.new_zeros(B, J, N_KINDS), x.new_zeros(B, J, N_KINDS)
    hist_alloc_v, hist_alloc_n, hist_price_v, hist_price_n = [], [], [], []
    steps = []
    context_rows = torch.cat([A, S], dim=-1)[:, L + shift : L + N - 1 + shift].unbind(1)
    for s in range(N - 1):
        parts = [context_rows[s][:, None].expand(B, J, -1)]
        if s:
            parts += [torch.stack(h, dim=-1).flatten(-2) for h in (hist_alloc_v, hist_alloc_n, hist_price_v, hist_price_n)]
            parts.append(torch.cat([market_vwap[:, :s], market_twap[:, :s]], dim=-1)[:, None].expand(B, J, 2 * s))
        out = model.allocators[s](torch.cat(parts, dim=-1))
        g = (1 + out[..., : 2 * N_KINDS]) ** gamma
        raw_v = g[..., :N_KINDS] * model.base_volume_curve[s][:, kinds]
        raw_n = g[..., N_KINDS:] * model.base_notional_curve[s][:, kinds]
        a_v = allocate_step(raw_v, done_v, r_min, r_max, N - s, cfg.soft_clip_scale)
        a_n = allocate_step(raw_n, done_n, r_min, r_max, N - s, cfg.soft_clip_scale)
        if cfg.finish_gate:
            a_v = finish_gate(a_v, out[..., 2 * N_KINDS : 3 * N_KINDS], done_v, r_max)
            a_n = finish_gate(a_n, out[..., 3 * N_KINDS :], done_n, r_max)
        done_v, done_n = done_v + a_v, done_n + a_n
        steps.append(torch.stack([a_v, a_n], dim=-1))
        if s < N - 2:
            p = p_exec[:, s].view(B, 1, 1)
            notional_v = notional_v + a_v * p
            volume_n = volume_n + a_n / p
            hist_alloc_v.append(a_v)
            hist_alloc_n.append(a_n)
            hist_price_v.append(notional_v / (done_v + EPS))
            hist_price_n.append(done_n if cfg.nto_price_curve == "cumulative_notional" else done_n / (volume_n + EPS))
    steps.append(torch.stack([1 - done_v, 1 - done_n], dim=-1))
    return torch.stack(steps, dim=1)


# -- comparisons -------------------------------------------------------------------------------
def moved(cfg: LEMConfig, seed: int, dtype: torch.dtype) -> LargeExecutionModel:
    """A model away from its symmetric start (distinct paths, uneven curves, some gates open),
    moved less than the behaviour tests' so float32 rounding stays small."""
    return scrambled(cfg, seed, scale=0.1, dtype=dtype)


def batch(cfg: LEMConfig, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(BATCH, cfg.seq_len, cfg.n_features, generator=g, dtype=dtype)
    x[..., -2] = 1 + 0.01 * torch.randn(BATCH, cfg.seq_len, generator=g, dtype=dtype).cumsum(1)
    x[..., -1] = torch.rand(BATCH, cfg.seq_len, generator=g, dtype=dtype) * 2
    min_rate = torch.rand(BATCH, generator=g, dtype=dtype) / cfg.n_ahead
    max_rate = torch.maximum(min_rate, torch.rand(BATCH, generator=g, dtype=dtype)) + 1.0 / cfg.n_ahead
    weights = torch.randn(BATCH, cfg.n_ahead, cfg.n_models, N_KINDS, 2, generator=g, dtype=dtype)
    return x, min_rate, max_rate, weights


def outputs_and_gradients(model: LargeExecutionModel, forward, inputs) -> tuple[torch.Tensor, dict]:
    x, min_rate, max_rate, weights = inputs
    model.zero_grad(set_to_none=True)
    alloc = forward(x, min_rate, max_rate)
    (alloc * weights).sum().backward()
    return alloc.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("gate", [False, True], ids=["reference-allocator", "finish-gate"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "look-ahead"])
@pytest.mark.parametrize("nto", ["cumulative_notional", "average_price"])
@pytest.mark.parametrize("dtype,atol,grad_tol", PRECISIONS, ids=["f64", "f32"])
def test_forward_and_gradients_equal_the_earlier_forward(gate, causal, nto, dtype, atol, grad_tol):
    cfg = dataclasses.replace(TINY, finish_gate=gate, causal=causal, nto_price_curve=nto)
    model = moved(cfg, 3, dtype)
    inputs = batch(cfg, dtype)
    alloc, grads = outputs_and_gradients(model, model, inputs)
    ref_alloc, ref_grads = outputs_and_gradients(model, lambda *a: reference_forward(model, *a), inputs)
    torch.testing.assert_close(alloc, ref_alloc, atol=atol, rtol=0)
    assert grads.keys() == ref_grads.keys()
    if dtype == torch.float64:
        for name, grad in grads.items():
            scale = ref_grads[name].abs().max().clamp(min=1.0)
            torch.testing.assert_close(grad, ref_grads[name], atol=grad_tol * scale, rtol=0, msg=name)
        return
    # float32: some gradients of this scrambled model amplify rounding (price curves divided by
    # nearly nothing done yet), so both spellings are held against the float64 truth on the same
    # weights, and today's may be off by at most twice what the earlier one is.
    truth = copy.deepcopy(model).double()
    _, true_grads = outputs_and_gradients(truth, truth, tuple(t.double() for t in inputs))
    for name, grad in grads.items():
        scale = true_grads[name].abs().max().clamp(min=1.0)
        error = (grad.double() - true_grads[name]).abs().max()
        ref_error = (ref_grads[name].double() - true_grads[name]).abs().max()
        assert error <= 2 * ref_error + grad_tol * scale, f"{name}: {error:.3g} off, the earlier forward {ref_error:.3g}"


def test_attention_at_some_rows_equals_those_rows_of_the_full_attention():
    att = CausalSelfAttention(16, 4)
    x = torch.randn(3, 12, 16)
    rows = torch.tensor([4, 5, 9])
    full = att(x)
    torch.testing.assert_close(full, reference_attention(att, x), atol=1e-6, rtol=0)
    torch.testing.assert_close(att(x, rows), full[:, rows], atol=1e-6, rtol=0)


@pytest.mark.parametrize("row_block", [VariableSelection.ROW_BLOCK, 7], ids=["one-block", "blocks"])
def test_static_features_equal_the_per_row_computation(row_block):
    vs = VariableSelection(6, 5, 16)
    vs.ROW_BLOCK = row_block  # 18 rows: several blocks, the last one short
    emb = torch.randn(2, 9, 5, 6)
    emb[..., -2:] = emb[:, :1, :, -2:]  # the last two features constant over time
    fast, weights = vs(emb, n_static=2)
    slow, ref_weights = reference_selection(vs, emb)
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=0)
    torch.testing.assert_close(weights, ref_weights, atol=1e-6, rtol=0)
    torch.testing.assert_close(vs(emb)[0], slow, atol=1e-6, rtol=0)
