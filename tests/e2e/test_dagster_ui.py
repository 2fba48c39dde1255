"""The Dagster UI in a real browser: the asset graph of every stage, and a materialisation
launched by clicking that builds real bars (the fixture tickers' daily bars are ingested into the
same instance first), shown in the UI and recorded in the instance."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests.conftest import BINANCE_MIRROR, YAHOO_DIR, clean_env
from tests.e2e.conftest import REPO, SCREENSHOTS, free_port, start, stop, wait_http

STAGES = {
    "ingest": ["binance_klines", "yahoo_daily_bars"],
    "features": ["crypto_bars", "equity_bars", "crypto_windows", "equity_windows"],
    "training": ["crypto_lem_model", "equity_lem_model"],
    "evaluation": ["crypto_evaluation", "equity_evaluation"],
}
LOCATION = "lem_pipeline.definitions"
INGESTED = ("AAPL", "KO", "MSFT")  # the demo's tickers the fixture set ships (not JPM)


@pytest.fixture
def dagster_ui(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster_home" / "dagster.yaml").read_text())
    # The daily bars equity_bars reads, ingested into the same instance and lake as the UI's.
    import dagster as dg

    from lem_pipeline.definitions import build_definitions
    from lem_pipeline.lake import DataLake
    from lem_pipeline.local_runs import run_partitions
    from lem_pipeline.presets import PRESETS
    from lem_pipeline.resources import YahooSource

    defs = build_definitions(PRESETS["demo"], resources={"lake": DataLake(root=str(tmp_path / "data")),
                                                         "yahoo": YahooSource(csv_dir=str(YAHOO_DIR))})
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert run_partitions(defs, "equity_ingest_job", instance, INGESTED, progress=False).failed == {}
    port = free_port()
    env = clean_env(DAGSTER_HOME=str(home), LEM_DATA_DIR=str(tmp_path / "data"), LEM_PRESET="demo",
                    LEM_MLFLOW_DIR=str(tmp_path / "mlruns"), LEM_BINANCE_URL=BINANCE_MIRROR.as_uri(),
                    LEM_YAHOO_DIR=str(YAHOO_DIR))
    proc = start([str(Path(sys.executable).parent / "dagster"), "dev", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1",
                  "-p", str(port)], env, tmp_path / "dagster_dev.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/server_info", proc, timeout=180)
        yield f"http://127.0.0.1:{port}", tmp_path
    finally:
        stop(proc)


def test_asset_graph_and_a_materialisation_launched_by_clicking(dagster_ui, browser):
    url, tmp_path = dagster_ui
    page = browser.new_page(viewport={"width": 1800, "height": 1100})
    page.goto(f"{url}/asset-groups", wait_until="networkidle", timeout=120_000)
    for stage in STAGES:  # the global lineage shows one box per stage
        page.get_by_text(stage, exact=True).first.wait_for(timeout=60_000)
    page.screenshot(path=str(SCREENSHOTS / "dagster_lineage.png"))
    for stage, assets in STAGES.items():
        page.goto(f"{url}/locations/{LOCATION}/asset-groups/{stage}", wait_until="networkidle", timeout=120_000)
        for name in assets:
            page.get_by_text(name, exact=True).first.wait_for(timeout=60_000)
        page.screenshot(path=str(SCREENSHOTS / f"dagster_group_{stage}.png"))

    # equity_bars: a small unpartitioned asset, its partitioned upstream ingested by the fixture
    page.goto(f"{url}/assets/equity_bars", wait_until="networkidle", timeout=120_000)
    page.locator("button", has_text="Materialize").first.click()
    confirm = page.get_by_role("button", name="Confirm")  # a warning about upstream, where Dagster shows one
    try:
        confirm.click(timeout=5_000)
    except Exception:  # noqa: BLE001 - no warning when upstream exists
        pass
    # the click went through the webserver into this instance: a run beside the ingest's, which
    # materialises equity_bars from the ingested tickers' daily bars into the lake
    import dagster as dg
    import polars as pl

    deadline = time.monotonic() + 180
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        while True:
            clicked = [r for r in instance.get_runs() if r.job_name != "equity_ingest_job"]
            if clicked and clicked[0].is_finished or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert len(clicked) == 1 and clicked[0].status == dg.DagsterRunStatus.SUCCESS, clicked
        event = instance.get_latest_materialization_event(dg.AssetKey("equity_bars"))
        assert event is not None and event.run_id == clicked[0].run_id
        metadata = event.asset_materialization.metadata
    page.goto(f"{url}/runs", wait_until="networkidle", timeout=60_000)
    page.locator(f'a[href="/runs/{clicked[0].run_id}"]').first.wait_for(timeout=60_000)
    page.screenshot(path=str(SCREENSHOTS / "dagster_run_success.png"), full_page=True)
    files = sorted((tmp_path / "data" / "bars" / "equity").glob("*.parquet"))
    assert [f.name.split("_")[0] for f in files] == sorted(INGESTED)
    bars = sum(pl.read_parquet(f).height for f in files)
    assert bars > 3 * 5000 and metadata["bars"].value == bars
    # and the UI shows it: the asset's page links its latest materialisation to that run, whose
    # page says it succeeded
    page.goto(f"{url}/assets/equity_bars", wait_until="networkidle", timeout=60_000)
    page.locator(f'a[href^="/runs/{clicked[0].run_id}"]').first.wait_for(timeout=60_000)
    page.screenshot(path=str(SCREENSHOTS / "dagster_equity_bars.png"), full_page=True)
    page.goto(f"{url}/runs/{clicked[0].run_id}", wait_until="networkidle", timeout=60_000)
    page.get_by_text("Success", exact=True).first.wait_for(timeout=60_000)
    page.get_by_text(clicked[0].run_id[:8], exact=True).first.wait_for(timeout=60_000)
