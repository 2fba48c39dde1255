"""Reading what an asset's latest materialisation recorded: how one asset hands its result (a
run id, a directory) to the next, and how ``lem results`` finds what runs produced."""

from __future__ import annotations

import dagster as dg


class NotMaterializedError(RuntimeError):
    pass


def latest_metadata(instance: dg.DagsterInstance, asset: str) -> dict:
    """The metadata values of ``asset``'s latest materialisation."""
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.asset_materialization is None:
        raise NotMaterializedError(f"{asset} has not been materialised yet on this instance ({instance.root_directory})")
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}
