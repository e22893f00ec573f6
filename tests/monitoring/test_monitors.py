"""Monitoring: PSI on known values, matured performance on a small scored table, then both assets for real.

The asset tests use a world built once per module (``build_world``): the simulator with its drift option
(``tests.support.drifted_transactions``, which the retraining-sensor tests use too), handbook features
written to a lake, a LightGBM champion registered in a real MLflow SQLite store on the days before the drift,
and every later day scored into a real DuckDB warehouse with its analysts' snapshot. A second world holds
only the first 30 days of the same simulation, as a fresh deployment has them: its monitors are in warm-up.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from jobs.features.definitions import FEATURE_COLUMNS
from jobs.monitoring.monitors import (
    AP_FLOOR,
    DRIFT_FEATURES,
    MIN_JUDGED_FRAUDS,
    PSI_ERROR,
    PSI_WARN,
    REFERENCE_COLUMNS,
    REPORTED_FRAUD_FEATURES,
    SCORE,
    DriftReport,
    MonitoringError,
    bin_shares,
    build_reference,
    comparable_scores,
    drift_chart,
    drift_level,
    drift_report,
    judged_window,
    label_scored,
    measure_performance,
    performance_report,
    psi,
    psi_from_shares,
    quantile_cuts,
    reference_uri,
    training_window,
    trend_chart,
)
from jobs.platform.settings import load_settings
from jobs.training.maturity import warm_up_end
from jobs.training.metrics import holdout_metrics
from jobs.training.trainer import TrainingWindow, matured_window
from orchestration.defs.monitoring import feature_drift, model_performance
from orchestration.runs import partition_range_tags
from tests.support import (
    CALM_WEEK,
    DRIFT_DAYS,
    DRIFT_FROM,
    FAST,
    START,
    drifted_transactions,
    handbook_features,
    materialize,
    single_check,
    use_world,
    write_feature_lake,
)

pytestmark = pytest.mark.slow
"""Each world trains a model and scores its days: out of ``make test-fast``, in ``make test``."""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- PSI -----------------------------------------------------------------------------------------------


def test_psi_of_known_shares() -> None:
    expected = 0.25 * math.log(2) + 0.25 * math.log(1.5)
    assert psi_from_shares([0.5, 0.5], [0.25, 0.75]) == pytest.approx(expected, abs=1e-12)
    reference = np.r_[np.zeros(50), np.ones(50)]
    current = np.r_[np.zeros(25), np.ones(75)]
    assert psi(reference, current) == pytest.approx(expected, abs=1e-12)


def test_an_empty_bin_counts_as_a_large_finite_shift() -> None:
    value = psi_from_shares([0.5, 0.5], [1.0, 0.0])
    assert value == pytest.approx(0.5 * math.log(2) + (1e-4 - 0.5) * math.log(1e-4 / 0.5))
    assert math.isfinite(value) and drift_level(value) == "error"


def test_bins_are_the_reference_deciles_and_merge_for_few_values() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=10_000)
    shares = bin_shares(reference, quantile_cuts(reference))
    np.testing.assert_allclose(shares, np.full(10, 0.1), atol=1e-3)
    flags = np.r_[np.zeros(700), np.ones(300)]
    assert len(bin_shares(flags, quantile_cuts(flags))) == 3


def test_identical_distributions_are_stable() -> None:
    rng = np.random.default_rng(1)
    sample = rng.gamma(2.0, 30.0, 20_000)
    assert psi(sample, sample) == 0.0
    assert psi(sample, rng.gamma(2.0, 30.0, 20_000)) < 0.01


@pytest.mark.parametrize(("shift", "level"), [(0.0, "ok"), (0.4, "warn"), (1.0, "error")])
def test_a_shifted_distribution_warns_then_errors(shift: float, level: str) -> None:
    rng = np.random.default_rng(2)
    value = psi(rng.normal(size=50_000), rng.normal(shift, 1.0, 50_000))
    assert drift_level(value) == level, value


def synthetic_features(n: int, seed: int, weekend: float = 2 / 7) -> pd.DataFrame:
    """Feature rows and scores; a tenth of the rows at terminals with reported frauds."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({c: rng.gamma(2.0, 10.0, n) for c in FEATURE_COLUMNS})
    frame["tx_during_night"] = (rng.random(n) < 0.1).astype(float)
    frame["tx_during_weekend"] = (rng.random(n) < weekend).astype(float)
    reported = rng.random(n) < 0.1
    for column in REPORTED_FRAUD_FEATURES:
        frame[column] = np.where(reported, rng.integers(1, 5, n), 0).astype(float)
    frame[SCORE] = rng.beta(0.5, 20, n)
    return frame


