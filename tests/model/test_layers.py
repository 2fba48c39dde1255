"""Layer shapes, the B-spline basis, and parameter counts equal to the reference's."""

from __future__ import annotations

import torch

from lem_model import LargeExecutionModel
from lem_model.config import PAPER, SMALL
from lem_model.layers import GRN, CausalSelfAttention, FeatureEmbedding, FusedMLP, VariableSelection
from lem_model.tkan import TKAN, KANLinear, basis_centres, bspline_bases, spline_knots, spline_terms


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def cox_de_boor(z: torch.Tensor, knots: torch.Tensor, order: int = 3) -> torch.Tensor:
    """The reference's B-spline bases, by the Cox-de Boor recursion on half-open knot intervals."""
    g = knots.to(z.dtype)
    x = z.unsqueeze(-1)
    b = ((x >= g[:-1]) & (x < g[1:])).to(z.dtype)
    for p in range(1, order + 1):
        left = (x - g[: -(p + 1)]) / (g[p:-1] - g[: -(p + 1)]) * b[..., :-1]
        right = (g[p + 1 :] - x) / (g[p + 1 :] - g[1:-p]) * b[..., 1:]
        b = left + right
    return b


def test_closed_form_bases_and_slopes_equal_the_cox_de_boor_recursion():
    knots = torch.linspace(-3, 3, 10, dtype=torch.float64)
    assert torch.allclose(spline_knots().double(), knots)
    z = torch.cat([torch.linspace(-4, 4, 8001, dtype=torch.float64), knots]).view(-1, 1)  # every knot exactly
    bases, slopes = spline_terms(z, basis_centres(z), slopes=True)  # (n, 6, 1): basis major
    bases = bases.transpose(-1, -2)
    torch.testing.assert_close(bases, cox_de_boor(z, knots), atol=1e-12, rtol=0)
    step = 1e-6  # the slopes are the derivative of the bases (central differences, off the knots)
    off_knots = z[:8001][(z[:8001] - knots.view(1, -1)).abs().min(-1).values > 1e-3].view(-1, 1)
    numeric = (bspline_bases(off_knots + step) - bspline_bases(off_knots - step)) / (2 * step)
    _, analytic = spline_terms(off_knots, basis_centres(off_knots), slopes=True)
    torch.testing.assert_close(analytic.transpose(-1, -2), numeric, atol=1e-6, rtol=0)
    assert (bases[:, 0][z[:, 0] < -3] == 0).all() and (bases[z[:, 0] >= 3] == 0).all()


def test_bspline_partition_of_unity():
    inside = torch.linspace(-1, 0.9999, 1001).view(-1, 1)
    b = bspline_bases(inside)
    assert b.shape == (1001, 1, 6)
    assert torch.allclose(b.sum(-1), torch.ones(1001, 1), atol=1e-6)
    assert (b >= 0).all()
    outside = torch.tensor([[-3.5], [-3.0001], [3.0], [3.2], [10.0]])
    assert (bspline_bases(outside) == 0).all()
    between = torch.tensor([[-2.0], [2.0]])  # inside the knots but outside the grid: partial sums
    assert (bspline_bases(between).sum(-1) < 1).all()


def test_kan_linear_shapes_and_parameters():
    kan = KANLinear(5, 3)
    assert kan(torch.randn(4, 7, 5)).shape == (4, 7, 3)
    assert n_params(kan) == 5 * 3 + 3 + 6 * 5 * 3 + 2 * 5


def test_tkan_parameter_count_and_sequence_output():
    for H in (8, 32, 200):
        assert n_params(TKAN(H, H)) == 16 * H * H + 9 * H
    layer = TKAN(8, 8)
    assert layer(torch.randn(3, 11, 8)).shape == (3, 11, 8)


def test_block_shapes():
    x = torch.randn(2, 9, 6)
    assert GRN(6, 16, 4)(x).shape == (2, 9, 4)
    emb = FeatureEmbedding(6, 5)(x)
    assert emb.shape == (2, 9, 5, 6)
    out, w = VariableSelection(6, 5, 16)(emb)
    assert out.shape == (2, 9, 16) and w.shape == (2, 9, 6)
    assert torch.allclose(w.sum(-1), torch.ones(2, 9), atol=1e-6)
    assert CausalSelfAttention(16, 4)(out).shape == (2, 9, 16)
    f = FusedMLP(13, 20, 8)(torch.randn(2, 13, 20))
    assert f.shape == (2, 13, 8) and (f.abs() < 1).all()


def test_fused_paths_start_identical_as_the_reference():
    mlp = FusedMLP(4, 10, 6)
    out = mlp(torch.randn(3, 1, 10).expand(3, 4, 10))
    assert torch.allclose(out, out[:, :1, :1].expand_as(out))
    independent = FusedMLP(4, 10, 6, tiled_init=False)(torch.randn(3, 1, 10).expand(3, 4, 10))
    assert not torch.allclose(independent, independent[:, :1, :1].expand_as(independent))


def test_attention_is_causal():
    att = CausalSelfAttention(16, 4)
    x = torch.randn(2, 10, 16)
    y = x.clone()
    y[:, 6:] += 1.0
    assert torch.equal(att(x)[:, :6], att(y)[:, :6])
    assert not torch.allclose(att(x)[:, 6:], att(y)[:, 6:])


def test_whole_model_parameter_counts_equal_the_reference():
    assert LargeExecutionModel(SMALL).num_parameters() == 6_081_104
    assert LargeExecutionModel(PAPER).num_parameters() == 48_466_676


def test_fused_head_holds_the_bulk_of_the_paper_model():
    m = LargeExecutionModel(PAPER)
    fused = sum(n_params(a) for a in m.allocators)
    assert fused == 45_761_144  # 8 J sum_s [(F_s+1) Hf + (Hf+1) Hf + Hf + 1]
