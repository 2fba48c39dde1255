"""Training as the paper's section 3.4: Adam, batch 256, shuffled, early stopping on the
validation loss (patience 2, best weights restored), LR reduced on plateau (patience 1),
trading rates in [1/N^2, 1].

Data-parallel under ``torchrun`` (DDP with a DistributedSampler; rank 0 logs and checkpoints).
Every epoch ends with a checkpoint holding everything needed to resume exactly: model,
optimiser, scheduler, early-stopping state, best weights and RNG states. The shuffle order is a
function of (seed, epoch), so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler
from tqdm import tqdm

from lem_model.fileio import atomic_write
from lem_model.loss import lem_loss
from lem_model.metrics import METRIC_NAMES, execution_metrics
from lem_model.model import LargeExecutionModel

CHECKPOINT = "last.pt"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-5
    early_stop_patience: int = 2
    lr_patience: int = 1
    lr_factor: float = 0.1  # Keras ReduceLROnPlateau's default
    grad_clip: float = 1.0
    seed: int = 0
    min_rate: float | None = None  # None: 1 / N^2, as the paper
    max_rate: float = 1.0
    loss_alpha: float = 50.0
    device: str = "auto"  # "auto": CUDA when available
    compile_recurrence: bool = False
    progress: bool = True


class NonFiniteLossError(RuntimeError):
    """Training met a NaN or inf loss; the last good checkpoint is kept untouched."""


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = math.inf
    stopped_early: bool = False
    device: str = "cpu"


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: torch.device) -> _Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; a plain run is a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return _Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; float32 on the CPU (bf16 matmuls are slower than fp32 there)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rates(batch: int, n_ahead: int, cfg: TrainConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    lo = cfg.min_rate if cfg.min_rate is not None else 1.0 / n_ahead**2
    return torch.full((batch,), lo, device=device), torch.full((batch,), cfg.max_rate, device=device)


def unwrap(model: torch.nn.Module) -> LargeExecutionModel:
    """The plain module behind a DDP wrapper."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def evaluate_loss(model: torch.nn.Module, loader: DataLoader, cfg: TrainConfig, device: torch.device,
                  dist_info: _Dist) -> dict[str, float]:
    """Validation loss and the reference metrics, batch means weighted by batch size (as Keras)."""
    model.eval()
    n_ahead = unwrap(model).cfg.n_ahead
    totals = torch.zeros(1 + len(METRIC_NAMES), dtype=torch.float64)
    count = torch.zeros(1, dtype=torch.float64)
    with torch.no_grad():
        for x, vol, px in loader:
            x, vol, px = x.to(device), vol.to(device), px.to(device)
            lo, hi = rates(len(x), n_ahead, cfg, device)
            with autocast(device):
                alloc = model(x, lo, hi)
            alloc = alloc.float()
            loss = lem_loss(alloc, vol, px, cfg.loss_alpha).item()
            m = execution_metrics(alloc.double(), vol.double(), px.double())
            totals += len(x) * torch.tensor([loss, *[m[k] for k in METRIC_NAMES]], dtype=torch.float64)
            count += len(x)
    if dist_info.world > 1:
        dist.all_reduce(totals)
        dist.all_reduce(count)
    values = (totals / count.clamp(min=1)).tolist()
    return {"val_loss": values[0], **{f"val_{k}": v for k, v in zip(METRIC_NAMES, values[1:])}}


