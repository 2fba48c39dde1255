"""The code location loads, for every preset, through Dagster's own validation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from lem_pipeline.definitions import build_definitions
from lem_pipeline.presets import PRESETS
from tests.conftest import clean_env

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_loads_and_resolves_its_jobs(name):
    defs = build_definitions(PRESETS[name])
    dg.Definitions.validate_loadable(defs)
    for job in ("crypto_ingest_job", "equity_ingest_job"):
        assert defs.resolve_job_def(job).partitions_def is not None


def test_paper_universes():
    crypto, dow = PRESETS["paper_crypto"], PRESETS["paper_dow"]
    assert len(crypto.streams) == 20 and {s.interval for s in crypto.streams} == {"1m"}
    assert (crypto.crypto_first_month.isoformat(), crypto.crypto_last_month.isoformat()) == ("2017-08-01", "2024-12-01")
    keys = build_definitions(crypto).resolve_job_def("crypto_ingest_job").partitions_def.get_partition_keys()
    assert len(keys) == 20 * 89  # 20 pairs x (2017-08 .. 2024-12)
    assert len(dow.tickers) == 30 and (dow.equity_start.isoformat(), dow.equity_end.isoformat()) == ("2000-01-03", "2024-12-31")


def test_dagster_cli_validates_the_workspace(dagster_home):
    proc = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
                          cwd=REPO, capture_output=True, text=True, env=clean_env(LEM_PRESET="demo", DAGSTER_HOME=str(dagster_home)),
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation successful" in proc.stdout + proc.stderr


def test_the_environment_defaults_are_absolute(tmp_path, monkeypatch):
    """Dagster steps run in other working directories: every path the settings hand on, the
    MLflow store of a relative sqlite URI included, is absolute."""
    from lem_pipeline import settings

    tmp_path = tmp_path.resolve()
    monkeypatch.chdir(tmp_path)
    environ = {settings.MLFLOW_URI: "sqlite:///runs/mlflow.db", settings.DATA_DIR: "data"}
    settings.apply_defaults(environ)
    assert environ[settings.MLFLOW_URI] == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert environ[settings.DATA_DIR] == str(tmp_path / "data")
    assert environ[settings.MLFLOW_DIR] == str(tmp_path / "mlruns")
    kept = {settings.MLFLOW_URI: "http://127.0.0.1:5000"}
    settings.apply_defaults(kept)
    assert kept[settings.MLFLOW_URI] == "http://127.0.0.1:5000"
