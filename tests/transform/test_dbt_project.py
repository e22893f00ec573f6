"""The dbt project on a real DuckDB file, built by the dbt CLI from lake partitions written here.

One module-scoped warehouse goes through the life of a partition, in file order: first build, a re-delivered
day, a failed write, a late report (the reporting-delay window), a failing test, a hostile var. Plus the
pure partition-window → dbt-vars mapping (jobs/transform/dbt_windows.py).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.platform.layout import RAW_FRAUD_REPORTS, RAW_TRANSACTIONS
from jobs.platform.settings import REPO_ROOT
from jobs.platform.warehouse import connect
from jobs.training.maturity import LABEL_DELAY_DAYS
from jobs.transform.dbt_windows import (
    PartitionWindow,
    dbt_build_args,
    dbt_environment,
    dbt_target,
    dbt_vars,
    lake_location,
    window_from_keys,
)
from tests.support import report_rows, transaction_rows, write_raw_partition

pytestmark = pytest.mark.slow
"""Each test runs the dbt CLI (a process and a parse) on a real warehouse: out of ``make test-fast``."""

DBT = str(Path(sys.executable).with_name("dbt"))
PROJECT = REPO_ROOT / "dbt_project"
HOSTILE_KEY = "2018-04-01' OR '1'='1"


# ---------------------------------------------------------------- pure: partition window → dbt arguments


def test_window_covers_the_keys_both_included() -> None:
    window = window_from_keys("2018-04-01", "2018-04-03")
    assert (window.start, window.end, window.days) == (dt.date(2018, 4, 1), dt.date(2018, 4, 4), 3)
    assert str(window) == "2018-04-01..2018-04-03"


@pytest.mark.parametrize(
    ("first", "last"),
    [(HOSTILE_KEY, "2018-04-02"), ("2018-04-01", HOSTILE_KEY), ("2018-4-1", "2018-04-02"), ("", "")],
)
def test_hostile_or_malformed_keys_are_rejected(first: str, last: str) -> None:
    with pytest.raises(ValueError, match="is not a YYYY-MM-DD date"):
        window_from_keys(first, last)


def test_reversed_range_and_empty_window_are_rejected() -> None:
    with pytest.raises(ValueError, match="ends before it starts"):
        window_from_keys("2018-04-03", "2018-04-01")
    with pytest.raises(ValueError, match="empty partition window"):
        PartitionWindow(dt.date(2018, 4, 2), dt.date(2018, 4, 2))


def test_build_args_carry_the_window_and_an_absolute_lake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = dbt_build_args(window_from_keys("2018-04-02", "2018-04-02"), "lake")
    assert args[0] == "build" and args[-2:] == ["--target", "local"]
    assert json.loads(args[args.index("--vars") + 1]) == {
        "start_date": "2018-04-02",
        "end_date": "2018-04-03",
        "lake_root": str(tmp_path / "lake"),
    }


def test_s3_lake_uses_the_s3_target_and_endpoint() -> None:
    assert dbt_target("s3://bucket/lake/") == "s3"
    assert dbt_vars(window_from_keys("2018-04-01", "2018-04-01"), "s3://bucket/lake/")["lake_root"] == (
        "s3://bucket/lake"
    )
    env = dbt_environment(Path("wh.duckdb"), "http://127.0.0.1:5000")
    assert env["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:5000"
    assert Path(env["TXGUARD_WAREHOUSE"]).is_absolute()


@pytest.mark.parametrize("root", ["/data/la'ke", "/data/lake\\x", "/data/\nlake", " "])
def test_lake_roots_that_could_break_out_of_sql_are_rejected(root: str) -> None:
    with pytest.raises(ValueError, match="lake root"):
        lake_location(root)


# ---------------------------------------------------------------- the dbt project on a real warehouse


WITHOUT_SCORING_MARTS = ("--exclude", "tag:scoring")
"""The marts on the scores need a scored table; tests/transform/test_scoring_marts.py builds them."""


class Warehouse:
    """A lake, a DuckDB file and the dbt CLI pointed at them; artifacts go to a temporary target path."""

    def __init__(self, root: Path) -> None:
        self.lake = root / "lake"
        self.path = root / "warehouse" / "txguard.duckdb"
        self.target = root / "target"
        self.path.parent.mkdir(parents=True)

    def dbt(
        self, *args: str, first: str = "2018-04-01", last: str = "2018-04-03"
    ) -> subprocess.CompletedProcess:
        window = window_from_keys(first, last)
        env = {
            **os.environ,
            **dbt_environment(self.path),
            "DBT_TARGET_PATH": str(self.target),
            "DBT_LOG_PATH": str(self.target),
        }
        command = [DBT, *args, "--vars", json.dumps(dbt_vars(window, str(self.lake)))]
        return subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600)

    def rows(self, sql: str) -> list[tuple]:
        with connect(self.path, read_only=True) as connection:
            connection.execute("set TimeZone = 'UTC'")
            return connection.execute(sql).fetchall()

    def results(self) -> dict[str, dict]:
        run_results = json.loads((self.target / "run_results.json").read_text())
        return {result["unique_id"]: result for result in run_results["results"]}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Warehouse:
    """Three days of transactions and no fraud report yet, built by one `dbt build` of the window."""
    warehouse = Warehouse(tmp_path_factory.mktemp("dbt"))
    for offset, day in enumerate(("2018-04-01", "2018-04-02", "2018-04-03")):
        write_raw_partition(
            warehouse.lake, RAW_TRANSACTIONS, day, transaction_rows(day, 12, 1000 * (offset + 1))
        )
    result = warehouse.dbt("build", *WITHOUT_SCORING_MARTS)
    assert result.returncode == 0, result.stdout[-4000:]
    return warehouse


def test_build_stages_every_partition_and_the_unit_tests_pass(built: Warehouse) -> None:
    assert built.rows(
        "select tx_date, count(*) from staging.stg_landing__transactions group by tx_date order by tx_date"
    ) == [(dt.date(2018, 4, day), 12) for day in (1, 2, 3)]
    assert built.rows("select count(*) from staging.stg_landing__fraud_reports") == [(0,)]
    unit_tests = {uid: r["status"] for uid, r in built.results().items() if uid.startswith("unit_test.")}
    assert unit_tests == {
        "unit_test.txguard.int_transactions_labelled.label_uses_only_reports_made_by_the_cutoff": "pass",
        "unit_test.txguard.int_transactions_labelled.label_without_cutoff_uses_every_report": "pass",
    }
    statuses = {r["status"] for r in built.results().values()}
    assert statuses <= {"pass", "success"}, statuses


def test_marts_are_consistent_with_staging(built: Warehouse) -> None:
    assert built.rows("select count(*), count(distinct transaction_id) from marts.fct_transactions") == [
        (36, 36)
    ]
    assert built.rows("select count(*), sum(tx_count) from marts.dim_customers") == [(5, 36)]
    assert built.rows("select count(*), sum(tx_count) from marts.dim_terminals") == [(3, 36)]
    assert built.rows("select sum(tx_count), max(fraud_rate) from marts.rpt_daily_fraud_summary") == [
        (36, 0.0)
    ]


def test_docs_generate_catalogues_the_warehouse(built: Warehouse) -> None:
    result = built.dbt("docs", "generate", "--no-compile")
    assert result.returncode == 0, result.stdout[-4000:]
    catalog = json.loads((built.target / "catalog.json").read_text())
    assert {node["metadata"]["name"] for node in catalog["nodes"].values()} >= {
        "stg_landing__transactions",
        "fct_transactions",
        "rpt_daily_fraud_summary",
    }


def test_a_redelivered_day_replaces_its_partition_only_and_labels_follow_reports(built: Warehouse) -> None:
    write_raw_partition(built.lake, RAW_TRANSACTIONS, "2018-04-02", transaction_rows("2018-04-02", 5, 2000))
    write_raw_partition(
        built.lake,
        RAW_FRAUD_REPORTS,
        "2018-04-03",
        report_rows("2018-04-03", [2001, 1003]),
    )
    result = built.dbt("build", *WITHOUT_SCORING_MARTS, first="2018-04-02", last="2018-04-03")
    assert result.returncode == 0, result.stdout[-4000:]
    assert built.rows(
        "select tx_date, count(*) from staging.stg_landing__transactions group by tx_date order by tx_date"
    ) == [(dt.date(2018, 4, 1), 12), (dt.date(2018, 4, 2), 5), (dt.date(2018, 4, 3), 12)]
    assert built.rows("select transaction_id from marts.fct_transactions where is_fraud order by 1") == [
        (1003,),
        (2001,),
    ]
    assert built.rows(
        "select tx_date, tx_count, fraud_tx_count, fraud_rate from marts.rpt_daily_fraud_summary order by 1"
    ) == [
        (dt.date(2018, 4, 1), 12, 1, 1 / 12),
        (dt.date(2018, 4, 2), 5, 1, 1 / 5),
        (dt.date(2018, 4, 3), 12, 0, 0.0),
    ]


def test_a_failed_write_leaves_the_previous_partition_intact(built: Warehouse) -> None:
    """The window's delete runs, the insert then breaks the contract (a null id): all of it rolls back."""
    before = built.rows("select * from staging.stg_landing__transactions order by transaction_id")
    broken = transaction_rows("2018-04-03", 12, 3000)
    broken[5]["transaction_id"] = None
    write_raw_partition(built.lake, RAW_TRANSACTIONS, "2018-04-03", broken)
    try:
        result = built.dbt(
            "run", "--select", "stg_landing__transactions", first="2018-04-03", last="2018-04-03"
        )
    finally:
        write_raw_partition(
            built.lake, RAW_TRANSACTIONS, "2018-04-03", transaction_rows("2018-04-03", 12, 3000)
        )
    assert result.returncode != 0
    assert "NOT NULL constraint failed" in result.stdout
    assert built.rows("select * from staging.stg_landing__transactions order by transaction_id") == before


