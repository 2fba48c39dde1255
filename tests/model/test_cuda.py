"""The CUDA paths against the CPU ones: the fused TKAN recurrence and the whole model on the GPU
equal the CPU in float64, the compiled model equals eager, bf16 autocast keeps the output
contract (feasible, causal, near float32; inference computes what training computes), and a
train run replayed as CUDA graphs equals the eager run.

They need a GPU, so they are skipped where there is none (CI, the 2-core box); a session lent
one runs them with benchmarks/cuda_session.sh, which records the outcome in its log.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.data import TensorDataset

from lem_model import LargeExecutionModel
from lem_model.cuda_graphs import GraphedTrainStep
from lem_model.loss import lem_loss
from lem_model.train import NonFiniteLossError, TrainConfig, adam, make_train_step, seed_everything, train
from tests.model.test_model_behaviour import TINY, inputs, scrambled
from tests.model.test_tkan_recurrence import grads, reference_tkan, scrambled_layer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")
GATE = dataclasses.replace(TINY, finish_gate=True, fused_init="independent")


def rates(batch: int, device: torch.device | str = "cpu", dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.full((batch,), 1 / TINY.n_ahead**2, device=device, dtype=dtype),
            torch.ones(batch, device=device, dtype=dtype))


def targets(batch: int, seed: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    vol = torch.rand(batch, TINY.n_ahead, generator=g, dtype=torch.float64).to(dtype)
    px = (1 + 0.01 * torch.randn(batch, TINY.n_ahead, generator=g, dtype=torch.float64).cumsum(1)).to(dtype)
    return vol, px


def alloc_and_grads(model: LargeExecutionModel, x, lo, hi, vol, px) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    alloc = model(x, lo, hi)
    lem_loss(alloc, vol, px).backward()
    return alloc.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["float64", "float32"])
def test_fused_recurrence_on_cuda_equals_the_reference_cell_on_cpu(dtype, tol):
    layer = scrambled_layer(8, 8, dtype, seed=3)
    g = torch.Generator().manual_seed(1)
    x = 2 * torch.randn(5, 9, 8, generator=g, dtype=torch.float64).to(dtype)
    upstream = torch.randn(5, 9, 8, generator=g, dtype=torch.float64).to(dtype)
    ref_out, ref_p_grads, ref_x_grad = grads(layer, x, upstream, lambda v: reference_tkan(layer, v))
    layer.to(CUDA)
    out, p_grads, x_grad = grads(layer, x.to(CUDA), upstream.to(CUDA), layer)
    torch.testing.assert_close(out.cpu(), ref_out, atol=tol, rtol=0)
    torch.testing.assert_close(x_grad.cpu(), ref_x_grad, atol=tol, rtol=tol)
    for name, grad in p_grads.items():
        torch.testing.assert_close(grad.cpu(), ref_p_grads[name], atol=tol, rtol=tol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("cfg", [TINY, GATE], ids=["reference-allocator", "finish-gate"])
def test_model_on_cuda_equals_the_cpu_in_float64(cfg):
    model = scrambled(cfg, 4, scale=0.1, dtype=torch.float64)
    x = inputs(cfg, 6, 4).double()
    vol, px = targets(6, 4, torch.float64)
    cpu_alloc, cpu_grads = alloc_and_grads(model, x, *rates(6, dtype=torch.float64), vol, px)
    model.to(CUDA)
    alloc, cuda_grads = alloc_and_grads(model, x.to(CUDA), *rates(6, CUDA, torch.float64), vol.to(CUDA), px.to(CUDA))
    torch.testing.assert_close(alloc.cpu(), cpu_alloc, atol=1e-10, rtol=0)
    for name, grad in cuda_grads.items():
        torch.testing.assert_close(grad.cpu(), cpu_grads[name], atol=1e-9, rtol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
    assert sum(int(g.abs().max() > 0) for g in cpu_grads.values()) > len(cpu_grads) // 2


def test_compiled_model_on_cuda_equals_eager():
    eager = scrambled(TINY, 0, scale=0.1).to(CUDA)
    compiled = LargeExecutionModel(TINY).to(CUDA)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile()
    x = inputs(TINY, 6, 2).to(CUDA)
    vol, px = (t.to(CUDA) for t in targets(6, 2))
    allocs, grads_ = zip(*(alloc_and_grads(m, x, *rates(6, CUDA), vol, px) for m in (eager, compiled)))
    torch.testing.assert_close(allocs[1], allocs[0], atol=1e-5, rtol=0)
    for name, grad in grads_[0].items():
        torch.testing.assert_close(grads_[1][name], grad, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("cfg", [TINY, GATE], ids=["reference-allocator", "finish-gate"])
def test_bf16_autocast_keeps_the_output_contract(cfg):
    """What training runs on a GPU: bf16 autocast with the recurrence in float32 (validation,
    evaluation and serving run in float32)."""
    model = scrambled(cfg, 5, scale=0.1).to(CUDA)
    x = inputs(cfg, 8, 5).to(CUDA)
    lo, hi = rates(8, CUDA)
    with torch.no_grad():
        full = model(x, lo, hi)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            alloc = model(x, lo, hi).float()
            later = x.clone()
            later[:, cfg.lookback + 1:] += torch.randn_like(later[:, cfg.lookback + 1:])
            changed = model(later, lo, hi).float()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        trained = model(x, lo, hi).float()  # the autograd path (TKANRecurrence) that training runs
    assert (alloc >= 0).all() and torch.allclose(alloc.sum(1), torch.ones_like(alloc.sum(1)), atol=1e-3)
    torch.testing.assert_close(trained.detach(), alloc, atol=1e-6, rtol=0)  # inference = training
    assert (alloc - full).abs().max() < 3e-2, "bf16 drifted far from float32"
    # Causal: steps 0 and 1 read rows up to lookback, so a change after it leaves them equal.
    assert torch.equal(changed[:, :2], alloc[:, :2])
    assert not torch.equal(changed[:, 2:], alloc[:, 2:])


def windows(n: int, seed: int, poison_batch: int | None = None, batch_size: int = 32) -> TensorDataset:
    x = inputs(TINY, n, seed)
    vol, px = targets(n, seed)
    if poison_batch is not None:
        x[poison_batch * batch_size, 0, 0] = float("nan")
    return TensorDataset(x, vol, px)


def test_training_replayed_as_cuda_graphs_equals_eager_training(tmp_path):
    """Two epochs of 80 windows at batch 32: full batches replay the graph, the last 16 run
    eagerly; the warm-up before capture is undone, so the weights and the history match."""
    runs = []
    for graphs in (False, True):
        seed_everything(0)
        model = LargeExecutionModel(GATE)
        cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-3, device="cuda", cuda_graphs=graphs, progress=False,
                          objective="aligned")
        result = train(model, windows(80, 1), windows(40, 2), cfg, tmp_path / str(graphs), resume=False)
        runs.append((model.state_dict(), result.history))
    (eager, eager_history), (graphed, graphed_history) = runs
    # Within bf16's reach (the capturable Adam rounds its bias correction on the device), far
    # below what a wrong step would leave: six Adam steps at 1e-3 move weights by about 6e-3.
    for name, value in eager.items():
        torch.testing.assert_close(graphed[name], value, atol=1e-4, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}")
    for g, e in zip(graphed_history, eager_history):
        assert g["loss"] == pytest.approx(e["loss"], abs=1e-4) and g["val_loss"] == pytest.approx(e["val_loss"], abs=1e-4)
    assert not torch.equal(eager["base_volume_curve"], LargeExecutionModel(GATE).to(CUDA).base_volume_curve)


def test_a_learning_rate_cut_reaches_the_replayed_step():
    """The plateau scheduler writes the rate in place; at rate 0 a replay moves no weight."""
    model = scrambled(TINY, 6, scale=0.1).to(CUDA).train()
    optimizer = adam(model.parameters(), 1e-2, capturable_on=CUDA)
    graphed = GraphedTrainStep(make_train_step(model, optimizer, TrainConfig(), CUDA), model, optimizer)
    batch = [t.to(CUDA) for t in windows(16, 3).tensors]
    before = [p.detach().clone() for p in model.parameters()]
    graphed(batch)
    assert any(not torch.allclose(p, b, atol=1e-5) for p, b in zip(model.parameters(), before))
    moved = [p.detach().clone() for p in model.parameters()]
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.0, patience=0, eps=0.0)
    scheduler.step(1.0)
    scheduler.step(2.0)  # no improvement: the rate is cut to 0, in place
    assert float(optimizer.param_groups[0]["lr"]) == 0.0
    graphed(batch)
    for p, m in zip(model.parameters(), moved):
        torch.testing.assert_close(p, m, atol=1e-6, rtol=0)


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphed"])
def test_a_non_finite_loss_on_cuda_names_its_batch(tmp_path, graphs):
    cfg = TrainConfig(epochs=1, batch_size=32, device="cuda", cuda_graphs=graphs, progress=False)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at epoch 1, batch 2"):
        train(LargeExecutionModel(TINY), SequentialWindows(windows(128, 4, poison_batch=2)), windows(32, 5), cfg,
              tmp_path, resume=False)


class SequentialWindows(torch.utils.data.Dataset):
    """Windows served in order whatever index the shuffling sampler asks for, so the poisoned
    window lands in a known batch."""

    def __init__(self, data: TensorDataset) -> None:
        self.data, self.calls = data, 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        item = self.data[self.calls % len(self.data)]
        self.calls += 1
        return item


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "cuda-graphs"])
def test_a_cuda_training_resumes_from_its_saved_epoch(tmp_path, graphs):
    """The state is loaded onto the GPU (the optimiser's device tensors); the generators' state
    comes back to the host. Resumed after epoch 1, the run ends where an uninterrupted one does."""
    cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-3, device="cuda", cuda_graphs=graphs, progress=False,
                      objective="aligned")
    seed_everything(0)
    straight = LargeExecutionModel(GATE)
    full = train(straight, windows(80, 1), windows(40, 2), cfg, tmp_path / "a", resume=False)
    seed_everything(0)
    partial = train(LargeExecutionModel(GATE), windows(80, 1), windows(40, 2), cfg, tmp_path / "b",
                    stop_after_epochs=1)
    assert len(partial.history) == 1
    seed_everything(5)
    resumed_model = LargeExecutionModel(GATE)  # another init: everything must come from the state
    resumed = train(resumed_model, windows(80, 1), windows(40, 2), cfg, tmp_path / "b")
    assert resumed.resumed_from_epoch == 1 and len(resumed.history) == 2
    for r, f in zip(resumed.history, full.history):
        assert r["val_loss"] == pytest.approx(f["val_loss"], abs=1e-4)
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[name], value, atol=1e-4, rtol=1e-3)
