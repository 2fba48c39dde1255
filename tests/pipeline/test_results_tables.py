"""RESULTS.md's comparison with the paper: the paper's Table 1 rows beside ours, row by row; and the
look-ahead section's like-for-like check."""

from __future__ import annotations

import mlflow
import numpy as np
import polars as pl

from lem_model.evaluate import EvalArrays
from lem_pipeline.commands.results import _paper_table, training_differences
from lem_pipeline.paper_results import PAPER_TABLE_1


def test_papers_table_1_sits_beside_our_rows():
    rng = np.random.default_rng(0)
    n, N = 50, 12
    ev = EvalArrays(rng.normal(size=(n, N + 1, 4, 2)).astype(np.float32), rng.normal(size=(n, N + 1, 4, 2)),
                    rng.normal(size=n), rng.normal(size=n), np.zeros((N, N + 1, 4, 2)), 0.0, True)
    lines = _paper_table(ev).splitlines()
    assert len(lines) == 2 + len(PAPER_TABLE_1) == 2 + 2 + 2 * (N + 1)
    buy6 = next(line for line in lines if line.startswith("| BUY | 6 |"))
    ours = ev.model_bps[:, 5, 0, 0].astype(np.float64)  # buy VWAP, volume target, minimum period 6
    assert buy6 == f"| BUY | 6 | -29.14 | 88.85 | {ours.mean():.2f} | {ours.std():.2f} |"
    assert "| SELL | Match VWAP | 9.67 | 53.86 |" in _paper_table(ev)


def test_a_look_ahead_training_differs_from_the_causal_one_only_in_causality(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    windows = pl.DataFrame({"window": [0, 1, 2]})

    def training(causal: bool, lr: str = "3e-05", windows: pl.DataFrame = windows) -> str:
        with mlflow.start_run() as run:
            mlflow.log_params({"model.causal": causal, "train.lr": lr, "windows.stride": 1})
            mlflow.log_input(mlflow.data.from_polars(windows, source="w", name="equity-train"), context="training")
        return run.info.run_id

    causal = training(True)
    assert training_differences(uri, causal, training(False)) == []
    assert training_differences(uri, causal, training(False, lr="1e-04")) == ["train.lr"]
    refreshed = pl.DataFrame({"window": [0, 1, 2, 3]})  # a month later: more windows, same config
    assert training_differences(uri, causal, training(False, windows=refreshed)) == ["the equity-train windows"]
