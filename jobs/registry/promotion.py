"""Promote, reject, roll back: the registry's decisions, written where a reader of the MLflow UI sees them.

``@champion`` moves only through ``promote`` (by the gate or a person) and ``rollback``, which gives it back
to the version the current champion replaced. Every decision, either way, is returned as a
``RegistryRecord`` for the audit trail (``decision_records.py``), set on the versions it touched as plain
tags, one fact each (``decision``, ``decision_reason``, ``decided_by``, ``decided_at``, ``champion_before``,
``champion_after`` and the metrics it was decided on, e.g. ``challenger_ap``), and kept in full as a JSON
artifact on each of those versions' runs (the ``decision_record`` tag names it). A champion move whose
record cannot be written is undone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

from jobs.registry.aliases import AS_OF, CHAMPION, TAG_PURPOSE, get_version, version_with_alias
from jobs.registry.client import MODEL_NAME, RegistryError, open_client

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from jobs.registry.policy import PromotionDecision

TAG_PREVIOUS_CHAMPION = "previous_champion"
RECORDS_FOLDER = "decisions"

_METRIC_TAGS = {"average_precision": "ap", "card_precision_at_100": "cp_at_100", "roc_auc": "roc_auc"}
_METRIC_ROLES = ("challenger", "champion", "champion_after")
DECISION_TAGS = frozenset(
    {
        "decision",
        "decision_reason",
        "decided_by",
        "decided_at",
        "champion_before",
        "champion_after",
        "decision_record",
        *(f"{role}_{short}" for role in _METRIC_ROLES for short in _METRIC_TAGS.values()),
    }
)
"""Every tag a decision may set; a new decision removes those of the previous one that it does not set."""


@dataclass(frozen=True)
class RegistryRecord:
    """One decision on the registry, as it is tagged on the version and mirrored into the audit trail."""

    action: Literal["promote", "reject", "rollback"]
    name: str
    version: int
    previous_champion: int | None
    champion_after: int | None
    reason: str
    actor: str
    decided_at: str
    metrics: dict[str, float]
    decision: dict[str, object] | None = None

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str, indent=indent)

    @property
    def artifact_path(self) -> str:
        """Where the full record lies in the runs of the versions it touched: one file per decision."""
        stamp = self.decided_at.replace(":", "").replace("+0000", "Z")
        return f"{RECORDS_FOLDER}/{stamp}-{self.action}.json"


def decision_tags(record: RegistryRecord) -> dict[str, str]:
    """The decision as plain version tags, so the registry UI shows each fact without a JSON viewer.

    A gate decision carries both models' holdout metrics (``challenger_*``, ``champion_*``); a decision
    by hand carries the training metrics of the version that is champion after it (``champion_after_*``).
    """
    tags = {
        "decision": record.action,
        "decision_reason": record.reason,
        "decided_by": record.actor,
        "decided_at": record.decided_at,
        "champion_before": "none" if record.previous_champion is None else str(record.previous_champion),
        "champion_after": "none" if record.champion_after is None else str(record.champion_after),
        "decision_record": record.artifact_path,
    }
    if record.decision is None:
        measured: dict[str, object] = {"champion_after": record.metrics}
    else:
        measured = {role: record.decision[f"{role}_metrics"] for role in ("challenger", "champion")}
    for role, metrics in measured.items():
        if isinstance(metrics, dict):
            tags |= {
                f"{role}_{short}": f"{metrics[name]:.4f}"
                for name, short in _METRIC_TAGS.items()
                if name in metrics
            }
    return tags


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_record(client: MlflowClient, record: RegistryRecord, on_versions: tuple[int, ...]) -> None:
    """Tag each version with the decision, in place of the previous one, and log the record on its run."""
    tags = decision_tags(record)
    for number in on_versions:
        version = client.get_model_version(record.name, str(number))
        for key in (version.tags.keys() & DECISION_TAGS) - tags.keys():
            client.delete_model_version_tag(record.name, str(number), key)
        for key, value in tags.items():
            client.set_model_version_tag(record.name, str(number), key, value)
        client.log_text(version.run_id, record.to_json(indent=2), record.artifact_path)


def _remove_record(client: MlflowClient, run_id: str, record: RegistryRecord) -> None:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    artifacts = get_artifact_repository(client.get_run(run_id).info.artifact_uri, client.tracking_uri)
    artifacts.delete_artifacts(record.artifact_path)


def _logged_metrics(client: MlflowClient, version: ModelVersion) -> dict[str, float]:
    metrics = client.get_run(version.run_id).data.metrics
    return {k: metrics[k] for k in ("roc_auc", "average_precision", "card_precision_at_100") if k in metrics}


def _restore_tags(client: MlflowClient, name: str, before: dict[int, dict[str, str]]) -> None:
    for number, tags in before.items():
        now = client.get_model_version(name, str(number)).tags
        for key in now.keys() - tags.keys():
            client.delete_model_version_tag(name, str(number), key)
        for key, value in tags.items():
            if now.get(key) != value:
                client.set_model_version_tag(name, str(number), key, value)


def _move_champion(
    client: MlflowClient, name: str, target: ModelVersion, record: RegistryRecord, previous: int | None
) -> None:
    """Switch the alias, then write the record; if writing fails, put alias, tags and runs back as before."""
    touched = [target, *([get_version(client, name, previous)] if previous else [])]
    before = {int(v.version): dict(v.tags) for v in touched}
    client.set_registered_model_alias(name, CHAMPION, target.version)
    try:
        if record.action == "promote":
            client.set_model_version_tag(name, target.version, TAG_PREVIOUS_CHAMPION, str(previous or ""))
        _write_record(client, record, tuple(before))
    except BaseException:
        with contextlib.suppress(Exception):
            if previous is None:
                client.delete_registered_model_alias(name, CHAMPION)
            else:
                client.set_registered_model_alias(name, CHAMPION, str(previous))
            _restore_tags(client, name, before)
            for version in touched:
                _remove_record(client, version.run_id, record)
        raise


def promote(
    version: int,
    reason: str,
    actor: str,
    *,
    tracking_uri: str,
    name: str = MODEL_NAME,
    decision: PromotionDecision | None = None,
) -> RegistryRecord:
    """Make ``version`` the champion, remembering the one it replaces for ``rollback``."""
    client = open_client(tracking_uri)
    target = get_version(client, name, version)
    if target.tags.get(TAG_PURPOSE) == AS_OF:
        raise RegistryError(
            f"{name} version {version} is an as-of model, trained to score history out of time; it never "
            "becomes champion: promote a version trained by fraud_model"
        )
    current = version_with_alias(client, name, CHAMPION)
    previous = int(current.version) if current else None
    if previous == version:
        raise RegistryError(f"{name} version {version} is already the champion")
    metrics = decision.challenger_metrics.as_dict() if decision else _logged_metrics(client, target)
    record = RegistryRecord(
        action="promote",
        name=name,
        version=version,
        previous_champion=previous,
        champion_after=version,
        reason=reason,
        actor=actor,
        decided_at=_now().isoformat(timespec="microseconds"),
        metrics=metrics,
        decision=decision.as_dict() if decision else None,
    )
    _move_champion(client, name, target, record, previous)
    return record


def reject(
    decision: PromotionDecision, actor: str, *, tracking_uri: str, name: str = MODEL_NAME
) -> RegistryRecord:
    """Record on the challenger why it stays a challenger; the champion is not touched."""
    client = open_client(tracking_uri)
    get_version(client, name, decision.challenger_version)
    record = RegistryRecord(
        action="reject",
        name=name,
        version=decision.challenger_version,
        previous_champion=decision.champion_version,
        champion_after=decision.champion_version,
        reason=decision.reason,
        actor=actor,
        decided_at=_now().isoformat(timespec="microseconds"),
        metrics=decision.challenger_metrics.as_dict(),
        decision=decision.as_dict(),
    )
    _write_record(client, record, (decision.challenger_version,))
    return record


def rollback(reason: str, actor: str, *, tracking_uri: str, name: str = MODEL_NAME) -> RegistryRecord:
    """Give ``champion`` back to the version it replaced; refuse when there is none."""
    client = open_client(tracking_uri)
    current = version_with_alias(client, name, CHAMPION)
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back")
    previous = current.tags.get(TAG_PREVIOUS_CHAMPION, "")
    if not previous:
        raise RegistryError(
            f"{name} version {current.version} replaced no earlier champion; nothing to roll back to"
        )
    target = get_version(client, name, int(previous))
    record = RegistryRecord(
        action="rollback",
        name=name,
        version=int(current.version),
        previous_champion=int(current.version),
        champion_after=int(target.version),
        reason=reason,
        actor=actor,
        decided_at=_now().isoformat(timespec="microseconds"),
        metrics=_logged_metrics(client, target),
    )
    _move_champion(client, name, target, record, int(current.version))
    return record
