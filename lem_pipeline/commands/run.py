"""``lem run``: the README's main command. Materialises the preset's whole graph (ingest,
features, training, evaluation) on the local instance, job by job, stopping at the first job
with a failed run (what follows would read incomplete inputs)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from lem_model.evaluate import EvalArrays, headline
from lem_pipeline import settings
from lem_pipeline.commands.local import LocalDeployment, add_preset_argument, open_local
from lem_pipeline.lake import DataLake
from lem_pipeline.local_runs import run_partitions
from lem_pipeline.materializations import NotMaterializedError, latest_metadata
from lem_pipeline.model_training import PROGRESS, experiment_name
from lem_pipeline.presets import DATASETS
from lem_pipeline.run_health import fail_dead_runs
from lem_pipeline.tracking import MLflowTracking
from lem_pipeline.train_ddp import EXPERIMENT as EXPERIMENT_DDP

TRAINING_JOB_SUFFIX = "_training_job"


def main_jobs(preset) -> list[str]:
    jobs = [j for j, has in (("crypto_ingest_job", preset.streams), ("equity_ingest_job", preset.tickers)) if has]
    jobs.append("features_job")
    jobs += [j for j, has in (("crypto_training_job", preset.streams), ("equity_training_job", preset.tickers)) if has]
    return jobs


def recover(local: LocalDeployment) -> None:
    """Before running anything: fail the runs a killed `lem run` (or any dead process) left in
    progress, Dagster's and MLflow's, so nothing stays STARTED or RUNNING and no pool stays held."""
    dagster_runs = fail_dead_runs(local.instance)
    experiments = [*(experiment_name(d) for d in DATASETS), EXPERIMENT_DDP]
    mlflow_runs = MLflowTracking.from_environment().fail_dead_runs(experiments)
    if dagster_runs or mlflow_runs:
        print(f"recovered: marked {len(dagster_runs)} Dagster runs failed and {len(mlflow_runs)} MLflow runs FAILED "
              "(their process was gone)", flush=True)


def _show_progress() -> None:
    """Epoch lines (loss, ETA) on stderr while training runs in this process."""
    if not PROGRESS.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        PROGRESS.addHandler(handler)
        PROGRESS.setLevel(logging.INFO)
        PROGRESS.propagate = False  # a library's root handler would print every line twice


def where_to_look(local: LocalDeployment, evaluations: list[str]) -> list[str]:
    """The headline of each evaluation and the commands that open the runs."""
    lake = DataLake.from_environment()
    lines = []
    for asset in evaluations:
        try:
            meta = latest_metadata(local.instance, asset)
        except NotMaterializedError:
            continue
        name = asset.removesuffix("_evaluation")
        h = headline(EvalArrays.load(lake.slippage_file(name)))
        lines += [f"{name}: Match VWAP std {h['test_match_vwap_std_bps']:.2f} bps vs TWAP volume "
                  f"{h['test_twap_volume_std_bps']:.2f} bps ({100 * h['test_match_vwap_std_reduction']:.1f}% lower"
                  f"{', every frequency pooled' if len(meta.get('summaries') or {}) > 1 else ''}); "
                  f"{meta.get('champion', '')}",
                  f"  tables: {meta['path']}", f"  MLflow run: {meta['mlflow_run']}"]
    uri = os.environ[settings.MLFLOW_URI]
    return lines + [f"Dagster UI: DAGSTER_HOME={local.home} dagster dev -w workspace.yaml",
                    f"MLflow UI:  mlflow ui --backend-store-uri {uri}"]


def seed_config(job: str, seed: int | None) -> dict | None:
    """``lem run --seed K``: the training asset's own run config (TrainingRunConfig.seed) for a
    training job, so another training seed of a preset is one command; None for other jobs."""
    if seed is None or not job.endswith(TRAINING_JOB_SUFFIX):
        return None
    return {"ops": {f"{job.removesuffix(TRAINING_JOB_SUFFIX)}_lem_model": {"config": {"seed": seed}}}}


def run_jobs(command: str, jobs: list[str], args: argparse.Namespace) -> int:
    local = open_local(args.preset)
    print(f"lem {command}: preset {local.preset.name!r} ({local.preset.description}); DAGSTER_HOME={local.home}",
          flush=True)
    recover(local)
    _show_progress()
    for job in jobs:
        summary = run_partitions(local.defs, job, local.instance, progress=not args.quiet,
                                 run_config=seed_config(job, getattr(args, "seed", None)))
        print(f"{job}: {len(summary.succeeded)} runs succeeded, {len(summary.failed)} failed", flush=True)
        for key, message in list(summary.failed.items())[:10]:
            print(f"  {key}: {message}", file=sys.stderr)
        if summary.failed:
            print(f"lem {command}: {len(summary.failed)} runs failed. If a source cannot be reached, point "
                  "LEM_BINANCE_URL / LEM_YAHOO_DIR at a local mirror (see README).", file=sys.stderr)
            return 1
    evaluations = [f"{d}_evaluation" for d in DATASETS if f"{d}_training_job" in jobs]
    print(f"lem {command}: done.", *where_to_look(local, evaluations), sep="\n")
    return 0


def run(args: argparse.Namespace) -> int:
    from lem_pipeline.presets import get_preset

    return run_jobs("run", main_jobs(get_preset(args.preset)), args)


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="materialise the preset's asset graph on the local Dagster instance")
    add_preset_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars (the training's epoch lines stay)")
    p.add_argument("--seed", type=int, help="train with this seed instead of the preset's (the model's weights and "
                                            "its draws of training windows)")
    p.set_defaults(func=run)
