"""Issue 14, findings 3, 5, 7 and 10 at unit scale: dead runs are found and failed, a model
directory is tied to its run, a training state is never unpickled, and a killed training resumes
into the same MLflow run. (The whole pipeline under kill -9: test_kill_and_rerun.py.)"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import mlflow
import pytest
import torch
from dagster._core.events import EngineEventData
from dagster._core.launcher import WorkerStatus
from dagster._core.test_utils import create_run_for_test

from lem_model import LargeExecutionModel, LEMConfig
from lem_model.processes import process_alive
from lem_model.train import TrainConfig, seed_everything, train
from lem_model.training_state import TRAINING_STATE, TrainingStateError, load_training_state
from lem_model.window_dataset import WindowDataset
from lem_pipeline.model_evaluation import evaluate_on_test
from lem_pipeline.model_training import RUN_FILE, train_on_windows
from lem_pipeline.run_health import fail_dead_runs, host_tags, worker_status
from lem_pipeline.trained_model import LINEAGE, LineageError, save_trained
from lem_pipeline.tracking import MLflowTracking


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def small_model(windows: Path) -> LargeExecutionModel:
    meta = WindowDataset(windows, "train").meta
    seed_everything(0)
    return LargeExecutionModel(LEMConfig(n_features=len(meta["features"]), lookback=meta["config"]["lookback"],
                                         n_ahead=meta["config"]["n_ahead"], hidden_size=8, num_embedding=4,
                                         num_heads=2, fused_hidden=8))


def started_run(instance: dg.DagsterInstance, pid: int, tags: dict[str, str] | None = None) -> dg.DagsterRun:
    """A STARTED run whose worker Dagster recorded as ``pid`` (the engine event every run has)."""
    run = create_run_for_test(instance, job_name="j", status=dg.DagsterRunStatus.STARTING, tags=tags or {})
    instance.report_engine_event("Started process for run", run, EngineEventData.in_process(pid))
    instance.report_dagster_event(dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name="j"), run.run_id)
    return instance.get_run_by_id(run.run_id)


def test_finding_03_run_monitoring_fails_runs_whose_process_died(dagster_home):
    instance = dg.DagsterInstance.get()
    assert instance.run_monitoring_enabled and instance.run_launcher.supports_check_run_worker_health
    dead = started_run(instance, dead_pid())
    alive = started_run(instance, os.getpid(), tags=host_tags())
    assert dead.status == dg.DagsterRunStatus.STARTED
    assert instance.run_launcher.check_run_worker_health(dead).status == WorkerStatus.NOT_FOUND
    assert instance.run_launcher.check_run_worker_health(alive).status == WorkerStatus.RUNNING

    # Dagster's own run-monitoring step, as the daemon calls it, with our launcher's health check.
    from dagster._daemon.monitoring.run_monitoring import monitor_started_run

    import logging
    monitor_started_run(instance, None, instance.get_run_record_by_id(dead.run_id), logging.getLogger("test"))
    assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE

    # `lem run` (no daemon) uses the same check: only the dead one is failed.
    dead2 = started_run(instance, dead_pid())
    assert fail_dead_runs(instance) == [dead2.run_id]
    assert instance.get_run_by_id(dead2.run_id).status == dg.DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(alive.run_id).status == dg.DagsterRunStatus.STARTED


def test_finding_03_a_reused_pid_is_not_the_runs_worker(dagster_home):
    """After a reboot another process may hold the dead worker's pid; it was born after the run
    started, so it cannot be the run's worker."""
    instance = dg.DagsterInstance.get()
    run = create_run_for_test(instance, job_name="j", status=dg.DagsterRunStatus.STARTING)
    instance.report_dagster_event(dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name="j"), run.run_id)
    time.sleep(2.5)
    newcomer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        instance.report_engine_event("Started process for run", run, EngineEventData.in_process(newcomer.pid))
        assert process_alive(newcomer.pid)
        assert worker_status(instance, instance.get_run_by_id(run.run_id)) == WorkerStatus.NOT_FOUND
        unknown = create_run_for_test(instance, job_name="j", status=dg.DagsterRunStatus.STARTED)
        assert worker_status(instance, unknown) == WorkerStatus.UNKNOWN  # no pid recorded: left alone
    finally:
        newcomer.kill()
        newcomer.wait()


