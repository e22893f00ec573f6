"""Dagster definitions for the scoring domain: ``transaction_scores``, its job and its daily schedule.

The asset pins ``@champion`` to one version per run (a run tag records it, so a step retry or a
re-execution of the run scores with the same version even if the alias has moved since), checks the
artifact's SHA-256 before loading it and replaces each day atomically. Every score is out of time: the
champion scores the days after its label cutoff, as-of models (trained or reused in time order, never
champion) the history before, and a day before the first possible model stays unscored with the reason in
its metadata (``jobs.scoring.batch.score_out_of_time``). Its checks then read the written days
back from the warehouse; the analysts' snapshot is published only when the blocking ones passed, so a day
with lost rows, null scores or unversioned rows never reaches analysts through this run.
"""

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING

import dagster as dg

from jobs.platform.layout import SCORES_TABLE, parse_day
from orchestration.defs.conventions import (
    FRAUD_ML,
    TABLE_NAME,
    mlflow_model_version_url,
    mlflow_run_url,
    source_version,
    table_metadata,
    table_schema,
)
from orchestration.partitions import WAREHOUSE_POOL, daily_partitions, scoring_cron, single_run_backfill
from orchestration.resources import TxguardSettings
from orchestration.runs import partition_range_of, partition_range_tags

if TYPE_CHECKING:
    import pandas as pd

    from jobs.registry.aliases import ModelRef
    from jobs.scoring.batch import OutOfTimeRun, ScoredDay
    from jobs.scoring.store import PartitionFacts

SCORING_JOB = "scoring_job"
PINNED_VERSION_TAG = "txguard/model_version"
FEATURES_KEY = dg.AssetKey("transaction_features")
PROMOTION_KEY = dg.AssetKey("model_promotion")


def pinned_champion(context: dg.AssetExecutionContext, tracking_uri: str) -> "ModelRef":
    """The version this run scores with: the one pinned on the run, else @champion now (then pinned)."""
    from jobs.registry.aliases import CHAMPION, model_ref, resolve_alias

    pinned = context.run.tags.get(PINNED_VERSION_TAG)
    if pinned:
        return model_ref(int(pinned), tracking_uri=tracking_uri)
    ref = resolve_alias(CHAMPION, tracking_uri=tracking_uri)
    context.instance.add_run_tags(context.run_id, {PINNED_VERSION_TAG: str(ref.version)})
    return ref


def run_created_at(context: dg.AssetExecutionContext) -> dt.datetime:
    """``run_created_at`` of every row of the run: when the run was created, the same on any retry."""
    record = context.instance.get_run_record_by_id(context.run_id)
    created = record.create_timestamp if record else dt.datetime.now(dt.UTC)
    return created if created.tzinfo else created.replace(tzinfo=dt.UTC)


def upstream_runs(context: dg.AssetExecutionContext, keys: Sequence[str]) -> dict[dt.date, dict[str, str]]:
    """For the audit trail: the run that last materialized each input of each partition."""
    promotion = context.instance.fetch_materializations(PROMOTION_KEY, limit=1).records
    found: dict[dt.date, dict[str, str]] = {}
    for key in keys:
        runs = {PROMOTION_KEY.to_user_string(): promotion[0].run_id} if promotion else {}
        features = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(FEATURES_KEY, asset_partitions=[key]), limit=1
        ).records
        if features:
            runs[FEATURES_KEY.to_user_string()] = features[0].run_id
        found[parse_day(key)] = runs
    return found


