"""Training as the paper's section 3.4: Adam, batch 256, shuffled, early stopping on the
validation loss (patience 2, best weights restored), LR reduced on plateau (patience 1),
trading rates in [1/N^2, 1]. Both may watch the table metric instead (TrainConfig.selection).

Data-parallel under ``torchrun`` (DDP with a DistributedSampler; rank 0 logs and saves). Every
epoch ends by saving the training state (lem_model.training_state), so a run resumes exactly.
The shuffle order is a function of (seed, epoch), so a resumed run sees the same batches as an
uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import os
import random
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args, get_type_hints

import numpy as np
import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler, Subset
from tqdm import tqdm

from lem_model.baselines import early_stop_rule, fit_stop_thresholds, min_variance_curve
from lem_model.cuda_graphs import GraphedTrainStep
from lem_model.devices import autocast, keep_freed_memory, resolve_device
from lem_model.loss import SOFTPLUS_CURVATURE, aligned_loss, lem_loss
from lem_model.metrics import METRIC_NAMES, execution_metrics, slippage_bps
from lem_model.model import LargeExecutionModel
from lem_model.orders import paper_min_rate
from lem_model.training_state import TRAINING_STATE, load_training_state, rng_state, save_training_state, set_rng_state
from lem_model.vocabulary import OrderKind, Target

KERAS_MIN_DELTA = 1e-4  # Keras ReduceLROnPlateau's default: an epoch improves by more than this, absolute


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-5
    early_stop_patience: int = 2
    # Epochs without improvement before the rate is cut, as Keras counts them (the paper's 1:
    # cut after the first bad epoch). torch's ReduceLROnPlateau cuts after patience + 1.
    lr_patience: int = 1
    lr_factor: float = 0.1  # Keras ReduceLROnPlateau's default
    grad_clip: float = 1.0
    seed: int = 0
    min_rate: float | None = None  # None: 1 / N^2, as the paper
    max_rate: float = 1.0
    loss_alpha: float = 50.0  # the reference objective's soft-mask sharpness
    # "reference": lem_loss, as the paper; "aligned": aligned_loss, scored as the tables score
    # (docs/DESIGN.md). Training, early stopping and the LR plateau all watch this objective.
    objective: Literal["reference", "aligned"] = "reference"
    # What early stopping and the LR plateau watch on the validation split: "objective", the
    # training objective, or "vs_rule", the table metric: the mean advantage in bps over the
    # one-line causal rule, both sides and every minimum period, VWAP orders in volume (the
    # summary's vs_rule cells; higher is better). Every epoch's history has both.
    selection: Literal["objective", "vs_rule"] = "objective"
    # An exponential moving average of the weights (torch.optim.swa_utils.AveragedModel), with
    # this decay per step, updated after every step; validation, selection and the weights kept
    # are then the average's, the raw weights train on. None: the raw weights (the reference).
    average_decay: float | None = None
    completion_tau: float = 0.05  # the aligned objective's straight-through surrogate, C / (C + tau)
    # The aligned objective's buy and sell terms: "paired", softplus(buy - sell) as the reference,
    # or "separate", each side against its own benchmark as the tables (lem_model.loss.aligned_loss).
    sides: Literal["paired", "separate"] = "paired"
    # The aligned objective's match-benchmark term: "softplus" of |slippage| as the reference, or
    # "squared", whose mean is the std the tables report plus the squared mean (aligned_loss).
    match_risk: Literal["softplus", "squared"] = "softplus"
    # The aligned objective's beat-the-benchmark terms: "softplus" as the reference (which also
    # pays for variance), "neutral", its tangent at 0, the mean slippage the tables compare, or
    # "tracking", the tangent plus softplus's curvature on the distance from the causal rule's
    # slippage (lem_model.loss.aligned_loss).
    beat_risk: Literal["softplus", "neutral", "tracking"] = "softplus"
    # "tracking"'s charge per squared percent of distance from the rule: softplus's own by default.
    tracking_curvature: float = SOFTPLUS_CURVATURE
    # Train windows drawn per epoch (a fresh draw each epoch, without replacement); None: all of
    # them. Lets a CPU budget see many windows' variety in a few short epochs.
    samples_per_epoch: int | None = None
    # Training windows (a seeded draw) the early-stop thresholds are fitted on, for a model whose
    # finish gate starts as the fitted rule (LEMConfig.rule_prior="fitted").
    rule_fit_windows: int = 32_768
    device: str = "auto"  # "auto": CUDA when available
    compile: bool = False  # torch.compile the model (LargeExecutionModel.compile)
    # Replay each full batch's train step as one captured CUDA graph (lem_model.cuda_graphs):
    # CUDA and one process only; the same arithmetic as the eager step, thousands fewer launches.
    cuda_graphs: bool = False
    progress: bool = True
    # Independent trainings, seeds seed, seed + 1, ..., seed + seeds - 1, so a comparison can
    # tell a real difference from run-to-run noise (lem_pipeline.seed_training). One training
    # never reads it: each seed trains with its own config, seeds=1 (:meth:`per_seed`).
    seeds: int = 1

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"seeds must be at least 1, not {self.seeds}")
        if self.lr_patience < 1:
            raise ValueError(f"lr_patience must be at least 1 (epochs without improvement), not {self.lr_patience}")
        hints = get_type_hints(TrainConfig)  # a misspelt switch would silently train another objective
        for name in ("objective", "selection", "sides", "match_risk", "beat_risk"):
            allowed = get_args(hints[name])
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, not {getattr(self, name)!r}")
        if self.average_decay is not None and not 0 < self.average_decay < 1:
            raise ValueError(f"average_decay must lie strictly between 0 and 1, not {self.average_decay}")
        if self.tracking_curvature != SOFTPLUS_CURVATURE and self.beat_risk != "tracking":
            raise ValueError(f"tracking_curvature is for beat_risk='tracking', not {self.beat_risk!r}")
        if self.tracking_curvature <= 0:
            raise ValueError(f"tracking_curvature must be positive, not {self.tracking_curvature}")
        # The aligned objective's switches, each refused away from its reference value elsewhere.
        for name, reference in (("sides", "paired"), ("match_risk", "softplus"), ("beat_risk", "softplus")):
            if getattr(self, name) != reference and self.objective != "aligned":
                raise ValueError(f"{name}={getattr(self, name)!r} is the aligned objective's; "
                                 f"objective is {self.objective!r}")

    def per_seed(self) -> list[TrainConfig]:
        """The k-th training's config, k = 0..seeds-1: ``seed + k`` and ``seeds=1``. A one-seed
        config comes back as itself."""
        return [replace(self, seed=self.seed + k, seeds=1) for k in range(self.seeds)]


def adam(params, lr: float, capturable_on: torch.device | None = None) -> torch.optim.Adam:
    """The paper's optimiser, as one fused kernel over all parameters (CPU and CUDA): the
    for-each-parameter version costs a quarter of a small-config CPU step (issue 10).

    ``capturable_on`` (a CUDA device) makes the step replayable inside a CUDA graph: its step
    counts and its learning rate live on the device, so the plateau scheduler's cuts (written in
    place) reach the replayed step instead of being frozen into it."""
    if capturable_on is None:
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=torch.tensor(lr, device=capturable_on), fused=True, capturable=True)


class NonFiniteLossError(RuntimeError):
    """Training met a NaN or inf loss; the last good training state is kept untouched."""


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = math.inf
    stopped_early: bool = False
    device: str = "cpu"
    resumed_from_epoch: int | None = None  # the first epoch this call trained, when it resumed a run


class EarlyStopping:
    """Keras EarlyStopping(patience, restore_best_weights=True): stop after ``patience`` epochs
    without a strictly lower watched value (the validation loss, or TrainConfig.selection's),
    and hand back the best epoch's weights."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_val_loss = math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, val_loss: float, model: torch.nn.Module) -> None:
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.best_epoch = val_loss, epoch
            self.best_state = copy.deepcopy(model.state_dict())
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def restore_best(self, model: torch.nn.Module) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

    def state_dict(self) -> dict:
        return {"bad_epochs": self.bad_epochs, "best_state": self.best_state, "best_epoch": self.best_epoch,
                "best_val_loss": self.best_val_loss}

    def load_state_dict(self, state: dict) -> None:
        self.bad_epochs, self.best_state = state["bad_epochs"], state["best_state"]
        self.best_epoch, self.best_val_loss = state["best_epoch"], state["best_val_loss"]


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def keras_plateau(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """The paper's ReduceLROnPlateau as Keras runs it, on a watched value to minimise. torch cuts
    once the bad epochs exceed its patience, Keras once they reach it; an epoch improves when it
    beats the best by more than Keras's min_delta (1e-4) absolute, not torch's default relative
    1e-4 (on a negative watched value, -val_vs_rule_bps, a relative threshold counts a slightly
    worse epoch as better); and eps=0, Keras cuts the rate however small it is (torch's default
    eps=1e-8 would stop the paper's 1e-5 from going below 1e-8)."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.lr_factor,
                                                      patience=cfg.lr_patience - 1, threshold=KERAS_MIN_DELTA,
                                                      threshold_mode="abs", eps=0.0)


def _init_distributed(device: torch.device) -> _Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; a plain run is a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return _Dist()
    if not dist.is_initialized():
        if device.type == "cuda":  # this rank's GPU is its current device (NCCL's barrier uses it)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def objective(alloc: torch.Tensor, volumes: torch.Tensor, prices: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """The loss the config trains and selects on."""
    if cfg.objective == "aligned":
        return aligned_loss(alloc, volumes, prices, cfg.completion_tau, cfg.sides, cfg.match_risk, cfg.beat_risk,
                            cfg.tracking_curvature)
    return lem_loss(alloc, volumes, prices, cfg.loss_alpha)


def rates(batch: int, n_ahead: int, cfg: TrainConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    lo = cfg.min_rate if cfg.min_rate is not None else paper_min_rate(n_ahead)
    return torch.full((batch,), lo, device=device), torch.full((batch,), cfg.max_rate, device=device)


def unwrap(model: torch.nn.Module) -> LargeExecutionModel:
    """The plain module behind a DDP wrapper."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _train_loader(train_set: Dataset, cfg: TrainConfig, epoch: int, dist_info: _Dist, device: torch.device
                  ) -> DataLoader:
    # The order (and the draw, with samples_per_epoch) depends on (seed, epoch) only, so a
    # resumed run sees the same batches as an uninterrupted one.
    generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    n = len(train_set)
    k = min(cfg.samples_per_epoch or n, n)
    if dist_info.world > 1:
        data = train_set if k == n else Subset(train_set, torch.randperm(n, generator=generator)[:k].tolist())
        sampler = DistributedSampler(data, shuffle=True, seed=cfg.seed)
        sampler.set_epoch(epoch)
        return DataLoader(data, batch_size=cfg.batch_size, sampler=sampler, pin_memory=device.type == "cuda")
    sampler = RandomSampler(train_set, num_samples=k, generator=generator)
    # Pinned host batches copy to the GPU asynchronously (non_blocking in train_epoch).
    return DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, pin_memory=device.type == "cuda")


