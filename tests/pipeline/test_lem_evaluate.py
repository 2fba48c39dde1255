"""`lem evaluate` (the contract in docs/DESIGN.md): a trained equity model on a universe it was not
trained on (MSFT; the fixture model saw AAPL and KO), through the real CLI in a subprocess with a
private MLflow store. The windows are counted here independently of lem_pipeline.windows, from
the CSV and the window arithmetic; the summary must agree with the main table written beside it.
A user's mistake ends it with one line and exit 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import pytest

from lem_pipeline.trained_model import LINEAGE, WINDOWS_META
from tests.conftest import YAHOO_DIR, clean_env
from tests.pipeline.summary_contract import assert_rows_match_main_table, check_summary

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300
TEST_START = date(2020, 1, 1)
TEST_END = date(2021, 12, 31)
MODEL_RUN = "feedc0de" * 4  # the training run recorded in the model's lineage.json


def lem(argv: list[str], tmp: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = clean_env(LEM_MLFLOW_DIR=str(tmp / "mlruns"), LEM_DATA_DIR=str(tmp / "data"),
                     PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return subprocess.run([sys.executable, "-m", "lem_pipeline.cli", "evaluate", *argv], cwd=tmp,
                          env=base | (env or {}), capture_output=True, text=True, timeout=TIMEOUT_S)


def msft_test_windows(config: dict, test_start: date, test_end: date | None) -> int:
    """MSFT's test windows, counted from the CSV: execution starts r every stride-th bar from the
    first one with a full warm-up (2L + N + norm - 1 bars before it), whose first bar r - L is on or
    after the test start and whose last bar r + N - 1 exists (and is on or before the test end)."""
    L, N, norm = config["lookback"], config["n_ahead"], config["norm_window"]
    stride = config["test_stride"] or config["stride"]
    days = pl.read_csv(YAHOO_DIR / "MSFT.csv", try_parse_dates=True, null_values=["null", "NaN", ""])
    days = days.drop_nulls().sort("Date")["Date"].to_numpy()
    assert (pl.read_csv(YAHOO_DIR / "MSFT.csv")["Volume"] > 0).all()  # no bar that the normaliser would skip
    if test_end is not None:
        days = days[days <= np.datetime64(test_end)]
    r = np.arange(2 * L + N + norm - 1, len(days) - N + 1)
    r = r[(r - r[0]) % stride == 0]
    return int((days[r - L] >= np.datetime64(test_start)).sum())


@pytest.fixture(scope="module")
def model_dir(trained_model, tmp_path_factory) -> Path:
    """The fixture model with a lineage.json naming its (pretend) training run and its weights."""
    from lem_model.saved_model import load_model, weights_digest

    out, _ = trained_model
    model = tmp_path_factory.mktemp("evaluate") / "model"
    shutil.copytree(out / "model", model)
    digest = weights_digest(load_model(model))
    (model / LINEAGE).write_text(json.dumps({"mlflow_run_id": MODEL_RUN, "weights_sha256": digest}))
    return model


@pytest.mark.parametrize("test_end", [None, TEST_END], ids=["open-ended", "with-test-end"])
def test_evaluates_msft_with_the_models_windows(model_dir: Path, tmp_path: Path, test_end: date | None) -> None:
    out = tmp_path / "out"
    argv = ["--model", str(model_dir), "--yahoo-dir", str(YAHOO_DIR), "--tickers", "MSFT",
            "--test-start", TEST_START.isoformat(), "--out", str(out), "--device", "cpu"]
    proc = lem(argv + (["--test-end", test_end.isoformat()] if test_end else []), tmp_path)
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout)
    config = json.loads((model_dir / WINDOWS_META).read_text())["config"]
    summary = json.loads((out / "summary.json").read_text())
    check_summary(summary, config["n_ahead"])
    assert summary["windows"] == msft_test_windows(config, TEST_START, test_end) > 0
    assert summary["dataset"] == "equity" and summary["first_start"] >= TEST_START.isoformat()
    if test_end:
        assert summary["last_start"] <= test_end.isoformat()
    assert_rows_match_main_table(summary, out / "equity_daily_main.csv")
    assert (out / "equity_daily_paired.md").is_file() and (out / "equity_daily_slippage.png").is_file()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    [run] = mlflow.search_runs(experiment_names=["lem-evaluate"], output_format="list")
    assert run.data.tags["lem.model_run_id"] == MODEL_RUN and run.data.tags["lem.universe"] == "MSFT"
    assert "test_vs_rule_buy_min1_bps" in run.data.metrics
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/summary.json" in artifacts
    assert not (tmp_path / "data").exists(), "lem evaluate wrote into the data lake"


@pytest.mark.parametrize("case, argv, expected", [
    ("missing model", ["--model", "{tmp}/no-model"], ("--model {tmp}/no-model", "no such trained-model directory")),
    ("unknown ticker", ["--tickers", "MSFT,NOPE"], ("--tickers NOPE", "NOPE.csv")),
    ("too few bars", ["--test-start", "2024-12-20"], ("too few bars for one test window", "needs 36 bars", "MSFT has 0 from it")),
    ("future start", ["--test-start", "2999-01-01"], ("--test-start 2999-01-01 is in the future",)),
    ("zero frequency", ["--freq-min", "0"], ("--freq-min 0 must be a positive number of minutes",)),
    ("no such device", ["--device", "tpu9"], ("--device 'tpu9': not a device",)),
    ("no such gpu", ["--device", "cuda:7"], ("--device cuda:7: this torch build or machine has no such CUDA device",)),
], ids=lambda v: v if isinstance(v, str) else None)
def test_mistakes_end_with_one_line_and_status_2(model_dir: Path, tmp_path: Path, case, argv, expected) -> None:
    args = {"--model": str(model_dir), "--yahoo-dir": str(YAHOO_DIR), "--tickers": "MSFT",
            "--test-start": TEST_START.isoformat(), "--out": str(tmp_path / "out")}
    args |= dict(zip(argv[::2], (a.format(tmp=tmp_path) for a in argv[1::2])))
    proc = lem([x for kv in args.items() for x in kv], tmp_path)
    lines = proc.stderr.splitlines()
    print(f"{case}: rc {proc.returncode}: {proc.stderr.strip()}")
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("lem evaluate: "), proc.stderr
    for text in expected:
        assert text.format(tmp=tmp_path) in lines[0]
    assert not (tmp_path / "out").exists()


def test_an_mlflow_store_it_cannot_open_is_refused_before_the_tables_are_written(model_dir: Path,
                                                                                   tmp_path: Path) -> None:
    argv = ["--model", str(model_dir), "--yahoo-dir", str(YAHOO_DIR), "--tickers", "MSFT",
            "--test-start", TEST_START.isoformat(), "--out", str(tmp_path / "out"), "--device", "cpu"]
    proc = lem(argv, tmp_path, {"LEM_MLFLOW_URI": "foo://bar"})
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("lem evaluate: LEM_MLFLOW_URI=foo://bar: not an MLflow store"), lines[0]
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def intraday_model(tmp_path_factory) -> Path:
    """An untrained intraday model with its windows.json (no frequency in it, as the pipeline writes)."""
    from lem_model import LargeExecutionModel, LEMConfig
    from lem_model.saved_model import save_model
    from lem_pipeline.windows import FEATURE_NAMES, WindowConfig

    cfg = WindowConfig(lookback=24, n_ahead=6, norm_window=48, test_stride=4, seasonality="intraday")
    model = LargeExecutionModel(LEMConfig(n_features=cfg.n_features, lookback=cfg.lookback, n_ahead=cfg.n_ahead,
                                          hidden_size=8, num_embedding=4, num_heads=2, fused_hidden=8))
    out = tmp_path_factory.mktemp("intraday") / "model"
    save_model(model, out)
    config = {k: (v.isoformat() if isinstance(v, date) else v) for k, v in cfg.__dict__.items()}
    (out / WINDOWS_META).write_text(json.dumps({"config": config, "features": FEATURE_NAMES["intraday"]}))
    return out


def test_crypto_from_a_data_vision_tree(intraday_model: Path, tmp_path: Path) -> None:
    from tests.conftest import BINANCE_MIRROR

    argv = ["--model", str(intraday_model), "--binance-url", BINANCE_MIRROR.resolve().as_uri(), "--symbols",
            "BTCUSDT", "--interval", "1h", "--test-start", "2021-06-01", "--test-end", "2021-11-30",
            "--out", str(tmp_path / "out"), "--device", "cpu"]
    missing = lem(argv, tmp_path)
    assert missing.returncode == 2 and "give --freq-min" in missing.stderr and len(missing.stderr.splitlines()) == 1
    proc = lem(argv + ["--freq-min", "60"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    check_summary(summary, 6)
    assert summary["dataset"] == "crypto" and summary["frequency"] == "60min" and summary["windows"] > 100
    assert "2021-06-01" <= summary["first_start"] <= summary["last_start"] <= "2021-11-30"
    assert_rows_match_main_table(summary, tmp_path / "out" / "crypto_60min_main.csv")


def test_a_two_frequency_evaluation_gives_each_frequency_its_own_headline(intraday_model: Path, tmp_path: Path) -> None:
    """The headline metrics pool every frequency's windows; each frequency's own, named after it,
    are its summary's numbers (the paper reports each frequency apart)."""
    from lem_pipeline import evaluation_universe as universe
    from lem_pipeline.model_evaluation import evaluate_windows
    from lem_pipeline.trained_model import load_trained
    from tests.conftest import BINANCE_MIRROR

    model, cfg = load_trained(str(intraday_model))
    start, end = date(2021, 6, 1), date(2021, 11, 30)
    series = [bars for freq in (60, 120) for bars in universe.binance_bars(
        BINANCE_MIRROR.resolve().as_uri(), ["BTCUSDT"], market="spot", interval="1h", freq_min=freq, cfg=cfg,
        test_start=start, test_end=end)]
    report = universe.build_test_windows(series, cfg, start, end, tmp_path / "windows", "--symbols BTCUSDT")
    result = evaluate_windows("crypto", model, report.directory, tmp_path / "out", batch_size=256, device="cpu")
    reductions = {}
    for label in ("60min", "120min"):
        summary = json.loads((tmp_path / "out" / f"summary_{label}.json").read_text())
        reductions[label] = result.headline[f"test_{label}_match_vwap_std_reduction"]
        assert reductions[label] == pytest.approx(summary["match_vwap_std_reduction"], abs=1e-12)
        twap = next(r for r in summary["rows"] if r["order"] == "TWAP Volume" and r["min_period"] == "All")
        assert result.headline[f"test_{label}_twap_volume_std_bps"] == pytest.approx(twap["std"], rel=1e-6)
    assert reductions["60min"] != reductions["120min"]
    assert result.headline["test_match_vwap_std_reduction"] not in reductions.values()  # the pooled one


