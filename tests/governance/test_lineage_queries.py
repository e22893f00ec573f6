"""Lineage answers are rebuilt from the records: each field traced back to what the simulated pipeline did."""

from __future__ import annotations

import datetime as dt
import json
import random
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
from jobs.platform.layout import SCORES_TABLE
from jobs.platform.warehouse import connect

MODEL = "txguard-fraud"
FEATURES = "fs-0123456789ab"
SCORES_DDL = f"""
create schema if not exists scoring;
create table if not exists {SCORES_TABLE} (
    transaction_id bigint, tx_datetime timestamptz, customer_id bigint, terminal_id bigint, score double,
    decision boolean, reason_1 varchar, reason_2 varchar, reason_3 varchar, model_name varchar,
    model_version integer, feature_set_version varchar, dagster_run_id varchar, scored_at timestamptz,
    day date
)
"""


def _validate_day(connection: duckdb.DuckDBPyConnection, day: str, suffix: str = "") -> list[dict[str, Any]]:
    checks = [
        ("pandera", "raw_transactions_contract", "raw_transactions", f"run-ingest-{day}"),
        ("dbt", "unique_fct_transactions_transaction_id", "fct_transactions", f"run-dbt-{day}"),
        ("great_expectations", "stg_transactions_suite", "stg_landing__transactions", f"run-dbt-{day}"),
        ("pandera", "transaction_features_schema", "transaction_features", f"run-features-{day}{suffix}"),
    ]
    for tool, name, asset, run_id in checks:
        audit.record(
            connection,
            audit.ValidationResult(
                day=dt.date.fromisoformat(day),
                tool=tool,
                check_name=name,
                asset=asset,
                passed=True,
                details={"unexpected": 0},
                dagster_run_id=run_id,
            ),
        )
    return [{"tool": t, "check_name": n, "asset": a, "dagster_run_id": r} for t, n, a, r in checks]


def _train_and_register(connection: duckdb.DuckDBPyConnection, version: str, start: str) -> dict[str, Any]:
    truth = {
        "mlflow_run_id": f"mlf-{version}",
        "train_start": start,
        "train_end": (dt.date.fromisoformat(start) + dt.timedelta(days=6)).isoformat(),
        "data_digest": f"{version}" * 64,
        "artifact_sha256": f"{int(version) + 10:x}" * 64,
        "training_run": f"run-train-{version}",
    }
    audit.record(
        connection,
        audit.TrainingRun(
            model_name=MODEL,
            mlflow_run_id=truth["mlflow_run_id"],
            train_start=dt.date.fromisoformat(truth["train_start"]),
            train_end=dt.date.fromisoformat(truth["train_end"]),
            data_digest=truth["data_digest"],
            row_count=1000 * int(version),
            feature_set_version=FEATURES,
            metrics={
                "roc_auc": 0.86 + int(version) / 100,
                "average_precision": 0.6,
                "card_precision_at_100": 0.3,
            },
            params={"num_leaves": 31, "learning_rate": 0.05},
            device="cpu",
            dagster_run_id=truth["training_run"],
            label_cutoff=dt.date.fromisoformat(truth["train_end"]) + dt.timedelta(days=7),
            evaluation={"protocol": "handbook", "holdout_days": 7},
        ),
    )
    audit.record(
        connection,
        audit.ModelVersion(
            model_name=MODEL,
            model_version=version,
            mlflow_run_id=truth["mlflow_run_id"],
            artifact_uri=f"mlflow-artifacts:/1/{truth['mlflow_run_id']}/artifacts/model",
            artifact_sha256=truth["artifact_sha256"],
            feature_set_version=FEATURES,
            dagster_run_id=truth["training_run"],
        ),
    )
    return truth


def _promote(
    connection: duckdb.DuckDBPyConnection, action: str, version: str, previous: str | None, actor: str
):
    return audit.record(
        connection,
        audit.Promotion(
            model_name=MODEL,
            action=action,
            model_version=version,
            previous_version=previous,
            actor=actor,
            reason=f"{action} {version}"
            if actor.startswith("pipeline")
            else "v2 floods analysts <b>alerts</b>",
            metrics={"challenger": {"average_precision": 0.61}, "champion": {"average_precision": 0.6}},
            dagster_run_id=f"run-{action}-{version}" if actor.startswith("pipeline") else None,
        ),
    )


