"""Audit records: chained on append, typed for queries, append-only, and any later edit is caught."""

from __future__ import annotations

import datetime as dt
import hashlib
import inspect
import json
import re
import subprocess
from pathlib import Path

import duckdb
import pytest

from jobs.governance import audit
from jobs.platform.settings import REPO_ROOT
from jobs.platform.warehouse import connect

FORGE_HASH = (
    "sha256(prev_hash || chr(10) || CAST(seq AS VARCHAR) || chr(10) || kind || chr(10)"
    " || strftime(recorded_at, '%Y-%m-%dT%H:%M:%S.%fZ') || chr(10) || payload)"
)


def validation(day: str = "2018-04-02", passed: bool = True, **more: object) -> audit.ValidationResult:
    return audit.ValidationResult(
        day=dt.date.fromisoformat(day),
        tool="great_expectations",
        check_name="stg_transactions_suite",
        asset="stg_landing__transactions",
        passed=passed,
        details={"evaluated": 12, "unexpected": 0, **more},
        dagster_run_id="run-gx",
    )


def training() -> audit.TrainingRun:
    return audit.TrainingRun(
        model_name="txguard-fraud",
        mlflow_run_id="mlf-1",
        train_start=dt.date(2018, 7, 25),
        train_end=dt.date(2018, 7, 31),
        data_digest="d" * 64,
        row_count=58_000,
        feature_set_version="fs-abc",
        metrics={"roc_auc": 0.87, "average_precision": 0.69, "card_precision_at_100": 0.3},
        params={"num_leaves": 31},
        device="cpu",
        dagster_run_id="run-train",
    )


