"""Whether averaging the allocations of LEMs trained from different seeds beats one of them, on
the validation split only (never the test split): each model alone, then the average of their
allocations (feasible and causal whenever each member's is), with per side and minimum period
the mean advantage over the one-line rule in bps (positive: the LEM is better), the Match VWAP
std reduction against TWAP in volume, and how closely the members' Match VWAP slippages move
together (an average cannot lower the spread of members that err alike).

    python benchmarks/seed_ensemble_validation.py WINDOWS_DIR --models DIR [DIR ...]
        [--train-seeds K [K ...] --out DIR] [--preset dow30_cpu]

``--models``: trained model directories, e.g. ``data/models/equity`` after ``lem run --preset
dow30_cpu`` (seed 0). ``--train-seeds``: also train those seeds exactly as the preset's training
asset would (its model size, allocator switches and TrainConfig, the seed replaced), each into
``--out``/seed<K>; a seed whose model is already there is loaded, not trained again. One seed of
dow30_cpu trains in about 15 minutes on 2 cores; the evaluations take a minute each.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lem_model import LargeExecutionModel
from lem_model.evaluate import SIDES, EvalArrays, evaluate, match_vwap_std_reduction
from lem_model.saved_model import WEIGHTS, load_model, save_model
from lem_model.train import train
from lem_model.vocabulary import Target
from lem_model.window_dataset import WindowDataset
from lem_pipeline.model_training import build_model
from lem_pipeline.presets import get_preset
from lem_pipeline.windows import read_meta
from validation_report import print_advantages


class AllocationAverage(torch.nn.Module):
    """The members' allocations averaged step by step: each sums to 1, is >= 0 and reads only
    bars before its step, so the average does too."""

    def __init__(self, members: list[LargeExecutionModel]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.cfg = members[0].cfg  # evaluate reads n_ahead and n_models, the same for every member
        self.stop_thresholds = members[0].stop_thresholds  # only for evaluate's fitted-rule column

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(*inputs) for m in self.members]).mean(0)


def train_seed(windows: Path, seed: int, preset_name: str, out: Path) -> Path:
    """``out``/seed<seed>: the preset's training with this seed (trained here unless already there)."""
    d = out / f"seed{seed}"
    if (d / WEIGHTS).is_file():
        print(f"seed {seed}: loaded from {d}")
        return d
    preset = get_preset(preset_name)
    cfg = dataclasses.replace(preset.training, seed=seed, device="cpu", progress=False)
    model = build_model(read_meta(windows), preset.model, seed, preset.allocator)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as state:
        result = train(model, WindowDataset(windows, "train"), WindowDataset(windows, "val"), cfg, state,
                       resume=False, on_epoch_end=lambda e, m: print(
                           f"seed {seed}, epoch {e + 1}: train {m['loss']:.5f}, validation {m['val_loss']:.5f}",
                           flush=True))
    print(f"seed {seed} trained in {time.perf_counter() - t0:.0f} s; best epoch {result.best_epoch + 1}, "
          f"validation objective {result.best_val_loss:.5f}")
    return save_model(model, d)


def report(name: str, ev: EvalArrays) -> None:
    print(f"{name}: Match VWAP std reduction {match_vwap_std_reduction(ev):.4f}")
    print_advantages(ev, ev.rule_bps, "rule")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("windows", type=Path)
    ap.add_argument("--models", type=Path, nargs="*", default=[])
    ap.add_argument("--train-seeds", type=int, nargs="*", default=[])
    ap.add_argument("--out", type=Path, default=Path("seed_ensemble"))
    ap.add_argument("--preset", default="dow30_cpu")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dirs = list(args.models) + [train_seed(args.windows, s, args.preset, args.out) for s in args.train_seeds]
    if len(dirs) < 2:
        ap.error("an average needs at least two models (--models and --train-seeds together)")
    members = [load_model(d) for d in dirs]
    val = WindowDataset(args.windows, "val")
    N = members[0].cfg.n_ahead
    print(f"validation, {len(val)} windows; members: " + ", ".join(map(str, dirs)))
    evs = []
    for d, m in zip(dirs, members):
        evs.append(evaluate(m, val, min_rate=1 / N**2, batch_size=1024))
        report(str(d), evs[-1])
    report("average of the allocations", evaluate(AllocationAverage(members), val, min_rate=1 / N**2, batch_size=1024))
    match = np.stack([np.concatenate([ev.model_bps[:, N, kind, Target.VOLUME] for _, kind, _ in SIDES]) for ev in evs])
    twap = np.concatenate([evs[0].twap_volume_bps for _ in SIDES])  # the same windows for every member
    # The raw slippages share the market's noise, so they correlate highly even between heads
    # that differ; less TWAP's, what is left is each head's own schedule.
    print("correlation of the members' Match VWAP slippages (buys and sells pooled):")
    print(np.array2string(np.corrcoef(match), precision=4))
    print("the same less TWAP Volume's slippage on each window:")
    print(np.array2string(np.corrcoef(match - twap), precision=4))


if __name__ == "__main__":
    main()
