"""Training: matured windows, lake assembly, determinism, model behaviour, bad input and device fallback.

The data is a small simulation in the handbook's style (customers and terminals on a map, the three fraud
scenarios) with handbook features computed in pandas, written to a temporary lake in the documented
layout; the simulator and the Spark feature job are tested elsewhere.
"""

from __future__ import annotations

import datetime as dt
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from jobs.features.definitions import FEATURE_COLUMNS, FEATURE_SET_VERSION, FeatureSetMismatch, amount_ratio
from jobs.platform import storage
from jobs.platform.layout import RAW_FRAUD_REPORTS, TRANSACTION_FEATURES, partition_uri
from jobs.testing.reference_features import add_recent_reports
from jobs.training.trainer import (
    DAY,
    LABEL,
    DeviceUnavailable,
    TrainingDataError,
    TrainingParams,
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

START = dt.date(2018, 4, 1)
FAST = TrainingParams(num_threads=1, learning_rate=0.1)
"""One thread: no OpenMP spinning when the test machine's two cores are busy; same bytes either way."""


def simulate(
    n_customers: int = 600,
    n_terminals: int = 1000,
    n_days: int = 60,
    radius: float = 10.0,
    compromised_terminals_per_day: float = 0.3,
    compromised_customers_per_day: float = 1.0,
    seed: int = 7,
    start: dt.date = START,
) -> pd.DataFrame:
    """Transactions with the handbook's generative story and its three fraud scenarios, plus reports."""
    rng = np.random.default_rng(seed)
    cust_xy = rng.uniform(0, 100, (n_customers, 2))
    term_xy = rng.uniform(0, 100, (n_terminals, 2))
    mean_amount = rng.uniform(5, 100, n_customers)
    mean_nb = rng.uniform(0, 4, n_customers)
    near = np.linalg.norm(cust_xy[:, None, :] - term_xy[None, :, :], axis=2) < radius
    counts = near.sum(axis=1)
    offsets = np.r_[0, np.cumsum(counts)[:-1]]
    flat_terminals = np.nonzero(near)[1]

    per_day = rng.poisson(np.tile(mean_nb, n_days))
    customer = np.repeat(np.tile(np.arange(n_customers), n_days), per_day)
    day = np.repeat(np.repeat(np.arange(n_days), n_customers), per_day)
    seconds = rng.normal(86400 / 2, 20000, len(customer))
    amount = rng.normal(mean_amount[customer], mean_amount[customer] / 2)
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * mean_amount[customer[negative]])
    keep = (seconds > 0) & (seconds < 86400) & (counts[customer] > 0)
    customer, day, seconds, amount = customer[keep], day[keep], seconds[keep], amount[keep]
    terminal = flat_terminals[offsets[customer] + (rng.random(len(customer)) * counts[customer]).astype(int)]

    fraud = amount > 220
    for start_day in range(n_days):
        for t in rng.choice(n_terminals, rng.poisson(compromised_terminals_per_day), replace=False):
            fraud |= (terminal == t) & (day >= start_day) & (day < start_day + 28)
        for c in rng.choice(n_customers, rng.poisson(compromised_customers_per_day), replace=False):
            window = np.flatnonzero((customer == c) & (day >= start_day) & (day < start_day + 14))
            chosen = rng.choice(window, len(window) // 3, replace=False) if len(window) >= 3 else window[:0]
            amount[chosen] *= 5
            fraud[chosen] = True

    stamps = (
        pd.Timestamp(start, tz="UTC") + pd.to_timedelta(day, "D") + pd.to_timedelta(seconds.astype(int), "s")
    )
    tx = pd.DataFrame(
        {
            "tx_datetime": stamps.astype("datetime64[us, UTC]"),
            "customer_id": customer.astype(np.int64),
            "terminal_id": terminal.astype(np.int64),
            "tx_amount": np.round(amount, 2),
            "fraud": fraud,
        }
    ).sort_values("tx_datetime", kind="mergesort")
    tx.insert(0, "transaction_id", np.arange(len(tx), dtype=np.int64))
    report_delay = pd.to_timedelta(rng.uniform(3600, 6 * 86400, len(tx)).astype(int), "s")
    tx["reported_at"] = (tx["tx_datetime"] + report_delay).where(tx["fraud"])
    return tx.reset_index(drop=True)


def handbook_features(tx: pd.DataFrame, delay: int = 7) -> pd.DataFrame:
    """The feature set, point in time, with the handbook's pandas rolling windows."""
    out = tx[["transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount"]].copy()
    out["tx_during_weekend"] = (tx["tx_datetime"].dt.weekday >= 5).astype(np.int64)
    out["tx_during_night"] = (tx["tx_datetime"].dt.hour <= 6).astype(np.int64)
    by_customer = tx.sort_values(["customer_id", "tx_datetime"], kind="mergesort")
    indexed = by_customer.set_index("tx_datetime").groupby("customer_id")["tx_amount"]
    for w in (1, 7, 30):
        rolling = indexed.rolling(f"{w}D")
        out.loc[by_customer.index, f"customer_id_nb_tx_{w}day_window"] = rolling.count().to_numpy()
        out.loc[by_customer.index, f"customer_id_avg_amount_{w}day_window"] = rolling.mean().to_numpy()
    for w in (1, 7, 30):
        out[f"customer_id_amount_ratio_{w}day_window"] = amount_ratio(
            out["tx_amount"], out[f"customer_id_avg_amount_{w}day_window"]
        )
    by_terminal = tx.sort_values(["terminal_id", "tx_datetime"], kind="mergesort")
    frauds = (
        by_terminal.assign(f=by_terminal["fraud"].astype(float))
        .set_index("tx_datetime")
        .groupby("terminal_id")
    )
    nb_delay = frauds["f"].rolling(f"{delay}D").count().to_numpy()
    fr_delay = frauds["f"].rolling(f"{delay}D").sum().to_numpy()
    for w in (1, 7, 30):
        nb = frauds["f"].rolling(f"{delay + w}D").count().to_numpy() - nb_delay
        fr = frauds["f"].rolling(f"{delay + w}D").sum().to_numpy() - fr_delay
        out.loc[by_terminal.index, f"terminal_id_nb_tx_{w}day_window"] = nb
        out.loc[by_terminal.index, f"terminal_id_risk_{w}day_window"] = np.where(
            nb > 0, fr / np.maximum(nb, 1), 0
        )
    add_recent_reports(out, tx[tx["reported_at"].notna()])
    out[list(FEATURE_COLUMNS)] = out[list(FEATURE_COLUMNS)].astype(np.float64)
    out["feature_set_version"] = FEATURE_SET_VERSION
    return out


def write_lake(lake: Path, tx: pd.DataFrame, features: pd.DataFrame) -> None:
    """Feature partitions by transaction day, report partitions by arrival day, as the pipeline does."""
    feature_day = features["tx_datetime"].dt.date
    for day, rows in features.groupby(feature_day):
        table = pa.Table.from_pandas(rows.reset_index(drop=True), preserve_index=False)
        storage.write_parquet_atomic(table, partition_uri(str(lake), TRANSACTION_FEATURES, day))
    reports = tx.loc[tx["fraud"], ["transaction_id", "reported_at"]].reset_index(drop=True)
    reports["extras"] = None
    reports["source_file"] = "fraud_reports/generated.csv"
    reports["ingest_run_id"] = "test"
    for day, rows in reports.groupby(reports["reported_at"].dt.date):
        table = pa.Table.from_pandas(rows.reset_index(drop=True), preserve_index=False)
        storage.write_parquet_atomic(table, partition_uri(str(lake), RAW_FRAUD_REPORTS, day))


def labelled(tx: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    """Features with the eventual label (every fraud is reported in this simulation)."""
    fraud = tx.set_index("transaction_id")["fraud"]
    return with_day(
        features.assign(**{LABEL: fraud.loc[features["transaction_id"]].to_numpy().astype(np.int8)})
    )


@pytest.fixture(scope="module")
def simulated() -> tuple[pd.DataFrame, pd.DataFrame]:
    tx = simulate()
    return tx, handbook_features(tx)


@pytest.fixture(scope="module")
def lake(simulated, tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("lake")
    write_lake(root, *simulated)
    return str(root)


@pytest.fixture(scope="module")
def training_set(lake: str):
    days = feature_days(lake)
    return assemble_training_set(lake, matured_window(days[-1], earliest_day=days[0]))


@pytest.fixture(scope="module")
def trained(training_set):
    return train_model(training_set, FAST, device="cpu")


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


def test_assembly_labels_only_reports_known_at_the_cutoff(lake: str, simulated) -> None:
    tx, _ = simulated
    days = feature_days(lake)
    assert days[0] == START and len(days) == 60
    latest = days[-1]
    window = matured_window(latest, earliest_day=days[0])
    data = assemble_training_set(lake, window)
    ids = pd.concat([data.train, data.validation])["transaction_id"]
    truth = tx.set_index("transaction_id").loc[ids]
    known = truth["fraud"] & (truth["reported_at"] <= pd.Timestamp(window.label_cutoff))
    assert (pd.concat([data.train, data.validation])[LABEL].to_numpy() == known.to_numpy()).all()
    assert data.train[DAY].max() < data.validation[DAY].min()
    assert data.validation[DAY].max() < data.holdout.frame[DAY].min()
    late = matured_window(latest - dt.timedelta(days=10), earliest_day=days[0])
    early = assemble_training_set(lake, replace(late, label_cutoff=late.label_cutoff - dt.timedelta(days=40)))
    assert early.train[LABEL].sum() < assemble_training_set(lake, late).train[LABEL].sum()


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


def test_training_on_small_data_learns_and_stays_within_budget(trained, training_set) -> None:
    assert trained.device.device == "cpu"
    assert 0 < trained.best_iteration < trained.params.max_rounds
    assert trained.validation_metrics.average_precision > 0.4
    assert trained.validation_metrics.roc_auc > 0.8
    assert trained.validation_alerts_per_day <= trained.params.alert_budget
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
    frame = storage.read_parquet(uri).to_pandas()
    storage.write_parquet_atomic(pa.Table.from_pandas(change(frame), preserve_index=False), uri)
    return str(copy), uri


def test_feature_set_version_mismatch_names_file_and_row(lake: str, tmp_path: Path) -> None:
    days = feature_days(lake)
    window = matured_window(days[-1], earliest_day=days[0])

    def stale(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[4, "feature_set_version"] = "fs-000000000000"
        return frame

    copy, uri = _copy_lake_with(lake, tmp_path, window.validation_start, stale)
    with pytest.raises(FeatureSetMismatch, match=rf"{uri}, row 5: feature-set version fs-000000000000"):
        assemble_training_set(copy, window)


def test_nan_feature_names_file_row_and_column(lake: str, tmp_path: Path) -> None:
    days = feature_days(lake)
    window = matured_window(days[-1], earliest_day=days[0])

    def hole(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[2, "terminal_id_risk_7day_window"] = np.nan
        return frame

    copy, uri = _copy_lake_with(lake, tmp_path, window.train_end, hole)
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
    """A simulation covering the protocols' days (production training from 06-27, test to 08-14)."""
    tx = simulate(n_days=56, start=dt.date(2018, 6, 20), seed=11)
    features = handbook_features(tx)
    root = tmp_path_factory.mktemp("summer-lake")
    write_lake(root, tx, features)
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


def test_the_same_data_baseline_is_the_handbooks_logistic_regression(simulated) -> None:
    from sklearn import linear_model

    from jobs.training.evaluate import logistic_regression_scores
    from jobs.training.metrics import roc_auc

    frame = labelled(*simulated)
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
