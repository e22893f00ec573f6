"""Audit records: chained on append, typed for queries, append-only; edits caught, the head kept in MLflow."""

from __future__ import annotations

import datetime as dt
import hashlib
import inspect
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner, Result

from jobs.governance import audit
from jobs.platform.catalog import publish
from jobs.platform.settings import REPO_ROOT, Settings, load_settings
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


def promotion() -> dict[str, object]:
    return {
        "model_name": "txguard-fraud",
        "action": "promote",
        "model_version": "1",
        "previous_version": None,
        "actor": "pipeline:model_promotion",
        "reason": "first model",
        "metrics": {"challenger": {"average_precision": 0.69}},
        "dagster_run_id": "run-train",
    }


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
        audit.append(warehouse, "promotions", promotion()),
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


# --- the chain's head kept in MLflow, checked by every write and by `txguard audit verify` ------------------


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One real MLflow SQLite store for the module; heads are kept per warehouse file, so tests share it."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def heads_for(warehouse: Path, tracking_uri: str) -> audit.MlflowHeads:
    return audit.MlflowHeads(tracking_uri, warehouse, warehouse.parent / "artifacts")


def write_anchored_chain(path: Path, heads: audit.MlflowHeads) -> None:
    """Five records in four writes, as training then scoring leave them: heads kept at seq 2, 3, 4 and 5."""
    writes = [
        [validation(), training()],
        [validation("2018-04-03", passed=False)],
        [promotion()],
        [validation("2018-04-04")],
    ]
    with connect(path) as connection:
        for number, entries in enumerate(writes):
            with audit.anchored(connection, heads, f"write {number}", f"run-{number}"):
                for entry in entries:
                    if isinstance(entry, dict):
                        audit.append(connection, "promotions", entry)
                    else:
                        audit.record(connection, entry)


def rewrite_from(connection: duckdb.DuckDBPyConnection, seq: int, old: str, new: str) -> None:
    """Forge: edit record ``seq`` and recompute its hash and every later link, so the file verifies."""
    rows = connection.execute(
        "select seq, kind, recorded_at, payload from audit.records where seq >= ? order by seq", [seq]
    ).fetchall()
    prev = connection.execute("select record_hash from audit.records where seq = ?", [seq - 1]).fetchone()
    prev_hash = prev[0] if prev else audit.GENESIS_HASH
    for number, kind, recorded_at, payload in rows:
        payload = payload.replace(old, new) if number == seq else payload
        forged = audit.record_hash(prev_hash, number, kind, recorded_at, payload)
        connection.execute(
            "update audit.records set payload = ?, prev_hash = ?, record_hash = ? where seq = ?",
            [payload, prev_hash, forged, number],
        )
        prev_hash = forged


@pytest.fixture
def anchored_chain(tmp_path: Path, tracking_uri: str) -> tuple[Path, audit.MlflowHeads]:
    path = tmp_path / "warehouse.duckdb"
    heads = heads_for(path, tracking_uri)
    write_anchored_chain(path, heads)
    return path, heads


def test_each_write_keeps_the_new_head_in_mlflow_where_it_cannot_be_changed(
    anchored_chain: tuple[Path, audit.MlflowHeads], tracking_uri: str
) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    path, heads = anchored_chain
    with connect(path, read_only=True) as connection:
        stored = dict(connection.execute("select seq, record_hash from audit.records").fetchall())
        report = audit.verify_chain(connection, heads.all())
    kept = heads.all()
    assert [(head.seq, head.record_hash) for head in kept] == [(seq, stored[seq]) for seq in (5, 4, 3, 2)]
    assert heads.newest() == kept[0] == audit.ChainHead(5, stored[5])
    assert report.ok and report.anchor == kept[0]
    assert f"matches the newest head kept outside the warehouse, seq 5 {stored[5]} (MLflow run" in (
        report.describe()
    )
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(kept[0].where.removeprefix("MLflow run "))
    assert run.data.tags["txguard.warehouse"] == str(path.resolve())
    assert (run.data.tags["txguard.write"], run.data.tags["txguard.dagster_run_id"]) == ("write 3", "run-3")
    with pytest.raises(MlflowException, match="Changing param values is not allowed"):
        client.log_param(run.info.run_id, "head_hash", audit.GENESIS_HASH)
    assert heads_for(path.with_name("other.duckdb"), tracking_uri).all() == []