# On CUDA the loop reads the device (progress bar, non-finite check) once per this many batches,
# so the host keeps queueing work instead of waiting for each step; on the CPU, every batch.
CUDA_SYNC_EVERY = 50


def make_train_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    device: torch.device) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """One optimisation step on a batch, after the caller has zeroed the gradients: forward,
    objective, backward, gradient clipping, Adam, constraint projection. Returns the batch loss
    as a device tensor (no host sync), so the same function runs eagerly or captured in a CUDA
    graph, and the benchmark times exactly this."""
    model = unwrap(net)
    n_ahead = model.cfg.n_ahead
    # With cfg.compile the objective is compiled here; the model is, by train(), before the step is made.
    loss_of = torch.compile(objective, dynamic=False) if cfg.compile else objective

    def step(x: torch.Tensor, vol: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
        lo, hi = rates(len(x), n_ahead, cfg, device)
        with autocast(device):
            alloc = net(x, lo, hi)
        loss = loss_of(alloc.float(), vol, px, cfg)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        model.project_constraints()
        return loss.detach()

    return step


def train_epoch(net: torch.nn.Module, loader: DataLoader, step: Callable[..., torch.Tensor],
                optimizer: torch.optim.Optimizer, cfg: TrainConfig, epoch: int, device: torch.device,
                dist_info: _Dist, state_path: Path, graphed: GraphedTrainStep | None = None,
                averaged: AveragedModel | None = None) -> float:
    """One pass over the training windows with ``step`` (make_train_step's); returns the mean
    loss over every rank's samples.

    A non-finite loss raises NonFiniteLossError (naming the first bad batch) at the next device
    read, before the epoch's training state is saved, so the last good state stays untouched.
    ``graphed`` (the same step captured) replays full batches as its CUDA graph; a short last
    batch runs ``step`` eagerly. ``averaged`` (TrainConfig.average_decay's) takes in the weights
    after every step."""
    net.train()
    sync_every = 1 if device.type == "cpu" else CUDA_SYNC_EVERY
    seen = 0
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)  # batch index of the first non-finite loss
    bad_loss = torch.zeros((), device=device)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", file=sys.stderr,
               disable=not (cfg.progress and dist_info.main))
    for b, (x, vol, px) in enumerate(bar):
        batch = [t.to(device, non_blocking=True) for t in (x, vol, px)]
        if graphed is not None and graphed.fits(batch):
            loss = graphed(batch)
        else:
            # With a graph, gradients are zeroed in place: the graph reads the tensors it captured.
            optimizer.zero_grad(set_to_none=graphed is None)
            loss = step(*batch)
        if averaged is not None:
            averaged.update_parameters(unwrap(net))
        new_bad = ~torch.isfinite(loss) & (first_bad < 0)
        first_bad = torch.where(new_bad, b, first_bad)
        bad_loss = torch.where(new_bad, loss.float(), bad_loss)
        loss_sum += loss.double() * len(x)
        seen += len(x)
        if (b + 1) % sync_every == 0 or b + 1 == len(loader):
            if first_bad.item() >= 0:
                raise NonFiniteLossError(
                    f"non-finite loss ({bad_loss.item()}) at epoch {epoch + 1}, batch {first_bad.item()}; training "
                    f"stopped. The last good checkpoint is {state_path if state_path.exists() else 'none (first epoch)'}")
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}")
    total = _summed_over_ranks(torch.stack([loss_sum.cpu(), torch.tensor(seen, dtype=torch.float64)]), device,
                               dist_info)
    return float(total[0] / total[1])


