"""Training: matured windows, lake assembly, determinism, model behaviour, bad input and device fallback.

The data is a small simulation in the handbook's style (customers and terminals on a map, the three fraud
scenarios) with handbook features computed in pandas, written to a temporary lake in the documented
layout (``tests/support.py``, through the ``handbook_*`` fixtures of ``tests/conftest.py``); the simulator
and the Spark feature job are tested elsewhere.
"""

from __future__ import annotations

import datetime as dt
import math
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jobs.features.definitions import FEATURE_COLUMNS, FeatureSetMismatch
from jobs.platform import storage
from jobs.platform.layout import RAW_FRAUD_REPORTS, TRANSACTION_FEATURES, partition_uri
from jobs.training.budget import AlertBudget, BudgetError
from jobs.training.trainer import (
    DAY,
    LABEL,
    DeviceUnavailable,
    TrainingDataError,
    assemble_training_set,
    build_holdout,
    choose_threshold,
    evaluate_holdout,
    feature_days,
    matured_window,
    predict_scores,
    probe_device,
    resolve_device,
    split_labelled,
    train_model,
    with_day,
)
from tests.support import (
    FAST,
    START,
    handbook_features,
    handbook_transactions,
    latest_window,
    write_feature_lake,
    write_feature_partition,
    write_raw_partition,
)


def labelled(tx: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    """Features with the eventual label (every fraud is reported in this simulation)."""
    fraud = tx.set_index("transaction_id")["fraud"]
    return with_day(
        features.assign(**{LABEL: fraud.loc[features["transaction_id"]].to_numpy().astype(np.int8)})
    )


def test_matured_window_keeps_splits_in_time_order_and_labels_matured() -> None:
    window = matured_window(dt.date(2018, 6, 30), train_days=14, validation_days=7, holdout_days=7)
    assert window.holdout_end == dt.date(2018, 6, 23)
    assert window.holdout_start == dt.date(2018, 6, 17)
    assert window.validation_end == dt.date(2018, 6, 16)
    assert window.validation_start == dt.date(2018, 6, 10)
    assert (window.train_start, window.train_end) == (dt.date(2018, 5, 27), dt.date(2018, 6, 9))
    assert window.label_cutoff == dt.datetime(2018, 6, 30, 23, 59, 59, 999999, tzinfo=dt.UTC)
    clipped = matured_window(dt.date(2018, 6, 30), train_days=60, earliest_day=dt.date(2018, 5, 1))
    assert clipped.train_start == dt.date(2018, 5, 1)
    with pytest.raises(TrainingDataError, match="not enough matured history"):
        matured_window(dt.date(2018, 4, 20), earliest_day=dt.date(2018, 4, 1))


def test_assembly_labels_only_reports_known_at_the_cutoff(handbook_lake: str, handbook_data) -> None:
    tx, _ = handbook_data
    days = feature_days(handbook_lake)
    assert days[0] == START and len(days) == 60
    latest = days[-1]
    window = matured_window(latest, earliest_day=days[0])
    data = assemble_training_set(handbook_lake, window)
    ids = pd.concat([data.train, data.validation])["transaction_id"]
    truth = tx.set_index("transaction_id").loc[ids]
    known = truth["fraud"] & (truth["reported_at"] <= pd.Timestamp(window.label_cutoff))
    assert (pd.concat([data.train, data.validation])[LABEL].to_numpy() == known.to_numpy()).all()
    assert data.train[DAY].max() < data.validation[DAY].min()
    assert data.validation[DAY].max() < data.holdout.frame[DAY].min()
    late = matured_window(latest - dt.timedelta(days=10), earliest_day=days[0])
    early = assemble_training_set(
        handbook_lake, replace(late, label_cutoff=late.label_cutoff - dt.timedelta(days=40))
    )
    assert early.train[LABEL].sum() < assemble_training_set(handbook_lake, late).train[LABEL].sum()


def test_holdout_drops_cards_known_compromised_before_each_day() -> None:
    frame = with_day(
        pd.DataFrame(
            {
                "transaction_id": [1, 2, 3, 4, 5],
                "tx_datetime": pd.to_datetime(
                    [
                        "2018-05-02T10:00Z",
                        "2018-05-01T11:00Z",
                        "2018-05-09T10:00Z",
                        "2018-05-10T10:00Z",
                        "2018-05-10T11:00Z",
                    ]
                ),
                "customer_id": [1, 2, 1, 1, 3],
                LABEL: [1, 0, 0, 0, 1],
            }
        )
    )
    frame["customer_id"] = frame["customer_id"].astype(np.int64)
    for column in FEATURE_COLUMNS:
        frame[column] = 0.0
    frame["terminal_id"] = 1
    holdout = build_holdout(frame, dt.date(2018, 5, 9), dt.date(2018, 5, 10), delay_days=7)
    assert holdout.frame["transaction_id"].tolist() == [3, 5]


def test_threshold_respects_the_daily_card_budget() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"customer_id": rng.integers(0, 500, 6000), DAY: np.repeat(np.arange(3), 2000)})
    scores = rng.random(6000)
    threshold, alerts = choose_threshold(frame, scores, alert_budget=100)
    cards = frame.assign(s=scores).groupby([DAY, "customer_id"])["s"].max()
    assert (cards >= threshold).sum() / 3 == pytest.approx(alerts) and alerts <= 100
    assert (cards >= np.max(cards[cards < threshold])).sum() / 3 > 100


