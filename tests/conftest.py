"""Shared fixtures: real market data, served by a real HTTP server.

By default every test reads the small real-data fixture set shipped in ``tests/data/`` (see its
README): a Binance Data Vision tree, three Yahoo tickers and the golden loss values. A few tests
need the whole mirror (all 30 Dow stocks, for example); they read ``../shared/data`` beside the
repository when it exists and are skipped, with the reason, when it does not. CI has it.
"""

from __future__ import annotations

import http.server
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The fixture set committed with the repository: what the suite reads by default.
FIXTURES = REPO / "tests" / "data"
BINANCE_MIRROR = FIXTURES / "binance"  # Data Vision layout: data/{spot|futures/um}/{monthly|daily}/klines/...
YAHOO_DIR = FIXTURES / "yahoo"  # AAPL, KO, MSFT
GOLDEN_DIR = FIXTURES / "golden"  # lem_loss_golden.npz: reference values of lem_loss and the metrics

# The whole mirror beside the repository (not shipped): only for the tests marked below.
FULL_MIRROR = (REPO / ".." / "shared" / "data").resolve()
FULL_YAHOO_DIR = FULL_MIRROR / "yahoo"

def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without the developer's LEM_*, DAGSTER_* and MLFLOW_* settings
    (and MLflow's own MLFLOW_TRACKING_URI, which ``mlflow.set_tracking_uri`` exports), plus
    ``settings``: what a subprocess under test starts from, so it never writes into a real store."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LEM_", "DAGSTER_", "MLFLOW_"))}
    return base | settings


def _keep_mlflow_tracking_uri() -> Iterator[None]:
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    import mlflow

    mlflow.set_tracking_uri(saved)  # None: unset, in MLflow and in os.environ


# ``mlflow.set_tracking_uri`` also exports MLFLOW_TRACKING_URI: without these, one test's store (or
# one module's, set by a module-scoped fixture) would be every later test's and its subprocesses'.
_mlflow_tracking_uri_stays_in_its_test = pytest.fixture(
    autouse=True, name="_mlflow_tracking_uri_stays_in_its_test")(_keep_mlflow_tracking_uri)
_mlflow_tracking_uri_stays_in_its_module = pytest.fixture(
    autouse=True, scope="module", name="_mlflow_tracking_uri_stays_in_its_module")(_keep_mlflow_tracking_uri)


needs_full_mirror = pytest.mark.skipif(
    not FULL_YAHOO_DIR.is_dir(),
    reason=f"needs all 30 Dow CSVs of the full mirror at {FULL_YAHOO_DIR} (tests/data ships only AAPL, KO, MSFT); "
           "CI has it")


@dataclass
class MirrorServer:
    """A static HTTP server on 127.0.0.1 over a Data Vision tree, with scripted faults.

    ``faults[path]`` is a list consumed one per request to that path: ``"stall"`` (sleep past the
    client's read timeout before answering), ``"cut"`` (announce the full length, send half),
    ``"trickle"`` (announce the full length, then send one byte every ``trickle_seconds``: never
    idle long enough for a read timeout), or an HTTP status code to answer instead of the file.
    """

    root: Path
    port: int = 0
    requests: list[str] = field(default_factory=list)
    faults: dict[str, list] = field(default_factory=dict)
    stall_seconds: float = 1.5
    trickle_seconds: float = 0.25

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, suffix: str = ".zip") -> int:
        return sum(1 for r in self.requests if r.endswith(suffix))


def _handler(server: MirrorServer):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(server.root), **kw)

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            server.requests.append(path)
            pending = server.faults.get(path)
            fault = pending.pop(0) if pending else None
            if fault == "stall":
                time.sleep(server.stall_seconds)
            elif isinstance(fault, int):
                self.send_error(fault)
                return
            elif fault == "trickle":
                body = (server.root / path.lstrip("/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.close_connection = True
                try:
                    for i in range(len(body)):
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                        time.sleep(server.trickle_seconds)
                except OSError:  # the client hung up: what a deadline is for
                    pass
                return
            elif fault == "cut":
                body = (server.root / path.lstrip("/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            super().do_GET()

    return Handler


def serve(root: Path) -> Iterator[MirrorServer]:
    state = MirrorServer(root=root)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def mirror() -> Iterator[MirrorServer]:
    """The fixture Data Vision tree in tests/data/binance, over HTTP on loopback."""
    yield from serve(BINANCE_MIRROR)


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real Dagster instance (SQLite storage) in a temporary DAGSTER_HOME."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster_home" / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def small_equity_windows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real windows from two Dow stocks (AAPL, KO in tests/data/yahoo) with a short lookback: small enough
    to train on in seconds."""
    from datetime import date

    import polars as pl

    from lem_pipeline.bars import daily_bars
    from lem_pipeline.sources.yahoo import CsvDirectorySource
    from lem_pipeline.windows import WindowConfig, build_windows

    src = CsvDirectorySource(YAHOO_DIR)
    series = [daily_bars(src.load(t, date(2000, 1, 3), date(2024, 12, 31)).with_columns(pl.lit(t).alias("ticker")))
              for t in ("AAPL", "KO")]
    cfg = WindowConfig(lookback=30, n_ahead=6, norm_window=60, stride=8)
    out = tmp_path_factory.mktemp("windows") / "equity"
    build_windows(series, cfg, out)
    return out


@pytest.fixture(scope="session")
def trained_model(small_equity_windows: Path, tmp_path_factory: pytest.TempPathFactory):
    """(directory, model): a tiny model trained one epoch on small_equity_windows, saved as the
    pipeline saves one (``directory / "model"``), and KO's daily bars (``directory / "KO.parquet"``)."""
    import shutil
    from datetime import date

    import polars as pl

    from lem_model import LargeExecutionModel, LEMConfig
    from lem_model.saved_model import save_model
    from lem_model.train import TrainConfig, seed_everything, train
    from lem_model.window_dataset import WindowDataset
    from lem_pipeline.bars import daily_bars
    from lem_pipeline.sources.yahoo import CsvDirectorySource
    from lem_pipeline.trained_model import WINDOWS_META

    train_set, val_set = WindowDataset(small_equity_windows, "train"), WindowDataset(small_equity_windows, "val")
    meta = train_set.meta
    seed_everything(0)
    model = LargeExecutionModel(LEMConfig(n_features=len(meta["features"]), lookback=meta["config"]["lookback"],
                                          n_ahead=meta["config"]["n_ahead"], hidden_size=8, num_embedding=4,
                                          num_heads=2, fused_hidden=8))
    out = tmp_path_factory.mktemp("desk")
    train(model, train_set, val_set, TrainConfig(epochs=1, batch_size=64, lr=1e-3, progress=False), out / "ckpt")
    save_model(model, out / "model")
    shutil.copyfile(small_equity_windows / "meta.json", out / "model" / WINDOWS_META)
    bars = daily_bars(CsvDirectorySource(YAHOO_DIR).load("KO", date(2000, 1, 3), date(2024, 12, 31))
                      .with_columns(pl.lit("KO").alias("ticker")))
    bars.write_parquet(out / "KO.parquet")
    return out, model
