"""`lem` on a user's mistake: one line on stderr, `lem <command>: <what is wrong>`, naming the
argument, file, URL or variable, exit status 2, no traceback (`lem --debug` shows it); and the
command leaves nothing behind in the working directory. Each case runs the real CLI in a
subprocess with a private DAGSTER_HOME, data and MLflow directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import clean_env

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300  # a case that got past validation would start the pipeline: fail it, do not wait for it
UNKNOWN_RUN_ID = "0123456789abcdef0123456789abcdef"


@dataclass(frozen=True)
class Case:
    """``argv`` and ``env`` may name ``{model}`` (the trained model), ``{bars}`` (KO's daily bars),
    ``{bad}`` (the folder of broken inputs), ``{run}`` (a run in its MLflow store that logged no
    model) and ``{tmp}`` (this case's own folder)."""

    id: str
    argv: list[str]
    expected: tuple[str, ...]  # what the line must name
    env: dict[str, str] = field(default_factory=dict)


SCHEDULE = ["schedule", "--model", "{model}", "--bars", "{bars}"]
BROKEN_BARS = ["schedule", "--model", "{model}", "--bars"]
CASES = [
    Case("unknown preset", ["run", "--preset", "nosuch"], ("'nosuch'", "demo")),
    Case("DAGSTER_HOME is a file", ["run"], ("DAGSTER_HOME=/etc/passwd", "not a directory"),
         {"DAGSTER_HOME": "/etc/passwd"}),
    Case("LEM_DATA_DIR is a file", ["run"], ("LEM_DATA_DIR=/etc/passwd", "not a directory"),
         {"LEM_DATA_DIR": "/etc/passwd"}),
    Case("LEM_DATA_DIR cannot be created", ["run"], ("LEM_DATA_DIR=/proc/nope",), {"LEM_DATA_DIR": "/proc/nope"}),
    Case("LEM_BINANCE_URL not a URL", ["run"], ("LEM_BINANCE_URL", "'garbage'"), {"LEM_BINANCE_URL": "garbage"}),
    Case("LEM_BINANCE_URL missing folder", ["run"], ("LEM_BINANCE_URL", "file://{tmp}/no-mirror"),
         {"LEM_BINANCE_URL": "file://{tmp}/no-mirror"}),
    Case("missing model dir", ["schedule", "--model", "{tmp}/no-model", "--bars", "{bars}"], ("{tmp}/no-model",)),
    Case("corrupt config.json", ["schedule", "--model", "{bad}/model-bad-config", "--bars", "{bars}"],
         ("{bad}/model-bad-config", "corrupt")),
    Case("truncated model.pt", ["schedule", "--model", "{bad}/model-truncated", "--bars", "{bars}"],
         ("{bad}/model-truncated", "corrupt")),
    Case("unknown run id, no store", ["schedule", "--model", UNKNOWN_RUN_ID, "--bars", "{bars}"],
         (UNKNOWN_RUN_ID, "{tmp}/mlruns/mlflow.db", "LEM_MLFLOW_DIR")),
    Case("unknown run id in a store", ["schedule", "--model", UNKNOWN_RUN_ID, "--bars", "{bars}"],
         (UNKNOWN_RUN_ID, "{bad}/mlruns/mlflow.db"), {"LEM_MLFLOW_DIR": "{bad}/mlruns"}),
    Case("a run that logged no model", ["schedule", "--model", "{run}", "--bars", "{bars}"],
         ("{run}", "{bad}/mlruns/mlflow.db", "without a loadable model_state artifact"),
         {"LEM_MLFLOW_DIR": "{bad}/mlruns"}),
    Case("LEM_MLFLOW_URI of an unknown scheme", ["run"], ("LEM_MLFLOW_URI=foo://bar", "not an MLflow store"),
         {"LEM_MLFLOW_URI": "foo://bar"}),
    Case("LEM_MLFLOW_URI a server that is down", ["run"], ("LEM_MLFLOW_URI=http://127.0.0.1:9", "not an MLflow store"),
         {"LEM_MLFLOW_URI": "http://127.0.0.1:9"}),  # port 9 (discard): nothing listens
    Case("LEM_MLFLOW_URI not a database", ["run"], ("LEM_MLFLOW_URI=sqlite:///{bad}/no-vwap.parquet", "DatabaseError"),
         {"LEM_MLFLOW_URI": "sqlite:///{bad}/no-vwap.parquet"}),
    Case("bars missing", ["schedule", "--model", "{model}", "--bars", "{tmp}/nosuch.parquet"],
         ("{tmp}/nosuch.parquet", "no such file")),
    Case("bars missing a column", BROKEN_BARS + ["{bad}/no-vwap.parquet"], ("{bad}/no-vwap.parquet", "vwap")),
    Case("--start not a date", SCHEDULE + ["--start", "not-a-date"], ("--start", "not-a-date")),
    Case("--min-rate above --max-rate", SCHEDULE + ["--min-rate", "0.5", "--max-rate", "0.1"],
         ("--min-rate 0.5", "--max-rate 0.1")),
    Case("--max-rate above 1", SCHEDULE + ["--max-rate", "5"], ("--max-rate 5",)),
    Case("--min-rate negative", SCHEDULE + ["--min-rate", "-0.1"], ("--min-rate -0.1",)),
    Case("--quantity negative", SCHEDULE + ["--quantity", "-3"], ("--quantity -3",)),
    Case("--min-duration 0", SCHEDULE + ["--min-duration", "0"], ("--min-duration '0'", "1..6")),
    Case("--min-duration beyond N", SCHEDULE + ["--min-duration", "999"], ("--min-duration '999'", "1..6")),
    Case("--max-rate too low to finish in the horizon", SCHEDULE + ["--max-rate", "0.1"],
         ("--max-rate 0.1", "horizon of 6 bars", "1/6")),
    Case("--max-rate below the default least rate", SCHEDULE + ["--max-rate", "0.02"],
         ("--max-rate 0.02 is below the least rate per bar, 0.0277778",)),
    Case("a look-ahead model", ["schedule", "--model", "{bad}/model-lookahead", "--bars", "{bars}"],
         ("{bad}/model-lookahead", "look-ahead model")),
    Case("config.json a JSON list", ["schedule", "--model", "{bad}/model-list-config", "--bars", "{bars}"],
         ("{bad}/model-list-config", "corrupt", "a JSON list")),
    Case("config.json with a horizon as text", ["schedule", "--model", "{bad}/model-text-horizon", "--bars", "{bars}"],
         ("{bad}/model-text-horizon", "corrupt", "n_ahead '6', not of type int")),
    Case("bars without a freq_min", BROKEN_BARS + ["{bad}/null-freq.parquet"], ("null-freq.parquet", "without a freq_min")),
    Case("daily bars not at UTC midnight", BROKEN_BARS + ["{bad}/tokyo.parquet"],
         ("tokyo.parquet", "must open at 00:00 UTC", "15:00:00")),
    Case("a new segment less than a normaliser before the lookback", BROKEN_BARS + ["{bad}/outage.parquet"],
         ("outage.parquet", "long outage", "no normalised volume")),
    Case("NaN VWAP in the window", BROKEN_BARS + ["{bad}/nan-vwap.parquet"], ("nan-vwap.parquet", "vwap is nan")),
    Case("NaN quote volume in the window", BROKEN_BARS + ["{bad}/nan-quote.parquet"],
         ("nan-quote.parquet", "quote_volume is nan")),
    Case("all-zero volume in the window", BROKEN_BARS + ["{bad}/zero-volume.parquet"],
         ("zero-volume.parquet", "all-zero volume")),
    Case("two symbols interleaved", BROKEN_BARS + ["{bad}/two-symbols.parquet"], ("KO", "PEP", "--symbol")),
    Case("daily model on 60-minute bars", BROKEN_BARS + ["{bad}/hourly.parquet"], ("60-minute", "daily")),
    Case("--start with an offset is converted to UTC", SCHEDULE + ["--start", "2021-03-01T00:00:00+05:00"],
         ("no bar opens at 2021-02-28 19:00:00+00:00",)),
]


def _fill(text: str, paths: dict[str, Path]) -> str:
    return text.format(**{k: str(v) for k, v in paths.items()})


def lem(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m lem_pipeline.cli`` in ``cwd``, with every LEM_ setting and DAGSTER_HOME under ``cwd``'s
    sibling folder ``state`` unless ``env`` says otherwise."""
    state = cwd.parent / "state"
    base = clean_env(DAGSTER_HOME=str(state / "dagster_home"), LEM_DATA_DIR=str(state / "data"),
                     LEM_MLFLOW_DIR=str(cwd.parent / "mlruns"),
                     PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return subprocess.run([sys.executable, "-m", "lem_pipeline.cli", *argv], cwd=cwd, env=base | (env or {}),
                          capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def bad(trained_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Broken copies of the trained model and of KO's bars, one fault each, and an MLflow store
    with one run, an evaluation's (no model). The faulty bars are the last ones: what a live
    decision reads."""
    import mlflow

    out, _ = trained_model
    bad = tmp_path_factory.mktemp("bad")
    shutil.copytree(out / "model", bad / "model-bad-config")
    (bad / "model-bad-config" / "config.json").write_text("garbage")
    shutil.copytree(out / "model", bad / "model-truncated")
    weights = bad / "model-truncated" / "model.pt"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    ko = pl.read_parquet(out / "KO.parquet").sort("open_time")
    tail = pl.int_range(pl.len()) >= pl.len() - 5
    ko.drop("vwap").write_parquet(bad / "no-vwap.parquet")
    ko.with_columns(pl.when(tail).then(float("nan")).otherwise(pl.col("vwap")).alias("vwap")).write_parquet(
        bad / "nan-vwap.parquet")
    ko.with_columns(pl.when(tail).then(float("nan")).otherwise(pl.col("quote_volume")).alias("quote_volume")
                    ).write_parquet(bad / "nan-quote.parquet")
    recent = pl.int_range(pl.len()) >= pl.len() - 200  # more than every bar a decision reads
    ko.with_columns(pl.when(recent).then(0.0).otherwise(pl.col(c)).alias(c) for c in ("volume", "quote_volume")
                    ).write_parquet(bad / "zero-volume.parquet")
    pl.concat([ko, ko.with_columns(pl.lit("PEP").alias("symbol"))]).sort("open_time").write_parquet(
        bad / "two-symbols.parquet")
    ko.with_columns(pl.lit(60, pl.Int32).alias("freq_min")).write_parquet(bad / "hourly.parquet")
    ko.with_columns(pl.when(tail).then(None).otherwise(pl.col("freq_min")).alias("freq_min")).write_parquet(
        bad / "null-freq.parquet")
    ko.with_columns(pl.col("open_time") - pl.duration(hours=9)).write_parquet(bad / "tokyo.parquet")  # Tokyo midnight
    # The trained model reads 30 lookback bars normalised by the 60 before each: a segment that
    # starts 85 bars before the end leaves the first lookback bars without a normaliser.
    ko.with_columns(pl.when(pl.int_range(pl.len()) >= pl.len() - 85).then(pl.col("segment") + 1)
                    .otherwise(pl.col("segment")).alias("segment")).write_parquet(bad / "outage.parquet")
    shutil.copytree(out / "model", bad / "model-lookahead")
    config = json.loads((bad / "model-lookahead" / "config.json").read_text())
    (bad / "model-lookahead" / "config.json").write_text(json.dumps(config | {"causal": False}))
    shutil.copytree(out / "model", bad / "model-list-config")
    (bad / "model-list-config" / "config.json").write_text("[]")
    shutil.copytree(out / "model", bad / "model-text-horizon")
    (bad / "model-text-horizon" / "config.json").write_text(json.dumps(config | {"n_ahead": str(config["n_ahead"])}))
    mlflow.set_tracking_uri(f"sqlite:///{bad / 'mlruns' / 'mlflow.db'}")
    (bad / "mlruns").mkdir()
    with mlflow.start_run(experiment_id=mlflow.create_experiment("lem-evaluate")) as run:  # logs no model
        (bad / "evaluation-run.txt").write_text(run.info.run_id)
    return bad


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    (tmp_path / "cwd").mkdir()
    return tmp_path / "cwd"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_findings_06_11_one_line_and_status_2(case: Case, trained_model, bad: Path, cwd: Path) -> None:
    out, _ = trained_model
    paths = {"model": out / "model", "bars": out / "KO.parquet", "bad": bad, "tmp": cwd.parent,
             "run": (bad / "evaluation-run.txt").read_text()}
    proc = lem([_fill(a, paths) for a in case.argv], cwd, {k: _fill(v, paths) for k, v in case.env.items()})
    command = case.argv[0]
    lines = proc.stderr.splitlines()
    print(f"{case.id}: rc {proc.returncode}: {proc.stderr.strip()}")
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"lem {command}: "), proc.stderr
    for name in case.expected:
        assert _fill(name, paths) in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not list(cwd.iterdir()), "the command wrote into its working directory (a stray mlflow.db?)"


def test_finding_11_debug_shows_the_traceback(trained_model, cwd: Path) -> None:
    out, _ = trained_model
    proc = lem(["--debug", "schedule", "--model", str(out / "model"), "--bars", str(out / "KO.parquet"),
                "--max-rate", "5"], cwd)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "UserError: --max-rate 5" in proc.stderr


def _no_nan(constant: str):
    raise AssertionError(f"{constant} in the JSON output")


def test_finding_06_json_is_strict_and_an_offset_start_is_converted(trained_model, cwd: Path) -> None:
    """2021-03-01T05:00+05:00 is the bar at 2021-03-01T00:00Z; its offset is not dropped."""
    out, model = trained_model
    proc = lem(["schedule", "--model", str(out / "model"), "--bars", str(out / "KO.parquet"), "--json",
                "--start", "2021-03-01T05:00:00+05:00", "--quantity", "100"], cwd)
    assert proc.returncode == 0, proc.stderr
    steps = json.loads(proc.stdout, parse_constant=_no_nan)["steps"]
    assert steps[0]["bar"] == "2021-03-01T00:00:00+00:00" and len(steps) == model.cfg.n_ahead