def test_finding_03_dead_mlflow_runs_are_marked_failed(tmp_path):
    tracking = MLflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=str(tmp_path / "a"))
    code = ("import sys, os; from lem_pipeline.tracking import MLflowTracking; "
            f"t = MLflowTracking(tracking_uri={tracking.tracking_uri!r}, artifact_root={tracking.artifact_root!r}); "
            "cm = t.run('lem-x'); r = cm.__enter__(); print(r.info.run_id, flush=True); os._exit(0)")
    run_id = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            timeout=120).stdout.split()[-1]
    with tracking.run("lem-x") as live:
        assert mlflow.get_run(run_id).info.status == "RUNNING"
        assert tracking.fail_dead_runs(["lem-x"]) == [run_id]  # this process's own run is alive: kept
        assert mlflow.get_run(live.info.run_id).info.status == "RUNNING"
    assert mlflow.get_run(run_id).info.status == "FAILED"


def test_a_finished_run_reopened_by_a_process_that_fails_or_dies_stays_finished(tmp_path):
    """Evaluation logs into its finished training run: an evaluation that raises, or whose
    process dies, leaves that run FINISHED (the training's work was done), not FAILED."""
    tracking = MLflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=str(tmp_path / "a"))
    with tracking.run("lem-x") as training:
        run_id = training.info.run_id
    with pytest.raises(RuntimeError, match="evaluation broke"):
        with tracking.run("lem-x", run_id=run_id):
            raise RuntimeError("evaluation broke")
    assert mlflow.get_run(run_id).info.status == "FINISHED"
    code = ("import os; from lem_pipeline.tracking import MLflowTracking; "
            f"t = MLflowTracking(tracking_uri={tracking.tracking_uri!r}, artifact_root={tracking.artifact_root!r}); "
            f"cm = t.run('lem-x', run_id={run_id!r}); cm.__enter__(); os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert mlflow.get_run(run_id).info.status == "RUNNING"
    assert tracking.fail_dead_runs(["lem-x"]) == [run_id]
    assert mlflow.get_run(run_id).info.status == "FINISHED"
    with pytest.raises(RuntimeError):  # a run that had failed is reopened (a resumed training) and fails again
        with tracking.run("lem-x") as other:
            raise RuntimeError
    with pytest.raises(RuntimeError):
        with tracking.run("lem-x", run_id=other.info.run_id):
            raise RuntimeError
    assert mlflow.get_run(other.info.run_id).info.status == "FAILED"


def test_finding_05_a_model_dir_from_another_run_is_refused(small_equity_windows, tmp_path):
    model = small_model(small_equity_windows)
    model_dir = save_trained(model, small_equity_windows, tmp_path / "model", "run-new")
    tracking = MLflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=str(tmp_path / "a"))
    out = tmp_path / "evaluation"
    out.mkdir()
    (out / "equity_daily_main.csv").write_text("the previous, good evaluation")
    # The crash this guards against: new weights saved, the materialisation still naming the old run.
    with pytest.raises(LineageError, match="trained by MLflow run run-new, not run-old"):
        evaluate_on_test("equity", model_dir, small_equity_windows, out, batch_size=64, device="cpu",
                         tracking=tracking, experiment="lem-equity", run_id="run-old")
    assert (out / "equity_daily_main.csv").read_text() == "the previous, good evaluation"
    assert sorted(p.name for p in out.iterdir()) == ["equity_daily_main.csv"]
    # Weights changed behind the lineage's back are refused too.
    other = small_model(small_equity_windows)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    torch.save(other.state_dict(), model_dir / "model.pt")
    with pytest.raises(LineageError, match="do not match the digest"):
        evaluate_on_test("equity", model_dir, small_equity_windows, out, batch_size=64, device="cpu",
                         tracking=tracking, experiment="lem-equity", run_id="run-new")
    assert (model_dir / LINEAGE).is_file()


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_finding_07_a_crafted_training_state_is_never_unpickled(small_equity_windows, tmp_path):
    marker = tmp_path / "pwned"
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    with open(state_dir / TRAINING_STATE, "wb") as f:
        pickle.dump({"epoch": 0, "payload": _Exploit(marker)}, f)
    with pytest.raises(TrainingStateError, match=str(state_dir / TRAINING_STATE)):
        load_training_state(state_dir / TRAINING_STATE)
    # Resuming (what train_ddp and the training assets do) refuses it the same way.
    model = small_model(small_equity_windows)
    with pytest.raises(TrainingStateError, match="nothing in it was executed"):
        train(model, WindowDataset(small_equity_windows, "train"), WindowDataset(small_equity_windows, "val"),
              TrainConfig(epochs=1, batch_size=64, progress=False), state_dir)
    assert not marker.exists()


