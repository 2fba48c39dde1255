"""KANLinear (B-spline efficient-KAN) and the TKAN recurrent layer, computed as the reference
(docs/DESIGN.md, "The reference, as specified").

The recurrence is the training step's hot loop (two layers x L + N - 1 steps of small
matrices), so it runs as one autograd node (:class:`TKANRecurrence`): the forward loop builds no
autograd graph, the backward loop carries only the state gradients, and every weight gradient is
one matrix product over all steps at the end. tests/model/test_tkan_recurrence.py holds the
plain step-by-step autograd spelling it must equal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lem_model.initializers import glorot_uniform_, orthogonal_
from lem_model.vocabulary import LN_EPS

GRID_SIZE = 3
SPLINE_ORDER = 3  # the closed forms below are the cubic case
GRID_RANGE = (-1.0, 1.0)
N_BASES = GRID_SIZE + SPLINE_ORDER
KNOT_STEP = (GRID_RANGE[1] - GRID_RANGE[0]) / GRID_SIZE
FIRST_KNOT = GRID_RANGE[0] - SPLINE_ORDER * KNOT_STEP


def spline_knots(grid_size: int = GRID_SIZE, order: int = SPLINE_ORDER, grid_range=GRID_RANGE) -> torch.Tensor:
    """The fixed knot vector: linspace(-1 - k*h, 1 + k*h, G + 2k + 1), i.e. [-3, 3] for G=k=3."""
    h = (grid_range[1] - grid_range[0]) / grid_size
    return torch.linspace(grid_range[0] - order * h, grid_range[1] + order * h, grid_size + 2 * order + 1)


def basis_centres(like: torch.Tensor) -> torch.Tensor:
    """Where each of the 6 bases peaks, in knot steps from zero, as a (6, 1) column: z / h -
    centre is the cardinal spline's argument."""
    return (torch.arange(N_BASES, device=like.device, dtype=like.dtype) + (FIRST_KNOT / KNOT_STEP + 2)).unsqueeze(-1)


