"""Dagster definitions for the scoring domain: ``transaction_scores``, its job and its daily schedule.

The asset pins ``@champion`` to one version per run (a run tag records it, so a step retry or a
re-execution of the run scores with the same version even if the alias has moved since), checks the
artifact's SHA-256 before loading it, replaces each day atomically, then publishes the analysts' snapshot.
"""

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING

import dagster as dg

from jobs.layout import TRANSACTION_FEATURES, parse_day, partition_uri
from orchestration.partitions import WAREHOUSE_POOL, daily_partitions, single_run_backfill
from orchestration.resources import TxguardSettings

if TYPE_CHECKING:
    from jobs.registry import ModelRef
    from jobs.scoring import ScoredDay

SCORING_JOB = "scoring_job"
PINNED_VERSION_TAG = "txguard/model_version"
FEATURES_KEY = dg.AssetKey("transaction_features")
PROMOTION_KEY = dg.AssetKey("model_promotion")


def pinned_champion(context: dg.AssetExecutionContext, tracking_uri: str) -> "ModelRef":
    """The version this run scores with: the one pinned on the run, else @champion now (then pinned)."""
    from jobs.registry import CHAMPION, model_ref, resolve_alias

    pinned = context.run.tags.get(PINNED_VERSION_TAG)
    if pinned:
        return model_ref(int(pinned), tracking_uri=tracking_uri)
    ref = resolve_alias(CHAMPION, tracking_uri=tracking_uri)
    context.instance.add_run_tags(context.run_id, {PINNED_VERSION_TAG: str(ref.version)})
    return ref


def run_created_at(context: dg.AssetExecutionContext) -> dt.datetime:
    """``scored_at`` for every row of the run: when the run was created, the same on any retry."""
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


def scoring_metadata(
    model: "ModelRef", days: "list[ScoredDay]", seconds: float
) -> dict[str, dg.MetadataValue]:
    rows = sum(d.write.rows for d in days)
    return {
        "rows": dg.MetadataValue.int(rows),
        "alerts": dg.MetadataValue.int(sum(d.write.alerts for d in days)),
        "model": dg.MetadataValue.text(f"{model.name} v{model.version}"),
        "model_version": dg.MetadataValue.int(model.version),
        "artifact_sha256": dg.MetadataValue.text(model.artifact_sha256),
        "feature_set_version": dg.MetadataValue.text(model.feature_set_version),
        "rows_per_second": dg.MetadataValue.float(rows / seconds if seconds > 0 else 0.0),
        "explained_rows": dg.MetadataValue.int(sum(d.explained_rows for d in days)),
        "partitions": dg.MetadataValue.json(
            [{"day": d.write.day.isoformat(), "rows": d.write.rows, "alerts": d.write.alerts} for d in days]
        ),
    }


@dg.asset(
    group_name="scoring",
    partitions_def=daily_partitions,
    backfill_policy=single_run_backfill,
    pool=WAREHOUSE_POOL,
    deps=[FEATURES_KEY, PROMOTION_KEY],
    kinds={"lightgbm", "duckdb"},
    description="Each transaction's fraud score, decision and top-3 reasons, by the champion pinned per run.",
)
def transaction_scores(context: dg.AssetExecutionContext, settings: TxguardSettings) -> dg.MaterializeResult:
    import time

    from jobs.registry import load_verified_booster
    from jobs.scoring import score_days
    from jobs.warehouse import publish_snapshot

    loaded = settings.load()
    started = time.perf_counter()
    model = pinned_champion(context, loaded.tracking_uri)
    context.log.info(f"scoring {context.partition_key_range} with {model.name} v{model.version}")
    booster = load_verified_booster(model, tracking_uri=loaded.tracking_uri)
    checks = [
        {"name": "artifact_sha256", "tool": "txguard", "passed": True, "sha256": model.artifact_sha256},
        {
            "name": "feature_set_version",
            "tool": "txguard",
            "passed": True,
            "version": model.feature_set_version,
        },
        *gating_checks(context),
    ]
    keys = context.partition_keys
    days = score_days(
        loaded,
        [parse_day(k) for k in keys],
        model,
        booster,
        run_id=context.run_id,
        scored_at=run_created_at(context),
        checks=checks,
        upstream_runs=upstream_runs(context, keys),
    )
    publish_snapshot(loaded.warehouse_path, loaded.snapshot_path)
    return dg.MaterializeResult(metadata=scoring_metadata(model, days, time.perf_counter() - started))


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


@dg.schedule(
    name="daily_scoring_schedule",
    cron_schedule="0 6 * * *",
    execution_timezone="UTC",
    job=scoring_job,
    description="At 06:00 UTC, score yesterday's partition once its features are in the lake.",
)
def daily_scoring_schedule(context: dg.ScheduleEvaluationContext, settings: TxguardSettings):
    from jobs.storage import exists

    scheduled = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
    day = scheduled.astimezone(dt.UTC).date() - dt.timedelta(days=1)
    features = partition_uri(settings.load().lake, TRANSACTION_FEATURES, day)
    if not exists(features):
        return dg.SkipReason(f"transaction_features for {day} is not in the lake yet ({features})")
    return dg.RunRequest(run_key=f"scoring-{day.isoformat()}", partition_key=day.isoformat())


defs = dg.Definitions(assets=[transaction_scores], jobs=[scoring_job], schedules=[daily_scoring_schedule])