def train(
    model: LargeExecutionModel,
    train_set: Dataset,
    val_set: Dataset,
    cfg: TrainConfig,
    checkpoint_dir: str | Path,
    *,
    resume: bool = True,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    stop_after_epochs: int | None = None,
) -> TrainResult:
    """Train ``model`` in place; it ends holding the best validation weights.

    ``on_epoch_end(epoch, metrics)`` runs on rank 0 only (MLflow logging lives there, outside
    this package). ``stop_after_epochs`` ends this call early, as a crash would, for resume tests.
    """
    if len(val_set) == 0 or len(train_set) == 0:
        raise ValueError(f"training needs windows in both splits: {len(train_set)} train, {len(val_set)} validation")
    device = resolve_device(cfg.device)
    dist_info = _init_distributed(device)
    ckpt_dir = Path(checkpoint_dir)
    if dist_info.main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    model.to(device)
    if cfg.compile_recurrence:
        model.compile_recurrence()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.lr_factor,
                                                           patience=cfg.lr_patience)
    result = TrainResult(device=str(device))
    state = {"epoch": -1, "bad_epochs": 0, "best_state": None}
    ckpt_path = ckpt_dir / CHECKPOINT
    if resume and ckpt_path.exists():
        saved = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = {"epoch": saved["epoch"], "bad_epochs": saved["bad_epochs"], "best_state": saved["best_state"]}
        result.history, result.best_epoch, result.best_val_loss = saved["history"], saved["best_epoch"], saved["best_val_loss"]
        torch.set_rng_state(saved["rng"]["torch"])
        np.random.set_state(saved["rng"]["numpy"])
        random.setstate(saved["rng"]["python"])
    net: torch.nn.Module = model
    if dist_info.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    val_sampler = DistributedSampler(val_set, shuffle=False) if dist_info.world > 1 else SequentialSampler(val_set)
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, sampler=val_sampler)
    n_ahead = model.cfg.n_ahead
    first_epoch = state["epoch"] + 1
    for epoch in range(first_epoch, cfg.epochs):
        if stop_after_epochs is not None and epoch - first_epoch >= stop_after_epochs:
            return result
        if dist_info.world > 1:
            sampler = DistributedSampler(train_set, shuffle=True, seed=cfg.seed)
            sampler.set_epoch(epoch)
        else:  # the order depends on (seed, epoch) only, so a resumed run sees the same batches
            sampler = RandomSampler(train_set, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler)
        net.train()
        seen, loss_sum = 0, 0.0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", file=sys.stderr,
                   disable=not (cfg.progress and dist_info.main))
        for b, (x, vol, px) in enumerate(bar):
            x, vol, px = x.to(device), vol.to(device), px.to(device)
            lo, hi = rates(len(x), n_ahead, cfg, device)
            with autocast(device):
                alloc = net(x, lo, hi)
            loss = lem_loss(alloc.float(), vol, px, cfg.loss_alpha)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, batch {b}; training stopped. "
                    f"The last good checkpoint is {ckpt_path if ckpt_path.exists() else 'none (first epoch)'}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            model.project_constraints()
            seen += len(x)
            loss_sum += loss.item() * len(x)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
        train_loss = torch.tensor([loss_sum, seen], dtype=torch.float64)
        if dist_info.world > 1:
            dist.all_reduce(train_loss)
        metrics = {"loss": float(train_loss[0] / train_loss[1]), **evaluate_loss(net, val_loader, cfg, device, dist_info),
                   "lr": optimizer.param_groups[0]["lr"]}
        scheduler.step(metrics["val_loss"])
        improved = metrics["val_loss"] < result.best_val_loss
        if improved:
            result.best_val_loss, result.best_epoch = metrics["val_loss"], epoch
            state["best_state"] = copy.deepcopy(model.state_dict())
            state["bad_epochs"] = 0
        else:
            state["bad_epochs"] += 1
        result.history.append({"epoch": epoch, **metrics})
        if dist_info.main:
            checkpoint = {
                "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "bad_epochs": state["bad_epochs"], "best_state": state["best_state"],
                "history": result.history, "best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
                "train_config": asdict(cfg), "model_config": model.cfg.to_json(),
            }
            atomic_write(ckpt_path, lambda tmp, c=checkpoint: torch.save(c, tmp))
            if on_epoch_end is not None:
                on_epoch_end(epoch, metrics)
        if state["bad_epochs"] >= cfg.early_stop_patience:  # Keras: stop after `patience` epochs without improvement
            result.stopped_early = True
            break
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])  # restore the best validation weights
    if dist_info.world > 1:
        dist.barrier()
    return result