def test_finding_10_a_killed_training_resumes_in_the_same_mlflow_run(small_equity_windows, tmp_path):
    """Epoch 1 done, then the process dies: the next call resumes at epoch 2 in the same MLflow
    run, ends with the uninterrupted run's weights, and removes its state."""
    cfg = TrainConfig(epochs=3, batch_size=64, lr=1e-3, progress=False, early_stop_patience=5)
    tracking = MLflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=str(tmp_path / "a"))
    common = dict(name="equity", tracking=tracking, experiment="lem-equity", registered="lem-equity",
                  tags={}, run_name="r", params={}, log=lambda _: None)

    straight = train_on_windows(small_model(small_equity_windows), small_equity_windows, cfg, out=tmp_path / "m1",
                                state_dir=tmp_path / "s1", **common)
    # A child process trains one epoch and is killed -9 (the "epoch" failpoint) after saving it.
    code = ("from pathlib import Path; from lem_model.train import TrainConfig; "
            "from lem_pipeline.tracking import MLflowTracking; from lem_pipeline.model_training import train_on_windows; "
            "from tests.pipeline.test_run_recovery import small_model; "
            f"w = Path({str(small_equity_windows)!r}); "
            f"t = MLflowTracking(tracking_uri={tracking.tracking_uri!r}, artifact_root={tracking.artifact_root!r}); "
            f"train_on_windows(small_model(w), w, TrainConfig(epochs=3, batch_size=64, lr=1e-3, progress=False, "
            "early_stop_patience=5), name='equity', tracking=t, experiment='lem-equity', registered='lem-equity', "
            f"tags={{}}, run_name='r', params={{}}, log=print, out=Path({str(tmp_path / 'm2')!r}), "
            f"state_dir=Path({str(tmp_path / 's2')!r}))")
    killed = subprocess.run([sys.executable, "-c", code], env={**os.environ, "LEM_FAILPOINT": "epoch"},
                            cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    run_id = (tmp_path / "s2" / RUN_FILE).read_text()
    assert load_training_state(tmp_path / "s2" / TRAINING_STATE)["epoch"] == 0
    assert mlflow.get_run(run_id).info.status == "RUNNING"  # until something notices the process is gone

    resumed = train_on_windows(small_model(small_equity_windows), small_equity_windows, cfg, out=tmp_path / "m2",
                               state_dir=tmp_path / "s2", **common)
    assert resumed.run_id == run_id and resumed.result.resumed_from_epoch == 1
    assert [h["epoch"] for h in resumed.result.history] == [0, 1, 2]
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["lem.resumed_at_epoch"] == "2"
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "val_loss")] == [0, 1, 2]
    assert not (tmp_path / "s2").exists()
    a, b = torch.load(tmp_path / "m1" / "model.pt"), torch.load(tmp_path / "m2" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["val_loss"] for h in resumed.result.history] == [h["val_loss"] for h in straight.result.history]



