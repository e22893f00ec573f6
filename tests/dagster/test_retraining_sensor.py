"""The retraining sensor: quiet through the calm week before the simulator's drift, then the drift makes
``feature_drift`` error, and the sensor requests the retraining job once, and not again within the cooldown.

The world is the simulator with its drift option, handbook features in a lake, a LightGBM model trained on
the days before the drift, its scores in a real DuckDB warehouse and its reference sample in the lake's
reference cache (built from the registry is covered by tests/monitoring/test_monitors.py); Dagster runs on a
temporary instance.
"""

from __future__ import annotations

import datetime as dt
import json
import time

import dagster as dg
import pyarrow as pa
import pytest

from jobs.monitoring.monitors import RetrainingTrigger, decide_retraining
from orchestration.defs.monitoring import (
    DRIFT_CHECK,
    PERFORMANCE_CHECK,
    RetrainingPolicy,
    feature_drift,
    retraining_sensor,
)
from orchestration.defs.training import fraud_model, model_promotion, weekly_retraining_job
from orchestration.runs import partition_range_tags
from tests.support import (
    CALM_WEEK,
    DRIFT_FROM,
    drifted_transactions,
    handbook_features,
    materialize,
    single_check,
    small_booster,
    use_world,
    write_feature_lake,
)

DAY_S = 86_400.0


def trigger(record_id: int) -> RetrainingTrigger:
    return RetrainingTrigger("feature_drift:drift_psi", record_id, "worst PSI 0.4 (tx_amount) is error")


def test_a_new_failing_check_requests_once_then_waits_for_the_cooldown() -> None:
    first = decide_retraining({}, [trigger(5)], now=1000.0, cooldown_s=DAY_S)
    assert first.request and first.state == {"requested_at": 1000.0, "trigger_id": 5}
    again = decide_retraining(first.state, [trigger(5)], now=1000.0 + 2 * DAY_S, cooldown_s=DAY_S)
    assert not again.request and "no new failing" in again.reason and again.state == first.state
    newer = decide_retraining(first.state, [trigger(9)], now=1000.0 + DAY_S / 2, cooldown_s=DAY_S)
    assert not newer.request and "cooldown" in newer.reason and newer.state == first.state
    later = decide_retraining(first.state, [trigger(9)], now=1000.0 + DAY_S, cooldown_s=DAY_S)
    assert later.request and later.state["trigger_id"] == 9
    assert not decide_retraining({}, [], now=0.0, cooldown_s=DAY_S).request


def test_the_cooldown_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TXGUARD_RETRAINING_COOLDOWN_HOURS", raising=False)
    assert RetrainingPolicy().cooldown_seconds() == 24 * 3600
    monkeypatch.setenv("TXGUARD_RETRAINING_COOLDOWN_HOURS", "0.5")
    assert RetrainingPolicy().cooldown_seconds() == 1800
    assert RetrainingPolicy(cooldown_hours=2).cooldown_seconds() == 7200
    monkeypatch.setenv("TXGUARD_RETRAINING_COOLDOWN_HOURS", "soon")
    with pytest.raises(ValueError, match="TXGUARD_RETRAINING_COOLDOWN_HOURS='soon'"):
        RetrainingPolicy().cooldown_seconds()


def test_the_sensor_requests_the_training_and_promotion_job() -> None:
    assert retraining_sensor.job_name == weekly_retraining_job.name
    from orchestration.resources import TxguardSettings

    defs = dg.Definitions(
        assets=[fraud_model, model_promotion],
        jobs=[weekly_retraining_job],
        resources={"settings": TxguardSettings()},
    )
    job = defs.resolve_job_def(weekly_retraining_job.name)
    assert job.asset_layer.selected_asset_keys == {dg.AssetKey("fraud_model"), dg.AssetKey("model_promotion")}