def test_drift_report_names_the_drifted_feature() -> None:
    reference = synthetic_features(20_000, seed=3)
    today = synthetic_features(3_000, seed=4, weekend=0.0)
    stable = drift_report(reference, today, dt.date(2018, 6, 1), model_version=2)
    assert stable.level == "ok" and set(stable.psi) == {*DRIFT_FEATURES, SCORE}
    assert "tx_during_weekend" not in stable.psi
    assert set(REPORTED_FRAUD_FEATURES) < set(stable.psi)
    drifted = drift_report(
        reference, today.assign(tx_amount=today["tx_amount"] * 1.5), dt.date(2018, 6, 1), 2
    )
    assert drifted.worst[0] == "tx_amount" and drifted.level == "error"
    assert {k: v for k, v in drifted.psi.items() if k != "tx_amount"} == {
        k: v for k, v in stable.psi.items() if k != "tx_amount"
    }
    with pytest.raises(MonitoringError, match="missing column"):
        drift_report(reference, today.drop(columns=[SCORE]), dt.date(2018, 6, 1), 2)


def test_score_drift_ignores_the_days_fraud_volume_and_the_calendar_but_not_a_shift() -> None:
    reference = synthetic_features(20_000, seed=5)
    weekend = reference["tx_during_weekend"] == 1
    reference.loc[weekend, SCORE] += 0.2
    day = dt.date(2018, 6, 2)
    saturday = synthetic_features(3_000, seed=6, weekend=1.0)
    saturday[SCORE] += 0.2
    surge = saturday[REPORTED_FRAUD_FEATURES[-1]] > 0
    saturday.loc[surge, SCORE] = 0.9
    everything = psi(reference[SCORE].to_numpy(), saturday[SCORE].to_numpy())
    assert drift_level(everything) == "error", "the whole-day score PSI swings with the calendar and frauds"
    expected, actual = comparable_scores(reference, saturday, day)
    assert len(expected) == ((reference[REPORTED_FRAUD_FEATURES[-1]] == 0) & weekend).sum()
    assert len(actual) == (~surge).sum()
    assert drift_report(reference, saturday, day, model_version=2).level == "ok"

    shifted = saturday.assign(**{SCORE: saturday[SCORE] * 3})
    report = drift_report(reference, shifted, day, model_version=2)
    assert report.worst[0] == SCORE and report.level == "error"
    with pytest.raises(MonitoringError, match="no scores to compare"):
        comparable_scores(reference[~weekend], saturday, day)


def test_drift_chart_is_a_png() -> None:
    reports = [
        DriftReport(dt.date(2018, 6, d), 2, 100, {"tx_amount": 0.05 * d, SCORE: 0.02}) for d in (1, 2, 3)
    ]
    for charted in (reports, reports[-1:]):
        assert drift_chart(charted).startswith(PNG_SIGNATURE)


# --- performance on matured labels ---------------------------------------------------------------------


def scored_table(evaluated_on: dt.date, days: int, seed: int) -> tuple[pd.DataFrame, set[int]]:
    """``days`` days of scores up to ``evaluated_on``: informative on matured days, inverted after."""
    rng = np.random.default_rng(seed)
    rows = []
    for offset in range(days):
        day = evaluated_on - dt.timedelta(days=offset)
        n = 400
        fraud = rng.random(n) < 0.04
        informative = np.where(fraud, rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 0.6, n))
        matured = day <= judged_window(evaluated_on)[1]
        rows.append(
            pd.DataFrame(
                {
                    "transaction_id": np.arange(n) + offset * 10_000,
                    "customer_id": rng.integers(0, 300, n),
                    "day": day,
                    SCORE: informative if matured else 1 - informative,
                    "model_version": 2,
                    "fraud": fraud,
                }
            )
        )
    table = pd.concat(rows, ignore_index=True)
    return table.drop(columns=["fraud"]), set(table.loc[table["fraud"], "transaction_id"])