def score_partition(
    connection: duckdb.DuckDBPyConnection,
    day: str,
    version: str,
    digest: str,
    run_id: str,
    first_id: int,
    n: int,
) -> list[dict[str, Any]]:
    """What the scoring writer does: replace the partition and append its record, in one transaction."""
    rng = random.Random(f"{day}{version}")
    scored_at = dt.datetime(2018, 8, 1, 6, tzinfo=dt.UTC) + dt.timedelta(days=int(version))
    rows = []
    for i in range(n):
        score = round(rng.random(), 4)
        rows.append(
            {
                "transaction_id": first_id + i,
                "tx_datetime": dt.datetime.fromisoformat(f"{day}T0{i}:15:00+00:00"),
                "customer_id": 100 + i,
                "terminal_id": 900 + i,
                "score": score,
                "decision": score > 0.5,
                "reason_1": "terminal_id_risk_7day_window high",
                "reason_2": "tx_amount high" if i % 2 else None,
                "reason_3": None,
                "model_name": MODEL,
                "model_version": int(version),
                "feature_set_version": FEATURES,
                "dagster_run_id": run_id,
                "scored_at": scored_at,
                "day": dt.date.fromisoformat(day),
            }
        )
    connection.execute("begin transaction")
    connection.execute(f"delete from {SCORES_TABLE} where day = ?", [day])
    connection.executemany(
        f"insert into {SCORES_TABLE} values ({', '.join('?' * 15)})", [list(r.values()) for r in rows]
    )
    audit.record(
        connection,
        audit.ScoringRun(
            day=dt.date.fromisoformat(day),
            model_name=MODEL,
            model_version=version,
            artifact_sha256=digest,
            feature_set_version=FEATURES,
            row_count=n,
            checks=[{"name": "stg_transactions_suite", "tool": "great_expectations", "passed": True}],
            dagster_run_id=run_id,
            mlflow_run_id=f"mlf-{version}",
            upstream_runs={
                "raw_transactions": f"run-ingest-{day}",
                "transaction_features": f"run-features-{day}",
            },
        ),
    )
    connection.execute("commit")
    return rows


def build_warehouse(path: Path) -> dict[str, Any]:
    """A warehouse as a few days of the pipeline leave it, and the truth of what happened, to check against.

    v1 is trained and promoted and scores 2018-04-02; v2 replaces it and scores 2018-04-03; a person rolls
    back to v1, which rescores 2018-04-03. 2018-04-04 is never scored.
    """
    with connect(path) as connection:
        connection.execute(SCORES_DDL)
        models = {"1": _train_and_register(connection, "1", "2018-04-01")}
        _promote(connection, "promote", "1", None, "pipeline:model_promotion")
        checks = {"2018-04-02": _validate_day(connection, "2018-04-02")}
        scored = {
            "2018-04-02": score_partition(
                connection, "2018-04-02", "1", models["1"]["artifact_sha256"], "run-s2", 1, 5
            )
        }
        models["2"] = _train_and_register(connection, "2", "2018-04-08")
        _promote(connection, "promote", "2", "1", "pipeline:model_promotion")
        checks["2018-04-03"] = _validate_day(connection, "2018-04-03")
        score_partition(connection, "2018-04-03", "2", models["2"]["artifact_sha256"], "run-s3", 101, 6)
        _promote(connection, "rollback", "1", "2", "alice")
        scored["2018-04-03"] = score_partition(
            connection, "2018-04-03", "1", models["1"]["artifact_sha256"], "run-r3", 101, 4
        )
    return {"models": models, "checks": checks, "scored": scored}


@pytest.fixture
def warehouse(tmp_path: Path) -> tuple[duckdb.DuckDBPyConnection, dict[str, Any]]:
    truth = build_warehouse(tmp_path / "warehouse.duckdb")
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
        assert answer["features"] == {"scored_with": FEATURES, "model_trained_on": FEATURES}
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
        (f"{MODEL} v2", 6, False),
        (f"{MODEL} v1", 4, True),
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
    v1 = model_lineage(connection, "1", model_name=MODEL)
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
    truth = build_warehouse(path)
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
