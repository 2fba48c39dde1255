"""What the pipeline commands share: the preset's definitions on the local Dagster instance,
opened only after the environment it points at has been checked (a bad variable fails here, in
one line naming it, not in a Dagster step minutes later)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from lem_model.fileio import atomic_write_text
from lem_pipeline import settings
from lem_pipeline.errors import UserError
from lem_pipeline.presets import Preset, get_preset
from lem_pipeline.sources.binance import BinanceDataVision, DataVisionError

DAGSTER_HOME = "DAGSTER_HOME"
# The tracked instance config (run monitoring, one run at a time, the torch pool): what every
# DAGSTER_HOME of this checkout gets, so a new one is not left with Dagster's defaults.
INSTANCE_CONFIG = Path(__file__).resolve().parents[2] / "dagster_home" / "dagster.yaml"


@dataclass
class LocalDeployment:
    preset: Preset
    defs: dg.Definitions
    instance: dg.DagsterInstance
    home: Path


def writable_dir(variable: str, value: str) -> Path:
    """``value`` as a directory the pipeline can write in, created if missing."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise UserError(f"{variable}={value} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"{variable}={value} is not a writable directory ({e.strerror or e})") from e
    return path


def check_environment(preset: Preset, environ: Mapping[str, str] = os.environ) -> None:
    """Every directory and source the preset's runs will use, checked before Dagster starts
    (settings.apply_defaults must have filled in the defaults)."""
    yahoo = environ[settings.YAHOO_DIR]
    if preset.tickers and yahoo and not Path(yahoo).is_dir():
        raise UserError(f"{settings.YAHOO_DIR}={yahoo}: no such directory (a folder of Yahoo-layout TICKER.csv)")
    if preset.streams:
        try:
            BinanceDataVision(environ[settings.BINANCE_URL])
        except (ValueError, DataVisionError) as e:
            raise UserError(f"{settings.BINANCE_URL}: {e}") from e
    writable_dir(DAGSTER_HOME, environ[DAGSTER_HOME])
    writable_dir(settings.DATA_DIR, environ[settings.DATA_DIR])
    settings.thread_budget(environ)  # a LEM_TORCH_THREADS that is not a number fails here, not in a step
    uri = environ[settings.MLFLOW_URI]
    if (store := settings.sqlite_file(uri)) is not None:
        writable_dir(settings.MLFLOW_URI, str(store.parent))
    from lem_pipeline.tracking import check_store

    check_store(uri)
    if "://" not in environ[settings.MLFLOW_ARTIFACTS]:
        writable_dir(settings.MLFLOW_ARTIFACTS, environ[settings.MLFLOW_ARTIFACTS])


def install_instance_config(home: Path) -> None:
    """Give a DAGSTER_HOME without a dagster.yaml the tracked one (an existing one is the
    user's: kept)."""
    target = home / "dagster.yaml"
    if not target.exists() and INSTANCE_CONFIG.is_file():
        atomic_write_text(target, INSTANCE_CONFIG.read_text())


def open_local(preset_name: str) -> LocalDeployment:
    """The preset's definitions and the instance in DAGSTER_HOME (default ./dagster_home)."""
    preset = get_preset(preset_name)
    os.environ[settings.PRESET] = preset_name
    settings.apply_defaults()
    home = Path(os.environ.setdefault(DAGSTER_HOME, str(Path("dagster_home").resolve())))
    check_environment(preset)
    install_instance_config(home)
    from lem_pipeline.definitions import build_definitions

    return LocalDeployment(preset, build_definitions(preset), dg.DagsterInstance.get(), home)


def add_preset_argument(parser) -> None:
    parser.add_argument("--preset", default=os.environ.get(settings.PRESET, settings.DEFAULT_PRESET),
                        help="demo, paper_crypto, paper_dow, ... (LEM_PRESET)")