def test_performance_judges_only_the_matured_window() -> None:
    evaluated_on = dt.date(2018, 7, 31)
    scores, frauds = scored_table(evaluated_on, days=20, seed=5)
    report = performance_report(label_scored(scores, frauds), evaluated_on)
    assert (report.window_start, report.window_end) == (dt.date(2018, 7, 18), dt.date(2018, 7, 24))
    window = scores[(scores["day"] >= report.window_start) & (scores["day"] <= report.window_end)]
    labels = window["transaction_id"].isin(frauds).astype(int)
    expected = holdout_metrics(window["customer_id"], window["day"], labels, window[SCORE])
    assert report.metrics == expected and report.rows == len(window) and report.frauds == labels.sum()
    assert report.judged and report.breaches() == [] and report.metrics.roc_auc > 0.9
    assert [d.day for d in report.daily] == sorted({d for d in scores["day"] if d <= report.window_end})
    assert report.model_versions == (2,)
    assert trend_chart(report).startswith(PNG_SIGNATURE)


def test_performance_below_the_floor_is_a_breach_and_too_few_frauds_are_not_judged() -> None:
    evaluated_on = dt.date(2018, 7, 31)
    scores, frauds = scored_table(evaluated_on, days=14, seed=6)
    noise = scores.assign(**{SCORE: np.random.default_rng(7).random(len(scores))})
    report = performance_report(label_scored(noise, frauds), evaluated_on)
    assert report.metrics.average_precision < AP_FLOOR
    assert any("average precision" in b for b in report.breaches()), report.summary()
    few = set(sorted(frauds)[: MIN_JUDGED_FRAUDS // 2])
    sparse = performance_report(label_scored(noise, few), evaluated_on)
    assert not sparse.judged and sparse.breaches() == [] and "not judged" in sparse.summary()
    empty = performance_report(label_scored(noise.head(0), frauds), evaluated_on)
    assert empty.metrics is None and empty.breaches() == [] and "no scored rows" in empty.summary()


# --- the world: simulated drift, a registered champion, scores in a real warehouse ----------------------


def build_world(
    root: Path, tx: pd.DataFrame, window: TrainingWindow, scored_days: list[dt.date]
) -> dict[str, object]:
    """``tx`` in a lake, a champion trained on ``window`` in a real MLflow store, ``scored_days`` scored."""
    from jobs.platform.catalog import publish
    from jobs.registry.aliases import CHAMPION, resolve_alias
    from jobs.registry.client import open_client
    from jobs.registry.promotion import promote
    from jobs.registry.tracking import load_verified_booster, log_training_run
    from jobs.scoring.batch import score_days
    from jobs.training.trainer import assemble_training_set, train_model

    lake = root / "lake"
    write_feature_lake(lake, tx, handbook_features(tx))
    data = assemble_training_set(str(lake), window)
    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    open_client(uri)
    run = log_training_run(
        data, train_model(data, FAST, device="cpu"), tracking_uri=uri, artifact_root=root / "mlflow" / "art"
    )
    promote(run.ref.version, "test setup", "pytest", tracking_uri=uri)
    warehouse = root / "warehouse" / "txguard.duckdb"
    settings = load_settings(home=root, lake_root=str(lake), mlflow_uri=uri, warehouse=warehouse)
    champion = resolve_alias(CHAMPION, tracking_uri=uri)
    booster = load_verified_booster(champion, tracking_uri=uri)
    scored_at = dt.datetime(2018, 6, 16, tzinfo=dt.UTC)
    score_days(
        settings, scored_days, champion, booster, run_id="world", run_created_at=scored_at, explain="none"
    )
    publish(settings)
    return {
        "tx": tx,
        "lake": str(lake),
        "mlflow": uri,
        "warehouse": str(warehouse),
        "champion": champion,
        "booster": booster,
        "window": window,
    }


def first_days(tx: pd.DataFrame, days: int) -> pd.DataFrame:
    """What a deployment holds ``days`` days after START: the transactions and the reports arrived by then."""
    end = pd.Timestamp(START + dt.timedelta(days=days), tz="UTC")
    held = tx[tx["tx_datetime"] < end].copy()
    held["reported_at"] = held["reported_at"].where(held["reported_at"] < end)
    return held


def png_in(markdown: str) -> bytes:
    assert markdown.startswith("![") and "data:image/png;base64," in markdown
    return base64.b64decode(markdown.split("base64,", 1)[1].rstrip(")"))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    window = matured_window(DRIFT_FROM - dt.timedelta(days=1), train_days=14, earliest_day=START)
    scored = [START + dt.timedelta(days=i) for i in range(40, DRIFT_DAYS)]
    return build_world(tmp_path_factory.mktemp("monitoring-world"), drifted_transactions(), window, scored)


@pytest.fixture
def env(world, dagster_instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch) -> dg.DagsterInstance:
    use_world(world, monkeypatch)
    return dagster_instance


def materialize_days(asset, first: dt.date, last: dt.date, instance: dg.DagsterInstance):
    """One run over ``first..last``, as ``txguard run`` and a backfill make it."""
    return materialize(
        [asset], tags=partition_range_tags(first.isoformat(), last.isoformat()), instance=instance
    )


def test_feature_drift_is_quiet_on_every_calm_day_and_errors_when_the_drift_starts(world, env) -> None:
    first, last = CALM_WEEK
    calm = materialize_days(feature_drift, first, last, env)
    assert calm.success
    evaluation = single_check(calm)
    assert evaluation.passed, evaluation.description
    metadata = calm.asset_materializations_for_node("feature_drift")[0].metadata
    days = metadata["psi"].value
    assert [d["day"] for d in days] == [(first + dt.timedelta(days=i)).isoformat() for i in range(7)]
    assert all(d["level"] == "ok" and d["max_psi"] < PSI_WARN for d in days), days
    assert metadata["reference_model_version"].value == world["champion"].version
    assert png_in(metadata["drift_chart"].value).startswith(PNG_SIGNATURE)
    assert_reference_is_the_champions_training_window(world)

    drifted = materialize(
        [feature_drift], partition_key=DRIFT_FROM.isoformat(), instance=env, raise_on_error=True
    )
    evaluation = single_check(drifted)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    psi_by_feature = (
        drifted.asset_materializations_for_node("feature_drift")[0].metadata["psi"].value[0]["psi"]
    )
    assert max(psi_by_feature.values()) >= PSI_ERROR, psi_by_feature
    assert min(psi_by_feature[c] for c in ("tx_amount", "tx_during_night")) >= PSI_WARN, psi_by_feature


def assert_reference_is_the_champions_training_window(world) -> None:
    from jobs.platform import storage
    from jobs.training.trainer import load_feature_rows, predict_scores

    champion, window = world["champion"], world["window"]
    start, end = training_window(champion, world["mlflow"])
    assert (start, end) == (window.train_start, window.validation_end)
    assert start < warm_up_end(START) < end, "the window should start in the warm-up, and leave it"
    cached = storage.read_parquet(reference_uri(world["lake"], champion.name, champion.version)).to_pandas()
    rows = load_feature_rows(world["lake"], warm_up_end(START), end)
    assert tuple(cached.columns) == REFERENCE_COLUMNS and len(cached) == len(rows)
    np.testing.assert_array_equal(cached[SCORE].to_numpy(), predict_scores(world["booster"], rows))


def test_feature_drift_needs_the_day_scored(world, env) -> None:
    unscored = warm_up_end(START) + dt.timedelta(days=1)
    result = materialize([feature_drift], partition_key=unscored.isoformat(), instance=env)
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.to_string()
    assert f"no scores for {unscored}" in message and "transaction_scores" in message


def test_model_performance_measures_what_was_scored_with_matured_labels(world, env) -> None:
    evaluated_on = dt.date(2018, 6, 14)
    result = materialize(
        [model_performance], partition_key=evaluated_on.isoformat(), instance=env, raise_on_error=True
    )
    metadata = result.asset_materializations_for_node("model_performance")[0].metadata
    start, end = judged_window(evaluated_on)
    assert metadata["judged_window"].value == f"{start}..{end}"
    tx = world["tx"]
    days = tx["tx_datetime"].dt.date
    window = tx[(days >= start) & (days <= end)]
    cutoff = pd.Timestamp(dt.datetime.combine(evaluated_on, dt.time.max), tz="UTC")
    labels = (window["fraud"] & (window["reported_at"] <= cutoff)).astype(int)
    from jobs.scoring.store import read_scores

    scores = read_scores(load_settings().snapshot_path, start, end).set_index("transaction_id")["score"]
    expected = holdout_metrics(
        window["customer_id"], days[window.index], labels, scores.loc[window["transaction_id"]].to_numpy()
    )
    assert metadata["average_precision"].value == pytest.approx(expected.average_precision, abs=1e-12)
    assert metadata["roc_auc"].value == pytest.approx(expected.roc_auc, abs=1e-12)
    assert metadata["card_precision_at_100"].value == pytest.approx(expected.card_precision_at_100, abs=1e-12)
    assert metadata["frauds"].value == labels.sum() > 0
    assert png_in(metadata["trend_chart"].value).startswith(PNG_SIGNATURE)
    evaluation = single_check(result)
    report = measure_performance(load_settings(), evaluated_on)
    assert evaluation.passed == (report.breaches() == []) and evaluation.description == report.summary()


def test_model_performance_skips_while_report_days_are_missing_and_names_them(world, env) -> None:
    from jobs.training.maturity import newest_report_day

    assert newest_report_day(world["lake"]) == dt.date(2018, 6, 14)
    evaluated_on = dt.date(2018, 6, 16)
    result = materialize(
        [model_performance], partition_key=evaluated_on.isoformat(), instance=env, raise_on_error=True
    )
    evaluation = single_check(result)
    assert evaluation.passed
    assert evaluation.description.startswith("skipped: model_performance on 2018-06-16: the labels of ")
    assert "missing report days: 2018-06-15..2018-06-16 (2 days)" in evaluation.description
    metadata = result.asset_materializations_for_node("model_performance")[0].metadata
    assert metadata["missing_report_days"].value == "2018-06-15, 2018-06-16"
    assert not {"average_precision", "roc_auc", "frauds"} & set(metadata)


# --- warm-up: a fresh deployment's first month ---------------------------------------------------------

SHORT_DAYS = 30


@pytest.fixture(scope="module")
def short_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The first 30 days, a champion trained on them as ``fraud_model`` would be, and every day scored."""
    tx = first_days(drifted_transactions(), SHORT_DAYS)
    last = START + dt.timedelta(days=SHORT_DAYS - 1)
    window = matured_window(last, earliest_day=START)
    scored = [START + dt.timedelta(days=i) for i in range(SHORT_DAYS)]
    return build_world(tmp_path_factory.mktemp("short-world"), tx, window, scored)


def test_a_clean_short_history_is_warm_up_and_fails_no_monitor(short_world, dagster_instance, monkeypatch):
    from jobs.training.trainer import load_feature_rows, predict_scores

    use_world(short_world, monkeypatch)
    last = START + dt.timedelta(days=SHORT_DAYS - 1)
    for asset, until in ((feature_drift, "2018-05-08"), (model_performance, "2018-05-21")):
        result = materialize_days(asset, START, last, dagster_instance)
        assert result.success
        evaluation = single_check(result)
        assert evaluation.passed, evaluation.description
        assert evaluation.description.startswith(
            f"skipped: warm-up until {until}: the lake starts on 2018-04-01"
        )
        (judged,) = [
            m for m in result.asset_materializations_for_node(asset.key.path[-1]) if m.partition == str(last)
        ]
        assert judged.metadata["warm_up_until"].value == until

    champion, window = short_world["champion"], short_world["window"]
    reference = build_reference(
        short_world["lake"], champion, short_world["booster"], window.train_start, window.validation_end
    )
    today = load_feature_rows(short_world["lake"], last, last)
    today[SCORE] = predict_scores(short_world["booster"], today)
    judged = drift_report(reference, today, last, champion.version)
    assert judged.level == "error", "judged on warm-up features, this calm day would read as drift"
