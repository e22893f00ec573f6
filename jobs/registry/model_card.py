"""What a registered model says about itself: a Markdown model card and the diagnostic plots.

Both are logged with every training run so that a reviewer in the MLflow UI can see what data and code
made a version, how it was measured, and where it should not be trusted.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from jobs.platform.settings import REPO_ROOT
from jobs.training.metrics import HoldoutMetrics, precision_recall_curve, roc_curve

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()


@dataclass(frozen=True)
class GitRevision:
    """The checked-out commit, and whether tracked files differ from it (the run's code is not the commit)."""

    commit: str
    dirty: bool

    def __str__(self) -> str:
        return f"{self.commit}+dirty" if self.dirty else self.commit


def git_revision() -> GitRevision | None:
    """The code's revision, or None outside a git checkout."""
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return GitRevision(commit, bool(dirty)) if commit else None


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: int
    run_id: str
    window: dict[str, str]
    data_digest: str
    holdout_digest: str
    feature_set_version: str
    holdout: HoldoutMetrics
    validation: HoldoutMetrics
    threshold: float
    alert_budget: str
    """The budget as people read it, e.g. ``1% of the day's active cards``."""
    validation_alerts_per_day: float
    device: str
    device_reason: str
    artifact_sha256: str
    params: dict[str, object]
    class_counts: dict[str, int]
    code_version: str
    """``GitRevision`` as text, or ``unknown`` outside git."""
    missing_report_days: tuple[str, ...] = ()


def _metric_rows(card: ModelCard) -> str:
    rows = ["| split | ROC AUC | average precision | card precision@100 |", "| --- | --- | --- | --- |"]
    for split, metrics in (("holdout", card.holdout), ("validation", card.validation)):
        rows.append(
            f"| {split} | {metrics.roc_auc:.4f} | {metrics.average_precision:.4f} | "
            f"{metrics.card_precision_at_100:.4f} |"
        )
    return "\n".join(rows)


def render_model_card(card: ModelCard) -> str:
    w = card.window
    counts = card.class_counts
    missing = card.missing_report_days
    lines = [
        f"# Model card: {card.name} version {card.version}",
        "",
        "## Intended use",
        "Ranks the previous day's card transactions by fraud risk so that investigators review the riskiest "
        "cards first (batch scoring; docs/architecture.md, Stages).",
        f"Alerts are raised for scores ≥ **{card.threshold:.6f}**, chosen on the validation days to stay "
        f"within **{card.alert_budget}** "
        f"(validation: {card.validation_alerts_per_day:.1f} a day).",
        "Not intended for real-time authorisation, nor for any decision about a person without human review.",
        "",
        "## Data",
        f"- Feature set `{card.feature_set_version}`; labels: fraud reports with `reported_at` ≤ "
        f"{w['label_cutoff']}",
        f"- Training days {w['train_start']} .. {w['train_end']} ({counts.get('train_fraud', 0)} fraud, "
        f"{counts.get('train_genuine', 0)} genuine transactions)",
        f"- Validation days {w['validation_start']} .. {w['validation_end']}",
        f"- Holdout days {w['holdout_start'] or 'none'} .. {w['holdout_end'] or 'none'}",
        f"- SHA-256 of the training and validation rows: `{card.data_digest}`",
        f"- SHA-256 of the holdout rows: `{card.holdout_digest}`",
        "",
        "## Metrics",
        "Holdout: the newest matured days, without the cards known compromised before each day "
        "(docs/architecture.md, point-in-time rule).",
        "",
        _metric_rows(card),
        "",
        "## Limitations",
        "- Labels are chargebacks: a fraud reported after the cutoff counts as genuine, so only days at "
        "least the label delay old are used, and the newest of those are still slightly under-labelled.",
        "- Terminal risk features lag by the reporting delay: a newly compromised terminal is seen late.",
        "- Learnt from one processor's (simulated or historical) traffic: a shift in customers, merchants or "
        "fraud patterns degrades it silently until the drift monitors or matured-label metrics show it.",
    ]
    if missing:
        shown = ", ".join(missing[:5]) + (", …" if len(missing) > 5 else "")
        lines.append(f"- Fraud reports were missing for {len(missing)} day(s) ({shown}): read as no reports.")
    lines += [
        "",
        "## Provenance",
        f"- MLflow run `{card.run_id}`; model artifact SHA-256 `{card.artifact_sha256}`",
        f"- Code version (git): `{card.code_version}`",
        f"- Training device: {card.device} ({card.device_reason})",
        "",
        "## Parameters",
        *(f"- `{k}`: {v}" for k, v in sorted(card.params.items())),
    ]
    return "\n".join(lines) + "\n"


def diagnostic_plots(
    y_true: np.ndarray,
    scores: np.ndarray,
    feature_names: list[str],
    importance_gain: np.ndarray,
    threshold: float,
) -> dict[str, Figure]:
    """ROC and PR curves, gain importance and score distribution by class, keyed by PNG file name."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figures: dict[str, Figure] = {}
    fpr, tpr = roc_curve(y_true, scores)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot(fpr, tpr)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (holdout)")
    figures["roc_curve.png"] = fig

    precision, recall = precision_recall_curve(y_true, scores)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.step(recall, precision, where="post")
    ax.set(xlabel="recall", ylabel="precision", title="precision-recall (holdout)", ylim=(0, 1.02))
    figures["pr_curve.png"] = fig

    order = np.argsort(importance_gain)
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    ax.barh(np.asarray(feature_names)[order], importance_gain[order])
    ax.set(xlabel="total gain", title="feature importance")
    fig.tight_layout()
    figures["feature_importance.png"] = fig

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    bins = np.linspace(0, 1, 51)
    for label, name in ((0, "genuine"), (1, "fraud")):
        ax.hist(scores[y_true == label], bins=bins, density=True, alpha=0.5, label=name)
    ax.axvline(threshold, color="black", linestyle="--", label="alert threshold")
    ax.set(xlabel="score", ylabel="density", yscale="log", title="score distribution by class (holdout)")
    ax.legend()
    figures["score_distribution.png"] = fig
    return figures
