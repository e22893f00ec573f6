"""Ingest: landing files → raw lake partitions under the pandera contract, bad rows and files to quarantine.

The assets are thin: a day's ingestion lives in jobs/ingest/day.py (reading, typing, the contract and the
lake's cross-file index in their own modules next to it), listing and naming in jobs/ingest/landing.py, and
the misnamed-file quarantine in jobs/ingest/misnamed.py. The landing sensor turns each new or changed file
into one run for its day, unless the day's latest materialization was built from that very version of the
file (its ``landing_files`` metadata), so a day ingested by ``txguard run``, a backfill or the launchpad is
not ingested again when the daemon starts. From there the ``automation_sensor`` evaluates the declarative
automation of everything downstream (dbt, checks, features, monitoring), so a landed day flows through the
chain without anyone starting a job.

Fraud reports do not depend on transactions in the asset graph: a day whose transactions file is missing or
broken fails ``raw_transactions`` (and blocks what is built on it), while that day's reports are still
ingested against the transactions the lake already holds. Both ingest steps share the ``landing`` pool
(limit 1 in dagster.yaml) and transactions go first, so in a run of both the reports are checked after the
run's transactions are written.
"""

import datetime as dt
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from jobs.ingest.landing import LandingFile, fingerprints_by_day, list_landing, misnamed_files, plan_landing
from jobs.platform.layout import dataset_uri, parse_day
from orchestration.defs.conventions import DATA_PLATFORM, source_version, table_metadata, table_schema
from orchestration.partitions import (
    FIRST_DAY,
    daily_partitions,
    sensor_interval,
    single_run_backfill,
)
from orchestration.resources import TxguardSettings

if TYPE_CHECKING:
    from jobs.ingest.day import DayResult

CHECK_NAME = "rejected_share_below_threshold"
LANDING_FILES = "landing_files"
"""Materialization metadata: the fingerprints (path:size:etag-or-mtime) of the files a day was built from."""
LANDING_POOL = "landing"
"""Both ingest steps: one at a time, transactions first (``dagster/priority``), reports after."""
CODE_VERSION = source_version("jobs.ingest")
ASSET_FOR_SOURCE = {
    "transactions": dg.AssetKey("raw_transactions"),
    "fraud_reports": dg.AssetKey("raw_fraud_reports"),
}


def _check_spec(asset: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        CHECK_NAME,
        asset=asset,
        blocking=True,
        description="fails the run (and stops everything downstream) when a file's quarantined share of rows"
        " passes TXGUARD_QUARANTINE_THRESHOLD, or the file could not be read at all",
    )


def rejected_share_check(results: "list[DayResult]", threshold: float) -> dg.AssetCheckResult:
    """One verdict for the run's days: each day over the threshold named with its file, counts and rules."""
    failing = [result for result in results if result.rejected_share > threshold]
    lines = [
        f"{r.day}: {r.source_file}: "
        + (f"{r.quarantined} of {r.rows_in} rows quarantined" if r.rows_in else "the whole file rejected")
        + f" ({r.rejected_share:.1%} > {threshold:.1%}); top rules "
        + ", ".join(f"{rule}={count}" for rule, count in list(r.rules.items())[:3])
        for r in failing
    ]
    return dg.AssetCheckResult(
        check_name=CHECK_NAME,
        passed=not failing,
        description="\n".join(lines) or f"every file under {threshold:.1%} rejected",
        metadata={
            "threshold": threshold,
            "worst_share": max((r.rejected_share for r in results), default=0.0),
            "failing_days": [r.day.isoformat() for r in failing],
        },
    )


def _ingest(
    context: dg.AssetExecutionContext, settings: TxguardSettings, source: str
) -> dg.MaterializeResult:
    # pandera pulls in pyspark.pandas: keep it out of the location load
    from jobs.ingest.contract import SOURCES
    from jobs.ingest.day import ingest_days

    config = settings.load()
    days = [parse_day(key) for key in context.partition_keys]
    # listed before reading: a file replaced meanwhile is recorded as the older version, and ingested again
    built_from = fingerprints_by_day(config.landing, source, days)
    results = ingest_days(config.landing, config.lake, source, days, run_id=context.run_id)
    spec = SOURCES[source]
    table, schema = dataset_uri(config.lake, spec.dataset), table_schema(spec.lake_schema)
    for result in results:
        summary = result.summary()
        context.add_asset_metadata(
            {
                **summary,
                **table_metadata(table, result.accepted.num_rows, schema),
                LANDING_FILES: built_from.get(result.day, []),
            },
            partition_key=result.day.isoformat(),
        )
        context.log.info(f"{source} {result.day}: {summary}")
    return dg.MaterializeResult(check_results=[rejected_share_check(results, config.quarantine_threshold)])


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=single_run_backfill,
    group_name="ingest",
    kinds={"pandera", "parquet"},
    owners=[DATA_PLATFORM],
    code_version=CODE_VERSION,
    check_specs=[_check_spec("raw_transactions")],
    pool=LANDING_POOL,
    op_tags={"dagster/priority": "1"},
)
def raw_transactions(context: dg.AssetExecutionContext, settings: TxguardSettings) -> dg.MaterializeResult:
    """Card transactions of each day, as delivered and validated; a day without a landing file is an error."""
    return _ingest(context, settings, "transactions")


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=single_run_backfill,
    group_name="ingest",
    kinds={"pandera", "parquet"},
    owners=[DATA_PLATFORM],
    code_version=CODE_VERSION,
    description="Fraud reports by arrival day, each tied to a transaction already in the lake; no file = no "
    "reports.",
    check_specs=[_check_spec("raw_fraud_reports")],
    pool=LANDING_POOL,
)
def raw_fraud_reports(context: dg.AssetExecutionContext, settings: TxguardSettings) -> dg.MaterializeResult:
    """Fraud reports by arrival day, each tied to a transaction already in the lake; no file = no reports.

    Not downstream of ``raw_transactions``: a day's reports are ingested even when that day's transactions
    file is missing or broken (see the module's docstring for the order within one run).
    """
    return _ingest(context, settings, "fraud_reports")