def test_a_share_budget_allows_each_day_its_share_of_that_days_active_cards() -> None:
    rng = np.random.default_rng(2)
    customers = np.r_[rng.integers(0, 200, 2000), rng.integers(0, 1000, 4000)]
    frame = pd.DataFrame({"customer_id": customers, DAY: np.repeat([0, 1], [2000, 4000])})
    scores = rng.random(6000)
    budget = AlertBudget.parse("5%")
    cards = frame.assign(s=scores).groupby([DAY, "customer_id"])["s"].max()
    active = cards.groupby(level=DAY).size()
    allowed = budget.cards_on(active[0]) + budget.cards_on(active[1])
    assert allowed == math.ceil(0.05 * active[0]) + math.ceil(0.05 * active[1])
    threshold, alerts = choose_threshold(frame, scores, budget)
    assert (cards >= threshold).sum() <= allowed < (cards >= np.max(cards[cards < threshold])).sum()
    assert alerts == pytest.approx((cards >= threshold).sum() / 2)


@pytest.mark.parametrize("text", ["0", "0%", "101%", "-1", "1.5", "ten", "nan%", ""])
def test_a_budget_is_a_card_count_or_a_share_and_nothing_else(text: str) -> None:
    with pytest.raises(BudgetError):
        AlertBudget.parse(text)
    assert str(AlertBudget.parse("100")) == "100 cards a day"
    assert AlertBudget.parse(" 2.5 % ").cards_on(1000) == 25


def test_training_on_small_data_learns_and_stays_within_budget(trained, training_set) -> None:
    assert trained.device.device == "cpu"
    assert 0 < trained.best_iteration < trained.params.max_rounds
    assert trained.validation_metrics.average_precision > 0.4
    assert trained.validation_metrics.roc_auc > 0.8
    assert trained.params.alert_budget == AlertBudget.parse("1%")
    cards_per_day = training_set.validation.groupby(DAY)["customer_id"].nunique()
    assert trained.validation_alerts_per_day <= np.ceil(0.01 * cards_per_day).mean()
    holdout = evaluate_holdout(trained.booster, training_set.holdout)
    base_rate = training_set.holdout.frame[LABEL].mean()
    assert holdout.average_precision > 5 * base_rate
    assert 0 < holdout.card_precision_at_100 <= 1


def test_same_data_and_params_give_the_same_model_bytes(trained, training_set) -> None:
    again = train_model(training_set, FAST, device="cpu")
    assert again.model_bytes() == trained.model_bytes()
    assert again.threshold == trained.threshold
    other_seed = train_model(training_set, replace(FAST, seed=43), device="cpu")
    assert other_seed.model_bytes() != trained.model_bytes()


def test_permuting_customer_ids_leaves_model_and_scores_unchanged(trained, training_set) -> None:
    rng = np.random.default_rng(3)
    ids = np.unique(np.r_[training_set.train["customer_id"], training_set.validation["customer_id"]])
    mapping = dict(zip(ids, rng.permutation(ids) + 10_000, strict=True))
    permuted = replace(
        training_set,
        train=training_set.train.assign(customer_id=training_set.train["customer_id"].map(mapping)),
        validation=training_set.validation.assign(
            customer_id=training_set.validation["customer_id"].map(mapping)
        ),
    )
    assert train_model(permuted, FAST, device="cpu").model_bytes() == trained.model_bytes()
    holdout = training_set.holdout.frame
    shuffled = holdout.assign(customer_id=rng.permutation(holdout["customer_id"].to_numpy()))
    np.testing.assert_array_equal(
        predict_scores(trained.booster, shuffled), predict_scores(trained.booster, holdout)
    )


