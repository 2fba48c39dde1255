"""The trade log (``trades.parquet``, a contract: docs/DESIGN.md "Trading costs and the classic
baselines"): the ledger of lem_model.ledger for every evaluated window, in real prices, with each
window's symbol, start, market context and regime labels. It is written batch by batch while the
evaluation runs (the per-step lists of a large test split do not fit comfortably in memory);
its scalar columns stay in memory for the net, arrival-cost and regime tables.

Columns: window (the test index row), symbol, freq_min, start_time, strategy, side, target,
min_period, allocation (per step, fraction of the order), benchmark / achieved / arrival (prices),
slippage_bps (gross, as the tables have it), arrival_bps (gross implementation shortfall), adv
(shares or base units per day), sigma_daily, trend, volatility_regime (low | mid | high, cut at
the training windows' terciles), trend_regime (up | down), and per order size s (fraction of ADV)
``fills@s`` (null where every child filled as planned, i.e. fills == allocation),
``fill_rate@s``, ``impact_bps@s``, ``fees_bps@s``, ``net_slippage_bps@s``, ``net_arrival_bps@s``.
Prices and slippage are signed as the tables sign them: a buy wants them low, a sell high.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import torch

from lem_model.costs import CostConfig, market_context, trailing_bars
from lem_model.evaluate import Batch
from lem_model.ledger import (ALMGREN_CHRISS, LEM, PROFILE, RULE, SIDE_NAMES, TARGET_NAMES, TWAP, Orders,
                              model_orders, order_records, whole_horizon_orders)
from lem_model.vocabulary import Target
from lem_model.window_dataset import WindowDataset
from lem_pipeline.bars import DAILY_MINUTES

TRADE_LOG_FILE = "trades.parquet"
ORDER_KEYS = ["strategy", "side", "target", "min_period"]
VOLATILITY_REGIMES = ("low", "mid", "high")
PRICE_COLUMNS = ("benchmark", "achieved", "arrival")
LIST_PREFIXES = ("allocation", "fills@")


def window_phases(index: pl.DataFrame, freq_min: int) -> np.ndarray:
    """The phase a volume profile conditions on: the start's UTC hour for intraday bars, else 0."""
    if freq_min >= DAILY_MINUTES:
        return np.zeros(len(index), np.int64)
    return index["start_time"].dt.hour().to_numpy().astype(np.int64)


def trailing_sigma(data: WindowDataset, rows: np.ndarray, freq_min: int, cfg: CostConfig) -> np.ndarray:
    """The daily volatility each window's context has (lem_model.costs.market_context), from the bars."""
    span = trailing_bars(data.lookback, freq_min, cfg)
    at = data.starts[rows][:, None] - span + np.arange(span)
    ctx = market_context(torch.from_numpy(data.bars.vwap[at]), torch.from_numpy(data.bars.volume[at]), freq_min)
    return ctx.sigma_daily.numpy()


@dataclass
class GroupContext:
    """One frequency's evaluated windows, for turning ledger rows into trade-log rows."""

    dataset: WindowDataset  # the test split
    rows: np.ndarray  # dataset positions of the evaluated windows, in evaluation order
    index: pl.DataFrame  # their test index rows, same order
    freq_min: int
    volatility_cuts: tuple[float, float]  # the training windows' sigma terciles


