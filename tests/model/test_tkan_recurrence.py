"""The TKAN recurrence's hand-written backward (lem_model.tkan.TKANRecurrence) against the plain
step-by-step autograd spelling of the reference's cell: same outputs and same gradients for
every parameter and the input, to rounding in float64 and within 1e-5 in float32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lem_model import LargeExecutionModel
from lem_model.loss import lem_loss
from lem_model.tkan import TKAN
from lem_model.vocabulary import LN_EPS
from tests.model.test_layers import cox_de_boor
from tests.model.test_model_behaviour import TINY, inputs, scrambled


def reference_tkan(layer: TKAN, x: torch.Tensor) -> torch.Tensor:
    """The reference's TKAN cell, one autograd op at a time (the code this repo ran before the
    fused recurrence): B-splines by Cox-de Boor, KAN weight in its checkpoint row order."""
    kan, d = layer.sub_kan, layer.d_in
    knots = torch.linspace(-3, 3, 10, dtype=torch.float64)  # exact knots, so float64 compares to rounding
    B, T, _ = x.shape
    h = x.new_zeros(B, layer.units)
    c = x.new_zeros(B, layer.units)
    s = x.new_zeros(B, d)
    outputs = []
    for t in range(T):
        xt = x[:, t]
        i, f, cand = torch.sigmoid(xt @ layer.kernel + layer.bias + h @ layer.recurrent_kernel).chunk(3, dim=-1)
        c = f * c + i * torch.tanh(cand)
        z = F.layer_norm(xt @ layer.sub_recurrent_inputs + s @ layer.sub_recurrent_states, (d,), kan.norm.weight,
                         kan.norm.bias, LN_EPS)
        k = torch.cat([F.relu(z), cox_de_boor(z, knots).flatten(-2)], dim=-1) @ kan.weight + kan.bias
        s = layer.sub_kernel[:d] * k + layer.sub_kernel[d:] * s
        h = torch.sigmoid(k @ layer.aggregated_weight + layer.aggregated_bias) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs, dim=1)


def scrambled_layer(d: int, units: int, dtype: torch.dtype, seed: int) -> TKAN:
    """A layer whose every parameter is off its initial value (LN scale and shift included), so
    no gradient path is tested at a trivial point."""
    torch.manual_seed(seed)
    layer = TKAN(d, units).to(dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


def grads(layer: TKAN, x: torch.Tensor, upstream: torch.Tensor, forward) -> tuple[torch.Tensor, dict, torch.Tensor]:
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    out = forward(x)
    (out * upstream).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in layer.named_parameters()}, x.grad


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("d, units", [(8, 8), (6, 10)])
def test_fused_recurrence_equals_the_step_by_step_reference(dtype, tol, d, units):
    layer = scrambled_layer(d, units, dtype, seed=d + units)
    g = torch.Generator().manual_seed(1)
    x = 2 * torch.randn(5, 9, d, generator=g, dtype=torch.float64).to(dtype)  # wide enough to leave the grid
    upstream = torch.randn(5, 9, units, generator=g, dtype=torch.float64).to(dtype)
    out, p_grads, x_grad = grads(layer, x, upstream, layer)
    ref_out, ref_p_grads, ref_x_grad = grads(layer, x, upstream, lambda v: reference_tkan(layer, v))
    torch.testing.assert_close(out, ref_out, atol=tol, rtol=0)
    torch.testing.assert_close(x_grad, ref_x_grad, atol=tol, rtol=tol)
    assert p_grads.keys() == ref_p_grads.keys() and len(p_grads) == 12
    for name, grad in p_grads.items():
        torch.testing.assert_close(grad, ref_p_grads[name], atol=tol, rtol=tol, msg=lambda m, n=name: f"{n}: {m}")
        assert grad.abs().max() > 1e-3, f"{name}: a zero gradient tests nothing"
    with torch.no_grad():  # inference takes the loop without the backward's bookkeeping
        assert torch.equal(layer(x), out)


def test_compiled_model_equals_eager_allocations_and_gradients():
    """LargeExecutionModel.compile (torch.compile of the model and of each TKAN loop whole): the same
    allocations within 1e-5 and the same gradients, in training and in inference."""
    eager = scrambled(TINY, 0, scale=0.1)
    compiled = LargeExecutionModel(TINY)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile()
    g = torch.Generator().manual_seed(2)
    x = inputs(TINY, 6, 2)
    vol, px = torch.rand(6, TINY.n_ahead, generator=g), 1 + 0.01 * torch.randn(6, TINY.n_ahead, generator=g)
    rates = (torch.full((6,), 1 / 16), torch.ones(6))
    allocs = []
    for model in (eager, compiled):
        alloc = model(x, *rates)
        lem_loss(alloc, vol, px).backward()
        allocs.append(alloc.detach())
        with torch.no_grad():
            torch.testing.assert_close(model(x, *rates), alloc.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(allocs[1], allocs[0], atol=1e-5, rtol=0)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    assert any(p.grad.abs().max() > 0 for p in eager.rnn.parameters())
