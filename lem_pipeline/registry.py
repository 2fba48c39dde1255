"""The MLflow model registry: every training registers a version of ``lem-{name}``, and the
evaluation that passes its checks points the ``champion`` alias at it, so a desk serves
``models:/lem-equity@champion`` and never has to know a run id.

What a registered version resolves to is its MLflow run; ``lem schedule`` then loads that run's
``model_state`` artifact (weights only), never the pickled MLflow model.
"""

from __future__ import annotations

CHAMPION = "champion"
_SCHEME = "models:/"


class RegistryError(LookupError):
    """A ``models:/`` URI that names no registered version."""


def registered_name(model_name: str) -> str:
    """``equity`` -> ``lem-equity``: the registry name of a model directory in the lake."""
    return f"lem-{model_name}"


def is_registry_uri(source: str) -> bool:
    return source.startswith(_SCHEME)


def run_of(uri: str, tracking_uri: str) -> str:
    """The MLflow run behind ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``models:/NAME``
    (its latest version)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri, registry_uri=tracking_uri)
    ref = uri[len(_SCHEME):]
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        elif "/" in ref:
            name, number = ref.split("/", 1)
            version = client.get_model_version(name, number)
        else:
            versions = client.search_model_versions(f"name = '{ref}'", order_by=["version_number DESC"], max_results=1)
            if not versions:
                raise RegistryError(f"{uri}: no registered versions in {tracking_uri}")
            version = versions[0]
    except MlflowException as e:
        raise RegistryError(f"{uri}: not found in the registry at {tracking_uri} ({e.message.splitlines()[0]})") from e
    return version.run_id


def promote(tracking_uri: str, name: str, run_id: str, alias: str = CHAMPION) -> str:
    """Point ``alias`` at the version of ``name`` that ``run_id`` registered; returns the version."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri, registry_uri=tracking_uri)
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if not versions:
        raise RegistryError(f"run {run_id} registered no version of {name}")
    version = max(versions, key=lambda v: int(v.version)).version
    client.set_registered_model_alias(name, alias, version)
    return str(version)