def test_a_truncated_tail_is_broken_against_the_head_kept_in_mlflow(
    anchored_chain: tuple[Path, audit.MlflowHeads],
) -> None:
    """Deleting the newest records leaves a chain that verifies on its own: only the kept head shows it."""
    path, heads = anchored_chain
    with connect(path) as connection:
        connection.execute("delete from audit.records where seq >= 4")
        assert audit.verify_chain(connection).ok
        report = audit.verify_chain(connection, heads.all())
        assert report.broken is not None and (report.broken.seq, report.broken.kind) == (4, "missing")
        assert "records 4..5 are missing: the warehouse ends at seq 3" in report.describe()
        refused = r"BROKEN at seq 4 \(missing\): records 4\.\.5 are missing"
        with (
            pytest.raises(audit.ChainBroken, match=refused),
            audit.anchored(connection, heads, "scoring 2018-04-05", "run-5"),
        ):
            audit.record(connection, validation("2018-04-05"))
        assert audit.chain_head(connection).seq == 3
    assert heads.newest().seq == 5


def test_a_forged_tail_with_recomputed_hashes_is_caught_by_the_head_kept_in_mlflow(
    anchored_chain: tuple[Path, audit.MlflowHeads],
) -> None:
    """The promotion (seq 4) rewritten and every later hash recomputed: the file alone looks intact."""
    path, heads = anchored_chain
    with connect(path) as connection:
        rewrite_from(connection, 4, "pipeline:model_promotion", "alice")
        assert connection.execute("select actor from audit.promotions").fetchone() == ("alice",)
        assert audit.verify_chain(connection).ok
        report = audit.verify_chain(connection, heads.all())
        assert report.broken is not None and (report.broken.seq, report.broken.kind) == (4, "promotions")
        assert "differs from the head kept outside the warehouse, seq 4" in report.broken.reason
        assert "record 4 was rewritten (hashes recomputed)" in report.broken.reason
        with (
            pytest.raises(audit.ChainBroken, match=r"BROKEN at seq 4 \(promotions\)"),
            audit.anchored(connection, heads, "promotion", None),
        ):
            audit.append(connection, "promotions", promotion())
        assert audit.chain_head(connection).seq == 5


def test_an_edit_in_the_middle_refuses_every_later_write(
    anchored_chain: tuple[Path, audit.MlflowHeads],
) -> None:
    """A failed check rewritten as passed, its own hash forged: the next write names the broken link (the
    record itself where a head was kept), and the scoring writer's partition write is rolled back."""
    from jobs.scoring.store import ensure_tables, write_partition
    from tests.support import scores_for, scoring_record

    path, heads = anchored_chain
    day = dt.date(2018, 4, 5)
    with connect(path) as connection:
        ensure_tables(connection)
        write_partition(connection, day, scores_for(day, 5, "run-1"))
        forged = "replace(payload, '\"passed\":false', '\"passed\":true')"
        connection.execute(
            f"update audit.records set payload = {forged},"
            f" record_hash = {FORGE_HASH.replace('payload)', f'{forged})')} where seq = 3"
        )
        with pytest.raises(audit.ChainBroken, match=r"BROKEN at seq 4 \(promotions\): prev_hash") as refused:
            audit.record(connection, validation("2018-04-05"))
        assert refused.value.broken.seq == 4
        entry = scoring_record(day, 7, "run-2", version=2)
        with pytest.raises(audit.ChainBroken, match="BROKEN at seq 4"):
            write_partition(connection, day, scores_for(day, 7, "run-2", version=2), audit_entry=entry)
        kept = connection.execute(
            "select count(*), any_value(dagster_run_id) from scoring.transaction_scores"
        )
        assert kept.fetchall() == [(5, "run-1")]
        assert audit.chain_head(connection).seq == 5
        refused = r"BROKEN at seq 3 \(validation_results\): its record_hash"
        with (
            pytest.raises(audit.ChainBroken, match=refused),
            audit.anchored(connection, heads, "rescore", None),
        ):
            pass
        assert audit.verify_chain(connection, heads.all()).broken.seq == 3


