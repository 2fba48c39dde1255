"""Run-to-run noise: the models of a several-seed training (lem_pipeline.seed_training)
evaluated on the same test windows, and each headline number (the MLflow metrics of
:class:`lem_pipeline.model_evaluation.Evaluation`) as its mean and standard deviation across the
seeds, so a difference between two configurations can be read against the noise of one.

The standard deviation is the sample one (ddof=1): the seeds are a sample of the trainings the
configuration could have produced, and the question is how far one more would land.

Files, beside the first seed's evaluation in ``out``: ``seeds.json`` (the seeds' runs and the
spread of every metric) and ``seeds/seed_{k}/``, the k-th extra seed's whole evaluation (the
layout of ``out``). MLflow: each seed's evaluation in its own run, ``<metric>_seed_mean`` and
``<metric>_seed_std`` and seeds.json in the parent run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import polars as pl

from lem_model.costs import CostConfig
from lem_model.fileio import atomic_write_text
from lem_pipeline import reporting
from lem_pipeline.model_evaluation import EVALUATION_ARTIFACT, Evaluation, evaluate_on_test
from lem_pipeline.tracking import MLflowTracking

SEEDS_FILE = "seeds.json"
SEEDS_DIR = "seeds"
STD_DDOF = 1  # sample standard deviation


def aggregate(headlines: list[dict[str, float]]) -> dict[str, dict]:
    """``{metric: {"mean", "std", "seeds": [one value per seed]}}`` over the metrics every
    headline has (a paired number can be missing from one seed's), in the first one's order."""
    if len(headlines) < 2:
        raise ValueError(f"a spread across seeds needs at least two, got {len(headlines)}")
    names = [k for k in headlines[0] if all(k in h for h in headlines[1:])]
    out = {}
    for name in names:
        v = np.array([h[name] for h in headlines], dtype=np.float64)
        out[name] = {"mean": float(v.mean()), "std": float(v.std(ddof=STD_DDOF)), "seeds": v.tolist()}
    return out


def spread_metrics(spread: dict[str, dict]) -> dict[str, float]:
    """The spread as MLflow metrics: ``<metric>_seed_mean`` and ``<metric>_seed_std``."""
    return {f"{name}_seed_{stat}": s[stat] for name, s in spread.items() for stat in ("mean", "std")}


def is_key_metric(name: str) -> bool:
    """The numbers a reader compares first: Match VWAP and minimum period 6 (means, stds, the
    std reduction, the advantage over the rule and its win rate), not the intervals."""
    return ("_match_" in name or "_min6_" in name) and not name.endswith(("_ci_lo", "_ci_hi"))


def spread_markdown(spread: dict[str, dict], seeds: list[int]) -> str:
    """The key metrics' spread as a Markdown table: mean, std and each seed's value."""
    rows = [{"Metric": name, "Mean": s["mean"], "Std": s["std"],
             **{f"seed {seed}": v for seed, v in zip(seeds, s["seeds"])}}
            for name, s in spread.items() if is_key_metric(name)]
    return reporting.markdown(pl.DataFrame(rows)) if rows else ""


def write_seeds(out: Path, seed_runs: list[dict], spread: dict[str, dict]) -> Path:
    path = out / SEEDS_FILE
    atomic_write_text(path, json.dumps({"std": f"sample (ddof={STD_DDOF})", "seeds": seed_runs, "metrics": spread},
                                       indent=2))
    return path


@dataclass
class SeedSpread:
    evaluations: list[Evaluation]  # one per seed, the asset's model first
    spread: dict[str, dict]  # lem_pipeline.seed_spread.aggregate of their headlines
    path: Path  # seeds.json
    markdown: str  # the key metrics' spread, for the Dagster UI


def evaluate_seeds(name: str, seed_runs: list[dict], first: Evaluation, windows_dir: Path, out: Path, *,
                   batch_size: int, device: str, tracking: MLflowTracking, experiment: str,
                   parent_run_id: str, costs: CostConfig = CostConfig()) -> SeedSpread:
    """Evaluate every seed after the first (``first``: its evaluation, already in ``out``) as the
    first was (:func:`lem_pipeline.model_evaluation.evaluate_on_test`, lineage checked, logged to
    its own run) into ``out``/seeds/seed_{k}; write seeds.json and log the spread to the parent
    run. ``seed_runs``: the training asset's metadata (seed, mlflow_run_id, model_dir)."""
    evaluations = [first]
    for k, entry in enumerate(seed_runs[1:], start=1):
        evaluations.append(evaluate_on_test(name, Path(entry["model_dir"]), windows_dir, out / SEEDS_DIR / f"seed_{k}",
                                            batch_size=batch_size, device=device, tracking=tracking,
                                            experiment=experiment, run_id=entry["mlflow_run_id"], costs=costs))
    spread = aggregate([e.headline for e in evaluations])
    path = write_seeds(out, seed_runs, spread)
    with tracking.run(experiment, run_id=parent_run_id):
        mlflow.log_metrics(spread_metrics(spread))
        mlflow.log_artifact(str(path), EVALUATION_ARTIFACT)
        mlflow.set_tag("lem.stage", "evaluated")
    return SeedSpread(evaluations, spread, path, spread_markdown(spread, [e["seed"] for e in seed_runs]))