# --- with the simulator's drift ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from jobs.features.definitions import FEATURE_SET_VERSION
    from jobs.monitoring.monitors import build_reference, reference_uri
    from jobs.platform import storage
    from jobs.platform.catalog import publish
    from jobs.platform.settings import load_settings
    from jobs.registry.aliases import ModelRef
    from jobs.registry.client import MODEL_NAME
    from jobs.scoring.batch import score_days

    root = tmp_path_factory.mktemp("retraining-world")
    tx = drifted_transactions()
    features = handbook_features(tx)
    lake = root / "lake"
    write_feature_lake(lake, tx, features)
    start, end = DRIFT_FROM - dt.timedelta(days=28), DRIFT_FROM - dt.timedelta(days=8)
    days = features["tx_datetime"].dt.date
    train = features[(days >= start) & (days <= end)]
    label = tx.set_index("transaction_id").loc[train["transaction_id"], "fraud"].to_numpy()
    booster = small_booster(train, label, rounds=30)
    model = ModelRef(MODEL_NAME, 1, "run", "0" * 64, 0.5, FEATURE_SET_VERSION, "file:///unused")
    reference = build_reference(str(lake), model, booster, start, end)
    storage.write_parquet_atomic(pa.Table.from_pandas(reference), reference_uri(str(lake), MODEL_NAME, 1))
    warehouse = root / "warehouse" / "txguard.duckdb"
    settings = load_settings(home=root, lake_root=str(lake), warehouse=warehouse)
    first_calm = CALM_WEEK[0]
    scored = [first_calm + dt.timedelta(days=i) for i in range((DRIFT_FROM - first_calm).days + 1)]
    now = dt.datetime.now(dt.UTC)
    score_days(settings, scored, model, booster, run_id="world", run_created_at=now, explain="none")
    publish(settings)
    return {"lake": str(lake), "warehouse": str(warehouse)}


@pytest.fixture
def instance(
    world, dagster_instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> dg.DagsterInstance:
    use_world(world, monkeypatch)
    return dagster_instance


def measure_drift_on(day: dt.date, instance: dg.DagsterInstance) -> dg.AssetCheckEvaluation:
    result = materialize(
        [feature_drift], partition_key=day.isoformat(), instance=instance, raise_on_error=True
    )
    return single_check(result)


def measure_calm_week(instance: dg.DagsterInstance) -> dg.AssetCheckEvaluation:
    """The seven calm days in one run; every one of them must be quiet, not only the last that is checked."""
    first, last = (day.isoformat() for day in CALM_WEEK)
    result = materialize(
        [feature_drift], tags=partition_range_tags(first, last), instance=instance, raise_on_error=True
    )
    days = result.asset_materializations_for_node("feature_drift")[0].metadata["psi"].value
    assert len(days) == 7 and all(d["level"] == "ok" for d in days), days
    return single_check(result)


def tick(instance: dg.DagsterInstance, cursor: str | None, cooldown_hours: float = 24):
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"retraining_policy": RetrainingPolicy(cooldown_hours=cooldown_hours)},
    )
    return retraining_sensor(context)


@pytest.mark.slow
def test_simulated_drift_requests_retraining_once_per_cooldown(instance) -> None:
    calm = measure_calm_week(instance)
    assert calm.passed, calm.description
    quiet = tick(instance, None)
    assert isinstance(quiet, dg.SkipReason) and "no new failing" in quiet.skip_message

    drifted = measure_drift_on(DRIFT_FROM, instance)
    assert not drifted.passed and drifted.severity == dg.AssetCheckSeverity.ERROR
    fired = tick(instance, None)
    assert isinstance(fired, dg.SensorResult), fired
    (request,) = fired.run_requests
    assert request.tags["txguard/trigger"] == "retraining_sensor"
    assert "feature_drift:drift_psi" in request.tags["txguard/retraining_reason"]
    state = json.loads(fired.cursor)
    assert abs(state["requested_at"] - time.time()) < 60

    same = tick(instance, fired.cursor)
    assert isinstance(same, dg.SkipReason) and "no new failing" in same.skip_message
    measure_drift_on(DRIFT_FROM, instance)
    cooling = tick(instance, fired.cursor)
    assert isinstance(cooling, dg.SkipReason) and "cooldown" in cooling.skip_message
    after = tick(instance, fired.cursor, cooldown_hours=0)
    assert isinstance(after, dg.SensorResult)
    assert after.run_requests[0].run_key != request.run_key


def report_evaluation(instance: dg.DagsterInstance, key: dg.AssetCheckKey, passed: bool, severity) -> None:
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(
            asset_key=key.asset_key, check_name=key.name, passed=passed, severity=severity, description="test"
        )
    )


def test_a_performance_drop_requests_retraining_and_drift_warnings_do_not(instance) -> None:
    report_evaluation(instance, DRIFT_CHECK, False, dg.AssetCheckSeverity.WARN)
    warned = tick(instance, None)
    assert isinstance(warned, dg.SkipReason), warned
    report_evaluation(instance, PERFORMANCE_CHECK, False, dg.AssetCheckSeverity.ERROR)
    fired = tick(instance, None)
    assert isinstance(fired, dg.SensorResult)
    assert "model_performance:performance_floor" in fired.run_requests[0].tags["txguard/retraining_reason"]
    report_evaluation(instance, PERFORMANCE_CHECK, True, dg.AssetCheckSeverity.ERROR)
    assert isinstance(tick(instance, None, cooldown_hours=0), dg.SkipReason)