def test_an_open_ended_crypto_span_reaches_past_the_months_before_the_first_published(intraday_model: Path,
                                                                                       tmp_path: Path) -> None:
    """The fixture tree has BTCUSDT from 2020-01 to 2021-11: a test start before its first month,
    without a test end, evaluates every published month (it once stopped at the first missing one)."""
    from tests.conftest import BINANCE_MIRROR

    argv = ["--model", str(intraday_model), "--binance-url", BINANCE_MIRROR.resolve().as_uri(), "--symbols",
            "BTCUSDT", "--interval", "1h", "--freq-min", "60", "--test-start", "2019-10-01",
            "--out", str(tmp_path / "out"), "--device", "cpu"]
    proc = lem(argv, tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["first_start"].startswith("2020-01") and summary["last_start"].startswith("2021-11")


@pytest.mark.parametrize("day, refused", [("2021-08-02", True), ("2001-08-02", False)], ids=["read", "before-warm-up"])
def test_bars_the_pipeline_would_refuse_are_refused_naming_the_row(model_dir: Path, tmp_path: Path, day: str,
                                                                  refused: bool) -> None:
    """A bar a test window reads (from the warm-up on) that the ingest would refuse ends it with
    one line naming the row; one from years before any test window's warm-up is not ours to refuse."""
    lines = (YAHOO_DIR / "MSFT.csv").read_text().splitlines()
    bad_row = next(i for i, ln in enumerate(lines) if ln.startswith(day))
    fields = lines[bad_row].split(",")
    fields[-1] = "-" + fields[-1]  # a negative volume
    lines[bad_row] = ",".join(fields)
    (tmp_path / "yahoo").mkdir()
    (tmp_path / "yahoo" / "MSFT.csv").write_text("\n".join(lines) + "\n")
    argv = ["--model", str(model_dir), "--yahoo-dir", str(tmp_path / "yahoo"), "--tickers", "MSFT",
            "--test-start", TEST_START.isoformat(), "--out", str(tmp_path / "out")]
    proc = lem(argv + ([] if refused else ["--device", "cpu"]), tmp_path)
    if not refused:  # evaluated as if the row were clean: every test window of the untouched CSV
        assert proc.returncode == 0, proc.stderr
        config = json.loads((model_dir / WINDOWS_META).read_text())["config"]
        summary = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert summary["windows"] == msft_test_windows(config, TEST_START, None) > 0
        return
    [line] = proc.stderr.splitlines()
    assert proc.returncode == 2 and line.startswith("lem evaluate: --tickers MSFT: "), proc.stderr
    assert f"date={day}" in line and "volume" in line
    assert not (tmp_path / "out").exists()


def test_a_model_whose_weights_changed_since_its_run_is_tied_to_no_run(model_dir: Path, tmp_path: Path) -> None:
    """lineage.json names the training run of the weights it recorded: other weights in the same
    directory get no lem.model_run_id tag (the evaluation would be filed under a run that did not
    produce them), and a warning says why."""
    import torch

    from lem_model.saved_model import WEIGHTS

    changed = tmp_path / "model"
    shutil.copytree(model_dir, changed)
    weights = torch.load(changed / WEIGHTS, weights_only=True)
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = weights[name] + 1.0
    torch.save(weights, changed / WEIGHTS)
    argv = ["--model", str(changed), "--yahoo-dir", str(YAHOO_DIR), "--tickers", "MSFT",
            "--test-start", "2024-01-01", "--out", str(tmp_path / "out"), "--device", "cpu"]
    proc = lem(argv, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"the weights are not the ones {LINEAGE} recorded for MLflow run {MODEL_RUN}" in proc.stderr
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    [run] = mlflow.search_runs(experiment_names=["lem-evaluate"], output_format="list")
    assert "lem.model_run_id" not in run.data.tags


@pytest.mark.parametrize("case, edit, expected", [
    ("horizon", lambda c: c | {"n_ahead": 12}, "n_ahead 6 in config.json, 12 in windows.json"),
    ("missing field", lambda c: {k: v for k, v in c.items() if k != "val_start"}, "missing ['val_start']"),
    ("unknown seasonality", lambda c: c | {"seasonality": "weekly"}, "seasonality 'weekly' (one of ['daily', 'intraday'])"),
    ("horizon as text", lambda c: c | {"n_ahead": "6"}, "not a windows config: n_ahead '6'"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_a_windows_json_that_does_not_fit_the_model_is_one_line(model_dir: Path, tmp_path: Path, case, edit,
                                                               expected) -> None:
    bad = tmp_path / "model"
    shutil.copytree(model_dir, bad)
    meta = json.loads((bad / WINDOWS_META).read_text())
    (bad / WINDOWS_META).write_text(json.dumps(meta | {"config": edit(meta["config"])}))
    proc = lem(["--model", str(bad), "--yahoo-dir", str(YAHOO_DIR), "--tickers", "MSFT",
                "--test-start", TEST_START.isoformat(), "--out", str(tmp_path / "out")], tmp_path)
    [line] = proc.stderr.splitlines()
    assert proc.returncode == 2 and line.startswith(f"lem evaluate: --model {bad}: corrupt trained-model directory")
    assert expected in line


def test_a_span_before_the_models_test_split_is_evaluated_with_a_warning_and_tagged(model_dir: Path,
                                                                                     tmp_path: Path) -> None:
    """Any span may be evaluated, but one starting before the model's own test split (2020 for the
    fixture model) may reach into what it was trained or selected on: a warning says so, and the
    run records the model's split beside the span's; a directory without lineage.json is tied to
    no run, with a warning too."""
    bare = tmp_path / "model"
    shutil.copytree(model_dir, bare)
    (bare / LINEAGE).unlink()
    argv = ["--model", str(bare), "--yahoo-dir", str(YAHOO_DIR), "--tickers", "MSFT",
            "--test-start", "2019-06-03", "--test-end", "2019-12-31", "--out", str(tmp_path / "out"), "--device", "cpu"]
    proc = lem(argv, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert ("warning: --test-start 2019-06-03 is before the model's own test split (2020-01-01)" in proc.stderr)
    assert f"no {LINEAGE}" in proc.stderr and "tied to no training run" in proc.stderr
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["first_start"].startswith("2019-0")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    [run] = mlflow.search_runs(experiment_names=["lem-evaluate"], output_format="list")
    assert run.data.tags["lem.model_test_start"] == "2020-01-01" and run.data.tags["lem.test_start"] == "2019-06-03"
    assert "lem.model_run_id" not in run.data.tags
