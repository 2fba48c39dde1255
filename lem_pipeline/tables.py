"""Rendering frames for people: Markdown for Dagster metadata and MLflow, without extra packages."""

from __future__ import annotations

import polars as pl


def markdown_table(df: pl.DataFrame) -> str:
    with pl.Config(tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True,
                   tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=500, tbl_width_chars=10_000):
        return str(df)
