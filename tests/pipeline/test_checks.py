"""The standalone asset checks on real windows: they pass on what the builder wrote and fail,
naming what is wrong, on a corrupted copy."""

from __future__ import annotations

import shutil
from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from lem_model.window_dataset import WindowDataset, bars_file
from lem_pipeline.checks import FINITE_CHECK, SPLIT_CHECK, build_windows_checks
from lem_pipeline.lake import DataLake
from lem_pipeline.windows import INDEX_FILE, WindowConfig, read_meta


@pytest.fixture
def lake(small_equity_windows, tmp_path) -> DataLake:
    """A lake holding a private copy of the real windows, free to corrupt."""
    lake = DataLake(root=str(tmp_path / "lake"))
    shutil.copytree(small_equity_windows, lake.windows_dir("equity"))
    return lake


def checks(lake: DataLake) -> dict:
    cfg = WindowConfig.from_meta(read_meta(lake.windows_dir("equity")))
    return {next(iter(c.check_keys)).name: c for c in build_windows_checks("equity", cfg)}


def test_both_checks_pass_on_the_built_windows(lake):
    for name, check in checks(lake).items():
        result = check(lake=lake)
        assert result.passed, (name, result.metadata)


def test_finite_check_fails_on_a_nan(lake):
    directory = lake.windows_dir("equity")
    data = WindowDataset(directory, "val")
    bar = int(data.starts[3]) - data.lookback + 5  # a bar inside the fourth validation window
    features = np.load(bars_file(directory, "features"), mmap_mode="r+")
    features[bar, 0] = np.nan
    features.flush()
    del features
    # every validation window whose rows r-L .. r+N-2 cover that bar sees the NaN once
    covering = int(((data.starts - data.lookback <= bar) & (bar <= data.starts + data.n_ahead - 2)).sum())
    result = checks(lake)[FINITE_CHECK](lake=lake)
    assert not result.passed and covering >= 1
    assert result.metadata["non_finite_values"].value == {"val_x": covering}


def test_split_check_fails_on_a_window_across_the_boundary(lake):
    directory = lake.windows_dir("equity")
    cfg = WindowConfig.from_meta(read_meta(directory))
    index = pl.read_parquet(directory / INDEX_FILE)
    last_train = index.filter(pl.col("split") == "train")["row"].max()
    moved = index.with_columns(
        pl.when((pl.col("split") == "train") & (pl.col("row") == last_train))
        .then(pl.lit(cfg.val_start).cast(pl.Datetime("us", "UTC")) + timedelta(days=1))
        .otherwise(pl.col("end_time")).alias("end_time"))
    moved.write_parquet(directory / INDEX_FILE)
    result = checks(lake)[SPLIT_CHECK](lake=lake)
    assert not result.passed
    assert result.metadata["windows_outside_their_split"].value == 1
    assert "train" in result.metadata["examples"].value
