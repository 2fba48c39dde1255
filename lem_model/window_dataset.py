"""The windows on disk as a torch Dataset: per-bar arrays plus one start row per window, each
batch gathered and normalised on the fly (docs/DESIGN.md, "Windows, alignment and causality").

Windows overlap by all but one bar, so storing them whole repeats every bar about L+N times;
storing the bars once and cutting a batch with one vectorised index costs far less disk, and
far less than a train step. The layout of a windows directory (written by
lem_pipeline.windows, read here):

    bars_{features,vwap,volume,vol_norm}.npy   every series' bars, laid end to end
    {split}_starts.npy                         the execution start row r of each window
    meta.json                                  the window config, feature names and counts

For a window starting at row r: x holds rows r-L .. r+N-2 (the per-bar features, then VWAP /
VWAP[r-L] and volume / vol_norm[r+N-1]); the targets are the VWAP and volume of rows
r .. r+N-1, scaled the same way. Divisions happen in float64, then cast to float32.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

SPLITS = ("train", "val", "test")
BAR_ARRAYS = ("features", "vwap", "volume", "vol_norm")
META_FILE = "meta.json"


def bars_file(directory: str | Path, name: str) -> Path:
    return Path(directory) / f"bars_{name}.npy"


def starts_file(directory: str | Path, split: str) -> Path:
    return Path(directory) / f"{split}_starts.npy"


def meta_file(directory: str | Path) -> Path:
    return Path(directory) / META_FILE


@dataclass(frozen=True)
class Bars:
    """Per-bar arrays of one or more series laid end to end (a window never spans two)."""

    features: np.ndarray  # (n, D-2) float32: the per-bar features, as they enter x
    vwap: np.ndarray  # (n,) float64
    volume: np.ndarray  # (n,) float64
    vol_norm: np.ndarray  # (n,) float64: the volume normaliser of a window whose last bar is this one

    @classmethod
    def load(cls, directory: str | Path) -> Bars:
        return cls(*(np.load(bars_file(directory, name), mmap_mode="r") for name in BAR_ARRAYS))


def gather_windows(bars: Bars, starts: np.ndarray, lookback: int, n_ahead: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x (B, L+N-1, D), volumes (B, N), prices (B, N)) float32 for the execution starts."""
    starts = np.asarray(starts, dtype=np.int64)
    first = starts - lookback
    rows = first[:, None] + np.arange(lookback + n_ahead - 1)  # (B, T)
    ahead = starts[:, None] + np.arange(n_ahead)  # (B, N)
    price_scale = bars.vwap[first][:, None]
    vol_scale = bars.vol_norm[starts + n_ahead - 1][:, None]
    x = np.empty((len(starts), rows.shape[1], bars.features.shape[1] + 2), np.float32)
    x[:, :, :-2] = bars.features[rows]
    x[:, :, -2] = bars.vwap[rows] / price_scale
    x[:, :, -1] = bars.volume[rows] / vol_scale
    volumes = (bars.volume[ahead] / vol_scale).astype(np.float32)
    prices = (bars.vwap[ahead] / price_scale).astype(np.float32)
    return x, volumes, prices


class WindowDataset(Dataset):
    """(x, volumes, prices) of one split of a windows directory, gathered per batch."""

    def __init__(self, directory: str | Path, split: str) -> None:
        d = Path(directory)
        self.directory, self.split = d, split
        self.meta = json.loads(meta_file(d).read_text())
        self.lookback, self.n_ahead = self.meta["config"]["lookback"], self.meta["config"]["n_ahead"]
        self.bars = Bars.load(d)
        self.starts = np.load(starts_file(d, split))
        lengths = {len(a) for a in (self.bars.features, self.bars.vwap, self.bars.volume, self.bars.vol_norm)}
        if len(lengths) != 1:
            raise ValueError(f"{d}: the per-bar arrays disagree in length: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.starts)

    def gather(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return gather_windows(self.bars, self.starts[np.asarray(idx)], self.lookback, self.n_ahead)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, v, p = self.gather(np.array([i]))
        return torch.from_numpy(x[0]), torch.from_numpy(v[0]), torch.from_numpy(p[0])

    def __getitems__(self, idx: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        # One vectorised gather for a whole batch (the DataLoader's fast path).
        x, v, p = (torch.from_numpy(a) for a in self.gather(np.asarray(idx)))
        return list(zip(x, v, p))
