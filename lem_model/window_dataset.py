"""WindowDataset: the windows on disk as a torch Dataset, memory-mapped (never loaded whole)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset


SPLITS = ("train", "val", "test")
ARRAYS = ("x", "volumes", "prices")
META_FILE = "meta.json"  # the window config, feature names and counts


def array_file(directory: str | Path, split: str, name: str) -> Path:
    """Where a windows directory (written by lem_pipeline.windows) keeps one split's array."""
    return Path(directory) / f"{split}_{name}.npy"


def meta_file(directory: str | Path) -> Path:
    return Path(directory) / META_FILE


class WindowDataset(Dataset):
    """(x, volumes, prices) of one split from a windows directory."""

    def __init__(self, directory: str | Path, split: str) -> None:
        d = Path(directory)
        self.directory, self.split = d, split
        self.x, self.volumes, self.prices = (np.load(array_file(d, split, name), mmap_mode="r") for name in ARRAYS)
        if not len(self.x) == len(self.volumes) == len(self.prices):
            raise ValueError(f"{d}: {split} arrays disagree in length")
        self.meta = json.loads(meta_file(d).read_text())

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(np.array(self.x[i])), torch.from_numpy(np.array(self.volumes[i])),
                torch.from_numpy(np.array(self.prices[i])))

    def __getitems__(self, idx: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        # One fancy-index read per array for a whole batch (the DataLoader's fast path).
        # Reads go in file order (sorted), the batch keeps the order asked for.
        idx = np.asarray(idx)
        order = np.argsort(idx)
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        x, v, p = (torch.from_numpy(a[idx[order]][back]) for a in (self.x, self.volumes, self.prices))
        return list(zip(x, v, p))