@pytest.fixture
def warehouse(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    connection = connect(tmp_path / "warehouse.duckdb")
    yield connection
    connection.close()


@pytest.fixture
def chain(warehouse: duckdb.DuckDBPyConnection) -> list[audit.AuditRecord]:
    """Five records of three kinds, the way a day of the pipeline leaves them."""
    return [
        audit.record(warehouse, validation()),
        audit.record(warehouse, training()),
        audit.record(warehouse, validation("2018-04-03", passed=False, details_note="Müller & Söhne <b>")),
        audit.append(
            warehouse,
            "promotions",
            {
                "model_name": "txguard-fraud",
                "action": "promote",
                "model_version": "1",
                "previous_version": None,
                "actor": "pipeline:model_promotion",
                "reason": "first model",
                "metrics": {"challenger": {"average_precision": 0.69}},
                "dagster_run_id": "run-train",
            },
        ),
        audit.record(warehouse, validation("2018-04-04")),
    ]


def test_records_form_a_hash_chain_that_an_independent_computation_confirms(
    warehouse: duckdb.DuckDBPyConnection, chain: list[audit.AuditRecord]
) -> None:
    assert [r.seq for r in chain] == [1, 2, 3, 4, 5]
    assert chain[0].prev_hash == audit.GENESIS_HASH
    stored = warehouse.execute("select seq, payload, prev_hash, record_hash from audit.records order by seq")
    previous = audit.GENESIS_HASH
    for written, (seq, payload, prev_hash, record_hash) in zip(chain, stored.fetchall(), strict=True):
        assert prev_hash == previous == written.prev_hash
        text = f"{prev_hash}\n{seq}\n{written.kind}\n{written.recorded_at:%Y-%m-%dT%H:%M:%S.%fZ}\n{payload}"
        assert record_hash == hashlib.sha256(text.encode()).hexdigest() == written.record_hash
        assert payload == json.dumps(
            json.loads(payload), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        previous = record_hash
    report = audit.verify_chain(warehouse)
    assert report.ok and report.records == 5 and report.head_hash == chain[-1].record_hash
    assert report.per_kind == {"validation_results": 3, "training_runs": 1, "promotions": 1}


def test_views_expose_typed_columns(warehouse: duckdb.DuckDBPyConnection, chain: list) -> None:
    types = dict(
        warehouse.execute("select column_name, column_type from (describe audit.training_runs)").fetchall()
    )
    assert types["train_start"] == "DATE" and types["row_count"] == "BIGINT" and types["metrics"] == "JSON"
    row = warehouse.execute(
        "select day, passed, details->>'details_note' from audit.validation_results where seq = 3"
    ).fetchone()
    assert row == (dt.date(2018, 4, 3), False, "Müller & Söhne <b>")
    failed = warehouse.execute("select day from audit.validation_results where not passed").fetchall()
    assert failed == [(dt.date(2018, 4, 3),)]
    assert warehouse.execute("select git_commit from audit.promotions").fetchone() == (audit.git_commit(),)


def test_the_public_api_offers_no_way_to_change_or_remove_a_record(
    warehouse: duckdb.DuckDBPyConnection, chain: list[audit.AuditRecord]
) -> None:
    public = [name for name, _ in inspect.getmembers(audit, callable) if not name.startswith("_")]
    mutating = [
        n for n in public if re.search(r"update|delete|remove|edit|replace|truncate|drop|amend", n, re.I)
    ]
    assert mutating == []
    with pytest.raises(AttributeError):
        audit.update  # noqa: B018  # the attempt: there is no update to call
    correction = audit.record(warehouse, validation(passed=False))
    assert correction.seq == 6
    first = warehouse.execute("select payload from audit.records where seq = 1").fetchone()
    assert json.loads(first[0])["passed"] is True
    assert audit.verify_chain(warehouse).ok


def test_duckdb_refuses_an_edit_that_does_not_forge_the_hash(
    warehouse: duckdb.DuckDBPyConnection, chain: list
) -> None:
    with pytest.raises(duckdb.ConstraintException, match="CHECK constraint"):
        warehouse.execute(
            "update audit.records set payload = replace(payload, '\"passed\":false', '\"passed\":true')"
            " where seq = 3"
        )
    with pytest.raises(duckdb.ConstraintException):
        warehouse.execute("insert into audit.records select * from audit.records where seq = 3")
    assert audit.verify_chain(warehouse).ok


def test_verify_reports_the_first_broken_link_after_a_forged_edit(
    warehouse: duckdb.DuckDBPyConnection, chain: list
) -> None:
    """A failed check rewritten as passed, its own hash forged in the same statement: the next link breaks."""
    forged = "replace(payload, '\"passed\":false', '\"passed\":true')"
    warehouse.execute(
        f"update audit.records set payload = {forged},"
        f" record_hash = {FORGE_HASH.replace('payload)', f'{forged})')} where seq = 3"
    )
    assert warehouse.execute("select passed from audit.validation_results where seq = 3").fetchone() == (
        True,
    )
    report = audit.verify_chain(warehouse)
    assert report.broken is not None and not report.ok
    assert (report.broken.seq, report.broken.kind) == (4, "promotions")
    assert "hash of record 3" in report.broken.reason
    assert report.records == 3
    assert "BROKEN at seq 4 (promotions)" in report.describe()


def test_verify_reports_an_edit_made_after_removing_the_constraints(
    warehouse: duckdb.DuckDBPyConnection, chain: list
) -> None:
    """Someone rebuilds the ledger without its CHECK and edits a record in place: that record is named."""
    warehouse.execute("create table audit.plain as select * from audit.records")
    warehouse.execute("drop view audit.training_runs")
    for view in ("model_versions", "promotions", "scoring_runs", "validation_results"):
        warehouse.execute(f"drop view audit.{view}")
    warehouse.execute("drop table audit.records")
    warehouse.execute("alter table audit.plain rename to records")
    warehouse.execute(
        "update audit.records set payload = replace(payload, '\"roc_auc\":0.87', '\"roc_auc\":0.97')"
        " where seq = 2"
    )
    report = audit.verify_chain(warehouse)
    assert report.broken is not None
    assert (report.broken.seq, report.broken.kind) == (2, "training_runs")
    assert "altered" in report.broken.reason
    assert report.records == 1


def test_verify_reports_a_deleted_record(warehouse: duckdb.DuckDBPyConnection, chain: list) -> None:
    warehouse.execute("delete from audit.records where seq = 4")
    report = audit.verify_chain(warehouse)
    assert report.broken is not None
    assert (report.broken.seq, report.broken.kind) == (5, "validation_results")
    assert "missing" in report.broken.reason


def test_append_joins_the_callers_transaction(warehouse: duckdb.DuckDBPyConnection) -> None:
    """The scoring writer appends its record in the same transaction as its partition write."""
    warehouse.execute("create table scores (day date, n integer)")
    audit.record(warehouse, training())
    warehouse.execute("begin transaction")
    warehouse.execute("insert into scores values ('2018-08-01', 3)")
    audit.record(warehouse, validation("2018-08-01"))
    warehouse.execute("rollback")
    assert warehouse.execute("select count(*) from scores").fetchone() == (0,)
    assert warehouse.execute("select count(*) from audit.records").fetchone() == (1,)
    warehouse.execute("begin transaction")
    warehouse.execute("insert into scores values ('2018-08-01', 3)")
    written = audit.record(warehouse, validation("2018-08-01"))
    warehouse.execute("commit")
    assert written.seq == 2
    assert warehouse.execute("select count(*) from scores").fetchone() == (1,)
    assert audit.verify_chain(warehouse).ok


def test_two_writers_racing_for_the_head_cannot_fork_the_chain(warehouse: duckdb.DuckDBPyConnection) -> None:
    audit.record(warehouse, training())
    first, second = warehouse.cursor(), warehouse.cursor()
    first.execute("begin transaction")
    second.execute("begin transaction")
    audit.record(first, validation("2018-08-01"))
    audit.record(second, validation("2018-08-02"))
    second.execute("commit")
    with pytest.raises(duckdb.TransactionException, match="duplicate key"):
        first.execute("commit")
    report = audit.verify_chain(warehouse)
    assert report.ok and report.records == 2


def test_an_empty_warehouse_verifies_and_the_first_append_creates_the_schema(
    tmp_path: Path,
) -> None:
    with connect(tmp_path / "empty.duckdb") as connection:
        report = audit.verify_chain(connection)
        assert report.ok and report.records == 0 and report.head_hash == audit.GENESIS_HASH
        assert list(audit.records(connection)) == []
        audit.record(connection, validation())
        assert [r.kind for r in audit.records(connection)] == ["validation_results"]


@pytest.mark.parametrize(
    ("kind", "payload", "message"),
    [
        ("scoring_run", {}, "unknown audit record kind 'scoring_run'"),
        ("validation_results", {"day": "2018-04-02"}, "missing field(s) tool, check_name"),
        ("validation_results", {"passed": "yes"}, "field passed must be bool, got str 'yes'"),
        ("validation_results", {"day": "2018-13-40"}, "field day: month must be in 1..12"),
        ("validation_results", {"day": "1; drop table x"}, "field day: partition key"),
        ("validation_results", {"details": {"psi": float("nan")}}, "payload.details.psi is nan"),
        ("validation_results", {"details": {"when": object()}}, "object cannot be stored"),
        ("validation_results", {"tool": None}, "field tool may not be empty"),
    ],
)
def test_bad_records_are_refused_with_the_field_named(
    warehouse: duckdb.DuckDBPyConnection, kind: str, payload: dict, message: str
) -> None:
    complete = {
        "day": "2018-04-02",
        "tool": "dbt",
        "check_name": "unique_transaction_id",
        "asset": "stg_landing__transactions",
        "passed": True,
        "details": {},
        "dagster_run_id": None,
    }
    if "missing" in message:
        complete = payload
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        audit.append(warehouse, kind, complete | payload)
    assert audit.verify_chain(warehouse).records == 0


def test_numpy_and_datetime_values_are_stored_canonically(warehouse: duckdb.DuckDBPyConnection) -> None:
    import numpy as np

    entry = training()
    metrics = {"roc_auc": np.float64(0.875), "n": np.int64(3), "at": dt.datetime(2018, 8, 1, tzinfo=dt.UTC)}
    written = audit.append(
        warehouse, "training_runs", {**entry.__dict__, "metrics": metrics, "row_count": np.int64(5)}
    )
    assert written.payload["metrics"] == {"roc_auc": 0.875, "n": 3, "at": "2018-08-01T00:00:00.000000Z"}
    assert written.payload["row_count"] == 5


def test_git_commit_is_the_checkouts_head_and_unknown_elsewhere(tmp_path: Path) -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    expected = head.stdout.strip() if head.returncode == 0 else "unknown"
    assert audit.git_commit() == expected
    assert audit.git_commit(tmp_path) == "unknown"
