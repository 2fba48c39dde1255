"""The fixed-shape train step captured once as a CUDA graph and replayed per batch.

A LEM train step is thousands of small kernels (two TKAN layers x L + N - 1 steps, forward and
backward, then N - 1 allocator steps), so on a GPU the host's launches, not the arithmetic, set
its pace. A CUDA graph records those launches once and replays them with one call
(torch.cuda.graphs: warm up on a side stream, capture, then copy each batch into the captured
input tensors and replay). The arithmetic is the eager step's: tests/model/test_cuda.py
compares the weights after graphed and eager training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class GraphedTrainStep:
    """``step(x, volumes, prices) -> loss`` (lem_model.train.make_train_step: forward to
    constraint projection, gradients zeroed by the caller) captured for batches shaped like
    ``example``.

    Capturing needs a few warm-up steps, which would train the model; they are undone (weights
    and optimiser state restored in place, since the graph holds those very tensors), so a
    graphed run trains on exactly the batches an eager one does. The optimiser must be
    capturable (lem_model.train.adam(..., capturable_on=device)).
    """

    WARMUP_STEPS = 3  # what torch.cuda.graphs asks for before capture (lazy init, cuBLAS workspaces)

    def __init__(self, step: Callable[..., torch.Tensor], model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer) -> None:
        self.step, self.model, self.optimizer = step, model, optimizer
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: list[torch.Tensor] = []
        self.loss: torch.Tensor | None = None

    def fits(self, batch: Sequence[torch.Tensor]) -> bool:
        """Whether ``batch`` has the captured shapes (always, before the first capture)."""
        return not self.inputs or all(t.shape == s.shape for t, s in zip(batch, self.inputs))

    def __call__(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """Train on ``batch``; the returned loss tensor is overwritten by the next replay."""
        if self.graph is None:
            self._capture(batch)
        for captured, t in zip(self.inputs, batch):
            captured.copy_(t, non_blocking=True)
        self.graph.replay()
        return self.loss

    def _capture(self, example: Sequence[torch.Tensor]) -> None:
        params = list(self.model.parameters())
        saved = self._training_state(params)
        self.inputs = [t.detach().clone() for t in example]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP_STEPS):
                self.optimizer.zero_grad(set_to_none=True)
                self.step(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        # The captured backward allocates the gradients, which every replay then overwrites.
        self.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.loss = self.step(*self.inputs)
        self._restore(params, saved)

    def _training_state(self, params: list[torch.Tensor]) -> dict:
        with torch.no_grad():
            return {"params": [p.detach().clone() for p in params],
                    "optimizer": {p: {k: v.detach().clone() for k, v in self.optimizer.state[p].items()
                                      if torch.is_tensor(v)}
                                  for p in params if p in self.optimizer.state}}

    @torch.no_grad()
    def _restore(self, params: list[torch.Tensor], saved: dict) -> None:
        """Back to the state before the warm-up, in place. Optimiser state the warm-up created
        is zeroed: Adam's moments and step count start at zero, so that equals a fresh one."""
        for p, before in zip(params, saved["params"]):
            p.copy_(before)
        for p in params:
            before = saved["optimizer"].get(p, {})
            for k, v in self.optimizer.state[p].items():
                if torch.is_tensor(v):
                    v.copy_(before[k]) if k in before else v.zero_()
