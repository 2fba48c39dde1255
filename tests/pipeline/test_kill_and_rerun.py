"""Issue 14, must-show 2 and 4: `lem run` killed -9 at four points, then run again.

The `smoke` preset (three fixture stocks, a small model, two epochs) runs as a real `lem run`
subprocess with an empty DAGSTER_HOME, lake and MLflow store. A failpoint (lem_model.failpoints)
makes the process SIGKILL itself mid-ingest, mid-window-build, after one training epoch and
mid-evaluation, in that order, on a lake that already holds a complete run's outputs. After
each kill the previous complete state is still there; the last `lem run` completes, the
training killed after its first epoch resumed from it, nothing stays STARTED or RUNNING, and
every output equals the uninterrupted run's. Then the registry round trip: the champion model
schedules exactly as the model directory does.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pytest
import torch

from lem_model.training_state import TRAINING_STATE, load_training_state
from tests.conftest import REPO, YAHOO_DIR, clean_env

POINTS = ("ingest", "windows", "epoch", "evaluation")


def lem(env: dict[str, str], cwd: Path, *args: str, failpoint: str | None = None) -> subprocess.CompletedProcess:
    full = clean_env(**env)
    if failpoint:
        full["LEM_FAILPOINT"] = failpoint
    return subprocess.run([sys.executable, "-m", "lem_pipeline.cli", *args], env=full, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def outputs(data: Path) -> dict[str, str]:
    """A digest of every output that must not depend on crashes (build times and run ids aside)."""
    out = {}
    for f in sorted((data / "yahoo").glob("*.parquet")):
        out[f"yahoo/{f.name}"] = hashlib.sha256(f.read_bytes()).hexdigest()
    out["windows"] = json.loads((data / "windows" / "equity" / "meta.json").read_text())["digest"]
    state = torch.load(data / "models" / "equity" / "model.pt", weights_only=True)
    out["model"] = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
    evaluation = data / "evaluation" / "equity"
    for f in sorted(evaluation.glob("*.csv")):
        out[f"evaluation/{f.name}"] = hashlib.sha256(f.read_bytes()).hexdigest()
    with np.load(evaluation / "slippage.npz") as z:
        out["slippage"] = hashlib.sha256(b"".join(z[k].tobytes() for k in sorted(z.files))).hexdigest()
    return out


def hidden_entries(data: Path) -> list[str]:
    """Temporaries a crash could leave (dot-names beside the outputs)."""
    return sorted(str(p.relative_to(data)) for sub in ("yahoo", "windows", "models", "evaluation")
                  if (data / sub).is_dir() for p in (data / sub).iterdir()
                  if p.name.startswith(".") and not p.name.endswith(".lock"))  # a lock file is not a leftover


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("killed")
    env = {"DAGSTER_HOME": str(root / "dagster_home"), "LEM_DATA_DIR": str(root / "data"),
           "LEM_MLFLOW_DIR": str(root / "mlruns"), "LEM_YAHOO_DIR": str(YAHOO_DIR), "PYTHONPATH": str(REPO)}
    first = lem(env, root, "run", "--preset", "smoke", "--quiet")
    assert first.returncode == 0, first.stderr[-4000:]
    return {"root": root, "env": env, "data": root / "data", "first": first, "uninterrupted": outputs(root / "data")}


def test_lem_run_sets_up_a_new_dagster_home_and_says_where_to_look(deployment):
    home = Path(deployment["env"]["DAGSTER_HOME"])
    assert (home / "dagster.yaml").read_text() == (REPO / "dagster_home" / "dagster.yaml").read_text()
    out = deployment["first"].stdout
    assert f"DAGSTER_HOME={home} dagster dev -w" in out and "mlflow ui --backend-store-uri sqlite:///" in out
    assert "equity: Match VWAP std" in out and "#/experiments/" in out


def test_kill_9_at_four_points_then_lem_run_completes_with_the_same_outputs(deployment):
    root, env, data, before = deployment["root"], deployment["env"], deployment["data"], deployment["uninterrupted"]
    for i, point in enumerate(POINTS):
        killed = lem(env, root, "run", "--preset", "smoke", "--quiet", failpoint=point)
        assert killed.returncode == -9, (point, killed.stderr[-4000:])
        if i:  # each run first fails the run the previous kill left STARTED
            assert "marked 1 Dagster runs failed" in killed.stdout, (point, killed.stdout)
        # What a crash leaves is the old complete state (the half-written new one is hidden aside);
        # after the "evaluation" kill the model is the resumed training's: the same weights.
        now = outputs(data)
        assert now == before, (point, {k: (before[k], now.get(k)) for k in before if before[k] != now.get(k)})
        if point == "epoch":
            states = list((data / "training" / "equity").glob(f"*/{TRAINING_STATE}"))
            assert len(states) == 1 and load_training_state(states[0])["epoch"] == 0
        if point == "evaluation":  # the training killed after epoch 1: its MLflow run failed, then resumed
            assert "and 1 MLflow runs FAILED" in killed.stdout, killed.stdout
            assert "resuming MLflow run" in killed.stderr and "resumed at epoch 2" in killed.stderr
    final = lem(env, root, "run", "--preset", "smoke", "--quiet")
    assert final.returncode == 0, final.stderr[-4000:]
    assert "marked 1 Dagster runs failed and 0 MLflow runs FAILED" in final.stdout, final.stdout
    assert outputs(data) == before
    assert hidden_entries(data) == []
    assert not any((data / "training" / "equity").iterdir())  # no checkpoint left behind

    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    runs = instance.get_runs()
    assert not [r.run_id for r in runs if r.status in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING)]
    assert sum(r.status == dg.DagsterRunStatus.FAILURE for r in runs) == 4
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("lem-equity")
    statuses = [r.info.status for r in client.search_runs([exp.experiment_id])]
    assert "RUNNING" not in statuses and statuses.count("FINISHED") >= 2
    resumed = client.search_runs([exp.experiment_id], "tags.`lem.resumed_at_epoch` = '2'")
    assert len(resumed) == 1


def test_registry_round_trip_champion_schedules_as_the_model_dir(deployment):
    root, env, data = deployment["root"], deployment["env"], deployment["data"]
    bars = next((data / "bars" / "equity").glob("KO_*.parquet"))
    args = ["--bars", str(bars), "--side", "sell", "--min-duration", "6", "--json"]
    by_dir = lem(env, root, "schedule", "--model", str(data / "models" / "equity"), *args)
    by_alias = lem(env, root, "schedule", "--model", "models:/lem-equity@champion", *args)
    assert by_dir.returncode == 0 and by_alias.returncode == 0, (by_dir.stderr[-2000:], by_alias.stderr[-2000:])
    assert json.loads(by_alias.stdout) == json.loads(by_dir.stdout)
    assert json.loads(by_dir.stdout)["steps"][0]["fraction"] > 0
    lineage = json.loads((data / "models" / "equity" / "lineage.json").read_text())
    version = mlflow.MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}").get_model_version_by_alias(
        "lem-equity", "champion")
    assert version.run_id == lineage["mlflow_run_id"]
    assert not (root / "mlflow.db").exists()  # the store named by LEM_MLFLOW_DIR, nowhere else


def test_lem_run_seed_trains_another_seed_and_lem_results_names_its_run(deployment):
    root, env = deployment["root"], deployment["env"]
    proc = lem(env, root, "run", "--preset", "smoke", "--quiet", "--seed", "7")
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("lem-equity")
    [latest] = client.search_runs([exp.experiment_id], "tags.`dagster.asset_key` = 'equity_lem_model'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
    assert latest.data.params["train.seed"] == "7"
    results = lem(env, root, "results", "--preset", "smoke", "--out", str(root / "RESULTS_smoke.md"))
    assert results.returncode == 0, results.stderr[-4000:]
    text = (root / "RESULTS_smoke.md").read_text()
    assert f"MLflow run `{latest.info.run_id}`" in text and "Not measured yet: run `lem lookahead`" in text
