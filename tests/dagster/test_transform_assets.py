"""The warehouse assets through Dagster: real dbt CLI, real DuckDB file, real GX, on a temporary home.

`downstream_of_staging` stands in for the feature build: whatever fails at or above staging, an
error-severity dbt test or a GX suite, must keep it (and the marts) from running in the same run.
"""

import itertools
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import pytest

from jobs.platform.layout import RAW_FRAUD_REPORTS, RAW_TRANSACTIONS
from jobs.platform.settings import load_settings
from jobs.platform.warehouse import connect
from jobs.transform.dbt_windows import window_from_keys
from orchestration.defs import transform
from orchestration.instance import prepare_dagster_home
from orchestration.partitions import WAREHOUSE_POOL, daily_partitions, single_run_backfill
from orchestration.resources import TxguardSettings
from orchestration.runs import partition_range_tags
from tests.support import (
    materialize,
    report_rows,
    run_in_step_processes,
    step_spans,
    transaction_rows,
    write_raw_partition,
)

HOSTILE_KEY = "2018-04-01' OR '1'='1"
MARTS = {
    "int_transactions_labelled",
    "fct_transactions",
    "dim_customers",
    "dim_terminals",
    "rpt_daily_fraud_summary",
}
STAGING = {"stg_landing__transactions", "stg_landing__fraud_reports"}


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=single_run_backfill,
    deps=[dg.AssetKey("stg_landing__transactions")],
)
def downstream_of_staging() -> None:
    """Runs only if staging passed every blocking check."""


@dg.asset(partitions_def=daily_partitions, backfill_policy=single_run_backfill, pool=WAREHOUSE_POOL)
def other_warehouse_writer(context: dg.AssetExecutionContext, settings: TxguardSettings) -> None:
    """Holds the DuckDB write lock for a while, independently of dbt: only the pool keeps them apart."""
    path = settings.load().warehouse_path
    with connect(path, lock_timeout_s=0) as connection:
        connection.execute(
            "create table if not exists main.writer_probe (run_id varchar, written_at timestamptz)"
        )
        connection.execute("insert into main.writer_probe values (?, now())", [context.run.run_id])
        time.sleep(2)


ASSETS = [transform.dbt_staging, transform.gx_staged_suites, transform.dbt_marts, downstream_of_staging]
DBT_RESOURCE = {"dbt": transform.defs.resources["dbt"]}


def write_day(day: str, count: int = 20, reported: Sequence[int] = ()) -> list[dict]:
    """A day of transactions (ids ordinal*1000 + i) and the reports that arrived that day, in the lake."""
    lake = load_settings().lake
    rows = transaction_rows(day, count)
    write_raw_partition(lake, RAW_TRANSACTIONS, day, rows)
    write_raw_partition(lake, RAW_FRAUD_REPORTS, day, report_rows(day, reported))
    return rows


def materialized(result: dg.ExecuteInProcessResult) -> dict[str, set[str]]:
    keys: dict[str, set[str]] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        keys.setdefault(materialization.asset_key.to_user_string(), set()).add(materialization.partition)
    return keys


