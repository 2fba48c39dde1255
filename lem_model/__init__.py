"""lem_model: the Large Execution Model in plain PyTorch and numpy (no Dagster, polars or MLflow)."""

from lem_model.config import LEMConfig
from lem_model.model import LargeExecutionModel

__all__ = ["LEMConfig", "LargeExecutionModel"]
