"""The environment variables that point the pipeline at its data, its sources and its tracking
store, and the embedded local defaults that apply when they are unset (no server needed).

Resources read these through ``dg.EnvVar`` at run launch; :func:`apply_defaults` fills in the
unset ones once, when the code location or a command starts, and makes relative paths absolute
(Dagster steps may run in other working directories).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

from lem_pipeline.errors import UserError
from lem_pipeline.sources.binance import DEFAULT_BASE_URL

PRESET = "LEM_PRESET"
DEFAULT_PRESET = "demo"  # what LEM_PRESET, --preset and the README's first command mean when unset
DATA_DIR = "LEM_DATA_DIR"
BINANCE_URL = "LEM_BINANCE_URL"
YAHOO_DIR = "LEM_YAHOO_DIR"  # empty: live yfinance
MLFLOW_DIR = "LEM_MLFLOW_DIR"
MLFLOW_URI = "LEM_MLFLOW_URI"
MLFLOW_ARTIFACTS = "LEM_MLFLOW_ARTIFACTS"
TORCH_THREADS = "LEM_TORCH_THREADS"  # empty: the thread budget below
# Steps that run torch at once: one, because every torch asset is in the "torch" pool, which
# dagster_home/dagster.yaml limits to one step (two torch processes on two cores each spinning
# every core slow each other 10-100x).
TORCH_POOL = "torch"
TORCH_STEPS_AT_ONCE = 1
_PATHS = (DATA_DIR, YAHOO_DIR, MLFLOW_DIR, MLFLOW_ARTIFACTS)
SQLITE_PREFIX = "sqlite:///"  # the embedded MLflow store's URI scheme (an absolute path follows)


def apply_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set every unset variable to its embedded default and make the path variables absolute."""
    for name in _PATHS:
        if environ.get(name):
            environ[name] = str(Path(environ[name]).resolve())
    store = sqlite_file(environ.get(MLFLOW_URI) or "")
    if store is not None and not store.is_absolute():  # sqlite:///mlflow.db: relative to this directory
        environ[MLFLOW_URI] = f"{SQLITE_PREFIX}{store.resolve()}"
    environ.setdefault(PRESET, DEFAULT_PRESET)
    environ.setdefault(DATA_DIR, str(Path("data").resolve()))
    environ.setdefault(BINANCE_URL, DEFAULT_BASE_URL)
    environ.setdefault(YAHOO_DIR, "")
    mlflow_dir = Path(environ.setdefault(MLFLOW_DIR, str(Path("mlruns").resolve())))
    environ.setdefault(MLFLOW_URI, f"{SQLITE_PREFIX}{mlflow_dir / 'mlflow.db'}")
    environ.setdefault(MLFLOW_ARTIFACTS, str(mlflow_dir / "artifacts"))


def thread_budget(environ: MutableMapping[str, str] = os.environ) -> int:
    """Torch intra-op threads for one step: the cores this process may use divided by the torch
    steps that run at once, unless LEM_TORCH_THREADS says otherwise."""
    if environ.get(TORCH_THREADS):
        try:
            return max(1, int(environ[TORCH_THREADS]))
        except ValueError:
            raise UserError(f"{TORCH_THREADS}={environ[TORCH_THREADS]!r}: not a whole number of threads") from None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // TORCH_STEPS_AT_ONCE)


def sqlite_file(uri: str) -> Path | None:
    """The database file of an embedded (SQLite) MLflow store, None for any other store: what
    can be checked before MLflow opens it (opening creates an empty store)."""
    return Path(uri.removeprefix(SQLITE_PREFIX)) if uri.startswith(SQLITE_PREFIX) else None
