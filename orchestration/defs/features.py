"""Features: the point-in-time feature table, built by the Spark job (``jobs.features.spark_job``) via Pipes.

The job runs in its own process, launched by ``PipesSubprocessClient``: ``python -m jobs.features.spark_job``
as a client of the warm Spark Connect server that ``TXGUARD_SPARK_REMOTE`` names (``txguard ui`` starts one),
else in its own JVM against ``TXGUARD_SPARK_MASTER`` (``local[*]``, or a ``spark://`` master), or through
``spark-submit`` when the run config names one (YARN, Kubernetes; the Connect server is then not used).
Either way the driver runs here (client mode), so Pipes' local message channel carries the job's row
counts, null rates and feature-set version back: each day's materialization records that day's rows, the
build's totals are the ``run_*`` keys. The contract check reads the written files with pandas and blocks
training and scoring when a partition breaks it.
"""

import datetime as dt
import sys

import dagster as dg
from pydantic import Field

from jobs.features.definitions import FEATURE_SET_VERSION
from jobs.platform.layout import TRANSACTION_FEATURES, dataset_uri, parse_day
from jobs.platform.settings import REPO_ROOT
from orchestration.defs.conventions import FRAUD_ML, table_metadata
from orchestration.partitions import daily_partitions, on_upstream_update, single_run_backfill, with_its_asset
from orchestration.resources import TxguardSettings

UPSTREAM = [dg.AssetKey("stg_landing__transactions"), dg.AssetKey("stg_landing__fraud_reports")]
CHECK_NAME = "feature_contract"


class FeatureJobConfig(dg.Config):
    """How to launch the Spark job; the default needs nothing but this Python environment."""

    spark_submit: str = Field(
        default="",
        description="path to spark-submit (e.g. $SPARK_HOME/bin/spark-submit) to launch the job with; "
        "empty runs `python -m jobs.features.spark_job` with the code location's Python",
    )


def feature_job_command(
    start: dt.date, end: dt.date, lake: str, master: str, spark_submit: str = ""
) -> list[str]:
    """The command line of one feature build: the same job standalone, under Pipes, or on a cluster.

    Either way the process dies with the step that starts it: the job binds itself to its parent, and
    ``spark-submit`` (whose JVM starts the job) is started bound by ``orchestration.processes``.
    """
    arguments = ["--start", start.isoformat(), "--end", end.isoformat(), "--lake", lake, "--master", master]
    if spark_submit:
        job = str(REPO_ROOT / "jobs" / "features" / "spark_job.py")
        bound = [sys.executable, "-m", "orchestration.processes"]
        return [*bound, spark_submit, "--master", master, job, "--no-remote", *arguments]
    return [sys.executable, "-m", "jobs.features.spark_job", *arguments]


def contract_check(lake: str, days: list[dt.date]) -> dg.AssetCheckResult:
    """The pandera contract over the written partitions, each failure named by file, row, column and rule."""
    from jobs.features.contract import check_feature_partitions

    report = check_feature_partitions(lake, days)
    return dg.AssetCheckResult(
        check_name=CHECK_NAME,
        passed=report.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description="\n".join(report.failures) or f"{report.partitions} partitions, {report.rows} rows valid",
        metadata={"partitions": report.partitions, "rows": report.rows, "failures": report.failure_count},
    )


def contract_table_schema() -> dg.TableSchema:
    """The feature contract's columns (``jobs.features.contract``), as every written partition holds them."""
    from jobs.features.contract import FEATURE_SCHEMA

    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name,
                str(column.dtype),
                constraints=dg.TableColumnConstraints(nullable=column.nullable, unique=column.unique),
            )
            for name, column in FEATURE_SCHEMA.columns.items()
        ]
    )


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=single_run_backfill,
    group_name="features",
    deps=UPSTREAM,
    kinds={"spark", "parquet"},
    owners=[FRAUD_ML],
    code_version=FEATURE_SET_VERSION,
    metadata={"feature_set_version": FEATURE_SET_VERSION},
    automation_condition=on_upstream_update(),
    check_specs=[
        dg.AssetCheckSpec(
            CHECK_NAME,
            asset="transaction_features",
            blocking=True,
            automation_condition=with_its_asset("transaction_features"),
            description="pandera contract on the written partitions (types, ranges, nulls, version, day); "
            "a failure stops training and scoring",
        )
    ],
)
def transaction_features(
    context: dg.AssetExecutionContext,
    settings: TxguardSettings,
    pipes_subprocess_client: dg.PipesSubprocessClient,
    config: FeatureJobConfig,
) -> dg.MaterializeResult:
    """Point-in-time features per transaction, one Parquet file per day; a range in one job."""
    txguard = settings.load()
    days = [parse_day(key) for key in context.partition_keys]
    command = feature_job_command(days[0], days[-1], txguard.lake, txguard.spark_master, config.spark_submit)
    context.log.info(f"launching {' '.join(command)}")
    invocation = pipes_subprocess_client.run(command=command, context=context, cwd=str(REPO_ROOT))
    reported = dict(invocation.get_materialize_result().metadata or {})
    table, schema = dataset_uri(txguard.lake, TRANSACTION_FEATURES), contract_table_schema()
    rows_per_day, version = reported.pop("rows_per_day").value, reported.pop("feature_set_version")
    for day in context.partition_keys:
        context.add_asset_metadata(
            {**table_metadata(table, rows_per_day[day], schema), "feature_set_version": version},
            partition_key=day,
        )
    return dg.MaterializeResult(
        metadata={f"run_{key}": value for key, value in reported.items()},
        check_results=[contract_check(txguard.lake, days)],
    )


defs = dg.Definitions(
    assets=[transaction_features],
    resources={"pipes_subprocess_client": dg.PipesSubprocessClient()},
)