def evaluations(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    return {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}


def test_the_asset_graph_maps_sources_groups_pools_and_blocking() -> None:
    specs = {
        key.to_user_string(): spec
        for asset in (transform.dbt_staging, transform.dbt_marts)
        for key, spec in asset.specs_by_key.items()
    }
    assert set(specs) == STAGING | MARTS
    assert {spec.group_name for spec in specs.values()} == {"transform"}
    assert {dep.asset_key.to_user_string() for dep in specs["stg_landing__transactions"].deps} == {
        "raw_transactions"
    }
    assert {dep.asset_key.to_user_string() for dep in specs["stg_landing__fraud_reports"].deps} == {
        "raw_fraud_reports"
    }
    assert {
        transform.dbt_staging.op.pool,
        transform.dbt_marts.op.pool,
        transform.gx_staged_suites.op.pool,
    } == {WAREHOUSE_POOL}
    dbt_checks = {spec.name: spec.blocking for spec in transform.dbt_staging.check_specs}
    assert dbt_checks["unique_stg_landing__transactions_transaction_id"] is True
    assert dbt_checks["unique_stg_landing__fraud_reports_transaction_id"] is False  # severity: warn
    assert all(spec.blocking for spec in transform.gx_staged_suites.check_specs)
    assert {spec.asset_key.to_user_string() for spec in transform.gx_staged_suites.check_specs} == STAGING


@pytest.mark.slow
def test_a_window_builds_every_model_with_checks_metadata_and_a_snapshot(txguard_home: Path) -> None:
    first_day = write_day("2018-04-01")
    write_day("2018-04-02", reported=[first_day[3]["transaction_id"]])
    cwd = os.getcwd()
    result = materialize(
        ASSETS, resources=DBT_RESOURCE, tags=partition_range_tags("2018-04-01", "2018-04-02")
    )
    assert result.success
    assert os.getcwd() == cwd
    assert materialized(result) == {
        name: {"2018-04-01", "2018-04-02"} for name in STAGING | MARTS | {"downstream_of_staging"}
    }
    checks = evaluations(result)
    assert all(evaluation.passed for evaluation in checks.values())
    gx_check = checks[("stg_landing__transactions", "gx_suite")]
    assert gx_check.metadata["expectations_failed"].value == 0
    assert gx_check.metadata["row_count"].value == 40
    staged = next(
        event.event_specific_data.materialization
        for event in result.get_asset_materialization_events()
        if event.event_specific_data.materialization.asset_key == dg.AssetKey("stg_landing__transactions")
    )
    assert staged.metadata["dagster/row_count"].value == 20  # the day's rows, not the range's 40
    assert "tx_amount" in {column.name for column in staged.metadata["dagster/column_schema"].schema.columns}
    settings = load_settings()
    with connect(settings.snapshot_path, read_only=True) as snapshot:
        assert snapshot.execute("select sum(tx_count) from marts.rpt_daily_fraud_summary").fetchone() == (40,)
    assert (txguard_home / "gx" / "data_docs" / "index.html").is_file()


@pytest.mark.slow
def test_a_failing_suite_stops_the_marts_and_everything_below(txguard_home: Path) -> None:
    rows = write_day("2018-04-05")
    rows[2]["tx_amount"] = 75_000.0
    write_raw_partition(load_settings().lake, RAW_TRANSACTIONS, "2018-04-05", rows)
    result = materialize(ASSETS, resources=DBT_RESOURCE, partition_key="2018-04-05")
    assert not result.success
    check = evaluations(result)[("stg_landing__transactions", "gx_suite")]
    assert not check.passed and check.blocking
    assert check.metadata["failed_expectations"].value == "tx_amount_range"
    assert [row["transaction_id"] for row in check.metadata["unexpected_rows_sample"].value] == [
        rows[2]["transaction_id"]
    ]
    assert set(materialized(result)) == STAGING


@pytest.mark.slow
def test_a_failing_error_test_stops_the_suites_marts_and_everything_below(txguard_home: Path) -> None:
    rows = write_day("2018-04-06")
    for row in rows[:3]:
        row["tx_amount"] = -2.5
    write_raw_partition(load_settings().lake, RAW_TRANSACTIONS, "2018-04-06", rows)
    result = materialize(ASSETS, resources=DBT_RESOURCE, partition_key="2018-04-06")
    assert not result.success
    failed = {key: e for key, e in evaluations(result).items() if not e.passed}
    ((asset, name),) = failed
    assert asset == "stg_landing__transactions" and name.startswith("accepted_range_")
    assert failed[(asset, name)].metadata["dagster_dbt/failed_row_count"].value == 3
    assert ("stg_landing__transactions", "gx_suite") not in evaluations(result)
    assert set(materialized(result)) == STAGING


def test_a_hostile_partition_key_is_refused_before_any_sql(txguard_home: Path) -> None:
    with pytest.raises(dg.DagsterUnknownPartitionError):
        materialize(ASSETS, resources=DBT_RESOURCE, partition_key=HOSTILE_KEY)
    context = dg.build_asset_context(partition_key_range=dg.PartitionKeyRange(HOSTILE_KEY, HOSTILE_KEY))
    with pytest.raises(ValueError, match="is not a YYYY-MM-DD date"):
        transform.run_window(context)
    assert not load_settings().warehouse_path.exists()


def backfill_job() -> dg.JobDefinition:
    """The warehouse assets and a second warehouse writer, on the multiprocess executor."""
    defs = dg.Definitions(
        assets=[*ASSETS, other_warehouse_writer],
        resources={"settings": TxguardSettings(), **DBT_RESOURCE},
        jobs=[dg.define_asset_job("warehouse_backfill", partitions_def=daily_partitions)],
        executor=dg.multiprocess_executor.configured({"max_concurrent": 3}),
    )
    return defs.resolve_job_def("warehouse_backfill")


def test_a_prepared_home_has_the_warehouse_slot_before_any_run_claims_it(txguard_home: Path) -> None:
    """Two runs claiming the first slot together could each allocate one; preparing the home does it once."""
    prepare_dagster_home(load_settings())
    prepare_dagster_home(load_settings())
    with dg.DagsterInstance.get() as instance:
        pool = instance.event_log_storage.get_concurrency_info(WAREHOUSE_POOL)
    assert (pool.limit, pool.slot_count) == (1, 1)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_multiprocess_backfill_under_the_pool_never_meets_a_lock(txguard_home: Path) -> None:
    for day in ("2018-04-01", "2018-04-02", "2018-04-03"):
        write_day(day)
    records = run_in_step_processes(
        "tests.dagster.test_transform_assets", "backfill_job", "2018-04-01", "2018-04-03"
    )
    assert not [r for r in records if "Could not set lock" in (r.user_message or "")]
    spans = step_spans(records)
    pooled = sorted(
        spans[step] for step in ("dbt_staging", "gx_staged_suites", "dbt_marts", "other_warehouse_writer")
    )
    assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(pooled))
    with connect(load_settings().warehouse_path, read_only=True) as connection:
        assert connection.execute("select count(*) from marts.fct_transactions").fetchone() == (60,)


