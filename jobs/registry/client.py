"""The MLflow store behind the registry: the registered model's name, a checked client, the errors.

Every registry call takes the tracking URI and builds its own ``MlflowClient`` (tracking and registry on
the same URI), so that no global MLflow state leaks between pipelines or tests. Every refusal is a
``RegistryError``, raised before the registry changed or after what changed was put back.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient

MODEL_NAME = "txguard-fraud"


class RegistryError(RuntimeError):
    """A registry operation was refused; the registry is as it was before the call."""


class RegistryUnavailable(RegistryError):
    """The MLflow tracking or registry store cannot be reached."""


class UnknownModelVersion(RegistryError):
    """The named version or alias does not exist."""


class ModelIntegrityError(RegistryError):
    """A model artifact's bytes differ from the SHA-256 recorded when it was registered."""


def open_client(tracking_uri: str) -> MlflowClient:
    """A client bound to ``tracking_uri`` (tracking and registry), checked to answer before it is used."""
    from mlflow import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        client.search_experiments(max_results=1)
    except Exception as error:
        raise RegistryUnavailable(f"MLflow store {tracking_uri} is unreachable: {error}") from error
    return client
