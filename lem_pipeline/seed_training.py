"""Several seeds of one training (``TrainConfig.seeds`` = K > 1): a parent MLflow run and one
nested child run per seed, each a whole training through lem_pipeline.model_training (seed
``seed + k``, its own model directory, lem_pipeline.lake.seed_model_name, and its own resumable
state), so MLflow's run comparison shows the run-to-run noise of a configuration.

The first seed's model is the asset's model: it is the one registered, and its run is the one
evaluation, the registry's champion and ``lem schedule`` use, as with one seed. The others are
logged (``model_state``) but registered nowhere.

A K-seed training killed part-way resumes: its state directory (keyed by the K-seed config)
holds the parent run's id, reopened on the next attempt, and a record of each seed that
finished, which is not trained again while its model directory is still the one its run wrote;
the seed that was interrupted resumes from its own training state, in its own child run.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow

from lem_model import LEMConfig
from lem_model.fileio import atomic_write_text
from lem_model.train import TrainConfig, TrainResult
from lem_pipeline.lake import DataLake, seed_model_name
from lem_pipeline.model_training import (PARENT_TAG, RUN_FILE, TrainedModel, asset_run_name, asset_tags,
                                         experiment_name, reopenable_run, train_for_asset, train_params, training_key)
from lem_pipeline.presets import Preset
from lem_pipeline.seed_spread import aggregate, spread_metrics
from lem_pipeline.tracking import MLflowTracking, git_commit
from lem_pipeline.trained_model import read_lineage
from lem_pipeline.windows import read_meta

SEEDS_TAG = "lem.seeds"  # on a parent run: how many seeds it holds


@dataclass
class SeededTraining:
    seeds: list[int]
    models: list[TrainedModel]  # one per seed, in the order of ``seeds``: the first is the asset's model
    parent_run_id: str | None  # None: one seed, one run, no parent

    @property
    def model(self) -> TrainedModel:
        return self.models[0]

    def seed_runs(self) -> list[dict]:
        """What the training asset's metadata says of each seed (evaluation reads it)."""
        return [{"seed": seed, "mlflow_run_id": m.run_id, "model_dir": str(m.model_dir),
                 "best_val_loss": m.result.best_val_loss} for seed, m in zip(self.seeds, self.models)]


def _record(trained: TrainedModel) -> str:
    return json.dumps({**dataclasses.asdict(trained), "model_dir": str(trained.model_dir)})


def _finished(record: Path, tracking: MLflowTracking, parent_run_id: str) -> TrainedModel | None:
    """A seed an earlier attempt finished, if its run is still a child of ``parent_run_id`` and
    its model directory is still the one that run wrote."""
    if not record.is_file():
        return None
    d = json.loads(record.read_text())
    trained = TrainedModel(**{**d, "model_dir": Path(d["model_dir"]), "result": TrainResult(**d["result"])})
    if not tracking.has_run(trained.run_id) or tracking.run_tags(trained.run_id).get(PARENT_TAG) != parent_run_id:
        return None
    lineage = read_lineage(trained.model_dir)
    return trained if lineage is not None and lineage["mlflow_run_id"] == trained.run_id else None


def train_seeds_for_asset(dataset: str, name: str, train_cfg: TrainConfig, *, causal: bool, preset: Preset,
                          lake: DataLake, tracking: MLflowTracking, run_id: str, asset_key: str,
                          log: Callable[[str], None]) -> SeededTraining:
    """``train_cfg.seeds`` trainings of ``name`` on ``dataset``'s windows (see the module). One
    seed is exactly :func:`lem_pipeline.model_training.train_for_asset`: one run, no parent."""
    configs = train_cfg.per_seed()
    common = dict(causal=causal, preset=preset, lake=lake, tracking=tracking, run_id=run_id, asset_key=asset_key,
                  log=log)
    if len(configs) == 1:
        return SeededTraining([train_cfg.seed], [train_for_asset(dataset, name, train_cfg, **common)], None)
    windows = lake.windows_dir(dataset)
    model_cfg = LEMConfig.for_windows(read_meta(windows), preset.model, preset.allocator, causal=causal)
    state_dir = lake.training_state_dir(name, training_key(model_cfg, train_cfg, windows))
    experiment = experiment_name(dataset)
    tracking.fail_dead_runs([experiment])
    resume_id = reopenable_run(state_dir, tracking)
    tags = {"git.commit": git_commit(), **asset_tags(run_id, asset_key, preset), SEEDS_TAG: str(len(configs))}
    with tracking.run(experiment, run_id=resume_id, run_name=f"{asset_run_name(dataset, causal, run_id)}-seeds",
                      tags=tags) as parent:
        if resume_id is None:
            mlflow.log_params({**{f"train.{k}": str(v) for k, v in train_params(train_cfg).items()},
                               "preset": preset.name, "dataset": dataset})
            atomic_write_text(state_dir / RUN_FILE, parent.info.run_id)
        else:
            log(f"{len(configs)} seeds: resuming parent MLflow run {resume_id} from {state_dir}")
        models = []
        for k, cfg in enumerate(configs):
            record = state_dir / f"seed_{k}.json"
            trained = _finished(record, tracking, parent.info.run_id)
            if trained is None:
                log(f"seed {cfg.seed} ({k + 1} of {len(configs)})")
                trained = train_for_asset(dataset, seed_model_name(name, k), cfg, **common,
                                          parent_run_id=parent.info.run_id, register=k == 0)
                atomic_write_text(record, _record(trained))
            else:
                log(f"seed {cfg.seed}: trained before, in MLflow run {trained.run_id}")
            models.append(trained)
        mlflow.log_metrics(spread_metrics(aggregate([{"best_val_loss": m.result.best_val_loss} for m in models])))
    shutil.rmtree(state_dir, ignore_errors=True)  # every seed succeeded: nothing left to resume
    return SeededTraining([c.seed for c in configs], models, parent.info.run_id)
