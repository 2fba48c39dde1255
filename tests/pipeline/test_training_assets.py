"""Training and evaluation through the Dagster assets, tracked in a real MLflow store."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import dagster as dg
import matplotlib.image as mpimg
import mlflow
import numpy as np
import polars as pl
import pytest
import torch

from lem_model.costs import CostConfig
from lem_model.saved_model import load_model
from lem_model.window_dataset import WindowDataset, bars_file
from lem_model.evaluate import EvalArrays, match_vwap_std_reduction
from lem_model.vocabulary import OrderKind, Target
from lem_pipeline.definitions import build_definitions
from lem_pipeline.evaluation_summary import TABLE_ORDERS
from lem_pipeline.model_evaluation import fit_baselines
from lem_pipeline.model_training import STOP_THRESHOLDS_ARTIFACT
from lem_pipeline.presets import PRESETS
from lem_pipeline.lake import TEST_INDEX_FILE, DataLake
from lem_pipeline.resources import BinanceSource, YahooSource
from lem_pipeline.local_runs import run_partitions
from lem_pipeline.trade_log import TRADE_LOG_FILE
from lem_pipeline.tracking import MLflowTracking
from lem_pipeline.windows import WindowConfig, read_index
from tests.conftest import YAHOO_DIR
from tests.pipeline.summary_contract import assert_rows_match_main_table, check_summary

N = 12
PRESET = dataclasses.replace(
    PRESETS["demo"], name="test-equity", streams=(), tickers=("AAPL", "KO"),
    equity_windows=WindowConfig(lookback=30, n_ahead=N, stride=4),
    training=dataclasses.replace(PRESETS["demo"].training, epochs=2, batch_size=128))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    home = tmp / "dagster_home"
    home.mkdir()
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(home))
    tracking = MLflowTracking(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", artifact_root=str(tmp / "artifacts"))
    lake = DataLake(root=str(tmp / "lake"))
    defs = build_definitions(PRESET, resources={"lake": lake, "mlflow": tracking, "yahoo": YahooSource(csv_dir=str(YAHOO_DIR)),
                                                "binance": BinanceSource(base_url="http://127.0.0.1:9")})
    instance = dg.DagsterInstance.get()
    for job in ("equity_ingest_job", "features_job", "equity_training_job"):
        summary = run_partitions(defs, job, instance, progress=False)
        assert summary.failed == {}, summary.failed
    mlflow.set_tracking_uri(tracking.tracking_uri)
    yield {"lake": lake, "tracking": tracking, "instance": instance}
    mp.undo()


def latest(instance, asset):
    return instance.get_latest_materialization_event(dg.AssetKey(asset)).asset_materialization.metadata


def test_mlflow_run_holds_params_metrics_and_inputs(trained):
    run_id = latest(trained["instance"], "equity_lem_model")["mlflow_run_id"].value
    run = mlflow.get_run(run_id)
    assert run.data.params["model.hidden_size"] == "32" and run.data.params["train.epochs"] == "2"
    assert run.data.params["model.causal"] == "True" and run.data.params["windows.lookback"] == "30"
    assert run.data.tags["dagster.asset_key"] == "equity_lem_model" and run.data.tags["git.commit"]
    client = mlflow.MlflowClient()
    for metric in ("loss", "val_loss", "val_buy_vwap_avg_imp", "val_unsigned_vwap_avg_risk"):
        assert [m.step for m in client.get_metric_history(run_id, metric)] == [0, 1]
    assert {i.dataset.name for i in run.inputs.dataset_inputs} == {"equity-train", "equity-val"}
    exp = mlflow.get_experiment(run.info.experiment_id)
    assert exp.name == "lem-equity" and exp.tags["mlflow.experimentKind"] == "custom_model_development"
    # The rule its finish gate started as, fitted on the training windows.
    thresholds = json.loads(Path(client.download_artifacts(run_id, STOP_THRESHOLDS_ARTIFACT)).read_text())
    assert thresholds["minimum_period"] == list(range(1, N + 1)) and len(thresholds["buy"]) == N
    model = load_model(latest(trained["instance"], "equity_lem_model")["model_dir"].value)
    assert thresholds["buy"] == model.stop_thresholds[:N, 0].tolist() and max(thresholds["buy"]) > 0
    artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert "evaluation/equity_daily_main.csv" in artifacts and "evaluation/equity_daily_slippage.png" in artifacts


def read_main_table(lake: DataLake) -> list[list[str]]:
    with open(lake.evaluation_dir("equity") / "equity_daily_main.csv") as f:
        return list(csv.reader(f))


def test_main_table_has_the_papers_rows_the_rule_and_the_schedule_baselines(trained):
    rows = read_main_table(trained["lake"])
    assert rows[0] == ["Order Type", "Min Period", "Mean (bps)", "Std (bps)", "Median (bps)", "P5 (bps)", "P95 (bps)",
                       "Q25 (bps)", "Q75 (bps)"]
    keys = [(r[0], r[1]) for r in rows[1:]]
    periods = [str(m) for m in range(1, N + 1)]
    want = ([("TWAP Notional", "All"), ("TWAP Volume", "All")]
            + [("BUY", p) for p in periods] + [("BUY", "Match VWAP")]
            + [("SELL", p) for p in periods] + [("SELL", "Match VWAP")]
            + [("RULE BUY", p) for p in periods] + [("RULE SELL", p) for p in periods]
            + [("VWAP Profile", "All"), ("Almgren-Chriss", "All")])
    assert keys == want
    out = trained["lake"].evaluation_dir("equity")
    for stem in ("equity_daily_detail_min7", "equity_daily_detail_match"):
        assert (out / f"{stem}.csv").exists() and (out / f"{stem}.tex").read_text().startswith("\\begin{tabular}")


def test_a_table_row_recomputed_from_the_slippage_arrays(trained):
    ev = EvalArrays.load(trained["lake"].slippage_file("equity"))
    row = next(r for r in read_main_table(trained["lake"]) if r[:2] == ["SELL", "7"])
    v = ev.model_bps[:, 6, 2, 0].astype(np.float64)  # sell-VWAP, volume target, minimum period 7
    want = [v.mean(), v.std(), np.median(v), np.quantile(v, 0.05), np.quantile(v, 0.95), np.quantile(v, 0.25),
            np.quantile(v, 0.75)]
    np.testing.assert_allclose([float(x) for x in row[2:]], want, rtol=0, atol=1e-5)
    tv = next(r for r in read_main_table(trained["lake"]) if r[0] == "TWAP Volume")
    np.testing.assert_allclose(float(tv[2]), ev.twap_volume_bps.astype(np.float64).mean(), atol=1e-5)
    assert len(v) == len(WindowDataset(trained["lake"].windows_dir("equity"), "test"))


def test_plots_are_valid_images(trained):
    out = trained["lake"].evaluation_dir("equity")
    for name in ("equity_daily_slippage.png", "equity_daily_execution_curves.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 300 and img.std() > 0.01


def test_logged_model_reloads_with_the_trained_allocations(trained):
    meta = latest(trained["instance"], "equity_lem_model")
    served = mlflow.pytorch.load_model(meta["model_uri"].value)
    trained_model = load_model(meta["model_dir"].value)
    x = torch.stack([WindowDataset(trained["lake"].windows_dir("equity"), "test")[i][0] for i in range(16)])
    with torch.no_grad():
        expected = trained_model(x, torch.full((16,), 1 / N**2), torch.ones(16))
        assert torch.equal(served(x), expected)


def test_evaluation_check_and_metadata(trained):
    instance = trained["instance"]
    key = dg.AssetCheckKey(dg.AssetKey("equity_evaluation"), "allocations_feasible")
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
    evaluation = record.event.dagster_event.event_specific_data
    assert evaluation.passed and evaluation.metadata["max_abs_sum_error"].value < 1e-5
    meta = latest(instance, "equity_evaluation")
    assert "| TWAP Volume | All |" in meta["main_table"].value
    assert meta["mlflow_run"].value.endswith(meta["mlflow_run_id"].value)


def test_summary_json_holds_the_tables_numbers_and_the_paired_comparisons(trained):
    out = trained["lake"].evaluation_dir("equity")
    summary = json.loads((out / "summary.json").read_text())
    check_summary(summary, N)
    assert_rows_match_main_table(summary, out / "equity_daily_main.csv")
    assert summary["dataset"] == "equity" and summary["frequency"] == "daily"
    index = pl.read_parquet(out / TEST_INDEX_FILE)
    assert summary["windows"] == len(index)
    assert summary["first_start"] == index["start_time"].min().date().isoformat()
    assert summary["last_start"] == index["start_time"].max().date().isoformat()
    # The paired advantages, recomputed straight from the slippage arrays (row-aligned windows).
    ev = EvalArrays.load(trained["lake"].slippage_file("equity"))
    vol = Target.VOLUME
    for e in summary["vs_rule"]:
        kind, j = (OrderKind.BUY_VWAP if e["side"] == "BUY" else OrderKind.SELL_VWAP), e["min_period"] - 1
        lem, rule = ev.model_bps[:, j, kind, vol].astype(np.float64), ev.rule_bps[:, j, kind, vol].astype(np.float64)
        diff = rule - lem if e["side"] == "BUY" else lem - rule
        assert e["advantage_bps"] == pytest.approx(diff.mean(), abs=1e-9)
        assert e["win_rate"] == pytest.approx(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / len(diff))
    # The demo's model starts as the rule with fitted thresholds: it is also compared with that rule.
    assert PRESET.allocator.rule_prior == "fitted" and ev.fitted_rule_bps.shape == ev.rule_bps.shape
    buy3 = next(e for e in summary["vs_fitted_rule"] if e["side"] == "BUY" and e["min_period"] == 3)
    fitted = ev.fitted_rule_bps[:, 2, OrderKind.BUY_VWAP, vol].astype(np.float64)
    assert buy3["advantage_bps"] == pytest.approx((fitted - ev.model_bps[:, 2, OrderKind.BUY_VWAP, vol]).mean(), abs=1e-9)
    sell6 = next(e for e in summary["vs_twap"] if e["side"] == "SELL" and e["min_period"] == 6)
    lem = ev.model_bps[:, 5, OrderKind.SELL_VWAP, vol].astype(np.float64)
    assert sell6["advantage_bps"] == pytest.approx((lem - ev.twap_volume_bps.astype(np.float64)).mean(), abs=1e-9)
    assert summary["match_vwap_std_reduction"] == pytest.approx(match_vwap_std_reduction(ev), abs=1e-12)
    # The paired table beside the main one, in MLflow (metrics and artifacts) and in Dagster.
    paired = pl.read_csv(out / "equity_daily_paired.csv")
    assert len(paired) == 3 * 2 * N + 2 * 3 * N  # BUY and SELL x 3 baselines; BUY, SELL, BOTH x 2 vs arrival
    assert set(paired["Baseline"]) == {"Rule", "TWAP Volume", "Fitted rule", "Rule, vs arrival",
                                       "TWAP Volume, vs arrival"}
    # Against the arrival price, recomputed from the trade log: the rule's head and TWAP on the
    # same windows, and BOTH, the two sides' mean per window.
    trades = pl.read_parquet(out / TRADE_LOG_FILE).filter(pl.col("target") == "volume")

    def arrival(strategy: str, side: str, period: str) -> np.ndarray:
        rows = trades.filter((pl.col("strategy") == strategy) & (pl.col("side") == side) &
                             (pl.col("min_period") == period)).sort("window")
        assert rows["window"].to_list() == sorted(index["row"].to_list())
        return rows["arrival_bps"].cast(pl.Float64).to_numpy()

    buy = arrival("RULE", "BUY", "6") - arrival("LEM", "BUY", "6")
    sell = arrival("LEM", "SELL", "6") - arrival("RULE", "SELL", "6")
    entries = {(e["side"], e["min_period"]): e for e in summary["vs_rule_arrival"]}
    assert len(entries) == 3 * N
    assert entries["BUY", 6]["advantage_bps"] == pytest.approx(buy.mean(), abs=1e-9)
    assert entries["BOTH", 6]["advantage_bps"] == pytest.approx((buy + sell).mean() / 2, abs=1e-9)
    assert entries["BOTH", 6]["windows"] == len(index) and entries["BOTH", 6]["block_length"] >= N
    twap = {(e["side"], e["min_period"]): e for e in summary["vs_twap_arrival"]}
    assert twap["SELL", 2]["advantage_bps"] == pytest.approx(
        (arrival("LEM", "SELL", "2") - arrival("TWAP", "SELL", "All")).mean(), abs=1e-9)
    meta = latest(trained["instance"], "equity_evaluation")
    run = mlflow.get_run(meta["mlflow_run_id"].value)
    buy6 = next(e for e in summary["vs_rule"] if e["side"] == "BUY" and e["min_period"] == 6)
    assert run.data.metrics["test_vs_rule_buy_min6_bps"] == pytest.approx(buy6["advantage_bps"])
    assert run.data.metrics["test_vs_rule_buy_min6_ci_lo"] == pytest.approx(buy6["ci95"][0])
    assert run.data.metrics["test_vs_rule_buy_min6_win_rate"] == pytest.approx(buy6["win_rate"])
    assert run.data.metrics["test_vs_rule_arrival_both_min6_bps"] == pytest.approx(entries["BOTH", 6]["advantage_bps"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/summary.json", "evaluation/equity_daily_paired.csv"} <= artifacts
    assert "| Rule | BUY | 6 |" in meta["vs_rule"].value


def test_every_strategy_in_the_trade_log_reproduces_its_table_row(trained):
    out = trained["lake"].evaluation_dir("equity")
    summary = json.loads((out / "summary.json").read_text())
    trades = pl.read_parquet(out / TRADE_LOG_FILE)
    index = pl.read_parquet(out / TEST_INDEX_FILE)
    rows = {(r["order"], r["min_period"]): r for r in summary["rows"]}
    with open(out / "equity_daily_main.csv") as f:
        table = {(r[0], r[1]): [float(x) for x in r[2:]] for r in list(csv.reader(f))[1:]}
    assert set(rows) == set(table)
    for order, (strategy, side, target) in TABLE_ORDERS.items():
        for (o, m), stats in table.items():
            if o != order:
                continue
            part = trades.filter((pl.col("strategy") == strategy) & (pl.col("side") == side)
                                 & (pl.col("target") == target) & (pl.col("min_period") == m))
            assert sorted(part["window"].to_list()) == index["row"].to_list(), (o, m)  # every test window, once
            values = part["slippage_bps"].cast(pl.Float64).to_numpy()
            assert abs(values.mean() - stats[0]) <= 1e-6 and abs(values.std() - stats[1]) <= 1e-6, (o, m)
            assert part["arrival_bps"].cast(pl.Float64).mean() == pytest.approx(rows[(o, m)]["arrival_mean"], abs=1e-6)
    # Net of costs at 1% ADV, the LEM's Match VWAP buy row: the summary's numbers are the log's.
    net = next(r for r in summary["net"]["0.01"] if (r["order"], r["min_period"]) == ("BUY", "Match VWAP"))
    part = trades.filter((pl.col("strategy") == "LEM") & (pl.col("side") == "BUY") & (pl.col("target") == "volume")
                         & (pl.col("min_period") == "Match VWAP"))
    assert part["net_slippage_bps@0.01"].cast(pl.Float64).mean() == pytest.approx(net["mean"], abs=1e-6)
    assert part["fill_rate@0.01"].cast(pl.Float64).mean() == pytest.approx(net["fill_rate"], abs=1e-6)
    # Costs only ever make a buy dearer and a sell cheaper.
    for side, worse in (("BUY", 1), ("SELL", -1)):
        rows_ = trades.filter(pl.col("side") == side)
        for size in ("0.001", "0.01", "0.05"):
            delta = (rows_[f"net_arrival_bps@{size}"] - rows_["arrival_bps"]).to_numpy() * worse
            filled = rows_[f"fill_rate@{size}"].to_numpy() > 1 - 1e-6
            assert filled.mean() > 0.9 and (delta[filled] > -1e-3).all(), (side, size)
    # One row per (window, strategy, side, target, minimum period); real prices around the stocks'.
    assert trades.select(["window", "strategy", "side", "target", "min_period"]).is_unique().all()
    assert trades["allocation"].list.len().unique().to_list() == [N]
    assert 1 < trades["arrival"].min() and trades["arrival"].max() < 1000


def test_volume_profile_is_fitted_on_the_training_split_only(trained, tmp_path):
    windows = tmp_path / "windows"
    shutil.copytree(trained["lake"].windows_dir("equity"), windows)
    test = WindowDataset(windows, "test")
    index = read_index(windows, "test")
    rows = np.arange(len(index))

    def profile() -> np.ndarray:
        baselines, _, fitted_on = fit_baselines(windows, 1440, rows, index, CostConfig())
        assert fitted_on == len(WindowDataset(windows, "train"))
        return baselines.profile

    before = profile()
    volume = np.load(bars_file(windows, "volume"))
    at_test = (test.starts[:, None] + np.arange(N)).ravel()
    rng = np.random.default_rng(0)
    changed = volume.copy()
    changed[at_test] *= rng.uniform(0.1, 10.0, len(at_test))
    np.save(bars_file(windows, "volume"), changed)
    assert np.array_equal(profile(), before)  # test-period volumes do not move the curve
    train = WindowDataset(windows, "train")
    changed[train.starts[:50]] *= 50.0  # the first bar of 50 training windows
    np.save(bars_file(windows, "volume"), changed)
    assert not np.allclose(profile(), before)  # training volumes do


def test_costs_baselines_regimes_and_trade_log_in_mlflow_and_dagster(trained):
    meta = latest(trained["instance"], "equity_evaluation")
    out = trained["lake"].evaluation_dir("equity")
    assert meta["trade_log"].value == str(out / TRADE_LOG_FILE)
    assert "| VWAP Profile | All |" in meta["costs"].value and "Net mean @1% ADV" in meta["costs"].value
    assert "| Almgren-Chriss | All |" in meta["main_table"].value
    plots = meta["plots"].value
    assert any(p.endswith("_net_vs_gross.png") for p in plots) and any(p.endswith("_baseline_curves.png") for p in plots)
    files = {"trades.parquet", "equity_daily_costs.csv", "equity_daily_regimes.csv", "equity_daily_net_vs_gross.png",
             "equity_daily_baseline_curves.png"} | {f"equity_daily_net_adv{s}.csv" for s in ("0_001", "0_01", "0_05")}
    run = mlflow.get_run(meta["mlflow_run_id"].value)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluation")}
    assert {f"evaluation/{f}" for f in files} <= artifacts
    summary = json.loads((out / "summary.json").read_text())
    twap = next(r for r in summary["net"]["0.01"] if r["order"] == "TWAP Volume")
    assert run.data.metrics["test_net_0.01_twap_volume_mean_bps"] == pytest.approx(twap["mean"])
    net = pl.read_csv(out / "equity_daily_net_adv0_01.csv")
    assert net.filter(pl.col("Order Type") == "TWAP Volume")["Mean (bps)"][0] == pytest.approx(twap["mean"], abs=1e-6)
    for path in (out / "equity_daily_net_vs_gross.png", out / "equity_daily_baseline_curves.png"):
        image = mpimg.imread(path)
        assert image.shape[0] > 100 and image.std() > 0.01  # a drawn figure, not a blank canvas