def test_a_ledger_rebuilt_without_its_constraints_is_verified_in_full_before_a_write(
    warehouse: duckdb.DuckDBPyConnection, chain: list
) -> None:
    """Without the CHECK that hashes each row, an edit may keep its old hash: the write recomputes all."""
    warehouse.execute("create table audit.plain as select * from audit.records")
    for view in audit.KINDS:
        warehouse.execute(f"drop view audit.{view}")
    warehouse.execute("drop table audit.records")
    warehouse.execute("alter table audit.plain rename to records")
    assert audit.record(warehouse, validation("2018-04-05")).seq == 6
    warehouse.execute("update audit.records set payload = replace(payload, '0.87', '0.97') where seq = 2")
    with pytest.raises(audit.ChainBroken, match=r"BROKEN at seq 2 \(training_runs\): its content"):
        audit.record(warehouse, validation("2018-04-06"))


def test_a_deleted_mlflow_run_still_pins_its_head(
    anchored_chain: tuple[Path, audit.MlflowHeads], tracking_uri: str
) -> None:
    from mlflow import MlflowClient

    path, heads = anchored_chain
    newest = heads.newest()
    MlflowClient(tracking_uri=tracking_uri).delete_run(newest.where.removeprefix("MLflow run "))
    assert heads.newest() == newest
    with connect(path) as connection:
        connection.execute("delete from audit.records where seq = 5")
        assert audit.verify_chain(connection, heads.all()).broken.seq == 5


def invoke_verify(*args: str) -> Result:
    from orchestration.cli.lineage import audit as audit_group

    return CliRunner().invoke(audit_group, ["verify", *args], catch_exceptions=False)


