"""As-of models: the models that score history out of time, registered in MLflow but never champion.

``asof_model`` gives the version for one label cutoff: trained on the matured window ending at the cutoff
(labels: the fraud reports made by its end), logged and registered like any version with its cutoff as the
``label_cutoff`` tag, but tagged ``purpose=as_of`` and given no alias, so the promotion gate never judges it
and ``promote`` refuses it. Its training run and version go into the audit chain like the champion's, so
lineage answers for its scores too. A version with the same cutoff, feature set and training data is reused:
rescoring history trains nothing new.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import TYPE_CHECKING

from jobs.features.definitions import FEATURE_SET_VERSION
from jobs.registry.aliases import AS_OF, TAG_FEATURE_SET, TAG_LABEL_CUTOFF, TAG_PURPOSE, ModelRef, ref_of
from jobs.registry.client import MODEL_NAME, open_client
from jobs.training.trainer import (
    TrainingDataError,
    TrainingParams,
    assemble_training_set,
    feature_days,
    matured_window,
    train_model,
)

if TYPE_CHECKING:
    from jobs.platform.settings import Settings
    from jobs.registry.tracking import RunOrigin


def registered_asof(
    tracking_uri: str, cutoff: dt.date, data_digest: str, *, name: str = MODEL_NAME
) -> ModelRef | None:
    """The as-of version already registered for ``cutoff`` on the same training data, if any."""
    client = open_client(tracking_uri)
    found = client.search_model_versions(
        f"name = '{name}' and tags.{TAG_PURPOSE} = '{AS_OF}' and tags.{TAG_LABEL_CUTOFF} = '{cutoff}'"
    )
    same = [
        v
        for v in found
        if v.tags.get("data_sha256") == data_digest and v.tags.get(TAG_FEATURE_SET) == FEATURE_SET_VERSION
    ]
    newest = max(same, key=lambda v: int(v.version), default=None)
    return ref_of(client, newest) if newest is not None else None


def asof_model(
    settings: Settings,
    cutoff: dt.date,
    *,
    params: TrainingParams | None = None,
    origin: RunOrigin | None = None,
    dagster_run_id: str | None = None,
) -> ModelRef:
    """The as-of version whose labels end with ``cutoff``: reused when registered, else trained and recorded.

    ``TrainingDataError`` when the lake cannot make that model (too little history, a single class).
    """
    from jobs.registry.decision_records import record_training
    from jobs.registry.tracking import log_training_run

    days = feature_days(settings.lake)
    if not days:
        raise TrainingDataError(f"{settings.lake}: no feature partitions to train on")
    data = assemble_training_set(settings.lake, matured_window(cutoff, earliest_day=days[0]))
    found = registered_asof(settings.tracking_uri, cutoff, data.digest)
    if found is not None:
        return found
    model = train_model(
        data,
        replace(params or TrainingParams(), alert_budget=settings.budget),
        device=settings.training_device,
    )
    run = log_training_run(
        data,
        model,
        tracking_uri=settings.tracking_uri,
        artifact_root=settings.mlflow_artifact_root,
        origin=origin,
        as_of=True,
    )
    record_training(settings, run, dagster_run_id)
    return run.ref
