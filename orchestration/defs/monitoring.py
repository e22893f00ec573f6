"""Monitoring: drift and matured performance of the scoring model, retraining on demand, and alerts.

``feature_drift`` and ``model_performance`` are thin over ``jobs.monitoring.monitors`` (thresholds, floors and
why are documented there); each carries one check. ``retraining_sensor`` requests the retraining job when the
latest drift check fails at error level or the performance check fails, at most once per cooldown.
``alert_on_run_failure`` and ``alert_on_failed_checks`` turn failed runs and failing checks into alerts
(``jobs.monitoring.alerts``: a warehouse record, and a webhook POST when one is configured).

The webhook URL is a secret. ``AlertWebhook`` is registered with no value, so the code location loads when
``TXGUARD_ALERT_WEBHOOK_URL`` is unset (a resource field bound to ``dg.EnvVar`` fails at start-up when the
variable is missing) and takes it from the settings (a secret there too) only when an alert is sent. Its
value therefore never enters a run's config, a tag or the event log; only its host appears in logs. A
deployment that always sets it may bind ``AlertWebhook(webhook_url=dg.EnvVar(WEBHOOK_ENV))`` instead: Dagster
then stores the variable's name, not its value.
"""

import base64
import json
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from jobs.monitoring.alerts import WEBHOOK_ENV, WEBHOOK_TIMEOUT_S, Alert
from jobs.monitoring.monitors import (
    AP_FLOOR,
    AUC_FLOOR,
    LABEL_DELAY_DAYS,
    MIN_JUDGED_FRAUDS,
    PERFORMANCE_WINDOW_DAYS,
    PSI_ERROR,
    PSI_WARN,
    RetrainingTrigger,
    decide_retraining,
)
from jobs.platform.layout import parse_day
from jobs.platform.settings import Settings, load_settings, variable
from orchestration.defs.conventions import FRAUD_ML, source_version
from orchestration.defs.training import weekly_retraining_job
from orchestration.partitions import (
    WAREHOUSE_POOL,
    daily_partitions,
    on_upstream_update,
    sensor_interval,
    single_run_backfill,
    with_its_asset,
)
from orchestration.resources import TxguardSettings
from orchestration.runs import partition_range_of

if TYPE_CHECKING:
    from jobs.monitoring.monitors import DriftReport, PerformanceReport, Skipped

DRIFT_CHECK = dg.AssetCheckKey(dg.AssetKey("feature_drift"), "drift_psi")
PERFORMANCE_CHECK = dg.AssetCheckKey(dg.AssetKey("model_performance"), "performance_floor")
COOLDOWN_ENV = variable("retraining_cooldown_hours")
DEFAULT_COOLDOWN_HOURS = Settings.model_fields["retraining_cooldown_hours"].default
TRIGGER_TAG = "txguard/trigger"
CODE_VERSION = source_version("jobs.monitoring.monitors")


class AlertWebhook(dg.ConfigurableResource):
    """Where alerts are POSTed; empty means ``TXGUARD_ALERT_WEBHOOK_URL``, read when an alert is sent."""

    webhook_url: str | None = Field(default=None, description=f"webhook URL (secret); default ${WEBHOOK_ENV}")
    timeout_seconds: float = Field(default=WEBHOOK_TIMEOUT_S, description="HTTP timeout of one POST")

    def url(self, settings: Settings) -> str | None:
        return self.webhook_url or settings.alert_webhook()


class RetrainingPolicy(dg.ConfigurableResource):
    """How often drift or a performance drop may request retraining."""

    cooldown_hours: float | None = Field(
        default=None,
        description=f"hours between two requests; default ${COOLDOWN_ENV} or {DEFAULT_COOLDOWN_HOURS:g}",
    )

    def cooldown_seconds(self) -> float:
        """This resource's cooldown, else the sensor process's setting (a ``SettingsError`` if invalid)."""
        hours = self.cooldown_hours
        return (load_settings().retraining_cooldown_hours if hours is None else hours) * 3600


def png_markdown(title: str, png: bytes) -> dg.MetadataValue:
    """A chart the UI shows inline: markdown with the PNG as a data URI."""
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})")


def skipped_check(key: dg.AssetCheckKey, skipped: "Skipped") -> dg.AssetCheckResult:
    """A monitor that did not judge its day passes, saying why (warm-up, labels not mature)."""
    return dg.AssetCheckResult(
        check_name=key.name,
        passed=True,
        severity=dg.AssetCheckSeverity.WARN,
        description=skipped.description,
        metadata=skipped.as_dict(),
    )