def _summed_over_ranks(t: torch.Tensor, device: torch.device, dist_info: _Dist) -> torch.Tensor:
    """``t`` (on the CPU) summed over every rank. The all-reduce runs on the training device: the
    process group's NCCL backend serves CUDA tensors only."""
    if dist_info.world == 1:
        return t
    on_device = t.to(device)
    dist.all_reduce(on_device)
    return on_device.cpu()


class _RankShard(torch.utils.data.Sampler[int]):
    """Every ``world``-th window from ``rank``: the ranks together see each validation window
    exactly once (DistributedSampler pads the shards to equal length by repeating windows, which
    would count some twice in the summed validation metrics)."""

    def __init__(self, n: int, dist_info: _Dist) -> None:
        self.indices = range(dist_info.rank, n, dist_info.world)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def evaluate_loss(model: torch.nn.Module, loader: DataLoader, cfg: TrainConfig, device: torch.device,
                  dist_info: _Dist) -> dict[str, float]:
    """Validation loss (the training objective), the advantage over the rule (val_vs_rule_bps,
    :func:`vs_rule_bps`) and the reference metrics, batch means weighted by batch size (as Keras)."""
    model.eval()
    n_ahead = unwrap(model).cfg.n_ahead
    totals = torch.zeros(2 + len(METRIC_NAMES), dtype=torch.float64)
    count = torch.zeros(1, dtype=torch.float64)
    with torch.no_grad():
        for x, vol, px in loader:
            x, vol, px = x.to(device), vol.to(device), px.to(device)
            lo, hi = rates(len(x), n_ahead, cfg, device)
            # float32, no bf16 autocast on CUDA: selection judges the precision the tables
            # (lem_model.evaluate) and the live policy use.
            alloc = model(x, lo, hi).float()
            loss = objective(alloc, vol, px, cfg).item()
            m = execution_metrics(alloc.double(), vol.double(), px.double())
            totals += len(x) * torch.tensor([loss, vs_rule_bps(alloc, vol, px), *[m[k] for k in METRIC_NAMES]],
                                            dtype=torch.float64)
            count += len(x)
    totals = _summed_over_ranks(torch.cat([totals, count]), device, dist_info)
    values = (totals[:-1] / totals[-1:].clamp(min=1)).tolist()
    return {"val_loss": values[0], "val_vs_rule_bps": values[1],
            **{f"val_{k}": v for k, v in zip(METRIC_NAMES, values[2:])}}


