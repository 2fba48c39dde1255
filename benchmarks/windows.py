"""Window storage at scale: bytes on disk, build time and peak memory, per-bar storage against
materialised windows, and what gathering costs a training step. Every ratio is measured in
this one process (baseline and ours back to back), on an otherwise idle machine.

  dow         the 30 Dow stocks (real, ../shared/data/yahoo), the paper's windows (L=120, N=12,
              stride 1): ours (per-bar arrays + start rows) against the materialised windows
              the builder wrote before (every window's x, volumes, prices as float32 .npy)
  crypto      a synthetic universe the size of ``paper_crypto``: 20 pairs of 1m candles,
              2017-08 .. 2024-12, generated (not downloaded), resampled to 15/90/250 min; the
              build's time, peak RSS and bytes (materialising it is only computed: tens of GB)
  throughput  train samples/s of the demo-size model fed by the gathering WindowDataset against
              the same windows materialised in memory-mapped .npy files

    python benchmarks/windows.py [--section dow crypto throughput] [--pairs 20]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import tempfile
import time
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lem_model import LargeExecutionModel, LEMConfig
from lem_model.config import SMALL_SIZE
from lem_model.loss import lem_loss
from lem_model.window_dataset import SPLITS, WindowDataset
from lem_pipeline.bars import ResampleConfig, daily_bars, resample_klines
from lem_pipeline.presets import DOW_30, PAPER_CRYPTO_PAIRS
from lem_pipeline.sources.yahoo import CsvDirectorySource
from lem_pipeline.windows import WindowConfig, build_windows, cut_windows, plan_series

YAHOO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "yahoo"
ALL_TRAIN = dict(val_start=date(2030, 1, 1), test_start=date(2031, 1, 1))  # every window in one split


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def _report_child(conn, fn, args) -> None:
    t0 = time.perf_counter()
    fn(*args)
    conn.send((time.perf_counter() - t0, peak_rss_gb()))


def in_child(fn, *args) -> tuple[float, float]:
    """Run ``fn(*args)`` in a fresh child process: (seconds, the child's peak RSS in GB, the
    inputs it is handed included). Spawned, not forked: polars' thread pool does not survive a fork."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_report_child, args=(child, fn, args))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"{fn.__name__} failed in its child process (exit {proc.exitcode})")
    return parent.recv()


def materialised_build(series: list[pl.DataFrame], cfg: WindowConfig, out: Path) -> None:
    """The builder before per-bar storage: plan every series, then write every window whole."""
    plans = [plan_series(b, cfg) for b in series if len(b)]
    out.mkdir(parents=True)
    for split in SPLITS:
        total = sum(len(p.starts[split]) for p in plans)
        shapes = {"x": (total, cfg.seq_len, cfg.n_features), "volumes": (total, cfg.n_ahead),
                  "prices": (total, cfg.n_ahead)}
        mm = {k: np.lib.format.open_memmap(out / f"{split}_{k}.npy", mode="w+", dtype=np.float32, shape=s)
              for k, s in shapes.items()}
        row = 0
        for p in plans:
            starts = p.starts[split]
            for k, a in zip(shapes, cut_windows(p, starts, cfg)):
                mm[k][row : row + len(starts)] = a
            row += len(starts)
        del mm


def dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def materialise(directory: Path, out: Path, chunk: int = 8192) -> None:
    """The baseline layout: every window of every split written whole, as the builder did before."""
    out.mkdir(parents=True)
    for split in SPLITS:
        data = WindowDataset(directory, split)
        shapes = {"x": (len(data), data.lookback + data.n_ahead - 1, len(data.meta["features"])),
                  "volumes": (len(data), data.n_ahead), "prices": (len(data), data.n_ahead)}
        mm = {k: np.lib.format.open_memmap(out / f"{split}_{k}.npy", mode="w+", dtype=np.float32, shape=s)
              for k, s in shapes.items()}
        for i in range(0, len(data), chunk):
            idx = np.arange(i, min(i + chunk, len(data)))
            for k, a in zip(shapes, data.gather(idx)):
                mm[k][idx] = a
        del mm