def test_finding_12_one_thread_budget_for_torch_steps(monkeypatch):
    """Torch steps share the cores instead of each taking all of them: the cores this process
    may use / the torch steps that run at once (the "torch" pool, limited to one in the tracked
    dagster.yaml), or LEM_TORCH_THREADS."""
    import yaml

    from lem_pipeline import settings
    from lem_pipeline.definitions import build_definitions
    from lem_pipeline.presets import PRESETS

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "dagster_home" / "dagster.yaml").read_text())
    assert config["concurrency"]["pools"]["default_limit"] == settings.TORCH_STEPS_AT_ONCE == 1
    defs = build_definitions(PRESETS["demo"])
    torch_assets = {k.to_user_string() for a in defs.assets if a.op.pool == settings.TORCH_POOL for k in a.keys}
    assert torch_assets == {"crypto_lem_model", "equity_lem_model", "crypto_evaluation", "equity_evaluation",
                            "equity_lookahead_evaluation"}
    monkeypatch.delenv(settings.TORCH_THREADS, raising=False)
    assert settings.thread_budget() == len(os.sched_getaffinity(0))
    monkeypatch.setenv(settings.TORCH_THREADS, "1")
    assert settings.thread_budget() == 1


def test_finding_12_training_progress_shows_epoch_loss_and_eta(monkeypatch):
    from lem_pipeline import model_training

    clock = iter([100.0, 130.0, 160.0])
    monkeypatch.setattr(model_training.time, "monotonic", lambda: next(clock))
    lines: list[str] = []
    progress = model_training.EpochProgress(5, lines.append)
    progress(0, {"loss": 0.71234, "val_loss": 0.70111, "val_vs_rule_bps": -1.234, "lr": 1e-3})
    progress(1, {"loss": 0.70001, "val_loss": 0.69999, "val_vs_rule_bps": 0.5, "lr": 1e-3})
    assert lines == ["epoch 1/5: loss 0.71234, val_loss 0.70111, val vs rule -1.23 bps, lr 0.001; 30 s/epoch, "
                     "at most 120 s left (early stopping may end it sooner)",
                     "epoch 2/5: loss 0.70001, val_loss 0.69999, val vs rule +0.50 bps, lr 0.001; 30 s/epoch, "
                     "at most 90 s left "
                     "(early stopping may end it sooner)"]


def test_a_model_the_exporter_cannot_log_is_still_registered_and_servable(small_equity_windows, tmp_path,
                                                                          monkeypatch):
    """If mlflow.pytorch.log_model fails, the weights-only model_state artifact is registered."""
    from lem_pipeline.registry import run_of

    def broken(*args, **kwargs):
        raise RuntimeError("exporter down")

    import mlflow.pytorch  # the real module, not mlflow's lazy proxy (loading it later would undo the patch)

    monkeypatch.setattr(mlflow.pytorch, "log_model", broken)
    tracking = MLflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=str(tmp_path / "a"))
    trained = train_on_windows(small_model(small_equity_windows), small_equity_windows,
                               TrainConfig(epochs=1, batch_size=64, progress=False), name="equity", tracking=tracking,
                               experiment="lem-equity", registered="lem-equity", tags={}, run_name="r", params={},
                               log=lambda _: None, out=tmp_path / "m", state_dir=tmp_path / "s")
    assert trained.registered == "lem-equity/1" and trained.model_uri.endswith("/model_state")
    assert run_of("models:/lem-equity/1", tracking.tracking_uri) == trained.run_id
    monkeypatch.setenv("LEM_MLFLOW_URI", tracking.tracking_uri)
    from lem_pipeline.trained_model import load_trained

    model, _ = load_trained("models:/lem-equity/1")
    a, b = model.state_dict(), torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
