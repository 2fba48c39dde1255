"""Evaluating a trained LEM on the test split: the slippage arrays (lem_model.evaluate), the
paper's tables and plots (lem_pipeline.reporting), the paired comparisons and summary.json
(lem_pipeline.evaluation_summary), all logged to the model's MLflow run (the pipeline) or to a
run of its own (``lem evaluate``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import torch
from torch.utils.data import Subset

from lem_model.baselines import VolumeProfile
from lem_model.costs import CostConfig
from lem_model.devices import resolve_device
from lem_model.evaluate import EvalArrays, ScheduleBaselines, evaluate, headline
from lem_model.failpoints import failpoint
from lem_model.fileio import replaced_dir
from lem_model.model import LargeExecutionModel
from lem_model.orders import paper_min_rate
from lem_model.saved_model import load_model
from lem_model.window_dataset import WindowDataset
from lem_pipeline import reporting, settings
from lem_pipeline.evaluation_summary import (PAIRED_LABELS, build_summary, cost_metrics, paired_metrics,
                                             paired_tables, summary_name, write_summary)
from lem_pipeline.lake import SLIPPAGE_FILE, TEST_INDEX_FILE
from lem_pipeline.trade_log import TRADE_LOG_FILE, GroupContext, TradeLog, trailing_sigma, window_phases
from lem_pipeline.tracking import MLflowTracking
from lem_pipeline.trained_model import check_lineage
from lem_pipeline.windows import DATASET_BY_SEASONALITY, read_index

EVALUATION_ARTIFACT = "evaluation"  # the MLflow artifact folder of an evaluation's files


@dataclass
class Evaluation:
    arrays: EvalArrays
    test_windows: int
    tables: dict[str, Path]  # per (dataset, frequency) label: the main table's CSV
    main_markdown: str  # the first main table, for the Dagster UI
    plots: list[Path]
    headline: dict[str, float]  # the MLflow metrics: lem_model.evaluate.headline and the vs_rule numbers
    summaries: dict[str, Path] = field(default_factory=dict)  # per label: its summary.json
    vs_rule_markdown: str = ""  # the vs_rule table of every frequency, for the Dagster UI
    trade_log: Path | None = None  # trades.parquet
    costs_markdown: str = ""  # gross against net per order size, every frequency, for the Dagster UI

    @property
    def feasible(self) -> bool:
        return self.arrays.all_finite and self.arrays.max_sum_error < 1e-4


def fit_baselines(windows_dir: Path, freq_min: int, test_rows: np.ndarray, test_index: pl.DataFrame,
                  costs: CostConfig) -> tuple[ScheduleBaselines, tuple[float, float], int]:
    """For one frequency's test windows: the schedule baselines (the volume profile fitted on the
    training windows of that frequency alone), the volatility terciles of those training windows
    (the regime cuts) and how many training windows they rest on. Without training windows (an
    evaluation universe with no history before its test start), the profile is flat (TWAP) and
    the cuts are the test windows' own terciles; the summary's ``volume_profile_windows`` says 0."""
    test = WindowDataset(windows_dir, "test")
    N = test.n_ahead
    train = WindowDataset(windows_dir, "train")
    train_index = read_index(windows_dir, "train")
    rows = np.nonzero(train_index["freq_min"].to_numpy() == freq_min)[0]
    phases = window_phases(test_index, freq_min)
    if len(rows):
        at = train.starts[rows][:, None] + np.arange(N)
        profile = VolumeProfile.fit(train.bars.volume[at], window_phases(train_index[rows], freq_min))
        sigma = trailing_sigma(train, rows, freq_min, costs)
    else:
        profile = VolumeProfile({}, np.full(N, 1.0 / N))
        sigma = trailing_sigma(test, test_rows, freq_min, costs)
    cuts = tuple(float(c) for c in np.nanpercentile(sigma, [100 / 3, 200 / 3])) if len(sigma) else (0.0, 0.0)
    return ScheduleBaselines(profile.schedules(phases), freq_min, test.lookback, costs), cuts, len(rows)


def evaluate_windows(name: str, model: LargeExecutionModel, windows_dir: Path, out: Path, *, batch_size: int,
                     device: str, costs: CostConfig = CostConfig()) -> Evaluation:
    """Evaluate ``model`` on the test windows of ``windows_dir`` and write everything to ``out``
    (replaced whole, never half-written): the slippage arrays, the test index and the trade log,
    and per frequency the paper's tables, the cost, regime and paired tables, summary.json and
    the plots. The one evaluation that both the pipeline (:func:`evaluate_on_test`) and
    ``lem evaluate`` run. The fee is that of the windows' dataset (equity or crypto)."""
    torch.set_num_threads(settings.thread_budget())
    test = WindowDataset(windows_dir, "test")
    index = read_index(windows_dir, "test")
    fee = costs.fees(DATASET_BY_SEASONALITY[test.meta["config"]["seasonality"]]) if costs.enabled else 0.0

    freqs = index["freq_min"].to_numpy()
    # One evaluation per frequency, so each frequency's mean execution curve is its own.
    groups = {freq: np.nonzero(freqs == freq)[0] for freq in sorted(set(freqs.tolist()))}
    tables, plots, summaries, vs_rule, costs_md, per_freq = {}, [], {}, [], [], {}
    with replaced_dir(out) as tmp:
        log = TradeLog(tmp / TRADE_LOG_FILE, costs, fee)
        fits = {}
        for freq, rows in groups.items():
            baselines, cuts, fitted_on = fit_baselines(windows_dir, freq, rows, index[rows], costs)
            fits[freq] = fitted_on
            group = GroupContext(test, rows, index[rows], freq, cuts)
            per_freq[freq] = evaluate(model, Subset(test, rows.tolist()), min_rate=paper_min_rate(model.cfg.n_ahead),
                                      batch_size=batch_size, device=resolve_device(device), baselines=baselines,
                                      on_batch=lambda batch, group=group: log.add(batch, group))
        log.close()
        ledger = log.frame()
        curves = log.mean_allocations()
        ev = EvalArrays.combine([(groups[f], e) for f, e in per_freq.items()]) if per_freq else evaluate(
            model, test, min_rate=paper_min_rate(model.cfg.n_ahead), batch_size=batch_size, device=resolve_device(device))
        metrics = headline(ev)
        ev.save(tmp / SLIPPAGE_FILE)
        index.write_parquet(tmp / TEST_INDEX_FILE)
        for freq, sub in per_freq.items():
            label = f"{name}_{reporting.frequency_label(freq)}"
            tables[label] = reporting.write_evaluation_tables(sub, tmp, label)
            frame = ledger.filter(pl.col("freq_min") == freq)
            summary = build_summary(name, freq, sub, index[groups[freq]], ledger=frame, costs=costs,
                                    fee_bps=fee * 1e4, profile_windows=fits[freq])
            summaries[label] = write_summary(summary, tmp / summary_name(freq, len(per_freq)))
            reporting.write_paired_table(paired_tables(summary), tmp / f"{label}_paired")
            reporting.write_cost_tables(summary, tmp, label)
            metrics |= paired_metrics(summary, len(per_freq)) | cost_metrics(summary, len(per_freq))
            if len(per_freq) > 1:  # the headline above pools the frequencies; each one's own, as its summary's
                own = headline(sub)
                metrics |= {f"test_{summary['frequency']}_{k.removeprefix('test_')}": v for k, v in own.items()}
            vs_rule.append(f"**{label}**\n\n" + reporting.markdown(
                reporting.paired_frame({PAIRED_LABELS["vs_rule"]: summary["vs_rule"]}), decimals=2))
            costs_md.append(f"**{label}**\n\n" + reporting.markdown(reporting.costs_frame(summary), decimals=2))
            title = f"{name} {reporting.frequency_label(freq)}"
            plots += reporting.plot_evaluation(sub, tmp, label, title=title)
            plots += reporting.plot_costs(summary, tmp, label, title=title)
            plots.append(reporting.plot_baseline_curves(curves.get(freq, {}), tmp / f"{label}_baseline_curves.png",
                                                        title, ev.n_ahead))
        failpoint("evaluation")
    tables = {k: out / v.name for k, v in tables.items()}
    summaries = {k: out / v.name for k, v in summaries.items()}
    plots = [out / p.name for p in plots]
    first = next(iter(tables.values()), None)
    return Evaluation(ev, len(test), tables, first.with_suffix(".md").read_text() if first else "", plots, metrics,
                      summaries, "\n\n".join(vs_rule), out / TRADE_LOG_FILE, "\n\n".join(costs_md))


def log_evaluation(result: Evaluation, out: Path) -> None:
    """Into the active MLflow run: the metrics, and ``out`` as the ``evaluation`` artifacts."""
    mlflow.log_metrics(result.headline)
    mlflow.log_artifacts(str(out), EVALUATION_ARTIFACT)


def evaluate_on_test(name: str, model_dir: Path, windows_dir: Path, out: Path, *, batch_size: int, device: str,
                     tracking: MLflowTracking, experiment: str, run_id: str, costs: CostConfig = CostConfig()
                     ) -> Evaluation:
    """Evaluate the model in ``model_dir`` on the test windows and write everything to ``out``
    (:func:`evaluate_windows`); log it all into the training run ``run_id``, which must be the
    run that wrote ``model_dir`` (lem_pipeline.trained_model.check_lineage)."""
    model = load_model(model_dir)
    check_lineage(model, model_dir, run_id)
    result = evaluate_windows(name, model, windows_dir, out, batch_size=batch_size, device=device, costs=costs)
    with tracking.run(experiment, run_id=run_id):
        log_evaluation(result, out)
        mlflow.set_tag("lem.stage", "evaluated")
    return result