class MaterialisedDataset(Dataset):
    """Windows read from materialised .npy files (one fancy index per array per batch)."""

    def __init__(self, directory: Path, split: str) -> None:
        self.arrays = [np.load(directory / f"{split}_{k}.npy", mmap_mode="r") for k in ("x", "volumes", "prices")]

    def __len__(self) -> int:
        return len(self.arrays[0])

    def __getitems__(self, idx: list[int]):
        order = np.sort(np.asarray(idx))
        x, v, p = (torch.from_numpy(a[order]) for a in self.arrays)
        return list(zip(x, v, p))


def dow(args) -> None:
    src = CsvDirectorySource(YAHOO)
    series = [daily_bars(src.load(t, date(2000, 1, 3), date(2024, 12, 31)).with_columns(pl.lit(t).alias("ticker")))
              for t in DOW_30]
    cfg = WindowConfig(**ALL_TRAIN)
    with tempfile.TemporaryDirectory(dir=args.tmp) as d:
        ours_s, ours_rss = in_child(build_windows, series, cfg, Path(d) / "w")
        base_s, base_rss = in_child(materialised_build, series, cfg, Path(d) / "m")
        ours_b, base_b = dir_bytes(Path(d) / "w"), dir_bytes(Path(d) / "m")
        windows = len(WindowDataset(Path(d) / "w", "train"))
    print(f"dow: {len(series)} series, {sum(len(s) for s in series):,} bars, {windows:,} windows "
          f"(L={cfg.lookback}, N={cfg.n_ahead}, stride {cfg.stride})")
    print(f"  per-bar storage (ours):      {ours_b / 1e6:8.1f} MB, built in {ours_s:5.2f} s, peak RSS {ours_rss:.2f} GB")
    print(f"  materialised windows (was):  {base_b / 1e6:8.1f} MB, built in {base_s:5.2f} s, peak RSS {base_rss:.2f} GB")
    print(f"  ratios: {base_b / ours_b:.1f}x fewer bytes, {base_s / ours_s:.1f}x faster build")


