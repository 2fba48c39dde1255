"""lem_pipeline: the Dagster code location of the LEM project (assets, resources, checks, schedules)."""