def drift_check(report: "DriftReport") -> dg.AssetCheckResult:
    name, value = report.worst
    level = report.level
    return dg.AssetCheckResult(
        check_name=DRIFT_CHECK.name,
        passed=level == "ok",
        severity=dg.AssetCheckSeverity.WARN if level == "warn" else dg.AssetCheckSeverity.ERROR,
        description=f"{report.day}: worst PSI {value:.3f} ({name}) is {level} "
        f"(warn ≥ {PSI_WARN}, error ≥ {PSI_ERROR})",
        metadata={"day": report.day.isoformat(), "max_psi": value, "feature": name, "level": level},
    )


@dg.asset(
    group_name="monitoring",
    partitions_def=daily_partitions,
    backfill_policy=single_run_backfill,
    pool=WAREHOUSE_POOL,
    deps=[dg.AssetKey("transaction_features"), dg.AssetKey("transaction_scores")],
    kinds={"python"},
    owners=[FRAUD_ML],
    code_version=CODE_VERSION,
    description="Each day's PSI of every feature and of the score against the scoring model's training days.",
    automation_condition=on_upstream_update(),
    check_specs=[
        dg.AssetCheckSpec(
            DRIFT_CHECK.name,
            asset="feature_drift",
            automation_condition=with_its_asset("feature_drift"),
            description=f"PSI of the features and of the comparable scores on the run's last day: warn ≥ "
            f"{PSI_WARN}, error ≥ {PSI_ERROR} (an error requests retraining); passes, saying so, on a day of "
            "the warm-up",
        )
    ],
)
def feature_drift(context: dg.AssetExecutionContext, settings: TxguardSettings) -> dg.MaterializeResult:
    """PSI per feature and for the score, each day against the training reference of its scoring model;
    days of the warm-up are skipped."""
    from jobs.governance.audit import monitoring_results, record_monitoring
    from jobs.monitoring.monitors import DriftReport, drift_chart, measure_drift

    loaded = settings.load()
    results = measure_drift(loaded, [parse_day(key) for key in context.partition_keys])
    entries = monitoring_results("feature_drift", DRIFT_CHECK.name, results, context.run_id)
    record_monitoring(loaded, entries, context.run_id)
    reports = [r for r in results if isinstance(r, DriftReport)]
    metadata: dict[str, object] = {"psi": dg.MetadataValue.json([r.as_dict() for r in results])}
    if reports:
        metadata["drift_chart"] = png_markdown("feature drift", drift_chart(reports))
    for result in results:
        context.add_asset_metadata(drift_day_metadata(result), partition_key=result.day.isoformat())
    last = results[-1]
    if not isinstance(last, DriftReport):
        context.log.info(last.description)
        return dg.MaterializeResult(metadata=metadata, check_results=[skipped_check(DRIFT_CHECK, last)])
    context.log.info(f"{last.day}: worst PSI {last.worst[1]:.3f} ({last.worst[0]}), {last.level}")
    return dg.MaterializeResult(metadata=metadata, check_results=[drift_check(last)])


def drift_day_metadata(result: "DriftReport | Skipped") -> dict[str, object]:
    """One day's own verdict on that day's materialization, so the UI plots one PSI point per day; the
    run's ``psi`` list and chart cover every day of the run."""
    from jobs.monitoring.monitors import DriftReport

    if not isinstance(result, DriftReport):
        return result.as_dict()
    name, value = result.worst
    return {
        "max_psi": value,
        "worst_feature": name,
        "level": result.level,
        "rows": result.rows,
        "reference_model_version": result.model_version,
    }


def performance_check(report: "PerformanceReport") -> dg.AssetCheckResult:
    metrics = report.metrics.as_dict() if report.metrics else {}
    return dg.AssetCheckResult(
        check_name=PERFORMANCE_CHECK.name,
        passed=not report.breaches(),
        severity=dg.AssetCheckSeverity.ERROR,
        description=report.summary(),
        metadata={"judged": report.judged, "frauds": report.frauds, **metrics},
    )


_MATURED_SCORES = dg.TimeWindowPartitionMapping(
    start_offset=-(LABEL_DELAY_DAYS + PERFORMANCE_WINDOW_DAYS - 1),
    end_offset=-LABEL_DELAY_DAYS,
    allow_nonexistent_upstream_partitions=True,
)
_LABELS = dg.TimeWindowPartitionMapping(
    start_offset=-(LABEL_DELAY_DAYS + PERFORMANCE_WINDOW_DAYS - 1),
    end_offset=0,
    allow_nonexistent_upstream_partitions=True,
)


