"""The training state saved after every epoch: everything needed to resume a run exactly
(model, optimiser, scheduler, early stopping, history and RNG states). It is not the trained
model a user loads (lem_model.saved_model); it lives beside the run that writes it.

Only tensors and plain Python values go in, so it loads with ``torch.load(weights_only=True)``:
resuming never unpickles code from a file.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import torch

from lem_model.fileio import atomic_write

TRAINING_STATE = "training_state.pt"


def rng_state() -> dict:
    """The torch, numpy and Python RNG states as tensors and plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    """The generators as :func:`rng_state` saved them. A state loaded with ``map_location`` a
    GPU (what a resumed CUDA training does, for the optimiser's device tensors) holds them on
    that GPU: torch's generator state and numpy's keys are host data, so they come back first."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(state["python"])


def save_training_state(path: str | Path, state: dict) -> None:
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


class TrainingStateError(RuntimeError):
    """A training-state file this code did not write (or a damaged one): never unpickled."""


def load_training_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    try:
        return torch.load(Path(path), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise TrainingStateError(f"{path}: not a training state written by lem (only tensors and plain values are "
                                 f"loaded; nothing in it was executed). Delete it to train from scratch. ({e})") from e
