"""What the pipeline commands share: the preset's definitions on the local Dagster instance."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from lem_pipeline import settings
from lem_pipeline.presets import Preset


@dataclass
class LocalDeployment:
    preset: Preset
    defs: dg.Definitions
    instance: dg.DagsterInstance
    home: Path


def open_local(preset_name: str) -> LocalDeployment:
    """The preset's definitions and the instance in DAGSTER_HOME (default ./dagster_home)."""
    os.environ[settings.PRESET] = preset_name
    settings.apply_defaults()
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path("dagster_home").resolve())))
    home.mkdir(parents=True, exist_ok=True)
    from lem_pipeline.definitions import build_definitions
    from lem_pipeline.presets import get_preset

    preset = get_preset(preset_name)
    return LocalDeployment(preset, build_definitions(preset), dg.DagsterInstance.get(), home)


def add_preset_argument(parser) -> None:
    parser.add_argument("--preset", default=os.environ.get(settings.PRESET, "demo"),
                        help="demo, paper_crypto, paper_dow, ... (LEM_PRESET)")
