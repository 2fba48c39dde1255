"""Market data sources: fetch and parse, no Dagster inside."""
