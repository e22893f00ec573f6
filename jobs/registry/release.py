"""The registry's two use cases: train and register a challenger, then gate it against the champion.

``fraud_model`` and ``model_promotion`` (``orchestration/defs/training.py``) are thin wrappers over
``train_and_register`` and ``run_promotion_gate``; both models are judged on ``latest_holdout``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from jobs.registry.aliases import CHALLENGER, CHAMPION, ModelRef, resolve_alias
from jobs.registry.client import UnknownModelVersion, open_client
from jobs.registry.policy import PromotionDecision, decide_promotion
from jobs.registry.promotion import RegistryRecord, promote, reject
from jobs.registry.tracking import RunOrigin, TrainingRun, log_training_run
from jobs.training.maturity import require_mature_labels
from jobs.training.trainer import (
    Holdout,
    TrainingDataError,
    TrainingParams,
    assemble_training_set,
    feature_days,
    matured_window,
    train_model,
)

if TYPE_CHECKING:
    from jobs.platform.settings import Settings


def train_and_register(
    settings: Settings,
    *,
    params: TrainingParams | None = None,
    train_days: int = 28,
    origin: RunOrigin | None = None,
) -> TrainingRun:
    """Train on the matured window ending at the lake's newest feature partition and register the result.

    ``origin`` says which Dagster run and partition range launched the training; None outside Dagster.
    """
    open_client(settings.tracking_uri)
    days = feature_days(settings.lake)
    if not days:
        raise TrainingDataError(f"{settings.lake}: no feature partitions to train on")
    window = matured_window(days[-1], earliest_day=days[0], train_days=train_days)
    data = assemble_training_set(settings.lake, window)
    params = replace(params or TrainingParams(), alert_budget=settings.budget)
    model = train_model(data, params, device=settings.training_device)
    return log_training_run(
        data,
        model,
        tracking_uri=settings.tracking_uri,
        artifact_root=settings.mlflow_artifact_root,
        origin=origin,
    )


def latest_holdout(lake: str) -> Holdout:
    """The newest matured holdout in the lake: the days both models are judged on."""
    days = feature_days(lake)
    if not days:
        raise TrainingDataError(f"{lake}: no feature partitions for a holdout")
    holdout = assemble_training_set(lake, matured_window(days[-1], earliest_day=days[0])).holdout
    if holdout is None:
        raise TrainingDataError(f"{lake}: the matured window has no holdout days")
    require_mature_labels(lake, holdout.start, holdout.end, "the promotion holdout")
    return holdout


@dataclass(frozen=True)
class GateOutcome:
    """What ``model_promotion`` did: a decision and its record, or why there was nothing to decide."""

    decision: PromotionDecision | None
    record: RegistryRecord | None
    summary: str


def run_promotion_gate(settings: Settings, actor: str) -> GateOutcome:
    """Compare ``challenger`` with ``champion`` on the latest matured holdout, then promote or reject."""
    challenger = resolve_alias(CHALLENGER, tracking_uri=settings.tracking_uri)
    try:
        champion: ModelRef | None = resolve_alias(CHAMPION, tracking_uri=settings.tracking_uri)
    except UnknownModelVersion:
        champion = None
    if champion is not None and champion.version == challenger.version:
        return GateOutcome(None, None, f"challenger v{challenger.version} is already the champion")
    holdout = latest_holdout(settings.lake)
    decision = decide_promotion(challenger, champion, holdout, tracking_uri=settings.tracking_uri)
    if decision.promote:
        record = promote(
            challenger.version, decision.reason, actor, tracking_uri=settings.tracking_uri, decision=decision
        )
    else:
        record = reject(decision, actor, tracking_uri=settings.tracking_uri)
    verdict = "promoted" if decision.promote else "kept as challenger"
    return GateOutcome(decision, record, f"v{challenger.version} {verdict}: {decision.reason}")