def test_doubling_terminal_fraud_rate_does_not_lower_scores_on_average(trained, training_set) -> None:
    """Twice the terminal's frauds: its delayed fraud rate and its frauds reported so far both double."""
    holdout = training_set.holdout.frame
    risky = holdout.copy()
    for w in (1, 7, 30):
        column = f"terminal_id_risk_{w}day_window"
        risky[column] = np.minimum(2 * risky[column], 1.0)
        risky[f"terminal_id_nb_reported_frauds_{w}day_window"] *= 2
    changed = (risky[list(FEATURE_COLUMNS)] != holdout[list(FEATURE_COLUMNS)]).any(axis=1)
    assert changed.sum() > 50
    before = predict_scores(trained.booster, holdout[changed])
    after = predict_scores(trained.booster, risky[changed])
    assert after.mean() >= before.mean()


def test_empty_window_is_refused(tmp_path: Path) -> None:
    window = matured_window(dt.date(2018, 6, 30))
    with pytest.raises(TrainingDataError, match=r"feature partition for 2018-05-\d\d is missing"):
        assemble_training_set(str(tmp_path), window)
    empty = training_set_from(pd.DataFrame(columns=[*labelled_columns()]))
    with pytest.raises(TrainingDataError, match="training split is empty"):
        train_model(empty, device="cpu")


def labelled_columns() -> list[str]:
    return ["transaction_id", "tx_datetime", "customer_id", "terminal_id", *FEATURE_COLUMNS, LABEL, DAY]


def training_set_from(frame: pd.DataFrame):
    window = matured_window(dt.date(2018, 5, 30), train_days=14, holdout_days=0)
    return split_labelled(frame.astype({DAY: "datetime64[s]"}), window, source="memory")


def test_single_class_window_is_refused(training_set) -> None:
    genuine_only = replace(training_set, train=training_set.train.assign(**{LABEL: 0}))
    with pytest.raises(TrainingDataError, match="training split has a single class"):
        train_model(genuine_only, device="cpu")
    no_fraud_validation = replace(training_set, validation=training_set.validation.assign(**{LABEL: 0}))
    with pytest.raises(TrainingDataError, match="validation split has a single class"):
        train_model(no_fraud_validation, device="cpu")


def _copy_lake_with(lake: str, tmp_path: Path, day: dt.date, change) -> tuple[str, str]:
    import shutil

    copy = tmp_path / "lake"
    shutil.copytree(lake, copy)
    uri = partition_uri(str(copy), TRANSACTION_FEATURES, day)
    write_feature_partition(copy, change(storage.read_parquet(uri).to_pandas()), day)
    return str(copy), uri