@pytest.mark.slow
def test_each_day_of_a_range_records_its_own_row_counts(dagster_instance: dg.DagsterInstance) -> None:
    """Two days with different counts leave two different points per model in the instance, not the
    range's total twice; a dimension (not by day) records its whole table."""
    first = write_day("2018-04-01", count=20)
    write_day("2018-04-02", count=35, reported=[first[0]["transaction_id"], first[1]["transaction_id"]])
    result = materialize(
        ASSETS,
        resources=DBT_RESOURCE,
        tags=partition_range_tags("2018-04-01", "2018-04-02"),
        instance=dagster_instance,
    )
    assert result.success

    def day_counts(asset: str) -> dict[str, int]:
        records = dagster_instance.fetch_materializations(dg.AssetKey(asset), limit=10).records
        return {r.partition_key: r.asset_materialization.metadata["dagster/row_count"].value for r in records}

    assert day_counts("stg_landing__transactions") == {"2018-04-01": 20, "2018-04-02": 35}
    assert day_counts("stg_landing__fraud_reports") == {"2018-04-01": 0, "2018-04-02": 2}
    assert day_counts("int_transactions_labelled") == {"2018-04-01": 20, "2018-04-02": 35}
    assert day_counts("fct_transactions") == {"2018-04-01": 20, "2018-04-02": 35}
    assert day_counts("rpt_daily_fraud_summary") == {"2018-04-01": 1, "2018-04-02": 1}
    assert day_counts("dim_customers") == {"2018-04-01": 5, "2018-04-02": 5}


@pytest.mark.slow
def test_a_step_reuses_the_parse_of_this_code_version(txguard_home: Path) -> None:
    """The first dbt step saves its parse; a later step's dbt, with another window, starts from it and parses
    nothing (dbt would re-parse the whole project if its command line or profile differed)."""
    write_day("2018-04-01")
    write_day("2018-04-02", count=7)
    assert materialize([transform.dbt_staging], resources=DBT_RESOURCE, partition_key="2018-04-01").success
    settings = load_settings()
    cache = transform.parse_cache(settings)
    assert cache.is_file()
    target = txguard_home / "next-step"
    target.mkdir()
    (target / transform.PARSE_FILE).write_bytes(cache.read_bytes())
    window = window_from_keys("2018-04-02", "2018-04-02")
    step = subprocess.run(
        [transform.DBT_EXECUTABLE, "--debug", "build", "--select", transform.STAGING_SELECTION],
        cwd=transform.DBT_PROJECT_DIR,
        env={**os.environ, **transform.window_environment(window, settings), "DBT_TARGET_PATH": str(target)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert step.returncode == 0, step.stdout[-4000:]
    assert "Partial parsing enabled, no changes found, skipping parsing" in step.stdout
    with connect(settings.warehouse_path, read_only=True) as connection:
        counts = connection.execute(
            "select tx_date, count(*) from staging.stg_landing__transactions group by 1 order by 1"
        ).fetchall()
    assert [count for _, count in counts] == [20, 7]


def test_the_dbt_resource_knows_the_version_its_executable_reports() -> None:
    """dagster-dbt picks its dbt Core or Fusion path from this version; the resource takes it from the
    environment's dbt-core instead of starting ``dbt --version`` in every step, so it must be the same."""
    reported = subprocess.run(
        [transform.DBT_EXECUTABLE, "--version"], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    version = transform.defs.resources["dbt"]._cli_version
    assert f"installed: {version}" in reported
