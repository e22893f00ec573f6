"""Aliases pin versions: ``@challenger`` names every new version, ``@champion`` the one that scores.

The registry uses aliases only, never stages. Scoring and monitoring resolve an alias once into a
``ModelRef`` (version, run, artifact SHA-256, threshold, feature-set version) and use that pinned
reference for the whole run, so a promotion in the middle of a run cannot mix two models.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jobs.registry.client import MODEL_NAME, ModelIntegrityError, UnknownModelVersion, open_client

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CHALLENGER = "challenger"
CHAMPION = "champion"

TAG_SHA256 = "artifact_sha256"
TAG_THRESHOLD = "threshold"
TAG_FEATURE_SET = "feature_set_version"
TAG_LABEL_CUTOFF = "label_cutoff"
"""The last day whose fraud reports labelled the training data: the model may score only later days."""
TAG_PURPOSE = "purpose"
AS_OF = "as_of"
"""``purpose`` of a version trained to score history out of time: never aliased, never champion."""


@dataclass(frozen=True)
class ModelRef:
    """One registered version, pinned: what scoring needs to load, verify and label its output."""

    name: str
    version: int
    run_id: str
    artifact_sha256: str
    threshold: float
    feature_set_version: str
    model_uri: str
    label_cutoff: dt.date | None = None
    """None for a version whose cutoff was never recorded: it cannot be shown to score out of time."""
    as_of: bool = False

    @property
    def trained_up_to(self) -> str:
        """What a reader of a score needs: ``trained on data up to 2018-05-06`` (the label cutoff)."""
        return f"trained on data up to {self.label_cutoff or 'an unrecorded day'}"


def _label_cutoff(client: MlflowClient, version: ModelVersion) -> dt.date | None:
    """The version's tag, else its run's ``window.label_cutoff`` (a version registered before the tag)."""
    text = version.tags.get(TAG_LABEL_CUTOFF) or client.get_run(version.run_id).data.params.get(
        "window.label_cutoff", ""
    )
    return dt.date.fromisoformat(text[:10]) if text else None


def ref_of(client: MlflowClient, version: ModelVersion) -> ModelRef:
    """Pin a registered version from the tags written when it was registered."""
    tags = version.tags
    missing = [t for t in (TAG_SHA256, TAG_THRESHOLD, TAG_FEATURE_SET) if t not in tags]
    if missing:
        raise ModelIntegrityError(
            f"{version.name} version {version.version} lacks tag(s) {', '.join(missing)}"
        )
    return ModelRef(
        name=version.name,
        version=int(version.version),
        run_id=version.run_id,
        artifact_sha256=tags[TAG_SHA256],
        threshold=float(tags[TAG_THRESHOLD]),
        feature_set_version=tags[TAG_FEATURE_SET],
        model_uri=client.get_model_version_download_uri(version.name, version.version),
        label_cutoff=_label_cutoff(client, version),
        as_of=tags.get(TAG_PURPOSE) == AS_OF,
    )


def get_version(client: MlflowClient, name: str, version: int) -> ModelVersion:
    """The version, or ``UnknownModelVersion`` naming it."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise UnknownModelVersion(f"{name} has no version {version}") from None
        raise


def version_with_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version that holds ``alias`` now, or None (also when the registered model does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def resolve_alias(alias: str, *, tracking_uri: str, name: str = MODEL_NAME) -> ModelRef:
    """Pin an alias to the version it names now; raise ``UnknownModelVersion`` when nothing has it."""
    client = open_client(tracking_uri)
    version = version_with_alias(client, name, alias)
    if version is None:
        raise UnknownModelVersion(f"no version of {name} has the alias @{alias}")
    return ref_of(client, version)


def model_ref(version: int, *, tracking_uri: str, name: str = MODEL_NAME) -> ModelRef:
    """Pin a version by number, for a caller that recorded which version it used."""
    client = open_client(tracking_uri)
    return ref_of(client, get_version(client, name, version))
