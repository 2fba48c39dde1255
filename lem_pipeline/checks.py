"""Standalone asset checks that re-read what an asset wrote. They block: a windows directory
that fails one stops training in the same run.

(Checks computed from a frame already in memory, like the pandera validation of the raw bars or
the evaluation's feasibility, are reported by their asset instead.)
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from lem_model.window_dataset import SPLITS, WindowDataset
from lem_pipeline.lake import DataLake
from lem_pipeline.reporting import markdown
from lem_pipeline.windows import TIME_COLUMNS, WindowConfig, read_index

FINITE_CHECK = "finite_windows"
SPLIT_CHECK = "windows_inside_splits"
_CHUNK = 4096  # windows gathered at a time: the bars stay memory-mapped, the windows are never all in memory


def finite_windows(directory: Path) -> dg.AssetCheckResult:
    """No NaN or inf in any window of any split, as the model will be fed it (x, volumes, prices)."""
    bad = {}
    for split in SPLITS:
        data = WindowDataset(directory, split)
        n_bad = dict.fromkeys(("x", "volumes", "prices"), 0)
        for i in range(0, len(data), _CHUNK):
            for name, arr in zip(n_bad, data.gather(np.arange(i, min(i + _CHUNK, len(data))))):
                n_bad[name] += int((~np.isfinite(arr)).sum())
        bad |= {f"{split}_{name}": n for name, n in n_bad.items() if n}
    return dg.AssetCheckResult(check_name=FINITE_CHECK, passed=not bad, metadata={"non_finite_values": bad or "none"})


def windows_inside_splits(directory: Path, cfg: WindowConfig) -> dg.AssetCheckResult:
    """Every window's bars, from the first's open to the last's close, lie inside the split dates
    of ``cfg`` (the boundaries are purged)."""
    index = read_index(directory)
    val = pl.lit(cfg.val_start).cast(pl.Datetime("us", "UTC"))
    test = pl.lit(cfg.test_start).cast(pl.Datetime("us", "UTC"))
    closes = pl.col("end_time") + pl.duration(minutes=pl.col("freq_min"))
    inside = (pl.when(pl.col("split") == "train").then(closes <= val)
              .when(pl.col("split") == "val").then((pl.col("first_time") >= val) & (closes <= test))
              .otherwise(pl.col("first_time") >= test))
    outside = index.filter(~inside)
    examples = outside.head(10).select("split", "symbol", "freq_min", *TIME_COLUMNS)
    return dg.AssetCheckResult(check_name=SPLIT_CHECK, passed=outside.is_empty(),
                               metadata={"windows_outside_their_split": len(outside),
                                         "examples": dg.MetadataValue.md(markdown(examples))})


def build_windows_checks(dataset: str, cfg: WindowConfig) -> list[dg.AssetChecksDefinition]:
    asset = f"{dataset}_windows"

    @dg.asset_check(asset=asset, name=FINITE_CHECK, blocking=True, description="no NaN or inf in any array")
    def finite(lake: DataLake) -> dg.AssetCheckResult:
        return finite_windows(lake.windows_dir(dataset))

    @dg.asset_check(asset=asset, name=SPLIT_CHECK, blocking=True,
                    description="every window's bars lie inside its split (purged boundaries)")
    def inside_splits(lake: DataLake) -> dg.AssetCheckResult:
        return windows_inside_splits(lake.windows_dir(dataset), cfg)

    return [finite, inside_splits]
