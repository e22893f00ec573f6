"""The promotion policy: when a challenger may replace the champion.

Both models are scored, after their artifacts are verified, on the same matured holdout. The challenger
must beat the champion's average precision and may not lose more than ``CP_TOLERANCE`` of card
precision@100; the first model has no champion to beat and must reach ``AP_FLOOR`` average precision.
Deciding changes nothing in the registry: ``jobs/registry/promotion.py`` acts on the decision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from jobs.features.definitions import FEATURE_SET_VERSION, require_feature_set
from jobs.registry.tracking import load_verified_booster
from jobs.training.trainer import evaluate_holdout

if TYPE_CHECKING:
    from jobs.registry.aliases import ModelRef
    from jobs.training.metrics import HoldoutMetrics
    from jobs.training.trainer import Holdout

AP_FLOOR = 0.30
CP_TOLERANCE = 0.01


@dataclass(frozen=True)
class PromotionDecision:
    """The gate's verdict and the numbers it was reached on."""

    promote: bool
    reason: str
    challenger_version: int
    champion_version: int | None
    challenger_metrics: HoldoutMetrics
    champion_metrics: HoldoutMetrics | None
    holdout: dict[str, str | int]
    ap_floor: float = AP_FLOOR
    cp_tolerance: float = CP_TOLERANCE

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def gate(challenger: HoldoutMetrics, champion: HoldoutMetrics | None) -> tuple[bool, str]:
    """The promotion rule, on metrics measured on one holdout (see the module docstring)."""
    if champion is None:
        if challenger.average_precision >= AP_FLOOR:
            return True, f"first model: AP {challenger.average_precision:.4f} ≥ floor {AP_FLOOR:.2f}"
        return False, f"first model: AP {challenger.average_precision:.4f} below floor {AP_FLOOR:.2f}"
    ap_gain = challenger.average_precision - champion.average_precision
    cp_change = challenger.card_precision_at_100 - champion.card_precision_at_100
    numbers = f"AP {ap_gain:+.4f}, CP@100 {cp_change:+.4f} (tolerance -{CP_TOLERANCE:.2f})"
    if ap_gain <= 0:
        return False, f"challenger does not beat champion on AP: {numbers}"
    if cp_change < -CP_TOLERANCE:
        return False, f"challenger loses CP@100 beyond tolerance: {numbers}"
    return True, f"challenger beats champion: {numbers}"


def decide_promotion(
    challenger: ModelRef, champion: ModelRef | None, holdout: Holdout, *, tracking_uri: str | None = None
) -> PromotionDecision:
    """Score both verified models on the same holdout and apply ``gate``.

    A champion built on another feature-set version cannot be scored on today's features; the challenger
    then has to clear the floor, as a first model does, and the reason says so.
    """
    require_feature_set(
        FEATURE_SET_VERSION, challenger.feature_set_version, f"challenger v{challenger.version}"
    )
    challenger_metrics = evaluate_holdout(
        load_verified_booster(challenger, tracking_uri=tracking_uri), holdout
    )
    comparable = champion is not None and champion.feature_set_version == FEATURE_SET_VERSION
    champion_metrics = (
        evaluate_holdout(load_verified_booster(champion, tracking_uri=tracking_uri), holdout)
        if comparable and champion is not None
        else None
    )
    promote_it, reason = gate(challenger_metrics, champion_metrics)
    if champion is not None and not comparable:
        reason = f"champion v{champion.version} uses feature set {champion.feature_set_version}; {reason}"
    return PromotionDecision(
        promote=promote_it,
        reason=reason,
        challenger_version=challenger.version,
        champion_version=champion.version if champion else None,
        challenger_metrics=challenger_metrics,
        champion_metrics=champion_metrics,
        holdout=holdout.as_dict(),
    )
