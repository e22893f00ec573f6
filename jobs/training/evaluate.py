"""The model on the Fraud Detection Handbook's protocol, printed next to the handbook's published rows.

``handbook``: train on the 7 days from 2018-07-25, 7 days of label delay, test on the 7 days after it,
without the cards already known to be compromised (frauds up to test day - delay - 1). The last
``HANDBOOK_VALIDATION_DAYS`` training days pick the number of boosting rounds (early stopping) and the alert
threshold; the model is then refitted on all 7 days with that number of rounds, since the handbook trains
on the whole week.
``production``: what ``fraud_model`` does, on the same test rows: ``PRODUCTION_TRAIN_DAYS`` days of history
before a 7-day validation week that ends where the handbook's training week ends (labels known at the
start of the test week), no refit.
``imbalance``: the class-weighting strategies compared on validation days only, never the test week.

Labels are the final ones, as in the handbook: a ``label`` column of a DataFrame, or every fraud report in
the lake, which must then hold the reports of the reporting delay after the last test day: before that,
the evaluation refuses and names the missing report days (``jobs.training.maturity``). Run
``python -m jobs.training.evaluate --lake PATH [--protocol ...]`` or ``txguard evaluate``.

The published rows come from the handbook's own simulated data; a different draw of the same simulator has
an easier or harder test week, so each protocol also prints the handbook's logistic regression refitted on
the same rows and features. ``python -m benchmarks handbook_draws`` repeats both protocols over several
draws; the README's "Models" section has the results.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from jobs.features.definitions import TERMINAL_DELAY_DAYS
from jobs.training.maturity import ImmatureLabels, require_mature_labels
from jobs.training.metrics import HoldoutMetrics, holdout_metrics
from jobs.training.trainer import (
    DAY,
    LABEL,
    Device,
    Imbalance,
    TrainingDataError,
    TrainingParams,
    TrainingWindow,
    build_holdout,
    end_of_day,
    evaluate_holdout,
    feature_matrix,
    fit_fixed_rounds,
    load_feature_rows,
    load_fraud_labels,
    split_labelled,
    train_model,
    validate_feature_frame,
    with_day,
)

Protocol = Literal["handbook", "production"]

PUBLISHED: tuple[tuple[str, float, float, float], ...] = (
    ("logistic regression", 0.868, 0.623, 0.297),
    ("random forest", 0.870, 0.678, 0.299),
    ("XGBoost (best)", 0.872, 0.694, 0.304),
)
HANDBOOK_TRAIN_START = dt.date(2018, 7, 25)
HANDBOOK_TRAIN_DAYS = 7
HANDBOOK_VALIDATION_DAYS = 2
TEST_DAYS = 7
PRODUCTION_TRAIN_DAYS = 28
PRODUCTION_VALIDATION_DAYS = 7


SELECTION_TRAIN_START = HANDBOOK_TRAIN_START - dt.timedelta(days=TEST_DAYS)
"""The handbook's model-selection setting: the same protocol one week earlier, its test week before ours."""


def protocol_test_days(week_start: dt.date = HANDBOOK_TRAIN_START) -> tuple[dt.date, dt.date]:
    """First and last test day: the week after the label delay that follows the training week."""
    start = week_start + dt.timedelta(days=HANDBOOK_TRAIN_DAYS + TERMINAL_DELAY_DAYS)
    return start, start + dt.timedelta(days=TEST_DAYS - 1)


TEST_START, TEST_END = protocol_test_days()


def protocol_window(protocol: Protocol, week_start: dt.date = HANDBOOK_TRAIN_START) -> TrainingWindow:
    """The protocol's splits for the handbook training week starting ``week_start``."""
    validation_days = HANDBOOK_VALIDATION_DAYS if protocol == "handbook" else PRODUCTION_VALIDATION_DAYS
    validation_end = week_start + dt.timedelta(days=HANDBOOK_TRAIN_DAYS - 1)
    validation_start = validation_end - dt.timedelta(days=validation_days - 1)
    train_start = (
        week_start if protocol == "handbook" else validation_start - dt.timedelta(days=PRODUCTION_TRAIN_DAYS)
    )
    test_start, test_end = protocol_test_days(week_start)
    return TrainingWindow(
        train_start=train_start,
        train_end=validation_start - dt.timedelta(days=1),
        validation_start=validation_start,
        validation_end=validation_end,
        holdout_start=test_start,
        holdout_end=test_end,
        label_cutoff=end_of_day(test_start - dt.timedelta(days=1)),
    )