def test_a_daily_build_rebuilds_its_day_and_the_reporting_delay_never_older_history(built: Warehouse) -> None:
    """A report on 04-09 relabels a transaction of 04-03 (6 days back, inside the 7-day reporting delay);
    one for a transaction of 04-01 (8 days back) does not reach the marts: that day is final and not rebuilt
    (the models' documented window)."""
    final_day = (
        "select * from marts.fct_transactions where tx_date = date '2018-04-01' order by transaction_id"
    )
    before = built.rows(final_day)
    write_raw_partition(built.lake, RAW_FRAUD_REPORTS, "2018-04-09", report_rows("2018-04-09", [1005, 3004]))
    result = built.dbt(
        "build",
        "--select",
        "stg_landing__fraud_reports+",
        *WITHOUT_SCORING_MARTS,
        first="2018-04-09",
        last="2018-04-09",
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert built.rows(final_day) == before
    assert built.rows("select transaction_id from marts.fct_transactions where is_fraud order by 1") == [
        (1003,),
        (2001,),
        (3004,),
    ]
    assert built.rows(
        "select sum(fraud_tx_count) from marts.dim_customers union all "
        "select fraud_tx_count from marts.rpt_daily_fraud_summary where tx_date = date '2018-04-03'"
    ) == [(3,), (1,)]


def test_the_relabelled_window_is_the_label_delay() -> None:
    import yaml

    project = yaml.safe_load((PROJECT / "dbt_project.yml").read_text())
    assert project["vars"]["label_delay_days"] == LABEL_DELAY_DAYS


def test_a_failing_error_test_reports_its_failing_rows(built: Warehouse) -> None:
    negative = transaction_rows("2018-04-04", 4, 4000)
    for row in negative[:3]:
        row["tx_amount"] = -1.0
    write_raw_partition(built.lake, RAW_TRANSACTIONS, "2018-04-04", negative)
    result = built.dbt(
        "build", "--select", "stg_landing__transactions", first="2018-04-04", last="2018-04-04"
    )
    assert result.returncode != 0
    failed = {uid: r for uid, r in built.results().items() if r["status"] == "fail"}
    (test_id,) = failed
    assert test_id.startswith("test.txguard.accepted_range_stg_landing__transactions_tx_amount")
    assert failed[test_id]["failures"] == 3


def test_a_hostile_window_var_is_refused_before_any_sql(built: Warehouse) -> None:
    before = built.rows("select count(*) from staging.stg_landing__transactions")
    env = {**os.environ, **dbt_environment(built.path), "DBT_TARGET_PATH": str(built.target)}
    hostile = {"start_date": HOSTILE_KEY, "end_date": "2018-04-02", "lake_root": str(built.lake)}
    result = subprocess.run(
        [DBT, "run", "--select", "stg_landing__transactions", "--vars", json.dumps(hostile)],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0
    assert "is not a YYYY-MM-DD date" in result.stdout
    assert built.rows("select count(*) from staging.stg_landing__transactions") == before


def test_an_s3_lake_is_read_through_s3fs(moto_s3, tmp_path: Path) -> None:
    """The `s3` target registers s3fs with DuckDB: no extension download, any S3 endpoint (here moto)."""
    moto_s3.create_bucket(Bucket="lake")
    lake = "s3://lake/txguard"
    write_raw_partition(lake, RAW_TRANSACTIONS, "2018-04-01", transaction_rows("2018-04-01", 7, 100))
    warehouse = tmp_path / "txguard.duckdb"
    env = {
        **os.environ,
        **dbt_environment(warehouse, moto_s3.meta.endpoint_url),
        "DBT_TARGET_PATH": str(tmp_path / "target"),
    }
    args = dbt_build_args(window_from_keys("2018-04-01", "2018-04-01"), lake)
    result = subprocess.run(
        [DBT, "run", "--select", "path:models/staging", *args[1:]],
        cwd=PROJECT,
        env={**env, "DBT_LOG_PATH": str(tmp_path / "target")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    with connect(warehouse, read_only=True) as connection:
        assert connection.execute("select count(*) from staging.stg_landing__transactions").fetchone() == (7,)
        assert connection.execute("select count(*) from staging.stg_landing__fraud_reports").fetchone() == (
            0,
        )
