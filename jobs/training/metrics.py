"""The three holdout metrics (ROC AUC, AP, CP@100), computed one way for training, promotion and evaluation.

ROC AUC and average precision follow the usual definitions (AP as the step-wise sum over distinct score
thresholds, the same value scikit-learn reports); card precision@k follows the Fraud Detection Handbook:
each day, the k cards with the highest maximum score, cards detected on earlier days removed, k in the
denominator even on a day with fewer cards, then the mean over days.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

CARD_PRECISION_K = 100


class MetricError(ValueError):
    """A metric is undefined for the rows given (no rows, or a single class)."""


@dataclass(frozen=True)
class HoldoutMetrics:
    roc_auc: float
    average_precision: float
    card_precision_at_100: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _checked(y_true: np.ndarray | pd.Series, scores: np.ndarray | pd.Series) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise MetricError(f"labels {y.shape} and scores {s.shape} must be 1-d arrays of the same length")
    if np.isnan(s).any():
        raise MetricError("scores contain NaN")
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        raise MetricError(f"metric undefined: {len(y)} rows with {positives} positives (need both classes)")
    return y, s


def _threshold_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct score, from the highest score down."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s_sorted) - 1]
    tps = np.cumsum(y_sorted)[last_of_tie].astype(np.float64)
    fps = (last_of_tie + 1) - tps
    return tps, fps


def roc_auc(y_true: np.ndarray | pd.Series, scores: np.ndarray | pd.Series) -> float:
    """Probability that a random fraud scores above a random genuine transaction (ties count half)."""
    y, s = _checked(y_true, scores)
    ranks = pd.Series(s).rank(method="average").to_numpy()
    positives = y.sum()
    negatives = len(y) - positives
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def average_precision(y_true: np.ndarray | pd.Series, scores: np.ndarray | pd.Series) -> float:
    y, s = _checked(y_true, scores)
    tps, fps = _threshold_counts(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_curve(
    y_true: np.ndarray | pd.Series, scores: np.ndarray | pd.Series
) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at each distinct threshold, starting at (0, 0)."""
    y, s = _checked(y_true, scores)
    tps, fps = _threshold_counts(y, s)
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


def precision_recall_curve(
    y_true: np.ndarray | pd.Series, scores: np.ndarray | pd.Series
) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at each distinct threshold, from the highest threshold down."""
    y, s = _checked(y_true, scores)
    tps, fps = _threshold_counts(y, s)
    return tps / (tps + fps), tps / tps[-1]


@dataclass(frozen=True)
class CardPrecision:
    mean: float
    per_day: tuple[float, ...]
    detected_cards: tuple[int, ...]


def card_precision_at_k(
    customer_ids: np.ndarray | pd.Series,
    days: np.ndarray | pd.Series,
    y_true: np.ndarray | pd.Series,
    scores: np.ndarray | pd.Series,
    k: int = CARD_PRECISION_K,
) -> CardPrecision:
    """Handbook card precision@k: a card's daily score is its highest transaction score that day.

    Ties between cards are broken by customer id so the value never depends on row order.
    """
    frame = pd.DataFrame(
        {
            "customer_id": np.asarray(customer_ids),
            "day": np.asarray(days),
            "label": np.asarray(y_true, dtype=np.int64),
            "score": np.asarray(scores, dtype=np.float64),
        }
    )
    if frame.empty:
        raise MetricError("card precision undefined: no rows")
    if frame["score"].isna().any():
        raise MetricError("scores contain NaN")
    detected: list[int] = []
    per_day: list[float] = []
    for _, rows in frame.groupby("day", sort=True):
        rows = rows[~rows["customer_id"].isin(detected)]
        cards = rows.groupby("customer_id", as_index=False).agg(
            score=("score", "max"), label=("label", "max")
        )
        top = cards.sort_values(["score", "customer_id"], ascending=[False, True], kind="mergesort").head(k)
        hits = top.loc[top["label"] == 1, "customer_id"].tolist()
        per_day.append(len(hits) / k)
        detected.extend(int(c) for c in hits)
    return CardPrecision(float(np.mean(per_day)), tuple(per_day), tuple(detected))


def holdout_metrics(
    customer_ids: np.ndarray | pd.Series,
    days: np.ndarray | pd.Series,
    y_true: np.ndarray | pd.Series,
    scores: np.ndarray | pd.Series,
) -> HoldoutMetrics:
    return HoldoutMetrics(
        roc_auc=roc_auc(y_true, scores),
        average_precision=average_precision(y_true, scores),
        card_precision_at_100=card_precision_at_k(customer_ids, days, y_true, scores).mean,
    )
