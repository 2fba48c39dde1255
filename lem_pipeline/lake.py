"""The data lake: every path the pipeline reads or writes, in one resource.

Layout under ``root`` (``LEM_DATA_DIR``, default ``./data``)::

    raw/binance/...                              Data Vision archives as downloaded (verified)
    klines/{market}/{interval}/{SYMBOL}/{YYYY-MM}.parquet   one per binance_klines partition
    yahoo/{TICKER}.parquet                       one per yahoo_daily_bars partition
    bars/{dataset}/{SYMBOL}_{freq}m.parquet      resampled bars per series
    windows/{dataset}/                           windows, targets and splits (lem_pipeline.windows)
    models/{name}/                               a trained model (lem_model.saved_model + windows.json)
    models/{name}_seed{k}/                       the k-th extra seed of a several-seed training (seed_model_name)
    training/{name}/{key}/                       the state of a training in progress, keyed by its config and windows
                                                 (lem_pipeline.model_training.training_key): a killed run resumes
                                                 from it; removed when the training succeeds
    evaluation/{name}/                           tables, plots and the slippage arrays; with several seeds,
                                                 seeds.json and seeds/seed_{k}/ (lem_pipeline.seed_spread)

``dataset`` is ``crypto`` or ``equity``; a model or evaluation ``name`` is a dataset or a
variant of one (``equity-lookahead``).
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl

from lem_model.fileio import atomic_write
from lem_pipeline import settings
from lem_pipeline.sources.binance import KlineStream

SLIPPAGE_FILE = "slippage.npz"  # lem_model.evaluate.EvalArrays of the test split
TEST_INDEX_FILE = "test_index.parquet"  # the test windows' rows of the windows index, in order


def seed_model_name(name: str, k: int) -> str:
    """The lake name of the k-th model of a several-seed training: the first is ``name`` itself
    (the asset's model, where evaluation and ``lem schedule`` look), the others ``{name}_seed{k}``."""
    return name if k == 0 else f"{name}_seed{k}"


class DataLake(dg.ConfigurableResource):
    """Paths are absolute because Dagster steps may run in other working directories."""

    root: str

    @property
    def path(self) -> Path:
        return Path(self.root).resolve()

    @classmethod
    def from_environment(cls) -> DataLake:
        """The same lake outside a Dagster run (the CLI), from LEM_DATA_DIR now."""
        settings.apply_defaults()
        return cls(root=os.environ[settings.DATA_DIR])

    # -- ingest --------------------------------------------------------------------------------
    def archive_dir(self) -> Path:
        return self.path / "raw" / "binance"

    def _klines_dir(self, stream: KlineStream) -> Path:
        return self.path / "klines" / stream.market / stream.interval / stream.symbol

    def klines_file(self, stream: KlineStream, month: date) -> Path:
        return self._klines_dir(stream) / f"{month:%Y-%m}.parquet"

    def klines_files(self, stream: KlineStream, first: date | None = None, last: date | None = None) -> list[Path]:
        """The stream's monthly files, of the months ``first`` .. ``last`` (inclusive; None: open)
        only: a data directory shared by presets holds months another preset asked for."""
        def month(f: Path) -> date:
            try:
                return date.fromisoformat(f"{f.stem}-01")
            except ValueError:
                raise ValueError(f"{f}: not a month's klines (YYYY-MM.parquet) in the lake") from None

        return [f for f in sorted(self._klines_dir(stream).glob("*.parquet"))
                if (first is None or month(f) >= first) and (last is None or month(f) <= last)]

    def daily_file(self, ticker: str) -> Path:
        return self.path / "yahoo" / f"{ticker}.parquet"

    # -- features ------------------------------------------------------------------------------
    def bars_dir(self, dataset: str) -> Path:
        return self.path / "bars" / dataset

    def bars_file(self, dataset: str, symbol: str, freq_min: int) -> Path:
        return self.bars_dir(dataset) / f"{symbol}_{freq_min}m.parquet"

    def windows_dir(self, dataset: str) -> Path:
        return self.path / "windows" / dataset

    # -- models and their evaluation -----------------------------------------------------------
    def model_dir(self, name: str) -> Path:
        return self.path / "models" / name

    def training_state_dir(self, name: str, key: str) -> Path:
        return self.path / "training" / name / key

    def evaluation_dir(self, name: str) -> Path:
        return self.path / "evaluation" / name

    def slippage_file(self, name: str) -> Path:
        return self.evaluation_dir(name) / SLIPPAGE_FILE



class EmptyReplacementError(RuntimeError):
    """New data with no rows would replace a file that has some."""


def write_parquet_atomic(df: pl.DataFrame, path: Path) -> None:
    """Write beside the target and rename: a crash never leaves a half file under the real name.

    An empty frame never replaces a file that has rows: a source that answers nothing (a
    missing mirror, an empty download) must not wipe data that was valid.
    """
    if df.is_empty() and path.exists():
        rows = pl.scan_parquet(path).select(pl.len()).collect().item()
        if rows:
            raise EmptyReplacementError(f"refusing to replace {path} ({rows} rows) with an empty frame: the source "
                                        "returned no rows; the file is kept")
    atomic_write(path, lambda tmp: df.write_parquet(tmp, compression="zstd", statistics=True))