def vs_rule_bps(alloc: torch.Tensor, volumes: torch.Tensor, prices: torch.Tensor) -> float:
    """The batch's mean advantage in bps over the one-line causal rule (positive: the model is
    better; lem_model.paired.advantage's sign), over both sides and the N minimum-duration
    heads, VWAP orders in volume: the cells of the evaluation's vs_rule table, averaged."""
    N = volumes.shape[1]
    volumes, prices = volumes.double(), prices.double()
    model = slippage_bps(alloc.double(), volumes, prices)[:, :N, :, Target.VOLUME]  # (B, N, 4)
    rule = slippage_bps(early_stop_rule(prices, N + 1), volumes, prices)[:, :N, :, Target.VOLUME]
    buy = rule[..., OrderKind.BUY_VWAP] - model[..., OrderKind.BUY_VWAP]
    sell = model[..., OrderKind.SELL_VWAP] - rule[..., OrderKind.SELL_VWAP]
    return float((buy + sell).mean() / 2)


def _fit_windows(train_set: Dataset, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The volumes and prices of a seeded draw of ``cfg.rule_fit_windows`` training windows
    (the same on every rank): what the priors are fitted on."""
    n = len(train_set)
    k = min(cfg.rule_fit_windows, n)
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))[:k].sort().values.tolist()
    volumes, prices = [], []
    for _, vol, px in DataLoader(Subset(train_set, rows), batch_size=4096):
        volumes.append(vol)
        prices.append(px)
    return torch.cat(volumes), torch.cat(prices)


def fit_rule_prior(model: LargeExecutionModel, train_set: Dataset, cfg: TrainConfig) -> torch.Tensor:
    """The early-stop thresholds (J, 2) the finish gate starts from, fitted on the draw."""
    return fit_stop_thresholds(*_fit_windows(train_set, cfg), model.cfg.n_models)


def train(
    model: LargeExecutionModel,
    train_set: Dataset,
    val_set: Dataset,
    cfg: TrainConfig,
    state_dir: str | Path,
    *,
    resume: bool = True,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    stop_after_epochs: int | None = None,
) -> TrainResult:
    """Train ``model`` in place; it ends holding the best validation weights.

    The training state goes to ``state_dir``/training_state.pt after every epoch and, with
    ``resume``, a run starts from the one it finds there. ``on_epoch_end(epoch, metrics)`` runs
    on rank 0 only (MLflow logging lives there, outside this package). ``stop_after_epochs``
    ends this call early, as a crash would, for resume tests.
    """
    if len(val_set) == 0 or len(train_set) == 0:
        raise ValueError(f"training needs windows in both splits: {len(train_set)} train, {len(val_set)} validation")
    device = resolve_device(cfg.device)
    keep_freed_memory()
    dist_info = _init_distributed(device)
    state_path = Path(state_dir) / TRAINING_STATE
    if dist_info.main:
        state_path.parent.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    fitted = model.cfg.rule_prior == "fitted"
    if (fitted or model.cfg.match_forecast) and not (resume and state_path.exists()):
        # The priors, from one draw of training windows: the rule's thresholds, the Match curve.
        volumes, prices = _fit_windows(train_set, cfg)
        if fitted:
            model.set_stop_thresholds(fit_stop_thresholds(volumes, prices, model.cfg.n_models))
        if model.cfg.match_forecast:
            model.set_match_curve(min_variance_curve(volumes, prices))
    model.to(device)
    # Copied before compiling (the average is only evaluated) and after the priors are fitted:
    # it averages the parameters, and the buffers (the fitted thresholds) are the model's own.
    averaged = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.average_decay))
                if cfg.average_decay is not None else None)
    if cfg.compile:
        model.compile()
    graphs = cfg.cuda_graphs and device.type == "cuda"
    if graphs and dist_info.world > 1:
        raise ValueError("cuda_graphs runs in one process; under torchrun train without it")
    optimizer = adam(model.parameters(), cfg.lr, capturable_on=device if graphs else None)
    scheduler = keras_plateau(optimizer, cfg)
    stopper = EarlyStopping(cfg.early_stop_patience)
    result = TrainResult(device=str(device))
    first_epoch = 0
    if resume and state_path.exists():
        saved = load_training_state(state_path, map_location=device)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        # The saved counters and rate, with this run's Keras settings (a state saved with torch's
        # own patience count or threshold resumes as keras_plateau counts; both are read per step).
        settings = {k: getattr(scheduler, k) for k in ("patience", "threshold", "threshold_mode")}
        scheduler.load_state_dict(saved["scheduler"])
        for name, value in settings.items():
            setattr(scheduler, name, value)
        stopper.load_state_dict(saved["early_stopping"])
        if averaged is not None:
            averaged.load_state_dict(saved["averaged"])
        result.history = saved["history"]
        set_rng_state(saved["rng"])
        first_epoch = saved["epoch"] + 1
        if stopper.should_stop:  # it had finished: stopped early after its last saved epoch
            result.stopped_early = True
            first_epoch = cfg.epochs
        elif first_epoch < cfg.epochs:
            result.resumed_from_epoch = first_epoch
    net: torch.nn.Module = model
    if dist_info.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    val_sampler = _RankShard(len(val_set), dist_info) if dist_info.world > 1 else SequentialSampler(val_set)
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, sampler=val_sampler, pin_memory=device.type == "cuda")
    step = make_train_step(net, optimizer, cfg, device)
    graphed = GraphedTrainStep(step, model, optimizer) if graphs else None
    # What validation scores and early stopping keeps: the raw weights, or their average.
    judged: torch.nn.Module = net if averaged is None else averaged.module

    for epoch in range(first_epoch, cfg.epochs):
        if stop_after_epochs is not None and epoch - first_epoch >= stop_after_epochs:
            return _finish(result, stopper)  # as a crash would: the best weights are not restored
        loss = train_epoch(net, _train_loader(train_set, cfg, epoch, dist_info, device), step, optimizer, cfg,
                           epoch, device, dist_info, state_path, graphed, averaged)
        # The plain module: a DDP forward broadcasts buffers, a collective that would hang on the
        # ranks' unequal validation shards (_RankShard); the weights are the same on every rank.
        metrics = {"loss": loss, **evaluate_loss(unwrap(judged), val_loader, cfg, device, dist_info),
                   "lr": float(optimizer.param_groups[0]["lr"])}
        watched = metrics["val_loss"] if cfg.selection == "objective" else -metrics["val_vs_rule_bps"]
        scheduler.step(watched)
        stopper.update(epoch, watched, unwrap(judged))
        result.history.append({"epoch": epoch, **metrics})
        if dist_info.main:
            save_training_state(state_path, {
                "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "early_stopping": stopper.state_dict(),
                "history": result.history, "rng": rng_state(), "train_config": asdict(cfg),
                "model_config": model.cfg.to_json()} | ({} if averaged is None else {"averaged": averaged.state_dict()}))
            if on_epoch_end is not None:
                on_epoch_end(epoch, metrics)
        if stopper.should_stop:
            result.stopped_early = True
            break
    stopper.restore_best(model)
    if dist_info.world > 1:
        dist.barrier()
    return _finish(result, stopper)


def _finish(result: TrainResult, stopper: EarlyStopping) -> TrainResult:
    result.best_epoch = stopper.best_epoch
    # The validation objective of the epoch kept, whatever selection chose it.
    result.best_val_loss = next((h["val_loss"] for h in result.history if h["epoch"] == stopper.best_epoch), math.inf)
    return result
