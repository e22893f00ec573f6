"""Monitoring: PSI on known values, matured performance on a small scored table, then both assets for real.

The asset tests use a world built once per module (``build_world``, also used by the retraining-sensor
tests): the simulator with its drift option, handbook features written to a lake, a LightGBM champion
registered in a real MLflow SQLite store on the days before the drift, and every later day scored into a real
DuckDB warehouse with its analysts' snapshot.
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

from jobs.monitoring.monitors import (
    AP_FLOOR,
    DRIFT_FEATURES,
    MIN_JUDGED_FRAUDS,
    PSI_ERROR,
    PSI_WARN,
    SCORE,
    DriftReport,
    MonitoringError,
    bin_shares,
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
from jobs.training.metrics import holdout_metrics

START = dt.date(2018, 4, 1)
DRIFT_FROM = dt.date(2018, 6, 5)
SIM_DAYS = 75
CALM_DAY = DRIFT_FROM - dt.timedelta(days=1)
"""A day before the drift whose fraud volume is typical: in this small world (1,000 terminals) a day when a
compromised terminal's reported frauds light up many transactions moves the score distribution by PSI 0.3."""
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


def synthetic_features(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({c: rng.gamma(2.0, 10.0, n) for c in DRIFT_FEATURES})
    frame["tx_during_night"] = (rng.random(n) < 0.1).astype(float)
    frame[SCORE] = rng.beta(0.5, 20, n)
    return frame


def test_drift_report_names_the_drifted_feature() -> None:
    reference = synthetic_features(20_000, seed=3)
    today = synthetic_features(3_000, seed=4)
    stable = drift_report(reference, today, dt.date(2018, 6, 1), model_version=2)
    assert stable.level == "ok" and set(stable.psi) == {*DRIFT_FEATURES, SCORE}
    assert "tx_during_weekend" not in stable.psi
    drifted = drift_report(
        reference, today.assign(tx_amount=today["tx_amount"] * 1.5), dt.date(2018, 6, 1), 2
    )
    assert drifted.worst[0] == "tx_amount" and drifted.level == "error"
    assert {k: v for k, v in drifted.psi.items() if k != "tx_amount"} == {
        k: v for k, v in stable.psi.items() if k != "tx_amount"
    }
    with pytest.raises(MonitoringError, match="missing column"):
        drift_report(reference, today.drop(columns=[SCORE]), dt.date(2018, 6, 1), 2)


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


def simulated_transactions() -> pd.DataFrame:
    """The simulator's drift option, in the frame shape the training tests' helpers take."""
    from jobs.simulation.simulator import SimulationConfig, simulate

    data = simulate(
        SimulationConfig(
            customers=500, terminals=1000, days=SIM_DAYS, start=START, seed=3, drift_from=DRIFT_FROM
        )
    )
    tx = data.transactions.to_pandas()
    reports = data.fraud_reports.to_pandas().set_index("transaction_id")["reported_at"]
    tx["fraud"] = tx.pop("tx_fraud")
    tx["reported_at"] = tx["transaction_id"].map(reports)
    return tx


def build_world(root: Path) -> dict[str, object]:
    from jobs.platform.warehouse import publish_snapshot
    from jobs.registry.registry import CHAMPION, log_training_run, open_client, promote
    from jobs.scoring.batch import score_days
    from jobs.training.trainer import assemble_training_set, matured_window, train_model
    from tests.training.test_trainer import FAST, handbook_features, write_lake

    tx = simulated_transactions()
    lake = root / "lake"
    write_lake(lake, tx, handbook_features(tx))
    window = matured_window(DRIFT_FROM - dt.timedelta(days=1), train_days=14, earliest_day=START)
    data = assemble_training_set(str(lake), window)
    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    open_client(uri)
    run = log_training_run(
        data, train_model(data, FAST, device="cpu"), tracking_uri=uri, artifact_root=root / "mlflow" / "art"
    )
    promote(run.ref.version, "test setup", "pytest", tracking_uri=uri)
    warehouse = root / "warehouse" / "txguard.duckdb"
    settings = load_settings(home=root, lake_root=str(lake), mlflow_uri=uri, warehouse=warehouse)
    scored_days = [START + dt.timedelta(days=i) for i in range(40, SIM_DAYS)]
    from jobs.registry.registry import load_verified_booster, resolve_alias

    champion = resolve_alias(CHAMPION, tracking_uri=uri)
    booster = load_verified_booster(champion, tracking_uri=uri)
    scored_at = dt.datetime(2018, 6, 16, tzinfo=dt.UTC)
    score_days(settings, scored_days, champion, booster, run_id="world", scored_at=scored_at, explain="none")
    publish_snapshot(settings.warehouse_path, settings.snapshot_path)
    return {
        "tx": tx,
        "lake": str(lake),
        "mlflow": uri,
        "warehouse": str(warehouse),
        "champion": champion,
        "booster": booster,
        "window": window,
    }


def use_world(world: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXGUARD_LAKE_ROOT", str(world["lake"]))
    monkeypatch.setenv("TXGUARD_MLFLOW_URI", str(world["mlflow"]))
    monkeypatch.setenv("TXGUARD_WAREHOUSE", str(world["warehouse"]))


def monitoring_defs() -> dg.Definitions:
    from orchestration.defs import monitoring
    from orchestration.resources import TxguardSettings

    return dg.Definitions.merge(monitoring.defs, dg.Definitions(resources={"settings": TxguardSettings()}))


def materialize(
    asset: str, day: dt.date, instance: dg.DagsterInstance, raise_on_error: bool = True
) -> dg.ExecuteInProcessResult:
    from orchestration.defs import monitoring
    from orchestration.resources import TxguardSettings

    return dg.materialize(
        [getattr(monitoring, asset)],
        partition_key=day.isoformat(),
        instance=instance,
        resources={"settings": TxguardSettings()},
        raise_on_error=raise_on_error,
    )


def png_in(markdown: str) -> bytes:
    assert markdown.startswith("![") and "data:image/png;base64," in markdown
    return base64.b64decode(markdown.split("base64,", 1)[1].rstrip(")"))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return build_world(tmp_path_factory.mktemp("monitoring-world"))


@pytest.fixture
def env(world, txguard_home, monkeypatch: pytest.MonkeyPatch) -> dg.DagsterInstance:
    use_world(world, monkeypatch)
    with dg.instance_for_test(temp_dir=str(txguard_home / "dagster")) as instance:
        yield instance


def check_result(result: dg.ExecuteInProcessResult):
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def test_feature_drift_is_quiet_before_the_simulated_drift_and_errors_after(world, env) -> None:
    calm = materialize("feature_drift", CALM_DAY, env)
    evaluation = check_result(calm)
    assert evaluation.passed, evaluation.description
    metadata = calm.asset_materializations_for_node("feature_drift")[0].metadata
    assert metadata["reference_model_version"].value == world["champion"].version
    assert png_in(metadata["drift_chart"].value).startswith(PNG_SIGNATURE)
    assert metadata["max_psi"].value < PSI_WARN
    assert_reference_is_the_champions_training_window(world)

    drifted = materialize("feature_drift", DRIFT_FROM + dt.timedelta(days=1), env)
    evaluation = check_result(drifted)
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
    cached = storage.read_parquet(reference_uri(world["lake"], champion.name, champion.version)).to_pandas()
    rows = load_feature_rows(world["lake"], start, end)
    assert list(cached.columns) == [*DRIFT_FEATURES, SCORE] and len(cached) == len(rows)
    np.testing.assert_array_equal(cached[SCORE].to_numpy(), predict_scores(world["booster"], rows))


def test_feature_drift_needs_the_day_scored(world, env) -> None:
    result = materialize("feature_drift", START + dt.timedelta(days=10), env, raise_on_error=False)
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.to_string()
    assert "no scores for 2018-04-11" in message and "transaction_scores" in message


def test_model_performance_measures_what_was_scored_with_matured_labels(world, env) -> None:
    evaluated_on = dt.date(2018, 6, 14)
    result = materialize("model_performance", evaluated_on, env)
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
    evaluation = check_result(result)
    report = measure_performance(load_settings(), evaluated_on)
    assert evaluation.passed == (report.breaches() == []) and evaluation.description == report.summary()
