"""Holdout metrics: hand-checked cases, agreement with scikit-learn, and the handbook's card precision@k."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from jobs.training.metrics import (
    MetricError,
    average_precision,
    card_precision_at_k,
    holdout_metrics,
    precision_recall_curve,
    roc_auc,
    roc_curve,
)


def test_auc_and_ap_on_a_hand_checked_ranking() -> None:
    y = [1, 0, 1, 0, 0]
    s = [0.9, 0.8, 0.7, 0.2, 0.1]
    assert roc_auc(y, s) == pytest.approx(5 / 6)
    assert average_precision(y, s) == pytest.approx((1 / 1 + 2 / 3) / 2)


def test_ties_count_half_in_auc_and_share_one_threshold_in_ap() -> None:
    assert roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert average_precision([1, 0, 0], [0.5, 0.5, 0.1]) == pytest.approx(0.5)


def test_agrees_with_scikit_learn_on_random_scores() -> None:
    from sklearn import metrics

    rng = np.random.default_rng(0)
    y = (rng.random(5000) < 0.05).astype(int)
    s = np.round(rng.random(5000) + y * rng.random(5000), 2)
    assert roc_auc(y, s) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(metrics.average_precision_score(y, s), abs=1e-12)
    fpr, tpr = roc_curve(y, s)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(y, s), abs=1e-12)
    precision, recall = precision_recall_curve(y, s)
    assert recall[-1] == 1.0 and precision[-1] == pytest.approx(y.mean())


@pytest.mark.parametrize("y", [[0, 0, 0], [1, 1], []])
def test_single_class_or_empty_is_an_error(y: list[int]) -> None:
    with pytest.raises(MetricError, match="need both classes"):
        roc_auc(y, np.linspace(0, 1, len(y)))
    with pytest.raises(MetricError):
        average_precision(y, np.linspace(0, 1, len(y)))


def test_nan_scores_are_an_error() -> None:
    with pytest.raises(MetricError, match="NaN"):
        average_precision([0, 1], [0.1, np.nan])


def test_card_precision_takes_each_cards_max_and_drops_cards_detected_earlier() -> None:
    rows = pd.DataFrame(
        [
            # day 1: card 1 is fraud (max score 0.9), card 2 genuine, card 3 genuine
            (1, 1, 0, 0.2),
            (1, 1, 1, 0.9),
            (1, 2, 0, 0.8),
            (1, 3, 0, 0.1),
            # day 2: card 1 (detected on day 1) would top the list again; card 3 is fraud now
            (2, 1, 1, 0.99),
            (2, 2, 0, 0.7),
            (2, 3, 1, 0.6),
        ],
        columns=["day", "customer_id", "label", "score"],
    )
    result = card_precision_at_k(rows["customer_id"], rows["day"], rows["label"], rows["score"], k=2)
    assert result.per_day == (0.5, 0.5)
    assert result.detected_cards == (1, 3)
    assert result.mean == pytest.approx(0.5)
    top_one = card_precision_at_k(rows["customer_id"], rows["day"], rows["label"], rows["score"], k=1)
    assert top_one.per_day == (1.0, 0.0)


def test_card_precision_divides_by_k_and_breaks_ties_by_card_not_row_order() -> None:
    rows = pd.DataFrame({"day": [1, 1, 1], "customer_id": [9, 4, 7], "label": [1, 0, 1], "score": [0.5] * 3})
    once = card_precision_at_k(rows["customer_id"], rows["day"], rows["label"], rows["score"], k=2)
    shuffled = rows.iloc[[2, 0, 1]]
    again = card_precision_at_k(
        shuffled["customer_id"], shuffled["day"], shuffled["label"], shuffled["score"], k=2
    )
    assert once == again
    assert once.per_day == (0.5,)
    wide = card_precision_at_k(rows["customer_id"], rows["day"], rows["label"], rows["score"], k=100)
    assert wide.mean == pytest.approx(2 / 100)


def test_holdout_metrics_bundle_all_three() -> None:
    rng = np.random.default_rng(4)
    y = (rng.random(2000) < 0.1).astype(int)
    s = rng.random(2000) + y
    metrics = holdout_metrics(rng.integers(0, 300, 2000), np.repeat([1, 2], 1000), y, s)
    assert metrics.roc_auc == pytest.approx(roc_auc(y, s))
    assert set(metrics.as_dict()) == {"roc_auc", "average_precision", "card_precision_at_100"}
    assert 0 < metrics.card_precision_at_100 <= 1
