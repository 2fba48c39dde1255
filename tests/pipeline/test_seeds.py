"""Training seeds (issue 13): with ``seeds`` = K > 1 the training asset trains K seeds as child
runs of one parent MLflow run, and evaluation reports each headline number's mean and std across
them; with one seed, one run as before. Real Dagster instance, real MLflow store, a tiny model."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pytest
import torch

from lem_model.config import ModelSize
from lem_model.train import TrainConfig
from lem_pipeline.assets.evaluation import build_evaluation_assets
from lem_pipeline.assets.training import build_training_assets
from lem_pipeline.lake import DataLake
from lem_pipeline.model_training import PARENT_TAG, RUN_FILE, training_key
from lem_pipeline.presets import equity_only
from lem_pipeline.seed_spread import SEEDS_FILE, aggregate, spread_markdown, spread_metrics
from lem_pipeline.seed_training import SEEDS_TAG, train_seeds_for_asset
from lem_pipeline.tracking import MLflowTracking
from tests.conftest import REPO

PRESET = equity_only("test-seeds", "a tiny model on the fixture windows", ("AAPL", "KO"),
                     model=ModelSize(hidden_size=8, num_embedding=4, num_heads=2, fused_hidden=8),
                     training=TrainConfig(epochs=1, batch_size=64, lr=1e-3, samples_per_epoch=256, progress=False,
                                          device="cpu"))


def test_spread_across_seeds_by_hand():
    headlines = [{"a": 1.0, "b": 0.5, "c": 7.0}, {"a": 2.0, "b": 0.5, "c": 9.0}, {"a": 6.0, "b": 0.5}]
    spread = aggregate(headlines)
    # a: mean 3; deviations -2, -1, 3; sample variance (4 + 1 + 9) / 2 = 7. c: missing from one seed.
    assert list(spread) == ["a", "b"]
    assert spread["a"] == {"mean": 3.0, "std": pytest.approx(7 ** 0.5), "seeds": [1.0, 2.0, 6.0]}
    assert spread["b"] == {"mean": 0.5, "std": 0.0, "seeds": [0.5, 0.5, 0.5]}
    assert spread_metrics(spread) == {"a_seed_mean": 3.0, "a_seed_std": pytest.approx(7 ** 0.5), "b_seed_mean": 0.5,
                                      "b_seed_std": 0.0}
    with pytest.raises(ValueError, match="at least two"):
        aggregate(headlines[:1])
    table = spread_markdown({"test_buy_min6_mean_bps": spread["a"], "test_vs_rule_buy_min6_ci_lo": spread["b"]},
                            [0, 1, 2])
    assert table.splitlines()[0] == "| Metric | Mean | Std | seed 0 | seed 1 | seed 2 |"
    assert table.splitlines()[2].startswith("| test_buy_min6_mean_bps | 3 | 2.64575 | 1 | 2 | 6 |")
    assert "ci_lo" not in table  # intervals are not headline numbers of the table


def test_seeds_config_and_training_key(small_equity_windows):
    cfg = TrainConfig(seed=3, seeds=3)
    assert [(c.seed, c.seeds) for c in cfg.per_seed()] == [(3, 1), (4, 1), (5, 1)]
    assert TrainConfig(seed=3).per_seed() == [TrainConfig(seed=3)]
    with pytest.raises(ValueError, match="at least 1"):
        TrainConfig(seeds=0)
    model_cfg = PRESET.model  # any dataclass works as the model part of the key
    one = training_key(model_cfg, TrainConfig(seed=3), small_equity_windows)
    # One seed keys as before `seeds` existed (resumable state stays valid); K seeds key apart.
    assert one == training_key(model_cfg, cfg.per_seed()[0], small_equity_windows)
    assert len({one, training_key(model_cfg, cfg, small_equity_windows),
                training_key(model_cfg, dataclasses.replace(cfg, seeds=2), small_equity_windows)}) == 3


def environment(root: Path, windows: Path) -> tuple[DataLake, MLflowTracking]:
    lake = DataLake(root=str(root / "lake"))
    shutil.copytree(windows, lake.windows_dir("equity"))
    return lake, MLflowTracking(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_root=str(root / "artifacts"))


def materialise(instance: dg.DagsterInstance, lake: DataLake, tracking: MLflowTracking, assets: list[str],
                config: dict) -> None:
    defs = [a for a in build_training_assets(PRESET) + build_evaluation_assets(PRESET)
            if a.key.to_user_string() in assets]
    result = dg.materialize(defs, instance=instance, resources={"lake": lake, "mlflow": tracking},
                            run_config={"ops": {"equity_lem_model": {"config": config}}})
    assert result.success


def latest(instance: dg.DagsterInstance, asset: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


@pytest.fixture(scope="module")
def two_seeds(small_equity_windows, tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    (root / "dagster_home").mkdir()
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(root / "dagster_home"))
    lake, tracking = environment(root, small_equity_windows)
    instance = dg.DagsterInstance.get()
    materialise(instance, lake, tracking, ["equity_lem_model", "equity_evaluation"], {"seeds": 2})
    mlflow.set_tracking_uri(tracking.tracking_uri)
    yield {"lake": lake, "tracking": tracking, "instance": instance, "trained": latest(instance, "equity_lem_model"),
           "evaluation": latest(instance, "equity_evaluation")}
    mp.undo()


def test_two_seeds_train_as_two_child_runs_of_one_parent(two_seeds):
    meta = two_seeds["trained"]
    parent = mlflow.get_run(meta["mlflow_parent_run_id"])
    assert parent.data.tags[SEEDS_TAG] == "2" and parent.data.tags["preset"] == "test-seeds"
    assert parent.data.tags["dagster.asset_key"] == "equity_lem_model" and parent.data.params["train.seeds"] == "2"
    seed_runs = meta["seed_runs"]
    assert [s["seed"] for s in seed_runs] == [0, 1] and meta["mlflow_run_id"] == seed_runs[0]["mlflow_run_id"]
    children = mlflow.search_runs([parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
                                  output_format="list")
    assert {c.info.run_id for c in children} == {s["mlflow_run_id"] for s in seed_runs}
    for s in seed_runs:
        child = mlflow.get_run(s["mlflow_run_id"])
        assert child.info.status == "FINISHED" and child.data.tags["lem.seed"] == str(s["seed"])
        assert child.data.params["train.seed"] == str(s["seed"]) and "train.seeds" not in child.data.params
        assert child.data.metrics["best_val_loss"] == pytest.approx(s["best_val_loss"])
    # Seed 0 is the asset's model (in the lake's usual place); seed 1 has its own directory and weights.
    lake = two_seeds["lake"]
    assert [s["model_dir"] for s in seed_runs] == [str(lake.model_dir("equity")), str(lake.model_dir("equity_seed1"))]
    w0, w1 = (torch.load(Path(s["model_dir"]) / "model.pt", weights_only=True) for s in seed_runs)
    assert w0.keys() == w1.keys() and not all(torch.equal(w0[k], w1[k]) for k in w0)
    # One registry version (seed 0's), and every training state is gone.
    versions = mlflow.MlflowClient().search_model_versions("name = 'lem-equity'")
    assert [v.run_id for v in versions] == [meta["mlflow_run_id"]] and meta["registered_model"] == "lem-equity/1"
    assert not any((lake.path / "training").rglob(RUN_FILE))
    losses = [s["best_val_loss"] for s in seed_runs]
    assert parent.data.metrics["best_val_loss_seed_mean"] == pytest.approx(np.mean(losses))


def test_evaluation_reports_each_headline_number_across_seeds(two_seeds):
    meta, evaluation = two_seeds["trained"], two_seeds["evaluation"]
    out = two_seeds["lake"].evaluation_dir("equity")
    seeds = json.loads((out / SEEDS_FILE).read_text())
    assert seeds["std"] == "sample (ddof=1)" and seeds["seeds"] == meta["seed_runs"]
    assert (out / "summary.json").is_file() and (out / "seeds" / "seed_1" / "summary.json").is_file()
    runs = [mlflow.get_run(s["mlflow_run_id"]) for s in meta["seed_runs"]]
    parent = mlflow.get_run(meta["mlflow_parent_run_id"])
    assert parent.data.tags["lem.stage"] == "evaluated"
    assert "test_match_vwap_std_reduction" in seeds["metrics"] and len(seeds["metrics"]) > 20
    for name, s in seeds["metrics"].items():
        a, b = (r.data.metrics[name] for r in runs)  # each seed's own evaluation, in its own run
        assert s["seeds"] == pytest.approx([a, b], abs=1e-9)
        assert s["mean"] == pytest.approx((a + b) / 2, abs=1e-9)
        assert s["std"] == pytest.approx(abs(a - b) / 2 ** 0.5, abs=1e-9)
        assert parent.data.metrics[f"{name}_seed_mean"] == pytest.approx(s["mean"], abs=1e-9)
        assert parent.data.metrics[f"{name}_seed_std"] == pytest.approx(s["std"], abs=1e-9)
    reduction = seeds["metrics"]["test_match_vwap_std_reduction"]
    assert reduction["std"] > 0  # two different models: not the same number twice
    assert "| test_match_vwap_std_reduction |" in evaluation["seed_spread"]
    assert evaluation["mlflow_run_id"] == meta["mlflow_run_id"]  # the champion is seed 0's, as with one seed
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "evaluation")}
    assert artifacts == {"evaluation/seeds.json"}


def test_one_seed_is_one_run_without_a_parent(two_seeds):
    instance, lake, tracking = two_seeds["instance"], two_seeds["lake"], two_seeds["tracking"]
    materialise(instance, lake, tracking, ["equity_lem_model"], {"seeds": 1, "seed": 5})
    meta = latest(instance, "equity_lem_model")
    assert not {"seed_runs", "mlflow_parent_run_id", "mlflow_parent_run"} & meta.keys()
    run = mlflow.get_run(meta["mlflow_run_id"])
    assert PARENT_TAG not in run.data.tags and "lem.seed" not in run.data.tags and SEEDS_TAG not in run.data.tags
    assert run.data.params["train.seed"] == "5" and "train.seeds" not in run.data.params
    assert meta["model_dir"] == str(lake.model_dir("equity")) and meta["registered_model"] == "lem-equity/2"


def test_a_look_ahead_model_is_evaluated_but_never_champion(two_seeds):
    """causal=False trains the reference's one-bar look-ahead to measure it; the live policy
    refuses to serve such a model, so the champion alias stays where it was."""
    instance, lake, tracking = two_seeds["instance"], two_seeds["lake"], two_seeds["tracking"]
    client = mlflow.MlflowClient()
    before = client.get_model_version_by_alias("lem-equity", "champion").version
    materialise(instance, lake, tracking, ["equity_lem_model", "equity_evaluation"], {"causal": False})
    assert latest(instance, "equity_lem_model")["causal"] is False
    assert latest(instance, "equity_evaluation")["champion"] == "not promoted: a look-ahead model (causal=False)"
    assert client.get_model_version_by_alias("lem-equity", "champion").version == before


def test_a_killed_several_seed_training_resumes_its_parent_and_the_killed_seed(small_equity_windows, tmp_path):
    """Killed after seed 1's first epoch (seed 0 done): the retry reopens the parent run, keeps
    seed 0's run and model, and resumes seed 1 in its own child run from its saved epoch."""
    lake, tracking = environment(tmp_path, small_equity_windows)
    cfg = dataclasses.replace(PRESET.training, epochs=2, early_stop_patience=5, seeds=2)
    args = dict(causal=True, preset=PRESET, lake=lake, tracking=tracking, run_id="dagster-run-1",
                asset_key="equity_lem_model", log=lambda _: None)
    code = ("import dataclasses; from lem_pipeline.lake import DataLake; from lem_pipeline.tracking import "
            "MLflowTracking; from lem_pipeline.seed_training import train_seeds_for_asset; "
            "from tests.pipeline.test_seeds import PRESET; "
            f"lake = DataLake(root={lake.root!r}); "
            f"t = MLflowTracking(tracking_uri={tracking.tracking_uri!r}, artifact_root={tracking.artifact_root!r}); "
            "cfg = dataclasses.replace(PRESET.training, epochs=2, early_stop_patience=5, seeds=2); "
            "train_seeds_for_asset('equity', 'equity', cfg, causal=True, preset=PRESET, lake=lake, tracking=t, "
            "run_id='dagster-run-1', asset_key='equity_lem_model', log=print)")
    killed = subprocess.run([sys.executable, "-c", code], env={**os.environ, "LEM_FAILPOINT": "epoch:3"}, cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    mlflow.set_tracking_uri(tracking.tracking_uri)
    before = {r.data.tags.get("lem.seed", "parent"): r.info.run_id
              for r in mlflow.search_runs(search_all_experiments=True, output_format="list")}
    assert before.keys() == {"parent", "0", "1"}

    seeded = train_seeds_for_asset("equity", "equity", cfg, **args)
    assert seeded.parent_run_id == before["parent"]
    assert [m.run_id for m in seeded.models] == [before["0"], before["1"]]
    assert seeded.models[1].result.resumed_from_epoch == 1 and seeded.models[0].registered == "lem-equity/1"
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    assert mlflow.get_run(before["1"]).data.tags["lem.resumed_at_epoch"] == "2"
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(before["1"], "val_loss")] == [0, 1]
    assert len(mlflow.MlflowClient().search_model_versions("name = 'lem-equity'")) == 1
    assert not [p for p in (lake.path / "training").rglob("*") if p.is_file()]  # no state left to resume