def synthetic_pair(symbol: str, seed: int, first: date, last: date) -> pl.DataFrame:
    """1m candles of one pair: a geometric random walk with intraday volume seasonality."""
    start = datetime.combine(first, datetime.min.time(), timezone.utc)
    end = datetime.combine(last, datetime.min.time(), timezone.utc)
    n = int((end - start).total_seconds() // 60)
    rng = np.random.default_rng(seed)
    log_price = np.log(100.0 * (1 + seed)) + np.cumsum(rng.normal(0.0, 8e-4, n))
    minute = np.arange(n) % 1440
    volume = rng.lognormal(0.0, 1.0, n) * (1.5 + np.sin(2 * np.pi * minute / 1440))
    price = np.exp(log_price)
    return pl.DataFrame({
        "symbol": symbol,
        "open_time": pl.datetime_range(start, end, "1m", time_unit="us", time_zone="UTC", eager=True, closed="left"),
        "volume": volume, "quote_volume": volume * price,
    })


def crypto(args) -> None:
    pairs = PAPER_CRYPTO_PAIRS[: args.pairs]
    cfg = WindowConfig(seasonality="intraday", val_start=date(2023, 1, 1), test_start=date(2024, 1, 1))
    rss_before = peak_rss_gb()
    t0 = time.perf_counter()
    series = []
    for i, symbol in enumerate(pairs):
        candles = synthetic_pair(symbol, i, date(2017, 8, 1), date(2025, 1, 1))
        series += [resample_klines(candles, f, ResampleConfig(base_minutes=1, max_missing_base=360))
                   for f in (15, 90, 250)]
        del candles
    gen_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(dir=args.tmp) as d:
        build_s, build_rss = in_child(build_windows, series, cfg, Path(d) / "w")
        ours_b = dir_bytes(Path(d) / "w")
        counts = {split: len(WindowDataset(Path(d) / "w", split)) for split in SPLITS}
    windows = sum(counts.values())
    per_window = (cfg.seq_len * cfg.n_features + 2 * cfg.n_ahead) * 4
    print(f"crypto (synthetic paper_crypto): {len(pairs)} pairs x 15/90/250 min from 1m candles 2017-08..2024-12, "
          f"{sum(len(s) for s in series):,} bars, {windows:,} windows {counts}")
    print(f"  1m candles generated and resampled in {gen_s:.1f} s (peak RSS of this process before: {rss_before:.2f} GB, "
          f"after: {peak_rss_gb():.2f} GB)")
    print(f"  per-bar storage: {ours_b / 1e9:.3f} GB, built in {build_s:.1f} s, peak RSS of the build {build_rss:.2f} GB "
          "(the bars it was handed included)")
    print(f"  materialised windows would be {windows * per_window / 1e9:.1f} GB "
          f"({windows * per_window / ours_b:.0f}x; not written)")


def train_rate(data: Dataset, cfg: LEMConfig, steps: int, batch: int) -> float:
    """Train samples/s, the batches' fetching from ``data`` included (after one warm-up step)."""
    torch.manual_seed(0)
    model = LargeExecutionModel(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rmin, rmax = torch.full((batch,), 1 / cfg.n_ahead**2), torch.ones(batch)

    def step(x, v, p) -> None:
        loss = lem_loss(model(x, rmin[: len(x)], rmax[: len(x)]), v, p)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.project_constraints()

    batches = iter(DataLoader(data, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0)))
    step(*next(batches))
    n, t0 = 0, time.perf_counter()
    for _ in range(steps):
        x, v, p = next(batches)
        step(x, v, p)
        n += len(x)
    return n / (time.perf_counter() - t0)


def throughput(args) -> None:
    src = CsvDirectorySource(YAHOO)
    series = [daily_bars(src.load(t, date(2000, 1, 3), date(2024, 12, 31)).with_columns(pl.lit(t).alias("ticker")))
              for t in ("AAPL", "MSFT", "JPM", "KO")]
    wcfg = WindowConfig(stride=2, **ALL_TRAIN)  # the demo's equity windows
    with tempfile.TemporaryDirectory(dir=args.tmp) as d:
        build_windows(series, wcfg, Path(d) / "w")
        materialise(Path(d) / "w", Path(d) / "m")
        gathered, stored = WindowDataset(Path(d) / "w", "train"), MaterialisedDataset(Path(d) / "m", "train")
        mcfg = LEMConfig.for_windows(gathered.meta, SMALL_SIZE)
        rates: dict[str, list[float]] = {"materialised": [], "gathered": []}
        for _ in range(args.rounds):  # interleaved, so drift in the machine's speed hits both alike
            for name, data in (("materialised", stored), ("gathered", gathered)):
                rates[name].append(train_rate(data, mcfg, args.steps, 128))
        t0 = time.perf_counter()
        for i in range(0, 128 * args.steps, 128):
            gathered.__getitems__(list(range(i, i + 128)))
        gather_ms = (time.perf_counter() - t0) / args.steps * 1e3
    print(f"throughput: demo equity windows, model hidden {mcfg.hidden_size}, batch 128, {args.steps} steps, "
          f"{torch.get_num_threads()} threads")
    for name, r in rates.items():
        print(f"  {name:13s} median {np.median(r):7.1f} train samples/s  (rounds: {', '.join(f'{x:.1f}' for x in r)})")
    step_ms = 128 / np.median(rates["gathered"]) * 1e3
    print(f"  gathered / materialised: {np.median(rates['gathered']) / np.median(rates['materialised']):.3f}; "
          f"one batch gather alone {gather_ms:.2f} ms = {gather_ms / step_ms:.2%} of a {step_ms:.0f} ms train step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--section", nargs="+", default=["dow", "crypto", "throughput"],
                    choices=["dow", "crypto", "throughput"])
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="throughput: interleaved rounds of each dataset")
    ap.add_argument("--tmp", default=os.environ.get("TMPDIR", "/tmp"), help="where to build (a real disk)")
    args = ap.parse_args()
    for section in args.section:
        {"dow": dow, "crypto": crypto, "throughput": throughput}[section](args)


if __name__ == "__main__":
    main()