def test_feature_set_version_mismatch_names_file_and_row(handbook_lake: str, tmp_path: Path) -> None:
    window = latest_window(handbook_lake)

    def stale(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[4, "feature_set_version"] = "fs-000000000000"
        return frame

    copy, uri = _copy_lake_with(handbook_lake, tmp_path, window.validation_start, stale)
    with pytest.raises(FeatureSetMismatch, match=rf"{uri}, row 5: feature-set version fs-000000000000"):
        assemble_training_set(copy, window)


def test_nan_feature_names_file_row_and_column(handbook_lake: str, tmp_path: Path) -> None:
    window = latest_window(handbook_lake)

    def hole(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[2, "terminal_id_risk_7day_window"] = np.nan
        return frame

    copy, uri = _copy_lake_with(handbook_lake, tmp_path, window.train_end, hole)
    with pytest.raises(TrainingDataError, match=rf"{uri}, row 3: terminal_id_risk_7day_window is null"):
        assemble_training_set(copy, window)


def test_auto_falls_back_to_cpu_and_says_why() -> None:
    choice = resolve_device("auto")
    assert choice.device == "cpu"
    assert "No OpenCL device found" in choice.reason
    assert "cuda unusable" in choice.reason


def test_gpu_or_cuda_requested_without_a_device_is_a_clear_error(training_set) -> None:
    with pytest.raises(DeviceUnavailable, match=r"'gpu' requested but unusable: No OpenCL device found"):
        train_model(training_set, device="gpu")
    with pytest.raises(DeviceUnavailable, match=r"'cuda' requested but unusable"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    ("working", "expected"),
    [({"cuda", "gpu"}, "cuda"), ({"gpu"}, "gpu"), (set(), "cpu")],
)
def test_auto_prefers_cuda_then_opencl_then_cpu(monkeypatch: pytest.MonkeyPatch, working, expected) -> None:
    import jobs.training.trainer

    monkeypatch.setattr(
        jobs.training.trainer, "probe_device", lambda d: None if d in working else f"{d} missing"
    )
    assert resolve_device("auto").device == expected


def test_a_probe_that_crashes_costs_a_fallback_not_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA build has been seen to segfault on a GPU machine: the probe's child dies, training goes on."""
    import jobs.training.trainer

    assert probe_device("cpu") is None
    monkeypatch.setattr(
        jobs.training.trainer, "_PROBE", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    )
    assert probe_device("cuda") == f"probe crashed with signal {signal.SIGSEGV.value}"
    monkeypatch.setattr(jobs.training.trainer, "probe_device", lambda d: "probe crashed with signal 11")
    choice = resolve_device("auto")
    assert choice.device == "cpu"
    assert "cuda unusable (probe crashed with signal 11)" in choice.reason


@pytest.fixture(scope="module")
def summer(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """A simulation covering the protocols' days (production training from 06-27, test to 08-14), and the
    report days of the week after the test, as ingest leaves them (the last one has no reports)."""
    tx = handbook_transactions(n_days=56, start=dt.date(2018, 6, 20), seed=11)
    features = handbook_features(tx)
    root = tmp_path_factory.mktemp("summer-lake")
    write_feature_lake(root, tx, features)
    write_raw_partition(root, RAW_FRAUD_REPORTS, dt.date(2018, 8, 21), [])
    return tx, features, str(root)


def test_evaluation_protocols_follow_the_handbook_and_print_next_to_the_published_rows(summer) -> None:
    from jobs.training.evaluate import TEST_END, TEST_START, format_results, run_protocol

    tx, features, lake = summer
    handbook = run_protocol(labelled(tx, features), "handbook", params=FAST, device="cpu")
    assert (handbook.window.train_start, handbook.window.validation_end) == (
        dt.date(2018, 7, 25),
        dt.date(2018, 7, 31),
    )
    assert handbook.window.holdout_start == TEST_START == dt.date(2018, 8, 8)
    assert handbook.window.holdout_end == TEST_END == dt.date(2018, 8, 14)
    frame = labelled(tx, features)
    days = frame[DAY].to_numpy()
    first_test_day = frame[days == np.datetime64(TEST_START, "D")]
    known = frame.loc[
        (frame[LABEL] == 1) & (days >= np.datetime64("2018-07-25")) & (days <= np.datetime64("2018-07-31")),
        "customer_id",
    ]
    all_test = ((days >= np.datetime64(TEST_START, "D")) & (days <= np.datetime64(TEST_END, "D"))).sum()
    assert first_test_day["customer_id"].isin(known).any(), "the simulation should have known cards to drop"
    assert 0 < handbook.test_rows < all_test

    production = run_protocol(lake, "production", params=FAST, device="cpu")
    assert production.window.train_start == dt.date(2018, 6, 27)
    assert production.test_rows == handbook.test_rows and production.train_rows > 3 * handbook.train_rows
    text = format_results([handbook, production])
    assert "| XGBoost (best) (published) | 0.872 | 0.694 | 0.304 |" in text
    ours = [line for line in text.splitlines() if line.startswith("| txguard")]
    assert len(ours) == 2 and f"{handbook.metrics.average_precision:.3f}" in ours[0]
    assert "ahead of every published row on AP and CP@100" in text


def test_the_same_data_baseline_is_the_handbooks_logistic_regression(handbook_data) -> None:
    from sklearn import linear_model

    from jobs.training.evaluate import logistic_regression_scores
    from jobs.training.metrics import roc_auc

    frame = labelled(*handbook_data)
    train, test = frame.iloc[:20_000], frame.iloc[20_000:30_000]
    ours = logistic_regression_scores(train, test)
    x = train[list(FEATURE_COLUMNS)].to_numpy()
    mean, std = x.mean(axis=0), x.std(axis=0)
    reference = linear_model.LogisticRegression(C=1.0, max_iter=10_000, tol=1e-10).fit(
        (x - mean) / std, train[LABEL]
    )
    theirs = reference.decision_function((test[list(FEATURE_COLUMNS)].to_numpy() - mean) / std)
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3)
    assert roc_auc(test[LABEL], ours) > 0.8
