"""KANLinear (B-spline efficient-KAN) and the TKAN recurrent layer, computed exactly as the
reference (docs/DESIGN.md, "The reference, as specified")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lem_model.initializers import glorot_uniform_, orthogonal_
from lem_model.vocabulary import LN_EPS
GRID_SIZE = 3
SPLINE_ORDER = 3
GRID_RANGE = (-1.0, 1.0)


def spline_knots(grid_size: int = GRID_SIZE, order: int = SPLINE_ORDER, grid_range=GRID_RANGE) -> torch.Tensor:
    """The fixed knot vector: linspace(-1 - k*h, 1 + k*h, G + 2k + 1), i.e. [-3, 3] for G=k=3."""
    h = (grid_range[1] - grid_range[0]) / grid_size
    return torch.linspace(grid_range[0] - order * h, grid_range[1] + order * h, grid_size + 2 * order + 1)


def bspline_bases(z: torch.Tensor, knots: torch.Tensor, order: int = SPLINE_ORDER) -> torch.Tensor:
    """Cox-de Boor recursion: (..., d) -> (..., d, G + k) bases; all zero outside the knot range."""
    g = knots.to(z.dtype)
    x = z.unsqueeze(-1)
    b = ((x >= g[:-1]) & (x < g[1:])).to(z.dtype)  # (..., d, 9) degree-0 indicators, half-open
    for p in range(1, order + 1):
        left = (x - g[: -(p + 1)]) / (g[p:-1] - g[: -(p + 1)]) * b[..., :-1]
        right = (g[p + 1 :] - x) / (g[p + 1 :] - g[1:-p]) * b[..., 1:]
        b = left + right
    return b


class KANLinear(nn.Module):
    """out = relu(LN(x)) @ W_base + b + B(LN(x)) @ W_spline, fused into one matmul.

    The base and spline weights are kept as one (d_in * (1 + G + k), d_out) matrix whose rows are
    [relu inputs; spline bases feature-major], so a step of the recurrence costs a single GEMM.
    """

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.n_bases = GRID_SIZE + SPLINE_ORDER
        self.norm = nn.LayerNorm(d_in, eps=LN_EPS)
        self.register_buffer("knots", spline_knots(), persistent=False)
        self.weight = nn.Parameter(torch.empty(d_in * (1 + self.n_bases), d_out))
        self.bias = nn.Parameter(torch.zeros(d_out))
        glorot_uniform_(self.weight[:d_in], d_in, d_out)
        glorot_uniform_(self.weight[d_in:], d_in * self.n_bases, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.norm(x)
        bases = bspline_bases(z, self.knots).flatten(-2)  # (..., d_in * 6), column i*6 + m
        return torch.cat([F.relu(z), bases], dim=-1) @ self.weight + self.bias


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        # Input terms for every step in one matmul each; unbind (not x[:, t]) so that backward
        # stacks the step gradients once instead of filling a (B, T, .) zero tensor per step.
        gates_x = (x @ self.kernel + self.bias).unbind(1)  # T x (B, 3u)
        kan_x = (x @ self.sub_recurrent_inputs).unbind(1)  # T x (B, d)
        h = x.new_zeros(B, self.units)
        c = x.new_zeros(B, self.units)
        s = x.new_zeros(B, self.d_in)
        outputs = []
        for t in range(T):
            h, c, s = self.cell(gates_x[t], kan_x[t], h, c, s)
            outputs.append(h)
        return torch.stack(outputs, dim=1)  # (B, T, u)

    def cell(self, gates_x: torch.Tensor, kan_x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, s: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step: (h, c, s~) -> new states, given the step's precomputed input terms."""
        i, f, cand = torch.sigmoid(gates_x + h @ self.recurrent_kernel).chunk(3, dim=-1)
        c = f * c + i * torch.tanh(cand)
        kan_out = self.sub_kan(kan_x + s @ self.sub_recurrent_states)  # (B, d)
        s = self.sub_kernel[: self.d_in] * kan_out + self.sub_kernel[self.d_in :] * s
        o = torch.sigmoid(kan_out @ self.aggregated_weight + self.aggregated_bias)
        return o * torch.tanh(c), c, s