def alerts_markdown(alerts: "pd.DataFrame") -> str:
    """A day's top alerts as a Markdown table for the UI: time, card, terminal, score and reasons."""
    if alerts.empty:
        return "No alert this day."
    lines = [
        "| transaction | time (UTC) | card | terminal | score | reasons |",
        "| ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for row in alerts.itertuples(index=False):
        reasons = ", ".join(r for r in (row.reason_1, row.reason_2, row.reason_3) if isinstance(r, str))
        lines.append(
            f"| {row.transaction_id} | {row.tx_datetime:%Y-%m-%d %H:%M:%S} | {row.customer_id} | "
            f"{row.terminal_id} | {row.score:.4f} | {reasons or '—'} |"
        )
    return "\n".join(lines)


def day_metadata(scored: "ScoredDay") -> dict[str, dg.MetadataValue]:
    """One day's own numbers, recorded on that day's materialization."""
    from jobs.scoring.store import SCORES_SCHEMA

    write = scored.write
    return {
        **table_metadata(SCORES_TABLE, write.rows, table_schema(SCORES_SCHEMA)),
        "alerts": dg.MetadataValue.int(write.alerts),
        "explained_rows": dg.MetadataValue.int(scored.explained_rows),
        "replaced_rows": dg.MetadataValue.int(write.replaced_rows),
        "top_alerts": dg.MetadataValue.md(alerts_markdown(scored.top_alerts)),
    }


def model_metadata(model: "ModelRef", mlflow_ui: str) -> dict[str, dg.MetadataValue]:
    """The model that scored a day, its links and the day its training labels end."""
    return {
        "model": dg.MetadataValue.text(f"{model.name} v{model.version}"),
        "model_version": dg.MetadataValue.int(model.version),
        "model_role": dg.MetadataValue.text(
            "as-of (out of time, never champion)" if model.as_of else "champion"
        ),
        "trained_on_data_up_to": dg.MetadataValue.text(str(model.label_cutoff)),
        "artifact_sha256": dg.MetadataValue.text(model.artifact_sha256),
        "feature_set_version": dg.MetadataValue.text(model.feature_set_version),
        "mlflow_run": mlflow_run_url(mlflow_ui, model.run_id),
        "mlflow_model_version": mlflow_model_version_url(mlflow_ui, model.name, model.version),
    }


def unscored_metadata(reason: str) -> dict[str, dg.MetadataValue]:
    """A day no model may score yet: no rows, and why."""
    return {"scored": dg.MetadataValue.bool(False), "unscored_reason": dg.MetadataValue.text(reason)}


def run_metadata(done: "OutOfTimeRun", seconds: float) -> dict[str, dg.MetadataValue]:
    """The run's totals (``run_*``): days, rows, alerts, the models used and the days left unscored."""
    days = done.days
    rows = sum(d.write.rows for d in days)
    return {
        "run_models": dg.MetadataValue.json(
            [
                {
                    "model": f"{model.name} v{model.version}",
                    "as_of": model.as_of,
                    "label_cutoff": str(model.label_cutoff),
                    "days": [d.write.day.isoformat() for d in scored],
                }
                for model, scored in done.scored
            ]
        ),
        "run_unscored_days": dg.MetadataValue.json(
            {day.isoformat(): why for day, why in done.unscored.items()}
        ),
        "run_days": dg.MetadataValue.int(len(days)),
        "run_rows": dg.MetadataValue.int(rows),
        "run_alerts": dg.MetadataValue.int(sum(d.write.alerts for d in days)),
        "run_rows_per_second": dg.MetadataValue.float(rows / seconds if seconds > 0 else 0.0),
    }


ROWS_CHECK = "one_row_per_feature_row"
NULL_SCORE_CHECK = "no_null_score"
VERSIONED_CHECK = "every_row_versioned"
ALERT_SHARE_CHECK = "alert_share_in_band"
BLOCKING_CHECKS = (ROWS_CHECK, NULL_SCORE_CHECK, VERSIONED_CHECK)
"""What analysts rely on in every row: they block the snapshot and everything built on the scores."""
ALERT_SHARE_MIN = 0.0001
"""0.01 %: the threshold aims at the alert budget (by default 1 % of the day's active cards), so a day
without a single alert in ten thousand transactions says the threshold or the features are off, not that
fraud stopped."""
ALERT_SHARE_MAX = 0.20
"""20 %: investigators review the alert budget's cards a day; a fifth of the day alerted would bury them,
and points at a broken threshold or feature rather than a fraud wave. Outside the band warns; it does not
block."""

SCORES_CHECK_SPECS = [
    dg.AssetCheckSpec(
        ROWS_CHECK,
        asset="transaction_scores",
        blocking=True,
        description="each scored day holds exactly one row per row of its feature partition, one per "
        "transaction",
    ),
    dg.AssetCheckSpec(
        NULL_SCORE_CHECK, asset="transaction_scores", blocking=True, description="no row without a score"
    ),
    dg.AssetCheckSpec(
        VERSIONED_CHECK,
        asset="transaction_scores",
        blocking=True,
        description="every row names the model and the version that scored it",
    ),
    dg.AssetCheckSpec(
        ALERT_SHARE_CHECK,
        asset="transaction_scores",
        description=f"each day's alerted share is within {ALERT_SHARE_MIN:.2%}..{ALERT_SHARE_MAX:.0%} "
        "(a warning outside)",
    ),
]


def _verdict(
    name: str, failing: "dict[dt.date, str]", facts: "dict[dt.date, PartitionFacts]", when_passed: str
) -> dg.AssetCheckResult:
    """One check over the run's days: each failing day named with what is wrong, every day's counts."""
    return dg.AssetCheckResult(
        check_name=name,
        passed=not failing,
        severity=dg.AssetCheckSeverity.ERROR if name in BLOCKING_CHECKS else dg.AssetCheckSeverity.WARN,
        description="\n".join(f"{day}: {why}" for day, why in sorted(failing.items())) or when_passed,
        metadata={
            "failing_days": dg.MetadataValue.json([day.isoformat() for day in sorted(failing)]),
            "days": dg.MetadataValue.json(
                {
                    day.isoformat(): dataclasses.asdict(f) | {"day": day.isoformat()}
                    for day, f in facts.items()
                }
            ),
        },
    )


def scores_checks(
    days: "list[ScoredDay]", facts: "dict[dt.date, PartitionFacts]"
) -> list[dg.AssetCheckResult]:
    """The four checks over the run's days, judged on what the warehouse holds after the write."""
    expected = {d.write.day: d.feature_rows for d in days}
    lost = {
        day: f"{f.rows} rows ({f.distinct_transactions} transactions) for {expected[day]} feature rows"
        for day, f in facts.items()
        if not f.rows == f.distinct_transactions == expected[day]
    }
    null = {day: f"{f.null_scores} rows without a score" for day, f in facts.items() if f.null_scores}
    unversioned = {
        day: f"{f.unversioned_rows} rows without a model name or version"
        for day, f in facts.items()
        if f.unversioned_rows
    }
    outside = {
        day: f"{f.alerts} alerts in {f.rows} rows ({f.alerts / f.rows:.3%})"
        for day, f in facts.items()
        if f.rows and not ALERT_SHARE_MIN <= f.alerts / f.rows <= ALERT_SHARE_MAX
    }
    n = len(facts)
    band = f"{ALERT_SHARE_MIN:.2%}..{ALERT_SHARE_MAX:.0%}"
    return [
        _verdict(ROWS_CHECK, lost, facts, f"{n} day(s): one row per feature row"),
        _verdict(NULL_SCORE_CHECK, null, facts, f"{n} day(s): every row scored"),
        _verdict(VERSIONED_CHECK, unversioned, facts, f"{n} day(s): every row names its model version"),
        _verdict(ALERT_SHARE_CHECK, outside, facts, f"{n} day(s): alerted share within {band} (or no rows)"),
    ]


@dg.asset(
    group_name="scoring",
    partitions_def=daily_partitions,
    backfill_policy=single_run_backfill,
    pool=WAREHOUSE_POOL,
    deps=[FEATURES_KEY, PROMOTION_KEY],
    kinds={"lightgbm", "duckdb"},
    owners=[FRAUD_ML],
    code_version=source_version("jobs.scoring"),
    metadata={TABLE_NAME: SCORES_TABLE},
    check_specs=SCORES_CHECK_SPECS,
    description="Each transaction's fraud score, decision and top-3 reasons, by the champion pinned per run.",
)
def transaction_scores(context: dg.AssetExecutionContext, settings: TxguardSettings) -> dg.MaterializeResult:
    import time

    from jobs.platform.catalog import publish
    from jobs.registry.tracking import RunOrigin
    from jobs.scoring.batch import score_out_of_time
    from jobs.scoring.store import PARTITIONS_TABLE, read_partition_facts

    loaded = settings.load()
    started = time.perf_counter()
    champion = pinned_champion(context, loaded.tracking_uri)
    context.log.info(
        f"scoring {context.partition_key_range}: champion {champion.name} v{champion.version} after its "
        f"label cutoff {champion.label_cutoff}, as-of models before"
    )
    keys = context.partition_keys
    done = score_out_of_time(
        loaded,
        [parse_day(k) for k in keys],
        champion,
        run_id=context.run_id,
        run_created_at=run_created_at(context),
        checks=gating_checks(context),
        upstream_runs=upstream_runs(context, keys),
        origin=RunOrigin(context.run_id, context.job_name, partition_range_of(context.run.tags)),
    )
    for day, reason in done.unscored.items():
        context.log.warning(f"{day} not scored: {reason}")
    days = done.days
    seconds = time.perf_counter() - started
    verdicts = scores_checks(days, read_partition_facts(loaded.warehouse_path, [d.write.day for d in days]))
    blocked = [v.check_name for v in verdicts if not v.passed and v.check_name in BLOCKING_CHECKS]
    if blocked:
        context.log.error(f"snapshot not published: {', '.join(blocked)} failed")
    else:
        publish(loaded, [parse_day(k) for k in keys], relations=(SCORES_TABLE, PARTITIONS_TABLE))
    for model, scored_days in done.scored:
        for scored in scored_days:
            context.add_asset_metadata(
                {**day_metadata(scored), **model_metadata(model, loaded.mlflow_ui_url)},
                partition_key=scored.write.day.isoformat(),
            )
    for day, reason in done.unscored.items():
        context.add_asset_metadata(unscored_metadata(reason), partition_key=day.isoformat())
    return dg.MaterializeResult(metadata=run_metadata(done, seconds), check_results=verdicts)


PANDERA_ASSETS = {"raw_transactions", "raw_fraud_reports", "transaction_features"}


def check_tool(check_key: dg.AssetCheckKey) -> str:
    """Which validation tool a check belongs to, for the audit trail."""
    if check_key.asset_key.to_user_string() in PANDERA_ASSETS:
        return "pandera"
    if check_key.name.startswith("gx_"):
        return "great_expectations"
    return "dbt"


def gating_checks(context: dg.AssetExecutionContext) -> list[dict[str, object]]:
    """The latest evaluation of every asset check upstream of this asset: what gated the scores."""
    graph = context.job_def.asset_layer.asset_graph
    upstream = graph.get_ancestor_asset_keys(context.asset_key)
    found: list[dict[str, object]] = []
    for check_key in sorted(graph.get_check_keys_for_assets(upstream), key=lambda k: k.to_user_string()):
        latest = context.instance.get_latest_asset_check_evaluation_record(check_key)
        evaluation = latest.evaluation if latest is not None else None
        found.append(
            {
                "name": check_key.name,
                "asset": check_key.asset_key.to_user_string(),
                "tool": check_tool(check_key),
                "passed": None if evaluation is None else evaluation.passed,
                "severity": None if evaluation is None else evaluation.severity.value,
                "status": "never evaluated" if latest is None else latest.status.value,
                "dagster_run_id": None if latest is None else latest.run_id,
            }
        )
    return found


scoring_job = dg.define_asset_job(
    SCORING_JOB,
    selection=[transaction_scores],
    partitions_def=daily_partitions,
    description="Score a partition range with the current champion (the schedule and txguard rescore).",
)


FEATURE_CONTRACT = dg.AssetCheckKey(FEATURES_KEY, "feature_contract")


def contiguous_ranges(days: Sequence[dt.date]) -> list[tuple[dt.date, dt.date]]:
    """Sorted days as ``(first, last)`` runs of consecutive days: one scoring run each."""
    ranges: list[tuple[dt.date, dt.date]] = []
    for day in sorted(days):
        if ranges and day == ranges[-1][1] + dt.timedelta(days=1):
            ranges[-1] = (ranges[-1][0], day)
        else:
            ranges.append((day, day))
    return ranges


UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def days_being_scored(instance: dg.DagsterInstance) -> set[dt.date]:
    """The days of scoring runs not finished yet: requested already, not materialized yet."""
    found: set[dt.date] = set()
    for run in instance.get_runs(dg.RunsFilter(job_name=SCORING_JOB, statuses=UNFINISHED)):
        covered = partition_range_of(run.tags)
        if covered:
            keys = daily_partitions.get_partition_keys_in_range(dg.PartitionKeyRange(*covered))
            found.update(parse_day(key) for key in keys)
    return found


def unscored_days(instance: dg.DagsterInstance) -> list[dt.date]:
    """Days whose features are materialized and whose scores are neither materialized nor being made."""
    waiting = instance.get_materialized_partitions(FEATURES_KEY) - instance.get_materialized_partitions(
        dg.AssetKey("transaction_scores")
    )
    return sorted({parse_day(key) for key in waiting} - days_being_scored(instance))


def scoring_request(instance: dg.DagsterInstance, first: dt.date, last: dt.date) -> dg.RunRequest:
    """One run for ``[first, last]``, keyed by the range and its newest features: a rebuilt day retries."""
    keys = daily_partitions.get_partition_keys_in_range(
        dg.PartitionKeyRange(first.isoformat(), last.isoformat())
    )
    newest = instance.fetch_materializations(
        dg.AssetRecordsFilter(FEATURES_KEY, asset_partitions=keys), limit=1
    ).records
    run_key = f"scoring-{first}..{last}@{newest[0].storage_id if newest else 0}"
    if first == last:
        return dg.RunRequest(run_key=run_key, partition_key=first.isoformat())
    return dg.RunRequest(run_key=run_key, tags=partition_range_tags(first.isoformat(), last.isoformat()))


@dg.schedule(
    name="daily_scoring_schedule",
    cron_schedule=scoring_cron(),
    execution_timezone="UTC",
    job=scoring_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="At 06:00 UTC (or $TXGUARD_SCORING_CRON), score every day whose features are in and whose "
    "scores are not (after an outage too), one run per stretch of consecutive days, once the latest "
    "feature contract check passed",
)
def daily_scoring_schedule(context: dg.ScheduleEvaluationContext):
    days = unscored_days(context.instance)
    if not days:
        return dg.SkipReason("no day has features waiting for scores")
    contract = context.instance.get_latest_asset_check_evaluation_record(FEATURE_CONTRACT)
    evaluation = contract.evaluation if contract else None
    if not isinstance(evaluation, dg.AssetCheckEvaluation) or not evaluation.passed:
        return dg.SkipReason(
            f"{len(days)} day(s) wait for scores, but the latest {FEATURE_CONTRACT.to_user_string()} "
            "evaluation did not pass (or is still running)"
        )
    return [scoring_request(context.instance, first, last) for first, last in contiguous_ranges(days)]


defs = dg.Definitions(assets=[transaction_scores], jobs=[scoring_job], schedules=[daily_scoring_schedule])