@dg.asset(
    group_name="monitoring",
    partitions_def=daily_partitions,
    backfill_policy=single_run_backfill,
    pool=WAREHOUSE_POOL,
    deps=[
        dg.AssetDep("transaction_scores", partition_mapping=_MATURED_SCORES),
        dg.AssetDep("raw_fraud_reports", partition_mapping=_LABELS),
    ],
    kinds={"python"},
    owners=[FRAUD_ML],
    code_version=CODE_VERSION,
    description="ROC AUC, AP and CP@100 of the scores whose fraud labels have matured by the partition day.",
    automation_condition=on_upstream_update(),
    check_specs=[
        dg.AssetCheckSpec(
            PERFORMANCE_CHECK.name,
            asset="model_performance",
            automation_condition=with_its_asset("model_performance"),
            description=f"judged window (the {PERFORMANCE_WINDOW_DAYS} scored days ending {LABEL_DELAY_DAYS} "
            f"days back): ROC AUC ≥ {AUC_FLOOR} and AP ≥ {AP_FLOOR}; not judged under {MIN_JUDGED_FRAUDS} "
            "frauds; passes, saying so, during the warm-up and while a report day that labels it is missing",
        )
    ],
)
def model_performance(context: dg.AssetExecutionContext, settings: TxguardSettings) -> dg.MaterializeResult:
    """AUC, AP and CP@100 of what was scored, on the days whose labels have matured by the partition day;
    skipped during the warm-up and while a report day that labels them is missing.

    A range run judges its last day only (the newest labels judge the newest window); that day's
    materialization carries the numbers, the earlier days' say which day was judged (``judged_on``) rather
    than repeat numbers that are not theirs."""
    from jobs.governance.audit import monitoring_results, record_monitoring
    from jobs.monitoring.monitors import Skipped, measure_performance, trend_chart

    loaded = settings.load()
    last_key = context.partition_keys[-1]
    report = measure_performance(loaded, parse_day(last_key))
    entries = monitoring_results("model_performance", PERFORMANCE_CHECK.name, [report], context.run_id)
    record_monitoring(loaded, entries, context.run_id)
    for key in context.partition_keys[:-1]:
        context.add_asset_metadata({"judged_on": last_key}, partition_key=key)
    if isinstance(report, Skipped):
        context.log.info(report.description)
        context.add_asset_metadata(report.as_dict(), partition_key=last_key)
        return dg.MaterializeResult(check_results=[skipped_check(PERFORMANCE_CHECK, report)])
    context.log.info(report.summary())
    context.add_asset_metadata(
        {
            "judged_on": last_key,
            "judged_window": f"{report.window_start}..{report.window_end}",
            "rows": report.rows,
            "frauds": report.frauds,
            "model_versions": dg.MetadataValue.json(list(report.model_versions)),
            **({k: float(v) for k, v in report.metrics.as_dict().items()} if report.metrics else {}),
            "daily": dg.MetadataValue.json([d.as_dict() for d in report.daily]),
            "trend_chart": png_markdown("performance trend", trend_chart(report)),
        },
        partition_key=last_key,
    )
    return dg.MaterializeResult(check_results=[performance_check(report)])


# --- retraining ----------------------------------------------------------------------------------------


def retraining_triggers(instance: dg.DagsterInstance) -> list[RetrainingTrigger]:
    """The latest drift evaluation if it failed at error level, the latest performance one if it failed."""
    found = []
    for key in (DRIFT_CHECK, PERFORMANCE_CHECK):
        record = instance.get_latest_asset_check_evaluation_record(key)
        evaluation = record.evaluation if record else None
        if record is None or not isinstance(evaluation, dg.AssetCheckEvaluation) or evaluation.passed:
            continue
        if key == DRIFT_CHECK and evaluation.severity != dg.AssetCheckSeverity.ERROR:
            continue
        found.append(RetrainingTrigger(key.to_user_string(), record.id, evaluation.description or "failed"))
    return found


