"""The trainer on real windows: resume, early stopping and the LR plateau, the NaN guard, and
2-process DDP under torchrun."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from lem_model import LargeExecutionModel, LEMConfig
from lem_model.window_dataset import WindowDataset
from lem_model.train import NonFiniteLossError, TrainConfig, seed_everything, train
from lem_model.training_state import TRAINING_STATE, load_training_state, save_training_state
from tests.conftest import clean_env

REPO = Path(__file__).resolve().parents[2]
CFG = TrainConfig(epochs=3, batch_size=64, lr=1e-3, seed=3, progress=False, early_stop_patience=5)


def make_model(windows: Path, seed: int = 3) -> LargeExecutionModel:
    meta = WindowDataset(windows, "train").meta
    seed_everything(seed)
    return LargeExecutionModel(LEMConfig(n_features=len(meta["features"]), lookback=meta["config"]["lookback"],
                                         n_ahead=meta["config"]["n_ahead"], hidden_size=8, num_embedding=4,
                                         num_heads=2, fused_hidden=8))


def sets(windows: Path):
    return WindowDataset(windows, "train"), WindowDataset(windows, "val")


@pytest.mark.parametrize("cfg", [CFG, dataclasses.replace(CFG, average_decay=0.9)], ids=["raw", "averaged"])
def test_resume_after_epoch_one_equals_an_uninterrupted_run(small_equity_windows, tmp_path, cfg):
    """Resumed from its epoch-1 state (the weights' average too, where it keeps one), a run ends
    where an uninterrupted one does."""
    straight = make_model(small_equity_windows)
    full = train(straight, *sets(small_equity_windows), cfg, tmp_path / "a")
    interrupted = make_model(small_equity_windows)
    partial = train(interrupted, *sets(small_equity_windows), cfg, tmp_path / "b", stop_after_epochs=1)
    assert len(partial.history) == 1
    saved = load_training_state(tmp_path / "b" / TRAINING_STATE)
    assert saved["epoch"] == 0
    resumed_model = make_model(small_equity_windows, seed=99)  # different init: everything must come from the checkpoint
    resumed = train(resumed_model, *sets(small_equity_windows), cfg, tmp_path / "b")
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in full.history]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed_model.state_dict().items()):
        assert torch.equal(a, b), k
    assert full.best_epoch == resumed.best_epoch


class PoisonAfter(Dataset):
    """Real windows, with a NaN input once ``after`` items have been read (i.e. in a later epoch)."""

    def __init__(self, base: Dataset, after: int) -> None:
        self.base, self.after, self.reads = base, after, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        self.reads += 1
        x, v, p = self.base[i]
        if self.reads > self.after:
            x = x.clone()
            x[0, 0] = float("nan")
        return x, v, p


def test_non_finite_batch_stops_training_and_keeps_the_last_good_checkpoint(small_equity_windows, tmp_path):
    train_set, val_set = sets(small_equity_windows)
    poisoned = PoisonAfter(train_set, after=len(train_set) + 10)  # clean epoch 1, poison early in epoch 2
    model = make_model(small_equity_windows)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at epoch 2, batch 0.*last good checkpoint"):
        train(model, poisoned, val_set, CFG, tmp_path / "ckpt")
    saved = load_training_state(tmp_path / "ckpt" / TRAINING_STATE)
    assert saved["epoch"] == 0 and len(saved["history"]) == 1
    assert all(torch.isfinite(t).all() for t in saved["model"].values())
    good = make_model(small_equity_windows)
    good.load_state_dict(saved["model"])  # loadable, and the run can resume from it


def test_two_process_torchrun_ddp(small_equity_windows, tmp_path):
    out = tmp_path / "ddp"
    env = clean_env(OMP_NUM_THREADS="1", LEM_MLFLOW_DIR=str(tmp_path / "mlruns"), LEM_PRESET="demo")
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    script = (
        "import os, sys, pathlib; from lem_pipeline import train_ddp; "
        "r = os.environ['RANK']; train_ddp.main(sys.argv[1:] + ['--digest-file', str(pathlib.Path(sys.argv[4]) / f'digest{r}.txt')])"
    )
    (out).mkdir(parents=True)
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "--no-python", sys.executable, "-c", script,
                           "--windows", str(small_equity_windows), "--out", str(out), "--epochs", "2",
                           "--batch-size", "32"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    d0, d1 = (out / "digest0.txt").read_text(), (out / "digest1.txt").read_text()
    assert d0 == d1 and len(d0) == 64
    assert not any((out / "training_state").iterdir())  # the model is saved: its resumable state is gone
    assert json.loads((out / "result.json").read_text())["best_epoch"] in (0, 1)
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["lem-ddp"], output_format="list")
    assert len(runs) == 1 and runs[0].data.tags["world_size"] == "2"
    assert len(mlflow.MlflowClient().get_metric_history(runs[0].info.run_id, "val_loss")) == 2


def test_train_ddp_into_the_same_out_trains_afresh_for_other_settings_and_resumes_its_own(small_equity_windows,
                                                                                           tmp_path, monkeypatch):
    """A world of one (no torchrun). A second run with more epochs into the same --out is another
    training, not the first one's finished state; a run killed after an epoch resumes in its own
    MLflow run, and the epoch logged by nobody (killed between saving and logging) is logged."""
    import mlflow

    from lem_pipeline import train_ddp
    from lem_pipeline.model_training import RUN_FILE

    # Every variable settings.apply_defaults would fill in, set here so that none outlives the test.
    for name, value in {"LEM_MLFLOW_DIR": tmp_path / "mlruns", "LEM_MLFLOW_URI": f"sqlite:///{tmp_path}/mlruns/mlflow.db",
                        "LEM_MLFLOW_ARTIFACTS": tmp_path / "mlruns" / "artifacts", "LEM_DATA_DIR": tmp_path / "data",
                        "LEM_PRESET": "smoke", "LEM_BINANCE_URL": "", "LEM_YAHOO_DIR": ""}.items():
        monkeypatch.setenv(name, str(value))
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "ddp"
    argv = ["--windows", str(small_equity_windows), "--out", str(out), "--preset", "smoke", "--batch-size", "64"]
    train_ddp.main(argv + ["--epochs", "1"])
    first = json.loads((out / "result.json").read_text())
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    client = mlflow.MlflowClient()

    # Killed after epoch 1 of 2 had saved its state but before it was logged: the state as the
    # kill leaves it (one epoch), its run holding no metrics.
    state_dirs: list[Path] = []
    real_train = train_ddp.train

    def killed_after_one_epoch(model, train_set, val_set, cfg, state_dir, **kw):
        state_dirs.append(Path(state_dir))
        real_train(model, train_set, val_set, dataclasses.replace(cfg, epochs=1), state_dir, resume=False)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(train_ddp, "train", killed_after_one_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_ddp.main(argv + ["--epochs", "2"])
    [state_dir] = state_dirs
    killed_run = (state_dir / RUN_FILE).read_text()
    assert killed_run != first["run_id"] and not client.get_metric_history(killed_run, "val_loss")
    saved = load_training_state(state_dir / TRAINING_STATE)
    saved["train_config"]["epochs"] = 2  # the state a two-epoch run saves after its first epoch
    save_training_state(state_dir / TRAINING_STATE, saved)

    monkeypatch.setattr(train_ddp, "train", real_train)
    train_ddp.main(argv + ["--epochs", "2"])
    second = json.loads((out / "result.json").read_text())
    assert second["run_id"] == killed_run  # resumed in its own run, not the first training's
    assert sorted(m.step for m in client.get_metric_history(killed_run, "val_loss")) == [0, 1]
    assert [m.step for m in client.get_metric_history(first["run_id"], "val_loss")] == [0]
    assert not state_dir.exists()


@pytest.mark.parametrize("field, value", [("objective", "Aligned"), ("sides", "Paired"), ("match_risk", "square"),
                                          ("beat_risk", "tracked"), ("selection", "rule")])
def test_a_misspelt_objective_switch_is_refused(field, value):
    """Each switch compares against its reference value, so a typo would silently train another
    objective: it is refused, naming the values allowed."""
    with pytest.raises(ValueError, match=rf"{field} must be one of .*, not {value!r}"):
        TrainConfig(**{field: value, **({"objective": "aligned"} if field != "objective" else {})})


@pytest.mark.parametrize("best, then", [(-5.94, -5.9399), (0.52, 0.51993)],
                         ids=["a slightly worse advantage", "an improvement below min_delta"])
def test_the_plateau_counts_an_improvement_as_keras_does(best, then):
    """Keras improves on ``best - min_delta`` (1e-4, absolute). torch's default relative threshold
    would take -5.9399 as better than -5.94 (the negated advantage over the rule that
    selection="vs_rule" watches), and 0.51993 as better than 0.52."""
    from lem_model.train import keras_plateau

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    plateau = keras_plateau(optimizer, dataclasses.replace(CFG, lr_patience=1, lr_factor=0.1))
    plateau.step(best)
    plateau.step(then)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)  # a bad epoch: cut after it (patience 1)
    plateau.step(then - 0.01)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)  # a real improvement: no cut


def test_a_state_saved_with_torchs_plateau_settings_resumes_with_keras(small_equity_windows, tmp_path):
    """A state saved before the plateau counted as Keras does (torch's patience, its relative
    threshold) resumes with this run's settings; its counters are the saved ones: a saved best no
    epoch can reach makes the resumed epoch a bad one, and with Keras's patience the rate is cut
    (a fresh scheduler would take that epoch as its best and keep the rate)."""
    cfg = dataclasses.replace(CFG, epochs=2, lr_patience=1)
    train(make_model(small_equity_windows), *sets(small_equity_windows), cfg, tmp_path, stop_after_epochs=1)
    saved = load_training_state(tmp_path / TRAINING_STATE)
    saved["scheduler"] |= {"patience": 1, "threshold_mode": "rel", "num_bad_epochs": 0, "best": -1e9}
    save_training_state(tmp_path / TRAINING_STATE, saved)
    train(make_model(small_equity_windows), *sets(small_equity_windows), cfg, tmp_path)
    plateau = load_training_state(tmp_path / TRAINING_STATE)["scheduler"]
    assert (plateau["patience"], plateau["threshold"], plateau["threshold_mode"]) == (0, 1e-4, "abs")
    assert plateau["best"] == -1e9
    assert plateau["_last_lr"][0] == pytest.approx(cfg.lr * cfg.lr_factor, rel=1e-6)


def test_early_stopping_fires_and_the_learning_rate_drops(small_equity_windows, tmp_path):
    """With a learning rate far below float32 resolution the weights cannot move, so validation
    never improves after the first epoch: the plateau scheduler cuts the rate after every
    ``lr_patience`` bad epochs, as Keras counts them (the paper's patience 1: after each one; torch's
    own count would wait for two, the epoch early stopping would end the paper's run on), and
    early stopping ends the run after ``patience`` of them, handing back the first epoch's weights."""
    cfg = dataclasses.replace(CFG, epochs=10, lr=1e-30, early_stop_patience=3, lr_patience=1, lr_factor=0.1)
    model = make_model(small_equity_windows)
    result = train(model, *sets(small_equity_windows), cfg, tmp_path / "state")
    assert result.stopped_early and len(result.history) == 4  # epoch 0, then 3 without improvement
    assert result.best_epoch == 0
    assert all(h["val_loss"] >= result.history[0]["val_loss"] for h in result.history)
    lrs = [h["lr"] for h in result.history]  # the rate each epoch trained with
    assert lrs[:2] == [1e-30] * 2
    assert lrs[2:] == [pytest.approx(1e-31, rel=1e-9, abs=0), pytest.approx(1e-32, rel=1e-9, abs=0)]
    saved = load_training_state(tmp_path / "state" / TRAINING_STATE)
    best = saved["early_stopping"]["best_state"]
    assert all(torch.equal(best[k], v) for k, v in model.state_dict().items())  # the best weights restored


def test_the_watched_advantage_over_the_rule_is_the_evaluations_vs_rule_cells_averaged(small_equity_windows):
    """val_vs_rule_bps, what selection="vs_rule" watches, is the mean of the cells the evaluation
    reports (lem_model.evaluate, paired.advantage) over both sides and every minimum period."""
    import numpy as np
    from torch.utils.data import DataLoader

    from lem_model.evaluate import SIDES, evaluate
    from lem_model.paired import advantage
    from lem_model.train import _Dist, evaluate_loss
    from lem_model.vocabulary import OrderKind, Target

    model = make_model(small_equity_windows)
    _, val = sets(small_equity_windows)
    N = model.cfg.n_ahead
    watched = evaluate_loss(model, DataLoader(val, batch_size=64), CFG, torch.device("cpu"), _Dist())["val_vs_rule_bps"]
    ev = evaluate(model, val, min_rate=1 / N**2, batch_size=64)
    cells = [advantage(ev.model_bps[:, m, kind, Target.VOLUME], ev.rule_bps[:, m, kind, Target.VOLUME],
                       OrderKind(kind).side).mean() for _, kind, _ in SIDES for m in range(N)]
    assert watched == pytest.approx(float(np.mean(cells)), abs=1e-3)
    assert abs(watched) > 0.1  # an untrained model is not the rule: the comparison has something to measure


def test_selection_on_the_advantage_over_the_rule_keeps_its_best_epoch(small_equity_windows, tmp_path):
    """selection="vs_rule": the epoch kept is the one with the highest validation advantage over
    the rule, not the lowest validation objective (on these windows and seeds the two differ),
    and best_val_loss is that epoch's objective."""
    cfg = dataclasses.replace(CFG, epochs=4, objective="aligned", selection="vs_rule")
    model = make_model(small_equity_windows)
    result = train(model, *sets(small_equity_windows), cfg, tmp_path / "state")
    vs_rule = [h["val_vs_rule_bps"] for h in result.history]
    losses = [h["val_loss"] for h in result.history]
    assert result.best_epoch == max(range(len(vs_rule)), key=vs_rule.__getitem__)
    assert result.best_epoch != min(range(len(losses)), key=losses.__getitem__)
    assert result.best_val_loss == losses[result.best_epoch]
    with pytest.raises(ValueError, match="selection"):
        TrainConfig(selection="val_loss")


def test_the_weights_average_is_what_validation_scores_and_training_keeps(small_equity_windows, tmp_path):
    """average_decay: after each step the average moves toward the raw weights by 1 - decay (one
    step per epoch here, so after two it is decay * w1 + (1 - decay) * w2, the raw run's weights
    after each), validation scores the average, and the model handed back is the best epoch's
    average, not the raw weights."""
    from torch.utils.data import DataLoader

    from lem_model.train import _Dist, evaluate_loss

    one_step = dataclasses.replace(CFG, epochs=2, samples_per_epoch=CFG.batch_size, early_stop_patience=5)
    train(make_model(small_equity_windows), *sets(small_equity_windows), one_step, tmp_path / "raw1",
          stop_after_epochs=1)
    raw = train(make_model(small_equity_windows), *sets(small_equity_windows), one_step, tmp_path / "raw2")
    # The raw weights after each step, as saved (before the best epoch's are restored).
    raw_after = [load_training_state(tmp_path / f"raw{k}" / TRAINING_STATE)["model"] for k in (1, 2)]
    decay = 0.75
    model = make_model(small_equity_windows)
    result = train(model, *sets(small_equity_windows), dataclasses.replace(one_step, average_decay=decay),
                   tmp_path / "averaged")
    averaged = load_training_state(tmp_path / "averaged" / TRAINING_STATE)["averaged"]
    assert int(averaged["n_averaged"]) == 2
    names = [n for n, _ in model.named_parameters()]
    for n in names:
        expected = decay * raw_after[0][n] + (1 - decay) * raw_after[1][n]
        torch.testing.assert_close(averaged[f"module.{n}"], expected, rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(raw_after[0][n], raw_after[1][n]) for n in names)  # the average had to move
    # Validation scored the average (the first epoch's average is the raw weights: one step taken).
    assert result.history[0]["val_loss"] == pytest.approx(raw.history[0]["val_loss"], rel=1e-6)
    assert result.history[1]["val_loss"] != pytest.approx(raw.history[1]["val_loss"], rel=1e-6)
    _, val = sets(small_equity_windows)
    kept = evaluate_loss(model, DataLoader(val, batch_size=one_step.batch_size), one_step, torch.device("cpu"), _Dist())
    assert kept["val_loss"] == pytest.approx(result.history[result.best_epoch]["val_loss"], rel=1e-6)
    with pytest.raises(ValueError, match="average_decay"):
        TrainConfig(average_decay=1.0)
