"""A trained model on disk: a directory holding the state dict and the config as JSON, written
atomically. (The per-epoch training state is another thing: lem_model.training_state.)"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from lem_model.config import LEMConfig
from lem_model.fileio import atomic_write
from lem_model.model import LargeExecutionModel

WEIGHTS = "model.pt"
CONFIG = "config.json"


def save_model(model: LargeExecutionModel, directory: str | Path) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write(d / CONFIG, lambda p: Path(p).write_text(model.cfg.to_json()))
    atomic_write(d / WEIGHTS, lambda p: torch.save(model.state_dict(), p))
    return d


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over the parameters and buffers, by name: the same weights give the same digest
    on any device (what ties a model directory to the run that trained it)."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_model(directory: str | Path, map_location: str | torch.device = "cpu") -> LargeExecutionModel:
    d = Path(directory)
    cfg = LEMConfig.from_json((d / CONFIG).read_text())
    model = LargeExecutionModel(cfg)
    model.load_state_dict(torch.load(d / WEIGHTS, map_location=map_location, weights_only=True))
    return model.eval()