def labelled_features(source: pd.DataFrame | str, start: dt.date, end: dt.date) -> pd.DataFrame:
    """Feature rows from ``start`` to ``end`` with final labels, from a DataFrame or a lake path.

    From a lake, the labels are every fraud report it holds, and the lake must hold the reports of the
    whole reporting delay after ``end`` (``ImmatureLabels`` names the missing days): with fewer, frauds
    still to be reported count as genuine and every metric reads too low.
    """
    if isinstance(source, pd.DataFrame):
        validate_feature_frame(source, "feature table")
        if LABEL not in source.columns:
            raise TrainingDataError(f"feature table: a DataFrame needs a {LABEL!r} column (1 = fraud)")
        frame = with_day(source)
        days = frame[DAY].to_numpy()
        frame = frame[
            (days >= pd.Timestamp(start).to_datetime64()) & (days <= pd.Timestamp(end).to_datetime64())
        ]
        return frame.reset_index(drop=True)
    frame = load_feature_rows(source, start, end)
    newest = require_mature_labels(source, start, end, f"lake {source}")
    fraud, _ = load_fraud_labels(source, start, end_of_day(newest))
    frame[LABEL] = frame["transaction_id"].isin(fraud).astype("int8")
    return frame


@dataclass(frozen=True)
class ProtocolResult:
    protocol: Protocol
    window: TrainingWindow
    metrics: HoldoutMetrics
    reference: HoldoutMetrics
    """The handbook's logistic regression baseline, refitted on the same rows: the published rows come from
    the handbook's own simulated data, this one from the data measured here."""
    rounds: int
    train_rows: int
    test_rows: int
    device: str


def logistic_regression_scores(train: pd.DataFrame, test: pd.DataFrame, l2: float = 1.0) -> np.ndarray:
    """The handbook's first baseline: standardised features, L2 logistic regression (scikit-learn's C=1).

    Newton steps on 16 parameters; the logits it returns rank rows as the probabilities would.
    """
    x = feature_matrix(train)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0
    design = np.c_[np.ones(len(x)), (x - mean) / std]
    y = train[LABEL].to_numpy(dtype=np.float64)
    penalty = np.r_[0.0, np.full(x.shape[1], l2)]
    weights = np.zeros(design.shape[1])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(design @ weights)))
        gradient = design.T @ (p - y) + penalty * weights
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-8:
            break
    return np.c_[np.ones(len(test)), (feature_matrix(test) - mean) / std] @ weights


def run_protocol(
    source: pd.DataFrame | str,
    protocol: Protocol,
    *,
    params: TrainingParams | None = None,
    device: Device = "auto",
    week_start: dt.date = HANDBOOK_TRAIN_START,
) -> ProtocolResult:
    """Train as the protocol says and measure on its test week (``SELECTION_TRAIN_START`` to select)."""
    params = params or TrainingParams()
    window = protocol_window(protocol, week_start)
    test_start, test_end = protocol_test_days(week_start)
    frame = labelled_features(source, window.train_start, test_end)
    training_only = dataclasses.replace(window, holdout_start=None, holdout_end=None)
    data = split_labelled(frame, training_only, source="evaluation")
    model = train_model(data, params, device=device)
    booster = model.booster
    whole = pd.concat([data.train, data.validation], ignore_index=True)
    if protocol == "handbook":
        booster = fit_fixed_rounds(whole, params, model.best_iteration, model.device)
    history = frame[frame[DAY].to_numpy() >= pd.Timestamp(week_start).to_datetime64()]
    test = build_holdout(history, test_start, test_end)
    rows = test.frame
    reference = holdout_metrics(
        rows["customer_id"], rows[DAY], rows[LABEL], logistic_regression_scores(whole, rows)
    )
    return ProtocolResult(
        protocol=protocol,
        window=window,
        metrics=evaluate_holdout(booster, test),
        reference=reference,
        rounds=model.best_iteration,
        train_rows=len(data.train) + len(data.validation),
        test_rows=len(test.frame),
        device=model.device.device,
    )