class TradeLog:
    """Collects the ledger of each evaluated batch into ``path``; :meth:`frame` is its scalar part."""

    def __init__(self, path: Path, costs: CostConfig, fee: float) -> None:
        self.path, self.costs, self.fee = path, costs, fee
        self._writer: pq.ParquetWriter | None = None
        self._frames: list[pl.DataFrame] = []
        self._alloc_sum: dict[int, dict[tuple, np.ndarray]] = defaultdict(lambda: defaultdict(float))
        self._alloc_count: dict[int, dict[tuple, int]] = defaultdict(lambda: defaultdict(int))

    def add(self, batch: Batch, group: GroupContext) -> None:
        B, N = batch.volumes.shape
        tables = batch.slippage  # every row's gross slippage is the tables' own number
        orders = [model_orders(LEM, batch.model_alloc, tables["model_bps"], N + 1),
                  model_orders(RULE, batch.rule_alloc, tables["rule_bps"], N),
                  whole_horizon_orders(TWAP, torch.full((B, N), 1.0 / N, dtype=torch.float64),
                                       torch.stack([tables["twap_volume_bps"], tables["twap_notional_bps"]], 1),
                                       tuple(Target)),
                  whole_horizon_orders(PROFILE, batch.profile, tables["profile_bps"][:, None])]
        if batch.almgren_chriss is not None:
            orders.append(whole_horizon_orders(ALMGREN_CHRISS, batch.almgren_chriss, tables["almgren_chriss_bps"][:, None]))
        pos = group.rows[batch.first:batch.first + B]
        price_scale = group.dataset.bars.vwap[group.dataset.starts[pos] - group.dataset.lookback]
        volume_scale = group.dataset.bars.vol_norm[group.dataset.starts[pos] + N - 1]
        index = group.index[batch.first:batch.first + B]
        ctx = batch.context
        sigma = ctx.sigma_daily.numpy()
        per_window = {
            "window": index["row"].to_numpy(), "symbol": index["symbol"].to_numpy(),
            "freq_min": index["freq_min"].to_numpy(), "start_time": index["start_time"],
            "adv": ctx.adv.numpy() * volume_scale, "sigma_daily": sigma, "trend": ctx.trend.numpy(),
            "volatility_regime": np.array(VOLATILITY_REGIMES)[np.searchsorted(group.volatility_cuts, sigma)],
            "trend_regime": np.where(ctx.trend.numpy() > 0, "up", "down"),
        }
        for o in orders:
            rec = order_records(o, batch.volumes, batch.prices, ctx, self.costs, self.fee)
            w = rec.pop("window")
            frame = pl.DataFrame({k: (v[w] if isinstance(v, np.ndarray) else v.gather(w)) for k, v in per_window.items()})
            for k in PRICE_COLUMNS:
                rec[k] = rec[k] * price_scale[w]
            lists = {k: rec.pop(k) for k in list(rec) if k.startswith(LIST_PREFIXES)}
            frame = frame.with_columns(**{k: pl.Series(k, v) for k, v in rec.items()})
            self._frames.append(frame)
            self._accumulate(group.freq_min, o)
            self._write(frame, lists)

    def _accumulate(self, freq_min: int, orders: Orders) -> None:
        """Sums of the allocations per frequency and order, for the mean execution curves: the
        dense (B, N, P, 2, T) tensor summed over its windows."""
        sums = orders.alloc.double().sum(0).numpy()  # (N, P, 2, T)
        for p, period in enumerate(orders.periods):
            for s, side in enumerate(SIDE_NAMES):
                for t, target in enumerate(orders.targets):
                    key = (orders.strategy, side, TARGET_NAMES[target], period)
                    self._alloc_sum[freq_min][key] += sums[:, p, s, t]
                    self._alloc_count[freq_min][key] += orders.alloc.shape[0]

    def _write(self, frame: pl.DataFrame, lists: dict[str, np.ndarray]) -> None:
        alloc = lists["allocation"]
        columns = []
        for k, values in lists.items():
            column = pl.Series(k, values).cast(pl.List(pl.Float32))
            if k.startswith("fills@"):  # null where the fills are the allocation: most orders at small sizes
                planned = pl.Series(np.abs(values - alloc).max(1) < 1e-7)
                column = pl.select(pl.when(planned).then(None).otherwise(column).alias(k)).to_series()
            columns.append(column)
        table = frame.with_columns(columns).to_arrow()
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def frame(self) -> pl.DataFrame:
        """Every row's scalar columns (no per-step lists)."""
        return pl.concat(self._frames) if self._frames else pl.DataFrame()

    def mean_allocations(self) -> dict[int, dict[tuple, np.ndarray]]:
        """Per frequency, the mean allocation per step of each order (strategy, side, target, min_period)."""
        return {f: {k: v / self._alloc_count[f][k] for k, v in sums.items()} for f, sums in self._alloc_sum.items()}
