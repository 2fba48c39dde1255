"""The MLflow UI in a real browser: two runs of different configurations, compared by a metric."""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow
import pytest

from tests.conftest import clean_env
from tests.e2e.conftest import SCREENSHOTS, free_port, start, stop, wait_http
from lem_pipeline.tracking import MLflowTracking

RUNS = {"equity-causal": (True, [0.71, 0.69]), "equity-lookahead": (False, [0.70, 0.64])}


@pytest.fixture
def mlflow_ui(tmp_path):
    tracking = MLflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=str(tmp_path / "art"))
    exp_id = tracking.experiment_id("lem-equity")
    for name, (causal, losses) in RUNS.items():  # as the training asset logs them
        with tracking.run("lem-equity", run_name=name):
            mlflow.log_params({"model.causal": causal, "model.hidden_size": 32 if causal else 64})
            for step, loss in enumerate(losses):
                mlflow.log_metrics({"val_loss": loss, "loss": loss + 0.01}, step=step)
    port = free_port()
    proc = start([str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", tracking.tracking_uri,
                  "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], clean_env(), tmp_path / "mlflow_ui.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, timeout=180)
        yield f"http://127.0.0.1:{port}", exp_id
    finally:
        stop(proc)


def test_runs_table_lists_both_runs_with_a_metric_column(mlflow_ui, browser):
    url, exp_id = mlflow_ui
    # wide: the grid renders only the columns inside its viewport
    page = browser.new_page(viewport={"width": 2400, "height": 1100})
    # MLflow keeps polling, so "networkidle" never comes: wait for the elements instead
    page.goto(f"{url}/#/experiments/{exp_id}/runs", wait_until="domcontentloaded", timeout=120_000)
    page.get_by_text("Model training", exact=True).first.click(timeout=60_000)
    for name in RUNS:
        page.get_by_text(name, exact=True).first.wait_for(timeout=60_000)
    page.get_by_role("button", name="Columns").first.click()
    metric = page.locator("[class*='tree-treenode']", has=page.locator('[title="val_loss"]'))
    metric.locator("[class*='tree-checkbox']").first.click()
    page.keyboard.press("Escape")
    page.get_by_role("columnheader").filter(has_text="val_loss").first.wait_for(timeout=30_000)
    page.locator("[role=gridcell][col-id*='val_loss']").first.wait_for(timeout=30_000)
    page.screenshot(path=str(SCREENSHOTS / "mlflow_runs_table.png"), full_page=True)
    # each run's row (split by the grid into pinned and scrolling parts) shows its latest val_loss
    rows = {}
    for i in range(len(RUNS)):
        text = " ".join(page.locator(f"[role=row][row-index='{i}']").all_inner_texts())
        name = next(n for n in RUNS if n in text)
        rows[name] = text
    assert set(rows) == set(RUNS)
    for name, (_, losses) in RUNS.items():
        assert str(losses[-1]) in rows[name].split(), rows[name]