def compare_imbalance(
    source: pd.DataFrame | str,
    strategies: tuple[Imbalance, ...] = ("none", "balanced", "sqrt"),
    *,
    protocol: Protocol = "production",
    device: Device = "cpu",
) -> dict[str, tuple[HoldoutMetrics, int]]:
    """Validation metrics and rounds of each class weighting, on a protocol's training days (no test data)."""
    window = protocol_window(protocol)
    rows = labelled_features(source, window.train_start, window.validation_end)
    data = dataclasses.replace(split_labelled(rows, window, source="evaluation"), holdout=None)
    models = {s: train_model(data, TrainingParams(imbalance=s), device=device) for s in strategies}
    return {s: (m.validation_metrics, m.best_iteration) for s, m in models.items()}


def format_results(results: list[ProtocolResult]) -> str:
    """A Markdown table: the published rows, then per protocol the same-data baseline and our model."""

    def row(name: str, m: HoldoutMetrics) -> str:
        return f"| {name} | {m.roc_auc:.3f} | {m.average_precision:.3f} | {m.card_precision_at_100:.3f} |"

    lines = ["| model | AUC | AP | CP@100 |", "| --- | --- | --- | --- |"]
    lines += [row(f"{name} (published)", HoldoutMetrics(*values)) for name, *values in PUBLISHED]
    best_ap = max(values[2] for values in PUBLISHED)
    best_cp = max(values[3] for values in PUBLISHED)
    notes = []
    for result in results:
        m, ref = result.metrics, result.reference
        lines.append(row(f"logistic regression, same data, {result.protocol} protocol", ref))
        lines.append(row(f"txguard LightGBM, {result.protocol} protocol", m))
        w = result.window
        ahead = m.average_precision > best_ap and m.card_precision_at_100 > best_cp
        notes.append(
            f"{result.protocol}: train {w.train_start}..{w.validation_end} ({result.train_rows} rows, "
            f"{result.rounds} rounds, {result.device}), test {w.holdout_start}..{w.holdout_end} "
            f"({result.test_rows} rows); ahead of every published row on AP and CP@100: "
            f"{'yes' if ahead else 'NO'}; vs the same-data baseline: AP "
            f"{m.average_precision - ref.average_precision:+.3f}, CP@100 "
            f"{m.card_precision_at_100 - ref.card_precision_at_100:+.3f}"
        )
    return "\n".join([*lines, "", *notes])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", required=True, help="lake root (path or s3://) with features and reports")
    parser.add_argument("--protocol", choices=["handbook", "production", "both", "imbalance"], default="both")
    parser.add_argument("--device", choices=["auto", "cpu", "gpu", "cuda"], default="auto")
    args = parser.parse_args(argv)
    try:
        if args.protocol == "imbalance":
            for protocol in ("handbook", "production"):
                for strategy, (m, rounds) in compare_imbalance(
                    args.lake, protocol=protocol, device=args.device
                ).items():
                    print(
                        f"{protocol} validation, {strategy:>8}: AP {m.average_precision:.4f}, "
                        f"AUC {m.roc_auc:.4f}, CP@100 {m.card_precision_at_100:.4f}, {rounds} rounds"
                    )
            return 0
        protocols: list[Protocol] = ["handbook", "production"] if args.protocol == "both" else [args.protocol]
        print(format_results([run_protocol(args.lake, p, device=args.device) for p in protocols]))
    except (TrainingDataError, ImmatureLabels) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