@dg.sensor(
    name="retraining_sensor",
    job=weekly_retraining_job,
    minimum_interval_seconds=sensor_interval(60),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Drift at error level or performance below the floor requests retraining (training, then "
    f"the promotion gate), at most once per cooldown (default {DEFAULT_COOLDOWN_HOURS:g} h, ${COOLDOWN_ENV})",
)
def retraining_sensor(context: dg.SensorEvaluationContext, retraining_policy: RetrainingPolicy):
    state = json.loads(context.cursor) if context.cursor else {}
    decision = decide_retraining(
        state, retraining_triggers(context.instance), time.time(), retraining_policy.cooldown_seconds()
    )
    if not decision.request:
        return dg.SkipReason(decision.reason)
    context.log.info(f"requesting retraining: {decision.reason}")
    request = dg.RunRequest(
        run_key=f"retraining-{decision.state['trigger_id']}",
        tags={TRIGGER_TAG: "retraining_sensor", "txguard/retraining_reason": decision.reason[:250]},
    )
    return dg.SensorResult(run_requests=[request], cursor=json.dumps(decision.state))


# --- alerting ------------------------------------------------------------------------------------------


def _run_details(run: dg.DagsterRun) -> dict[str, str]:
    covered = partition_range_of(run.tags)
    if covered is None:
        partitions = ""
    else:
        first, last = covered
        partitions = first if first == last else f"{first}..{last}"
    return {"run_id": run.run_id, "job": run.job_name, "partitions": partitions}


def failed_check_alerts(instance: dg.DagsterInstance, run: dg.DagsterRun) -> Iterator[Alert]:
    """One alert per failing check evaluation of the run (warning or error, as the check's severity)."""
    for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = entry.dagster_event.event_specific_data if entry.dagster_event else None
        if evaluation is None or evaluation.passed:
            continue
        key = evaluation.asset_check_key.to_user_string()
        warn = evaluation.severity == dg.AssetCheckSeverity.WARN
        yield Alert(
            alert_id=f"check:{run.run_id}:{key}",
            kind="check_failure",
            severity="warning" if warn else "error",
            title=f"check {key} failed ({evaluation.severity.value})",
            details={**_run_details(run), "check": key, "description": (evaluation.description or "")[:2000]},
            source=run.run_id,
        )


def _root_cause(error) -> str:
    """The user's exception message, not Dagster's "error occurred while executing op" wrapper."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip()[:500]


def run_failure_alert(instance: dg.DagsterInstance, run: dg.DagsterRun) -> Alert:
    failures = [
        f"{entry.step_key}: {_root_cause(entry.dagster_event.step_failure_data.error)}"
        for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        if entry.dagster_event and entry.dagster_event.step_failure_data.error
    ]
    return Alert(
        alert_id=f"run:{run.run_id}",
        kind="run_failure",
        severity="error",
        title=f"run of {run.job_name} failed",
        details={**_run_details(run), "failed_steps": failures},
        source=run.run_id,
    )


def deliver(
    context: dg.RunStatusSensorContext,
    settings: TxguardSettings,
    alerting: AlertWebhook,
    alerts: Sequence[Alert],
) -> None:
    from jobs.monitoring.alerts import raise_alert

    loaded = settings.load()
    for alert in alerts:
        delivery = raise_alert(loaded.warehouse_path, alert, alerting.url(loaded), alerting.timeout_seconds)
        context.log.info(
            f"alert {alert.alert_id} ({alert.title}): {delivery.recorded}; webhook {delivery.webhook}"
        )


@dg.run_failure_sensor(
    name="alert_on_run_failure",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every failed run, and the checks that failed in it, becomes an alert",
)
def alert_on_run_failure(
    context: dg.RunFailureSensorContext, settings: TxguardSettings, alerting: AlertWebhook
) -> None:
    run = context.dagster_run
    deliver(
        context,
        settings,
        alerting,
        [run_failure_alert(context.instance, run), *failed_check_alerts(context.instance, run)],
    )


@dg.run_status_sensor(
    name="alert_on_failed_checks",
    run_status=dg.DagsterRunStatus.SUCCESS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="A run that succeeded with failing (non-blocking or warning) checks: one alert per check",
)
def alert_on_failed_checks(
    context: dg.RunStatusSensorContext, settings: TxguardSettings, alerting: AlertWebhook
) -> None:
    deliver(context, settings, alerting, list(failed_check_alerts(context.instance, context.dagster_run)))


defs = dg.Definitions(
    assets=[feature_drift, model_performance],
    sensors=[retraining_sensor, alert_on_run_failure, alert_on_failed_checks],
    resources={"alerting": AlertWebhook(), "retraining_policy": RetrainingPolicy()},
)
