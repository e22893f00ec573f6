"""Lineage answers are rebuilt from the records: each field traced back to what the simulated pipeline did.

The records are a few days of the pipeline as ``tests.support.build_lineage_warehouse`` writes them, with the
truth of what happened to check against.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import duckdb
import pytest

from jobs.governance import audit
from jobs.governance.lineage import (
    LineageNotFound,
    champion_periods,
    model_lineage,
    partition_lineage,
    render,
    transaction_lineage,
)
from jobs.governance.model_report import write_model_report
from jobs.monitoring.monitors import DriftReport, PerformanceReport, Skipped
from jobs.platform.layout import SCORES_TABLE
from jobs.platform.warehouse import connect
from jobs.training.metrics import HoldoutMetrics
from tests.support import (
    LINEAGE_FEATURE_SET,
    LINEAGE_MODEL,
    LINEAGE_THRESHOLD,
    build_lineage_warehouse,
    score_partition,
)


@pytest.fixture
def warehouse(tmp_path: Path) -> tuple[duckdb.DuckDBPyConnection, dict[str, Any]]:
    truth = build_lineage_warehouse(tmp_path / "warehouse.duckdb")
    with connect(tmp_path / "warehouse.duckdb", read_only=True) as connection:
        yield connection, truth


def test_a_random_scored_row_traces_back_to_what_the_pipeline_did(warehouse) -> None:
    connection, truth = warehouse
    rows = [(day, row) for day, scored in truth["scored"].items() for row in scored]
    for day, row in random.Random(7).sample(rows, 4):
        answer = transaction_lineage(connection, row["transaction_id"])
        version = str(row["model_version"])
        model = truth["models"][version]
        assert answer["gaps"] == []
        assert answer["decision"]["score"] == row["score"]
        assert answer["decision"]["decision"] == ("alert" if row["decision"] else "no alert")
        assert answer["decision"]["reasons"] == [r for r in (row["reason_1"], row["reason_2"]) if r]
        assert answer["transaction"]["tx_datetime"] == row["tx_datetime"].isoformat().replace("+00:00", "Z")
        assert answer["model"]["model_version"] == version
        assert answer["model"]["artifact_sha256"] == model["artifact_sha256"]
        assert answer["model"]["mlflow_run_id"] == model["mlflow_run_id"]
        training = answer["training"]
        assert (training["train_start"], training["train_end"]) == (model["train_start"], model["train_end"])
        assert training["data_digest"] == model["data_digest"]
        assert answer["features"] == {
            "scored_with": LINEAGE_FEATURE_SET,
            "model_trained_on": LINEAGE_FEATURE_SET,
        }
        gated = [(v["tool"], v["check_name"], v["dagster_run_id"]) for v in answer["validation"]]
        assert gated == [(c["tool"], c["check_name"], c["dagster_run_id"]) for c in truth["checks"][day]]
        runs = {(r["step"], r["dagster_run_id"]) for r in answer["runs"]}
        assert ("scoring", row["dagster_run_id"]) in runs
        assert ("training", model["training_run"]) in runs
        assert ("raw_transactions", f"run-ingest-{day}") in runs
        assert answer["code"]["scoring"] == answer["code"]["training"] == audit.git_commit()
        assert answer["champion"]["champion_version"] == version
        assert answer["champion"]["scored_by_champion"] is True
        ledger = dict(connection.execute("select seq, record_hash from audit.records").fetchall())
        assert all(ledger[r["seq"]] == r["record_hash"] for r in answer["audit_records"])


def test_a_rescored_transaction_names_the_rollback_and_the_person_behind_it(warehouse) -> None:
    connection, _ = warehouse
    answer = transaction_lineage(connection, 102)
    assert answer["model"]["model_version"] == "1"
    assert answer["decision"]["dagster_run_id"] == "run-r3"
    assert answer["champion"]["action"] == "rollback"
    assert answer["champion"]["actor"] == "alice"
    assert ("promotion", "run-promote-1") not in {(r["step"], r["dagster_run_id"]) for r in answer["runs"]}


def test_partition_lineage_lists_every_scoring_of_the_day(warehouse) -> None:
    connection, truth = warehouse
    answer = partition_lineage(connection, "2018-04-03")
    assert answer["gaps"] == []
    assert [(r["model"], r["row_count"], r["current"]) for r in answer["scoring_runs"]] == [
        (f"{LINEAGE_MODEL} v2", 6, False),
        (f"{LINEAGE_MODEL} v1", 4, True),
    ]
    rows = truth["scored"]["2018-04-03"]
    assert answer["scores"]["rows"] == len(rows)
    expected = {}
    for row in rows:
        label = "alert" if row["decision"] else "no alert"
        expected[label] = expected.get(label, 0) + 1
    assert answer["scores"]["decisions"] == expected
    assert answer["model"]["model_version"] == "1"
    assert answer["champion"]["actor"] == "alice"
    assert partition_lineage(connection, dt.date(2018, 4, 2))["model"]["model_version"] == "1"


def test_model_lineage_says_what_trained_it_what_it_scored_and_when_it_was_champion(warehouse) -> None:
    connection, truth = warehouse
    v2 = model_lineage(connection, "2")
    assert v2["training"]["mlflow_run_id"] == truth["models"]["2"]["mlflow_run_id"]
    assert [(p["action"], p["model_version"]) for p in v2["promotions"]] == [
        ("promote", "2"),
        ("rollback", "1"),
    ]
    (period,) = v2["champion_periods"]
    assert period["until"] is not None and period["ended_by"] == "rollback to 1 by alice"
    assert v2["scored"] == {"partitions": 1, "rows": 6, "first_day": "2018-04-03", "last_day": "2018-04-03"}
    v1 = model_lineage(connection, "1", model_name=LINEAGE_MODEL)
    assert [p["became_champion_by"] for p in v1["champion_periods"]] == [
        "promote by pipeline:model_promotion",
        "rollback by alice",
    ]
    assert v1["champion_periods"][-1]["until"] is None
    assert v1["scored"]["partitions"] == 2 and v1["scored"]["rows"] == 5 + 4


def test_champion_periods_ignore_rejections() -> None:
    records = [
        {
            "seq": 1,
            "action": "promote",
            "model_version": "1",
            "recorded_at": "t1",
            "actor": "p",
            "reason": "r",
        },
        {
            "seq": 2,
            "action": "reject",
            "model_version": "2",
            "recorded_at": "t2",
            "actor": "p",
            "reason": "worse",
        },
        {
            "seq": 3,
            "action": "promote",
            "model_version": "3",
            "recorded_at": "t3",
            "actor": "p",
            "reason": "r",
        },
    ]
    periods = champion_periods(records)
    assert [(p["model_version"], p["since"], p["until"]) for p in periods] == [
        ("1", "t1", "t3"),
        ("3", "t3", None),
    ]


@pytest.mark.parametrize(
    ("question", "message"),
    [
        (lambda c: transaction_lineage(c, 999_999), "transaction 999999 was never scored"),
        (lambda c: partition_lineage(c, "2018-04-04"), "partition 2018-04-04 was never scored"),
        (
            lambda c: model_lineage(c, "7"),
            "model version 7 is not registered; known versions: txguard-fraud v1",
        ),
        (lambda c: model_lineage(c, "1", model_name="other"), "model other version 1 is not registered"),
    ],
)
def test_unknown_subjects_raise_a_clear_lineage_not_found(warehouse, question, message: str) -> None:
    connection, _ = warehouse
    with pytest.raises(LineageNotFound, match=message):
        question(connection)


def test_an_empty_warehouse_answers_not_found(tmp_path: Path) -> None:
    with connect(tmp_path / "empty.duckdb") as connection:
        with pytest.raises(LineageNotFound, match="does not exist"):
            transaction_lineage(connection, 1)
        with pytest.raises(LineageNotFound, match="no audit records"):
            model_lineage(connection, "1")
        with pytest.raises(ValueError, match="not a YYYY-MM-DD date"):
            partition_lineage(connection, "2018-04-02'; drop table x")


def test_holes_in_the_record_are_listed_as_gaps(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    truth = build_lineage_warehouse(path)
    with connect(path) as connection:
        score_partition(connection, "2018-04-05", "1", "f" * 64, "run-s5", 501, 3)
        connection.execute(
            f"insert into {SCORES_TABLE} select * replace (601 as transaction_id, 'run-x' as"
            f" dagster_run_id) from {SCORES_TABLE} where transaction_id = 501"
        )
        tampered = transaction_lineage(connection, 501)
        orphan = transaction_lineage(connection, 601)
        partition = partition_lineage(connection, "2018-04-05")
    assert any(truth["models"]["1"]["artifact_sha256"] in gap for gap in tampered["gaps"])
    assert any("no validation result recorded for partition 2018-04-05" in gap for gap in tampered["gaps"])
    assert any(
        "no scoring_runs record for partition 2018-04-05 written by run run-x" in g for g in orphan["gaps"]
    )
    assert any("holds 4 rows for 2018-04-05; its scoring record says 3" in g for g in partition["gaps"])


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_renderers_carry_the_same_answer(warehouse) -> None:
    connection, _ = warehouse
    answer = transaction_lineage(connection, 102)
    assert json.loads(render(answer, "json")) == answer
    text = render(answer, "text")
    assert text.startswith("Lineage of transaction 102\n")
    assert answer["model"]["artifact_sha256"] in text and "alice" in text
    page = render(answer, "html")
    parsed = _Collector()
    parsed.feed(page)
    assert "script" not in parsed.tags and "b" not in parsed.tags
    assert "v2 floods analysts <b>alerts</b>" in "".join(parsed.text)
    assert answer["model"]["artifact_sha256"] in "".join(parsed.text)
    with pytest.raises(ValueError, match="unknown format 'pdf'"):
        render(answer, "pdf")


# --- the summary paragraph --------------------------------------------------------------------------------


def test_the_summary_says_why_each_transaction_was_or_was_not_an_alert(warehouse) -> None:
    connection, truth = warehouse
    for day, rows in truth["scored"].items():
        for row in rows:
            answer = transaction_lineage(connection, row["transaction_id"])
            version = str(row["model_version"])
            score = f"{row['score']:.4g}"
            because = (
                f"it was an alert because {score} ≥ threshold 0.5."
                if row["decision"]
                else f"it was not an alert because {score} < threshold 0.5."
            )
            assert answer["summary"].startswith(
                f"Transaction {row['transaction_id']} was scored {score} on {day} by {LINEAGE_MODEL} version "
                f"{version}, trained on data up to {truth['models'][version]['train_end']}; {because}"
            ), answer["summary"]
            assert answer["decision"]["threshold"] == LINEAGE_THRESHOLD
            reasons = ", ".join(r for r in (row["reason_1"], row["reason_2"]) if r)
            assert f" Main reasons: {reasons}." in answer["summary"]
            assert answer["summary"].endswith("4 checks gated the partition: all passed.")
    rescored = transaction_lineage(connection, 102)["summary"]
    assert "Version 1 was the champion then (rollback by alice)." in rescored
    text = render(transaction_lineage(connection, 102), "text").splitlines()
    assert " ".join(text[2:6]).startswith("Transaction 102 was scored ")


def test_a_decision_that_does_not_follow_from_score_and_threshold_is_a_gap(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    build_lineage_warehouse(path)
    with connect(path) as connection:
        connection.execute(f"update {SCORES_TABLE} set decision = not decision where transaction_id = 1")
        answer = transaction_lineage(connection, 1)
    (gap,) = answer["gaps"]
    assert gap.startswith(
        f"the stored decision ({answer['decision']['decision']}) does not follow from score "
    )
    assert answer["summary"].endswith("The record has 1 gap, listed at the end.")


def test_the_partition_summary_names_the_model_its_alerts_and_what_it_replaced(warehouse) -> None:
    connection, truth = warehouse
    answer = partition_lineage(connection, "2018-04-03")
    alerts = sum(row["decision"] for row in truth["scored"]["2018-04-03"])
    assert answer["scores"]["threshold"] == LINEAGE_THRESHOLD
    assert answer["summary"].startswith(
        f"Partition 2018-04-03 holds 4 scores by {LINEAGE_MODEL} version 1 (threshold 0.5, trained on data"
        " up to 2018-04-07), written by Dagster run run-r3 at "
    )
    assert f": {alerts} alert" in answer["summary"]
    assert (
        f"The day was scored 2 times; earlier scorings by {LINEAGE_MODEL} v2 were replaced."
        in answer["summary"]
    )


# --- the model: scoring folded into periods of days ------------------------------------------------------


def test_a_model_that_scored_many_days_is_summarised_by_period_not_by_record(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    truth = build_lineage_warehouse(path)
    digest = truth["models"]["1"]["artifact_sha256"]
    backfill = [dt.date(2018, 4, 5) + dt.timedelta(days=i) for i in range(40)]
    with connect(path) as connection:
        for i, day in enumerate(backfill):
            score_partition(connection, day.isoformat(), "1", digest, "run-backfill", 10_000 + 10 * i, 2)
        for i, day in enumerate(("2018-05-20", "2018-05-21")):
            score_partition(connection, day, "1", digest, f"run-daily-{day}", 20_000 + 10 * i, 3)
        answer = model_lineage(connection, "1")
        v2 = model_lineage(connection, "2")
    assert answer["scored"] == {
        "partitions": 44,
        "rows": 5 + 4 + 40 * 2 + 2 * 3,
        "first_day": "2018-04-02",
        "last_day": "2018-05-21",
    }
    periods = [
        (p["days"], p["day_count"], p["rows"], p["dagster_run_ids"]) for p in answer["scoring_periods"]
    ]
    assert periods == [
        ("2018-04-02..2018-04-03", 2, 9, ["run-s2", "run-r3"]),
        ("2018-04-05..2018-05-14", 40, 80, ["run-backfill"]),
        ("2018-05-20..2018-05-21", 2, 6, ["run-daily-2018-05-20", "run-daily-2018-05-21"]),
    ]
    assert [p["scorings"] for p in answer["scoring_periods"]] == [2, 40, 2]
    assert [p["replaced_days"] for p in v2["scoring_periods"]] == [1]
    assert "another version has rescored 1 of them since" in v2["summary"]
    assert (
        "It scored 44 days (2018-04-02..2018-05-21, 95 rows) in 3 periods of consecutive days."
        in (answer["summary"])
    )

    text = render(answer, "text")
    assert "  - 2018-04-05..2018-05-14, 40 days, 80 rows, run run-backfill; 40 scoring records, seq " in text
    assert text.count("run-backfill") == 1
    hashes = re.findall(r"\b[0-9a-f]{64}\b", text)
    assert len(answer["audit_records"]) == 5, "training, registration and three promotions"
    assert len(hashes) == len(answer["audit_records"]) + 2, "the records, the artifact and the data digest"
    assert "scoring_runs" not in answer
    page = render(answer, "html")
    assert page.count(">run-backfill<") == 1


# --- monitoring verdicts in the audit chain, and in the model report -------------------------------------


def _monitoring_entries() -> list[audit.MonitoringResult]:
    """Two drift runs (the second after the rollback rescored 2018-04-03 with v1) and one performance run."""
    first = [
        DriftReport(day=dt.date(2018, 4, 2), model_version=1, rows=5, psi={"tx_amount": 0.02, "score": 0.04}),
        DriftReport(day=dt.date(2018, 4, 3), model_version=2, rows=6, psi={"tx_amount": 0.31, "score": 0.05}),
        Skipped(dt.date(2018, 4, 4), "warm-up until 2018-05-08", {"warm_up_until": "2018-05-08"}),
    ]
    second = [DriftReport(day=dt.date(2018, 4, 3), model_version=1, rows=4, psi={"tx_amount": 0.12})]
    performance = [
        Skipped(dt.date(2018, 4, 3), "labels not mature", {"missing_report_days": "2018-04-03"}),
        PerformanceReport(
            evaluated_on=dt.date(2018, 4, 10),
            window_start=dt.date(2018, 4, 2),
            window_end=dt.date(2018, 4, 3),
            rows=9,
            frauds=25,
            model_versions=(1,),
            metrics=HoldoutMetrics(roc_auc=0.91, average_precision=0.62, card_precision_at_100=0.3),
        ),
    ]
    return [
        *audit.monitoring_results("feature_drift", "drift_psi", first, "run-drift-1"),
        *audit.monitoring_results("feature_drift", "drift_psi", second, "run-drift-2"),
        *audit.monitoring_results("model_performance", "performance_floor", performance, "run-perf"),
    ]


def test_monitoring_verdicts_become_typed_audit_records(tmp_path: Path) -> None:
    entries = _monitoring_entries()
    levels = [(e.day.isoformat(), e.asset, e.level, e.passed, e.model_versions) for e in entries]
    assert levels == [
        ("2018-04-02", "feature_drift", "ok", True, ["1"]),
        ("2018-04-03", "feature_drift", "error", False, ["2"]),
        ("2018-04-04", "feature_drift", "skipped", True, []),
        ("2018-04-03", "feature_drift", "warn", False, ["1"]),
        ("2018-04-03", "model_performance", "skipped", True, []),
        ("2018-04-10", "model_performance", "ok", True, ["1"]),
    ]
    assert entries[1].values["worst_feature"] == "tx_amount" and entries[1].values["max_psi"] == 0.31
    assert entries[1].description == "worst PSI 0.310 (tx_amount) is error"
    assert entries[5].values["average_precision"] == 0.62 and entries[5].values["frauds"] == 25
    assert entries[5].description.endswith("above the floors")
    path = tmp_path / "warehouse.duckdb"
    build_lineage_warehouse(path)
    with connect(path) as connection:
        written = [audit.record(connection, entry) for entry in entries]
        stored = connection.execute(
            "select day, asset, check_name, level, passed, model_versions, values ->> '$.max_psi',"
            " dagster_run_id from audit.monitoring_results order by seq"
        ).fetchall()
        assert audit.verify_chain(connection).ok
    assert [record.kind for record in written] == ["monitoring_results"] * len(entries)
    assert stored[1] == (
        dt.date(2018, 4, 3),
        "feature_drift",
        "drift_psi",
        "error",
        False,
        '["2"]',
        "0.31",
        "run-drift-1",
    )
    assert [row[4] for row in stored] == [e.passed for e in entries]


def test_the_model_report_shows_the_monitoring_verdicts_of_the_days_its_version_scored(
    tmp_path: Path,
) -> None:
    path = tmp_path / "warehouse.duckdb"
    build_lineage_warehouse(path)
    with connect(path) as connection:
        for entry in _monitoring_entries():
            audit.record(connection, entry)
        v1 = write_model_report(connection, "1", tmp_path / "docs").markdown.read_text()
        v2 = write_model_report(connection, "2", tmp_path / "docs").markdown.read_text()
    section = v1.split("## 7. Monitoring")[1].split("## 8.")[0]
    assert "| feature_drift:drift_psi | 2 | ok 1, warn 1 |" in section
    assert "| model_performance:performance_floor | 2 | ok 1, skipped 1 |" in section
    rows = [line for line in section.splitlines() if line.startswith("| 2018-")]
    assert rows == [
        "| 2018-04-02 | feature_drift:drift_psi | ok | True | 1 | worst PSI 0.040 (score) is ok"
        " | run-drift-1 |",
        "| 2018-04-03 | feature_drift:drift_psi | warn | False | 1 | worst PSI 0.120 (tx_amount) is warn"
        " | run-drift-2 |",
        "| 2018-04-03 | model_performance:performance_floor | skipped | True | - | skipped: labels not mature"
        " | run-perf |",
        "| 2018-04-10 | model_performance:performance_floor | ok | True | 1 | scored days"
        " 2018-04-02..2018-04-03: AUC 0.9100, AP 0.6200, CP@100 0.3000 on 9 rows, 25 frauds; above the floors"
        " | run-perf |",
    ]
    v2_rows = [line for line in v2.split("## 7. Monitoring")[1].splitlines() if line.startswith("| 2018-")]
    assert [row.split(" | ")[1:3] for row in v2_rows] == [
        ["feature_drift:drift_psi", "error"],
        ["model_performance:performance_floor", "skipped"],
    ]


LEDGER_BEFORE_MONITORING = f"""
create table audit.records (
    seq bigint primary key check (seq >= 1),
    kind varchar not null check (
        kind in ('training_runs', 'model_versions', 'promotions', 'scoring_runs', 'validation_results')
    ),
    recorded_at timestamp not null,
    payload varchar not null check (json_valid(payload)),
    prev_hash varchar not null unique check (length(prev_hash) = 64),
    record_hash varchar not null unique check (record_hash = sha256(prev_hash || chr(10)
        || CAST(seq AS VARCHAR) || chr(10) || kind || chr(10)
        || strftime(recorded_at, '{audit.TIME_FORMAT}') || chr(10) || payload))
)
"""
"""The ledger as deployments created it before monitoring results were a kind of record."""


def _warehouse_from_before_monitoring(path: Path) -> None:
    """The lineage warehouse on a ledger created before monitoring results existed, with its five views."""
    with connect(path) as connection:
        audit.ensure_schema(connection)
        connection.execute("drop view audit.monitoring_results")
        connection.execute("drop table audit.records")
        connection.execute(LEDGER_BEFORE_MONITORING)
    build_lineage_warehouse(path)


def test_a_ledger_from_before_monitoring_records_is_rebuilt_once_without_changing_a_record(
    tmp_path: Path,
) -> None:
    path = tmp_path / "warehouse.duckdb"
    _warehouse_from_before_monitoring(path)
    entry = _monitoring_entries()[0]
    with connect(path) as connection:
        before = connection.execute("select * from audit.records order by seq").fetchall()
        lineage_before = model_lineage(connection, "1")
        with pytest.raises(duckdb.ConstraintException):
            audit.record(connection, entry)
        connection.execute("begin transaction")
        assert audit.admit_new_kinds(connection)
        written = audit.record(connection, entry)
        connection.execute("commit")
        assert (
            connection.execute(
                "select * from audit.records where seq < ? order by seq", [written.seq]
            ).fetchall()
            == before
        )
        assert written.seq == len(before) + 1 and audit.verify_chain(connection).ok
        assert connection.execute("select level from audit.monitoring_results").fetchall() == [("ok",)]
        assert model_lineage(connection, "1")["scoring_periods"] == lineage_before["scoring_periods"]
        assert not audit.admit_new_kinds(connection), "rebuilt once"


def test_a_broken_ledger_from_before_monitoring_records_is_left_for_the_chain_check(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    _warehouse_from_before_monitoring(path)
    edited = "replace(payload, 'alice', 'pipeline:model_promotion')"
    with connect(path) as connection:
        seq = connection.execute("select min(seq) from audit.promotions where actor = 'alice'").fetchone()[0]
        connection.execute(
            f"update audit.records set payload = {edited}, record_hash = sha256(prev_hash || chr(10)"
            f" || CAST(seq AS VARCHAR) || chr(10) || kind || chr(10) || strftime(recorded_at,"
            f" '{audit.TIME_FORMAT}') || chr(10) || {edited}) where seq = {seq}"
        )
        before = connection.execute("select * from audit.records order by seq").fetchall()
        connection.execute("begin transaction")
        assert not audit.admit_new_kinds(connection)
        connection.execute("commit")
        assert connection.execute("select * from audit.records order by seq").fetchall() == before
        with pytest.raises(audit.ChainBroken, match=f"BROKEN at seq {seq + 1}"):
            audit.record(connection, _monitoring_entries()[0])
