"""lem_model: the Large Execution Model in plain PyTorch and numpy (no Dagster, polars or MLflow)."""
