"""Mirror the registry's decisions into the warehouse's audit records, so lineage never depends on MLflow.

Training, registration and every champion move (by the gate or by a person) become append-only records
(``jobs/governance/audit.py``), then the analysts' snapshot is republished so that ``txguard lineage`` sees
them.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from jobs.governance import audit
from jobs.platform.catalog import publish
from jobs.platform.settings import Settings
from jobs.platform.warehouse import connect
from jobs.registry.aliases import AS_OF

if TYPE_CHECKING:
    from jobs.registry.promotion import RegistryRecord
    from jobs.registry.tracking import TrainingRun


def _day(value: str) -> dt.date | None:
    return dt.date.fromisoformat(value[:10]) if value else None


def record_training(
    settings: Settings, run: TrainingRun, dagster_run_id: str | None
) -> list[audit.AuditRecord]:
    """One training-run record and one model-version record, in that order."""
    ref = run.ref
    window = run.window
    entries: list[audit.AuditEntry] = [
        audit.TrainingRun(
            model_name=ref.name,
            mlflow_run_id=ref.run_id,
            train_start=_day(window["train_start"]),
            train_end=_day(window["validation_end"]),
            data_digest=run.data_digest,
            row_count=run.training_rows,
            feature_set_version=ref.feature_set_version,
            metrics={"holdout": run.holdout.as_dict(), "validation": run.validation.as_dict()},
            params={k: v for k, v in run.params.items() if isinstance(v, str | int | float | bool)},
            device=f"{run.device} ({run.device_reason})",
            dagster_run_id=dagster_run_id,
            label_cutoff=_day(window.get("label_cutoff", "")),
            evaluation={
                "window": window,
                "threshold": ref.threshold,
                "alert_budget": run.alert_budget,
                **({"purpose": AS_OF} if ref.as_of else {}),
            },
        ),
        audit.ModelVersion(
            model_name=ref.name,
            model_version=str(ref.version),
            mlflow_run_id=ref.run_id,
            artifact_uri=ref.model_uri,
            artifact_sha256=ref.artifact_sha256,
            feature_set_version=ref.feature_set_version,
            dagster_run_id=dagster_run_id,
        ),
    ]
    with (
        connect(settings.warehouse_path) as connection,
        audit.anchored(connection, audit.MlflowHeads.of(settings), "training", dagster_run_id),
    ):
        records = [audit.record(connection, entry) for entry in entries]
    publish(settings, days=())
    return records


def record_decision(
    settings: Settings, decision: RegistryRecord, dagster_run_id: str | None
) -> audit.AuditRecord:
    """A promotion, rejection or rollback with who decided, why, and the numbers it was decided on."""
    metrics: dict[str, object] = {"model": decision.metrics}
    if decision.decision:
        metrics["decision"] = decision.decision
    entry = audit.Promotion(
        model_name=decision.name,
        action=decision.action,
        model_version=str(decision.champion_after if decision.action == "rollback" else decision.version),
        previous_version=None if decision.previous_champion is None else str(decision.previous_champion),
        actor=decision.actor,
        reason=decision.reason,
        metrics=metrics,
        dagster_run_id=dagster_run_id,
    )
    with (
        connect(settings.warehouse_path) as connection,
        audit.anchored(
            connection, audit.MlflowHeads.of(settings), f"promotion {decision.action}", dagster_run_id
        ),
    ):
        written = audit.record(connection, entry)
    publish(settings, days=())
    return written