def spline_terms(z: torch.Tensor, centres: torch.Tensor, slopes: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The 6 cubic B-spline bases on the uniform knots [-3, 3], (..., d) -> (..., 6, d) (basis
    major, so every write is contiguous), and with ``slopes`` their derivatives in z (the
    hand-written backward reads them).

    Basis j is the cardinal cubic B-spline of t = z / h - centre_j, in closed form
    ((2 - |t|)+^3 - 4 (1 - |t|)+^3) / 6: the same function as the reference's Cox-de Boor
    recursion (tests/model/test_layers.py compares them) in a third of the operations, and
    without a branch.
    """
    t = z.unsqueeze(-2) * (1 / KNOT_STEP) - centres
    r = t.abs()
    a = (2 - r).clamp_(min=0)
    b = (1 - r).clamp_(min=0)
    a2, b2 = a * a, b * b
    bases = torch.sub(a2 * a, b2 * b, alpha=4).mul_(1 / 6)
    if not slopes:
        return bases, None
    return bases, torch.sub(b2, a2, alpha=0.25).mul_(2 / KNOT_STEP).mul_(torch.sign(t))


def bspline_bases(z: torch.Tensor) -> torch.Tensor:
    """(..., d) -> (..., d, 6), the reference's layout: the spline bases alone (:func:`spline_terms`)."""
    return spline_terms(z, basis_centres(z))[0].transpose(-1, -2)


def kan_terms(z: torch.Tensor, centres: torch.Tensor, slopes: bool = False, features_out: torch.Tensor | None = None,
              slopes_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(..., d) -> (..., 7, d): the KAN features [relu(z); bases(z)], the rows KANLinear's
    reordered weight multiplies once flattened, and with ``slopes`` their derivatives in z
    (written into ``features_out`` and ``slopes_out`` when given)."""
    bases, bases_slopes = spline_terms(z, centres, slopes)
    features = torch.cat([F.relu(z).unsqueeze(-2), bases], dim=-2, out=features_out)
    if not slopes:
        return features, None
    return features, torch.cat([(z > 0).to(z.dtype).unsqueeze(-2), bases_slopes], dim=-2, out=slopes_out)


class KANLinear(nn.Module):
    """out = relu(LN(x)) @ W_base + b + B(LN(x)) @ W_spline, fused into one matmul.

    The base and spline weights are kept as one (d_in * (1 + G + k), d_out) matrix whose rows are
    [relu inputs; spline bases feature-major] (the checkpoint layout). The product is taken with
    the rows in basis-major order (:func:`kan_terms`: all relu inputs, then basis 0 of every
    input, ...), so that the features are built, and their slopes read in the backward, with
    contiguous writes.
    """

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.n_bases = N_BASES
        self.norm = nn.LayerNorm(d_in, eps=LN_EPS)
        self.weight = nn.Parameter(torch.empty(d_in * (1 + self.n_bases), d_out))
        self.bias = nn.Parameter(torch.zeros(d_out))
        glorot_uniform_(self.weight[:d_in], d_in, d_out)
        glorot_uniform_(self.weight[d_in:], d_in * self.n_bases, d_out)
        # Row c*d + i of the reordered weight: relu input i (c = 0), or basis c-1 of input i.
        inputs = torch.arange(d_in)
        splines = d_in + inputs * self.n_bases + torch.arange(self.n_bases).unsqueeze(-1)  # (6, d)
        self.register_buffer("basis_major", torch.cat([inputs, splines.flatten()]), persistent=False)

    def basis_major_weight(self) -> torch.Tensor:
        return self.weight[self.basis_major]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = kan_terms(self.norm(x), basis_centres(x))[0].flatten(-2)
        return torch.addmm(self.bias, features.flatten(0, -2), self.basis_major_weight()).view(*x.shape[:-1], -1)


class TKAN(nn.Module):
    """One TKAN layer with a single sub-KAN, returning the whole sequence of h_t.

    Computes the candidate as tanh(sigmoid(.)): that is what the reference runs on the torch and
    jax backends (docs/DESIGN.md, "The reference, as specified"), not the paper's eq. 18.
    """

    def __init__(self, d_in: int, units: int) -> None:
        super().__init__()
        self.d_in, self.units = d_in, units
        self.kernel = nn.Parameter(glorot_uniform_(torch.empty(d_in, 3 * units), d_in, 3 * units))
        self.recurrent_kernel = nn.Parameter(torch.empty(units, 3 * units))
        orthogonal_(self.recurrent_kernel)
        self.bias = nn.Parameter(torch.cat([torch.zeros(units), torch.ones(units), torch.zeros(units)]))  # forget = 1
        self.sub_kan = KANLinear(d_in, d_in)
        self.sub_kernel = nn.Parameter(orthogonal_(torch.empty(1, 2 * d_in)).view(-1))  # a unit-norm row
        self.sub_recurrent_inputs = nn.Parameter(orthogonal_(torch.empty(d_in, d_in)))
        self.sub_recurrent_states = nn.Parameter(orthogonal_(torch.empty(d_in, d_in)))
        self.aggregated_weight = nn.Parameter(glorot_uniform_(torch.empty(d_in, units), d_in, units))
        self.aggregated_bias = nn.Parameter(torch.zeros(units))
        self.loops = RecurrenceLoops()  # LargeExecutionModel.compile swaps in compiled ones

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d_in) -> (B, T, units). The input terms of every step are two matrix products
        over the whole sequence; only the recurrent part runs step by step."""
        B, T, d = x.shape
        rows = x.transpose(0, 1).reshape(T * B, d)  # time-major: each step's rows contiguous
        gates_x = torch.addmm(self.bias, rows, self.kernel).view(T, B, -1)
        kan_x = (rows @ self.sub_recurrent_inputs).view(T, B, d)
        kan = self.sub_kan
        args = (gates_x, kan_x, self.recurrent_kernel, kan.norm.weight, kan.norm.bias, kan.basis_major_weight(),
                kan.bias, self.sub_kernel, self.sub_recurrent_states, self.aggregated_weight, self.aggregated_bias)
        return run_recurrence(self.loops, *args).transpose(0, 1)


@torch.compiler.disable(recursive=False)
def run_recurrence(loops: RecurrenceLoops, *args: torch.Tensor) -> torch.Tensor:
    """The recurrence, (T, B, u): one autograd node in training, the bare forward loop in
    inference. Opaque to a ``torch.compile`` of the model (LargeExecutionModel.compile), which
    would otherwise unroll both loops into the model's graph (minutes of compiling); the loops
    are compiled on their own, each once per batch size, and shared by the layers."""
    if torch.is_grad_enabled():
        return TKANRecurrence.apply(loops, *args)
    return float32_recurrence(*args, loop=loops.forward)


def float32_recurrence(*args: torch.Tensor, loop) -> torch.Tensor:
    """The no-grad forward loop in the precision TKANRecurrence trains in: under CUDA's bf16
    autocast, float32 (its ``custom_fwd(cast_inputs=float32)``), so a forward under autocast
    computes the recurrence as training did; otherwise the inputs' own precision."""
    device = args[0].device.type
    if not torch.is_autocast_enabled(device):
        return loop(*args, keep=False)[0]
    with torch.autocast(device, enabled=False):
        return loop(*(a.float() for a in args), keep=False)[0]


def forward_step(gates_x: torch.Tensor, kan_x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, s: torch.Tensor,
                 w_rec: torch.Tensor, ln_w: torch.Tensor, ln_b: torch.Tensor, w_kan: torch.Tensor,
                 b_kan: torch.Tensor, sub_kernel: torch.Tensor, w_sub: torch.Tensor, w_agg: torch.Tensor,
                 b_agg: torch.Tensor, centres: torch.Tensor, keep: bool, features_out: torch.Tensor | None = None,
                 slopes_out: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """One step of the recurrence: (h, c, s), and with ``keep`` what the backward reads of it
    (the gates, the KAN input q, k, the output gate o, the KAN features and their slopes in z,
    (B, 7, d), written into ``features_out`` and ``slopes_out`` when given)."""
    d = s.shape[-1]
    gates = torch.sigmoid(torch.addmm(gates_x, h, w_rec))
    i, f, cand = gates.chunk(3, dim=-1)
    c = torch.addcmul(f * c, i, torch.tanh(cand))
    q = torch.addmm(kan_x, s, w_sub)
    z = F.layer_norm(q, (d,), ln_w, ln_b, LN_EPS)
    features, slopes = kan_terms(z, centres, keep, features_out, slopes_out)
    k = torch.addmm(b_kan, features.flatten(-2), w_kan)
    s = torch.addcmul(sub_kernel[d:] * s, sub_kernel[:d], k)
    o = torch.sigmoid(torch.addmm(b_agg, k, w_agg))
    h = o * torch.tanh(c)
    if not keep:
        return h, c, s
    return h, c, s, gates, q, k, o, features, slopes


def forward_loop(gates_x: torch.Tensor, kan_x: torch.Tensor, *weights: torch.Tensor, keep: bool = False
                 ) -> tuple[torch.Tensor, ...]:
    """The forward loop of :class:`TKANRecurrence`: (h,) for every step, (T, B, u), and with
    ``keep`` also what the backward reads, over the steps: c, s, gates, q, k, o, features and
    slopes. Eagerly, the KAN features and slopes, the largest, are written in place, step by
    step, while they are in cache; compiled, the loop is one graph and they are stacked with the
    rest."""
    T, B, d = kan_x.shape
    centres = basis_centres(kan_x)
    h = gates_x.new_zeros(B, weights[0].shape[0])
    c = torch.zeros_like(h)
    s = kan_x.new_zeros(B, d)
    in_place = keep and not torch.compiler.is_compiling()
    features = kan_x.new_empty(T, B, 1 + N_BASES, d) if in_place else None
    slopes = torch.empty_like(features) if in_place else None
    steps: list[tuple[torch.Tensor, ...]] = []
    for t in range(T):
        out = forward_step(gates_x[t], kan_x[t], h, c, s, *weights, centres, keep,
                           *((features[t], slopes[t]) if in_place else ()))
        h, c, s = out[:3]
        if not keep:
            out = out[:1]
        elif in_place:
            out = out[:7]  # the features and slopes are already in their buffers
        steps.append(out)
    stacked = tuple(torch.stack(v) for v in zip(*steps))
    return stacked + (features, slopes) if in_place else stacked


def backward_step(grad_h: torch.Tensor, dh: torch.Tensor, dc: torch.Tensor, ds: torch.Tensor,
                  to_gate: torch.Tensor, to_cell: torch.Tensor, slopes: torch.Tensor, rstd: torch.Tensor,
                  zhat: torch.Tensor, to_gates: torch.Tensor, forget: torch.Tensor, w1: torch.Tensor,
                  w2: torch.Tensor, ln_w: torch.Tensor, w_agg_t: torch.Tensor, w_kan_t: torch.Tensor,
                  w_sub_t: torch.Tensor, w_rec_t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One step of the backward in time: the gradients carried to the step before (dL/d h, c, s
    of its outputs) and this step's gradients that the weight gradients sum over (output gate,
    k, s, z, q and the three gate pre-activations)."""
    B, d = ds.shape
    dh = grad_h + dh
    d_out_gate = dh * to_gate
    dc = torch.addcmul(dc, dh, to_cell)
    dk = torch.addmm(w1 * ds, d_out_gate, w_agg_t)
    dz = ((dk @ w_kan_t).view(B, -1, d) * slopes).sum(-2)
    dzhat = dz * ln_w
    dq = rstd * (dzhat - dzhat.mean(-1, keepdim=True) - zhat * (dzhat * zhat).mean(-1, keepdim=True))
    ds_prev = torch.addmm(w2 * ds, dq, w_sub_t)
    d_gates = (dc.unsqueeze(1) * to_gates).flatten(1)
    return d_gates @ w_rec_t, dc * forget, ds_prev, d_out_gate, dk, ds, dz, dq, d_gates


def backward_loop(grad_h: torch.Tensor, to_gate: torch.Tensor, to_cell: torch.Tensor, slopes: torch.Tensor,
                  rstd: torch.Tensor, zhat: torch.Tensor, to_gates: torch.Tensor, forget: torch.Tensor,
                  *weights_t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The backward loop of :class:`TKANRecurrence`, from the last step to the first, carrying
    the state gradients: each step's (output gate, k, s, z, q, gates) gradients, stacked over
    the steps in time order, (T, B, .)."""
    T, B, u = grad_h.shape
    d = zhat.shape[-1]
    carried = (grad_h.new_zeros(B, u), grad_h.new_zeros(B, u), grad_h.new_zeros(B, d))  # dL/d h, c, s
    per_step = []
    for t in range(T - 1, -1, -1):
        out = backward_step(grad_h[t], *carried, to_gate[t], to_cell[t], slopes[t], rstd[t], zhat[t], to_gates[t],
                            forget[t], *weights_t)
        carried = out[:3]
        per_step.append(out[3:])
    return tuple(torch.stack(g[::-1]) for g in zip(*per_step))  # the steps ran backwards in time: flip once


def recurrence_backward(grad_h: torch.Tensor, h_all: torch.Tensor, c_all: torch.Tensor, s_all: torch.Tensor,
                        gates_all: torch.Tensor, q_all: torch.Tensor, k_all: torch.Tensor, o_all: torch.Tensor,
                        features: torch.Tensor, slopes: torch.Tensor, w_rec: torch.Tensor, ln_w: torch.Tensor,
                        w_kan: torch.Tensor, sub_kernel: torch.Tensor, w_sub: torch.Tensor, w_agg: torch.Tensor
                        ) -> tuple[torch.Tensor, ...]:
    """TKANRecurrence's backward: from dL/dh (T, B, u) and what the forward kept, the gradients
    of its tensor inputs (gates_x, kan_x and the weights, in its order)."""
    T, B, u = h_all.shape
    d = s_all.shape[-1]
    w1, w2 = sub_kernel[:d], sub_kernel[d:]
    # Everything that does not depend on the carried gradients, for all steps at once.
    zeros_u = c_all.new_zeros(1, B, u)
    c_prev = torch.cat([zeros_u, c_all[:-1]])
    tanh_c = torch.tanh(c_all)
    to_gate = tanh_c * o_all * (1 - o_all)  # dL/d(output gate pre-activation) per dL/dh
    to_cell = o_all * (1 - tanh_c * tanh_c)  # dL/dc per dL/dh
    i_g, f_g, cand = gates_all.chunk(3, dim=-1)
    tanh_cand = torch.tanh(cand)
    # dL/d(gate pre-activations) per dL/dc, for i, f and the candidate, stacked (T, B, 3, u).
    to_gates = (torch.stack([tanh_cand, c_prev, i_g * (1 - tanh_cand * tanh_cand)], dim=2)
                * (gates_all * (1 - gates_all)).view(T, B, 3, u))
    mean = q_all.mean(-1, keepdim=True)
    rstd = torch.rsqrt(q_all.var(-1, unbiased=False, keepdim=True) + LN_EPS)
    zhat = (q_all - mean) * rstd

    weights_t = (w1, w2, ln_w, w_agg.t(), w_kan.t(), w_sub.t(), w_rec.t())
    d_out_gate, d_k, d_s, d_z, d_q, d_gates = (
        g.flatten(0, 1) for g in backward_loop(grad_h, to_gate, to_cell, slopes, rstd, zhat, to_gates, f_g, *weights_t))
    # Each weight gradient is one product over all (step, row) pairs.
    rows = T * B
    h_prev = torch.cat([zeros_u, h_all[:-1]]).view(rows, u)
    s_prev = torch.cat([s_all.new_zeros(1, B, d), s_all[:-1]]).view(rows, d)
    k_flat = k_all.view(rows, d)
    grad_w_rec = h_prev.t() @ d_gates
    grad_ln_w = (d_z * zhat.view(rows, d)).sum(0)
    grad_ln_b = d_z.sum(0)
    grad_w_kan = features.view(rows, -1).t() @ d_k
    grad_b_kan = d_k.sum(0)
    grad_sub_kernel = torch.cat([(k_flat * d_s).sum(0), (s_prev * d_s).sum(0)])
    grad_w_sub = s_prev.t() @ d_q
    grad_w_agg = k_flat.t() @ d_out_gate
    grad_b_agg = d_out_gate.sum(0)
    return (d_gates.view(T, B, 3 * u), d_q.view(T, B, d), grad_w_rec, grad_ln_w, grad_ln_b, grad_w_kan,
            grad_b_kan, grad_sub_kernel, grad_w_sub, grad_w_agg, grad_b_agg)


@dataclass(frozen=True)
class RecurrenceLoops:
    """The loops the recurrence runs: eager, or compiled (:meth:`compiled`)."""

    forward: Callable[..., tuple[torch.Tensor, ...]] = forward_loop
    backward: Callable[..., tuple[torch.Tensor, ...]] = recurrence_backward

    @classmethod
    def compiled(cls) -> RecurrenceLoops:
        """The forward loop and the whole backward, each unrolled over its T steps as one
        ``torch.compile`` graph: the hundreds of small operations of all steps fused into a few
        kernels per step, with one Python call instead of one per operation. Shapes are fixed
        (one graph per batch size and T, reused by every layer of that width)."""
        return cls(torch.compile(forward_loop, dynamic=False), torch.compile(recurrence_backward, dynamic=False))


class TKANRecurrence(torch.autograd.Function):
    """The TKAN recurrence over T steps as one autograd node, time-major: (T, B, .) in and out.

    Per step, with the input terms gx = x W_k + b and kx = x W_si precomputed:
        i, f, c~ = sigmoid(gx + h W_r);  c = f c + i tanh(c~)
        k = KAN(kx + s W_ss);  s = w1 k + w2 s;  h = sigmoid(k W_a + b_a) tanh(c)
    where KAN(q) = kan_terms(LN(q)) W + b with the basis-major weight.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, loops, gates_x, kan_x, w_rec, ln_w, ln_b, w_kan, b_kan, sub_kernel, w_sub, w_agg, b_agg):
        out, *kept = loops.forward(gates_x, kan_x, w_rec, ln_w, ln_b, w_kan, b_kan, sub_kernel, w_sub, w_agg, b_agg,
                                   keep=True)
        ctx.backward = loops.backward
        ctx.save_for_backward(out, *kept, w_rec, ln_w, w_kan, sub_kernel, w_sub, w_agg)
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_h):
        # Contiguous: the upstream gradient's layout varies, and a compiled backward is fixed to one.
        return (None, *ctx.backward(grad_h.contiguous(), *ctx.saved_tensors))