class LandingRejectsConfig(dg.Config):
    uris: list[str] = Field(
        default_factory=list,
        description="badly named files to quarantine; empty: all in the landing zone",
    )


@dg.asset(
    group_name="ingest",
    kinds={"json"},
    owners=[DATA_PLATFORM],
    code_version=CODE_VERSION,
    description="Landing entries whose name maps to no partition, set aside under quarantine/misnamed.",
)
def landing_file_rejects(
    context: dg.AssetExecutionContext, config: LandingRejectsConfig, settings: TxguardSettings
) -> dg.MaterializeResult:
    """Landing entries whose name maps to no partition, under quarantine/misnamed with their reason and rule:
    a regular file's bytes copied, a link or other non-file recorded by name only."""
    from jobs.ingest.misnamed import quarantine_misnamed

    txguard = settings.load()
    records = quarantine_misnamed(
        misnamed_files(txguard.landing, FIRST_DAY, config.uris), txguard.lake, run_id=context.run_id
    )
    for record in records:
        context.log.warning(f"quarantined {record['uri']!r} ({record['rule']}): {record['reason']}")
    return dg.MaterializeResult(
        metadata={
            "files": len(records),
            "records": [{k: r[k] for k in ("uri", "rule", "reason", "content")} for r in records],
        }
    )


def already_built(instance: dg.DagsterInstance, candidates: list[tuple[LandingFile, dt.date]]) -> set[str]:
    """The candidates' fingerprints that the latest materialization of their day already recorded as its
    ``landing_files``: two queries per source, whatever started the runs that made them."""
    built: set[str] = set()
    for source, asset in ASSET_FOR_SOURCE.items():
        days = {day.isoformat() for file, day in candidates if file.source == source}
        if not days:
            continue
        latest = instance.get_latest_storage_id_by_partition(
            asset, dg.DagsterEventType.ASSET_MATERIALIZATION, days
        )
        if not latest:
            continue
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset, storage_ids=list(latest.values())), limit=len(latest)
        ).records
        for record in records:
            materialization = record.asset_materialization
            recorded = materialization.metadata.get(LANDING_FILES) if materialization else None
            if recorded is not None:
                built.update(recorded.value)
    return built


@dg.sensor(
    target=[raw_transactions, raw_fraud_reports, landing_file_rejects],
    minimum_interval_seconds=sensor_interval(30),
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def landing_sensor(context: dg.SensorEvaluationContext, settings: TxguardSettings) -> dg.SensorResult:
    """One run per new or changed landing entry (run key = path:size:etag-or-mtime), one listing per folder;
    none for a version that its day's latest materialization was already built from.

    An entry named like a landing file runs for its day whatever it is: a link, folder or FIFO there becomes
    the day's whole-file quarantine (``symlink`` / ``not_a_regular_file``) and fails the day's check. Any
    other name goes to ``landing_file_rejects``. Uploads in progress are ignored until renamed.
    """
    landing = settings.load().landing
    last_day = parse_day(daily_partitions.get_last_partition_key())
    plan = plan_landing(list_landing(landing), context.cursor, FIRST_DAY, last_day)
    built = already_built(context.instance, plan.ingest)
    fresh = [(file, day) for file, day in plan.ingest if file.fingerprint not in built]
    requests = [
        dg.RunRequest(
            run_key=file.fingerprint,
            partition_key=day.isoformat(),
            asset_selection=[ASSET_FOR_SOURCE[file.source]],
            tags={"txguard/landing_file": file.uri[-255:]},
        )
        for file, day in fresh
    ]
    requests += [
        dg.RunRequest(
            run_key=f"{file.uri}:{file.size}",
            asset_selection=[dg.AssetKey("landing_file_rejects")],
            run_config=dg.RunConfig(ops={"landing_file_rejects": LandingRejectsConfig(uris=[file.uri])}),
        )
        for file, _ in plan.rejects
    ]
    if len(fresh) < len(plan.ingest):
        context.log.info(f"{len(plan.ingest) - len(fresh)} file(s) already ingested in this version")
    if plan.waiting:
        context.log.info(f"{len(plan.waiting)} file(s) dated after {last_day} wait for their partition")
    if plan.uploading:
        context.log.info(f"{len(plan.uploading)} upload(s) in progress ignored until renamed")
    if not requests:
        return dg.SensorResult(skip_reason="no new or changed landing file", cursor=plan.cursor)
    return dg.SensorResult(run_requests=requests, cursor=plan.cursor)


automation_sensor = dg.AutomationConditionSensorDefinition(
    "automation_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=sensor_interval(30),
    description="Evaluates every asset's automation condition: a landed day's dbt models, checks, features"
    " and monitoring follow their upstream (orchestration.partitions.on_upstream_update)",
)

defs = dg.Definitions(
    assets=[raw_transactions, raw_fraud_reports, landing_file_rejects],
    sensors=[landing_sensor, automation_sensor],
)