@pytest.fixture
def live(txguard_home: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The deployment's warehouse with an anchored chain, and its snapshot published right after."""
    monkeypatch.setenv("TXGUARD_MLFLOW_URI", tracking_uri)
    settings = load_settings()
    write_anchored_chain(settings.warehouse_path, audit.MlflowHeads.of(settings))
    publish(settings)
    return settings


def test_audit_verify_reads_the_live_warehouse_while_the_snapshot_is_stale(live: Settings) -> None:
    ok = invoke_verify()
    assert ok.exit_code == 0 and "audit chain OK: 5 records" in ok.output
    assert "matches the newest head kept outside the warehouse, seq 5" in ok.output
    with connect(live.warehouse_path) as connection:
        audit.record(connection, validation("2018-04-05"))
    newer = invoke_verify()
    assert newer.exit_code == 0 and "records 6..6 were written after it" in newer.output
    with connect(live.warehouse_path) as connection:
        connection.execute("delete from audit.records where seq = 6")
        rewrite_from(connection, 2, '"roc_auc":0.87', '"roc_auc":0.97')
    broken = invoke_verify()
    assert broken.exit_code == 1 and "Traceback" not in broken.output
    assert "audit chain BROKEN at seq 2 (training_runs)" in broken.output
    assert "records 1..2 were rewritten (hashes recomputed)" in broken.output
    stale = invoke_verify("--database", str(live.snapshot_path))
    assert stale.exit_code == 0, stale.output
    assert "audit chain OK: 5 records" in stale.output


def test_audit_verify_accepts_a_snapshot_behind_the_newest_head_but_not_a_live_file(live: Settings) -> None:
    with (
        connect(live.warehouse_path) as connection,
        audit.anchored(connection, audit.MlflowHeads.of(live), "scoring 2018-04-05", "run-5"),
    ):
        audit.record(connection, validation("2018-04-05"))
    behind = invoke_verify("--database", str(live.snapshot_path))
    assert behind.exit_code == 0, behind.output
    assert "a copy that ends before the newest head kept outside the warehouse, seq 6" in behind.output
    assert "its records match the head kept at seq 5" in behind.output
    shutil.copyfile(live.snapshot_path, live.warehouse_path)
    truncated = invoke_verify()
    assert truncated.exit_code == 1
    assert (
        "BROKEN at seq 6 (missing): records 6..6 are missing: the warehouse ends at seq 5" in truncated.output
    )


def test_audit_verify_waits_for_a_writer_within_its_bound(live: Settings) -> None:
    def hold_write_lock(seconds: float) -> subprocess.Popen:
        script = (
            f"import time, duckdb; c = duckdb.connect({str(live.warehouse_path)!r});"
            f" print('locked', flush=True); time.sleep({seconds})"
        )
        writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "locked"
        return writer

    writer = hold_write_lock(60)
    try:
        refused = invoke_verify("--wait", "0.5")
    finally:
        writer.kill()
        writer.wait()
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "is being written (a run holds its lock): waiting up to 0.5 s" in refused.output
    assert "is still locked by a writer after 0.5 s" in refused.output
    writer = hold_write_lock(1.5)
    try:
        waited = invoke_verify("--wait", "60")
    finally:
        writer.wait()
    assert waited.exit_code == 0, waited.output
    assert "waiting up to 60 s" in waited.output and "audit chain OK: 5 records" in waited.output


def test_audit_verify_says_when_no_head_is_kept_yet_without_creating_a_store(txguard_home: Path) -> None:
    settings = load_settings()
    with connect(settings.warehouse_path) as connection:
        audit.record(connection, validation())
    result = invoke_verify()
    assert result.exit_code == 0 and "audit chain OK: 1 records" in result.output
    assert "no chain head is kept in MLflow yet (experiment txguard-audit)" in result.output
    assert not (txguard_home / "mlflow").exists()
    missing = invoke_verify("--database", str(txguard_home / "nowhere.duckdb"))
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_a_registry_decision_keeps_a_head_and_is_refused_on_a_broken_chain(live: Settings) -> None:
    """``txguard promote``/``rollback`` and the promotion gate mirror decisions through the same guard."""
    from jobs.registry.decision_records import record_decision
    from jobs.registry.promotion import RegistryRecord

    decision = RegistryRecord(
        action="promote",
        name="txguard-fraud",
        version=2,
        previous_champion=1,
        champion_after=2,
        reason="approved by risk committee",
        actor="alice",
        decided_at="2018-08-02T09:00:00Z",
        metrics={"average_precision": 0.71},
    )
    written = record_decision(live, decision, dagster_run_id=None)
    newest = audit.MlflowHeads.of(live).newest()
    assert written.seq == 6 and newest == audit.ChainHead(6, written.record_hash)
    with connect(live.warehouse_path) as connection:
        connection.execute("delete from audit.records where seq = 6")
    with pytest.raises(audit.ChainBroken, match=r"BROKEN at seq 6 \(missing\)"):
        record_decision(live, decision, dagster_run_id=None)
    with connect(live.snapshot_path, read_only=True) as snapshot:
        assert snapshot.execute("select max(seq) from audit.records").fetchall() == [(6,)]


def test_scoring_keeps_a_head_per_day_and_stops_before_writing_on_a_broken_chain(live: Settings) -> None:
    """``score_days``, the writer behind the scoring asset and ``txguard rescore``, on real features."""
    from jobs.features.definitions import FEATURE_SET_VERSION
    from jobs.registry.aliases import ModelRef
    from jobs.scoring.batch import score_days
    from jobs.scoring.store import read_partitions
    from tests.support import handbook_features, handbook_transactions, small_booster, write_feature_partition

    tx = handbook_transactions(n_customers=60, n_terminals=120, n_days=3)
    features = handbook_features(tx)
    days = sorted(features["tx_datetime"].dt.date.unique())
    for day in days:
        write_feature_partition(live.lake, features[features["tx_datetime"].dt.date == day], day)
    booster = small_booster(features, tx["fraud"].to_numpy(), rounds=5)
    model = ModelRef("txguard-fraud", 1, "mlflow-run", "0" * 64, 0.5, FEATURE_SET_VERSION, "file:///unused")
    gate = {
        "name": "gx_suite",
        "tool": "great_expectations",
        "asset": "stg_landing__transactions",
        "passed": True,
    }
    scored_at = dt.datetime(2018, 4, 4, 6, tzinfo=dt.UTC)
    score_days(
        live,
        days,
        model,
        booster,
        run_id="run-score",
        run_created_at=scored_at,
        checks=[gate],
        explain="none",
    )
    heads = audit.MlflowHeads.of(live)
    with connect(live.warehouse_path, read_only=True) as connection:
        report = audit.verify_chain(connection, heads.all())
        head = audit.chain_head(connection)
    assert report.ok and head.seq == 5 + 2 * len(days) and heads.newest() == head
    assert [h.seq for h in heads.all()][: len(days)] == [head.seq - 2 * i for i in range(len(days))]
    with connect(live.warehouse_path) as connection:
        rewrite_from(connection, 3, '"passed":false', '"passed":true')
    with pytest.raises(audit.ChainBroken, match=r"BROKEN at seq 3 \(validation_results\)"):
        score_days(live, days, model, booster, run_id="run-again", run_created_at=scored_at, explain="none")
    assert set(read_partitions(live.warehouse_path)["dagster_run_id"]) == {"run-score"}
    with connect(live.warehouse_path, read_only=True) as connection:
        assert audit.chain_head(connection).seq == head.seq
