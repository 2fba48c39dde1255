"""What dow30_cpu's model choices rest on, measured on the validation split only (never the
test split): a small LEM with the finish gate fed the early-stop rule's signal, trained with the
aligned objective from the rule's prior (LEMConfig.rule_prior "rule") or from the rule with
thresholds fitted on the training windows ("fitted"), at a given learning rate and signal scale.

Prints each epoch's training and validation objective, then per side and minimum period the
trained model's mean advantage in bps over the one-line rule and over the fitted rule (positive:
the LEM is better), the std of its slippage against the rule's, the mean share of the order it
trades at the first and the last bar, and the Match VWAP std reduction against TWAP in volume,
all on validation; with ``--intervals``, also the advantage over the rule with the summary's 95%
block-bootstrap interval, the goal dow30_cpu is judged by on the test split.

    python benchmarks/rule_prior_validation.py WINDOWS_DIR [--prior fitted] [--lr 3e-5] [--scale 16] [--epochs 6]
        [--selection vs_rule] [--patience 2] [--average-decay 0.99] [--beat-risk neutral|tracking] [--report-each-epoch] [--intervals]
        [--size paper] [--batch-size 128] [--device cuda] [--cuda-graphs]

WINDOWS_DIR is an equity windows directory, e.g. the one ``lem run --preset dow30_cpu`` builds
(``$LEM_DATA_DIR/windows/equity``). One run takes about 12 minutes on 2 cores (6 epochs).
Without ``--intervals`` it needs lem_model alone (no pipeline dependencies), so it runs on a
GPU host whose python holds torch and numpy only, with the windows carried there.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lem_model import LargeExecutionModel, LEMConfig
from lem_model.baselines import early_stop_rule
from lem_model.config import FITTED_RULE_GATE, PAPER_SIZE, SMALL_SIZE
from lem_model.evaluate import SIDES, evaluate, match_vwap_std_reduction
from lem_model.metrics import slippage_bps
from lem_model.paired import comparisons
from lem_model.train import TrainConfig, fit_rule_prior, seed_everything, train
from lem_model.training_state import TRAINING_STATE, load_training_state
from lem_model.vocabulary import Target
from lem_model.window_dataset import WindowDataset
from validation_report import print_advantages


def report(model: LargeExecutionModel, val: WindowDataset, thresholds: torch.Tensor, device: str = "cpu",
           dates: np.ndarray | None = None) -> None:
    N = model.cfg.n_ahead
    ev = evaluate(model, val, min_rate=1 / N**2, batch_size=1024, device=device)
    if ev.evaluated("fitted_rule_bps"):  # the model started as the fitted rule: evaluate scored it
        fitted = ev.fitted_rule_bps
    else:
        _, vol, px = val.gather(np.arange(len(val)))
        vol, px = torch.as_tensor(vol).double(), torch.as_tensor(px).double()
        fitted = slippage_bps(early_stop_rule(px, N + 1, thresholds_bps=thresholds), vol, px).float().numpy()
    print(f"validation, {len(val)} windows: Match VWAP std reduction {match_vwap_std_reduction(ev):.3f}")
    print(f"{'':22}" + " ".join(f"{m + 1:>6}" for m in range(N)))
    print_advantages(ev, ev.rule_bps, "rule")
    print_advantages(ev, fitted, "fitted rule")
    # What the schedules are: their slippage's spread against the rule's, and how much of the
    # order they trade at the first and the last bar (a drift bet shows as a corner there).
    for side_name, kind, _ in SIDES:
        lem, rule = ev.model_bps[:, :N, kind, Target.VOLUME], ev.rule_bps[:, :N, kind, Target.VOLUME]
        print(f"  {side_name:4} std LEM / rule  " + " ".join(f"{a:>6}" for a in
              (f"{x:.0f}/{y:.0f}" for x, y in zip(lem.std(0), rule.std(0)))))
        for step, label in ((0, "first"), (N - 1, "last")):
            shares = ev.mean_alloc[step, :N, kind, Target.VOLUME]
            print(f"  {side_name:4} {label:5} bar share  " + " ".join(f"{a:6.3f}" for a in shares))
    if dates is not None:  # the summary's vs_rule cells: mean and 95% block-bootstrap interval
        for side_name, period, p in comparisons(ev, dates, "rule"):
            print(f"  {side_name:4} {period:2} vs rule {p.mean:+6.2f} [{p.ci95[0]:+6.2f}, {p.ci95[1]:+6.2f}]")


def validation_dates(windows: str, count: int) -> np.ndarray:
    """The execution date of each validation window, in the dataset's order (the blocks of the
    bootstrap). Imported here: the pipeline's dependencies are needed for this only."""
    from lem_pipeline.evaluation_summary import execution_dates
    from lem_pipeline.windows import read_index

    dates = execution_dates(read_index(windows, "val"))
    if len(dates) != count:
        raise ValueError(f"{windows}: {len(dates)} validation rows in the index for {count} windows")
    return dates


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("windows")
    ap.add_argument("--prior", choices=["rule", "fitted"], default="fitted")
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--scale", type=float, default=16.0, help="LEMConfig.rule_signal_scale (bps per unit of logit)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--samples", type=int, default=32_768, help="training windows drawn per epoch")
    ap.add_argument("--sides", choices=["paired", "separate"], default="paired",
                    help="the aligned objective's buy and sell terms (TrainConfig.sides)")
    ap.add_argument("--match-risk", choices=["softplus", "squared"], default="softplus",
                    help="the aligned objective's match-benchmark term (TrainConfig.match_risk)")
    ap.add_argument("--beat-risk", choices=["softplus", "neutral", "tracking"], default="softplus",
                    help="the aligned objective's beat-the-benchmark terms (TrainConfig.beat_risk)")
    ap.add_argument("--tracking-curvature", type=float, default=TrainConfig.tracking_curvature,
                    help="TrainConfig.tracking_curvature (with --beat-risk tracking)")
    ap.add_argument("--seed", type=int, default=0, help="the model's initial draw and the training's (TrainConfig.seed)")
    ap.add_argument("--match-forecast", action="store_true",
                    help="the Match head starts as the volume forecast times the minimum-variance curve "
                         "(LEMConfig.match_forecast)")
    ap.add_argument("--selection", choices=["objective", "vs_rule"], default="objective",
                    help="what early stopping and the LR plateau watch (TrainConfig.selection)")
    ap.add_argument("--patience", type=int, default=TrainConfig.early_stop_patience,
                    help="early stopping's patience in epochs (TrainConfig.early_stop_patience)")
    ap.add_argument("--average-decay", type=float, default=None,
                    help="validate and keep an exponential moving average of the weights with this decay per "
                         "step (TrainConfig.average_decay)")
    ap.add_argument("--report-each-epoch", action="store_true",
                    help="print the per-cell report after every epoch too (the weights validation scored: "
                         "that epoch's, or their average with --average-decay)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", choices=["small", "paper"], default="small",
                    help="the model's size: dow30_cpu's (SMALL_SIZE) or the paper's (PAPER_SIZE; wants a GPU)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu", help="TrainConfig.device, and where the reports evaluate")
    ap.add_argument("--cuda-graphs", action="store_true", help="TrainConfig.cuda_graphs")
    ap.add_argument("--intervals", action="store_true",
                    help="each report also gives, per side and minimum period, the advantage over the rule with "
                         "the summary's 95%% block-bootstrap interval over execution dates (reads the windows' "
                         "index with polars, a pipeline dependency)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train_set, val = WindowDataset(args.windows, "train"), WindowDataset(args.windows, "val")
    dates = validation_dates(args.windows, len(val)) if args.intervals else None
    seed_everything(args.seed)
    size = PAPER_SIZE if args.size == "paper" else SMALL_SIZE
    allocator = dataclasses.replace(FITTED_RULE_GATE, rule_prior=args.prior, rule_signal_scale=args.scale,
                                    match_forecast=args.match_forecast)
    model = LargeExecutionModel(LEMConfig.for_windows(train_set.meta, size, allocator))
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, objective="aligned",
                      samples_per_epoch=args.samples, seed=args.seed, device=args.device,
                      cuda_graphs=args.cuda_graphs, progress=False, sides=args.sides,
                      match_risk=args.match_risk, beat_risk=args.beat_risk,
                      tracking_curvature=args.tracking_curvature, early_stop_patience=args.patience,
                      selection=args.selection, average_decay=args.average_decay)
    print(f"prior {args.prior}, lr {args.lr}, scale {args.scale}, sides {args.sides}, match risk {args.match_risk}, "
          f"beat risk {args.beat_risk} (curvature {args.tracking_curvature}), "
          f"selection {args.selection}, average decay {args.average_decay}, "
          f"seed {args.seed}, match forecast {args.match_forecast}, {args.epochs} epochs of {args.samples} windows, "
          f"{args.size} model, batch {args.batch_size}, device {args.device}, cuda graphs {args.cuda_graphs}")
    # The "rule" prior keeps no thresholds: fit them on the same training draw, so every report
    # (each epoch's too) compares with the fitted rule, not the plain one.
    thresholds = model.stop_thresholds if args.prior == "fitted" else fit_rule_prior(model, train_set, cfg)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as state:
        def on_epoch_end(epoch: int, metrics: dict) -> None:
            print(f"epoch {epoch + 1}: train {metrics['loss']:.5f}, validation {metrics['val_loss']:.5f}, "
                  f"vs rule {metrics['val_vs_rule_bps']:+.3f} bps, lr {metrics['lr']:.2g}, "
                  f"{time.perf_counter() - t0:.0f} s in", flush=True)
            if args.report_each_epoch:
                judged = model
                if args.average_decay is not None:  # the weights validation scored: the average, saved just now
                    judged = copy.deepcopy(model)
                    saved = load_training_state(Path(state) / TRAINING_STATE)["averaged"]
                    judged.load_state_dict({k.removeprefix("module."): v for k, v in saved.items()
                                            if k.startswith("module.")})
                report(judged, val, thresholds, args.device, dates)

        result = train(model, train_set, val, cfg, state, resume=False, on_epoch_end=on_epoch_end)
    print(f"trained in {time.perf_counter() - t0:.0f} s; best epoch {result.best_epoch + 1}, "
          f"validation objective {result.best_val_loss:.5f}")
    print("fitted thresholds (bps, per head; buy / sell):")
    print("  " + " ".join(f"{int(b)}/{int(s)}" for b, s in thresholds[:-1].tolist()))
    report(model, val, thresholds, args.device, dates)


if __name__ == "__main__":
    main()
