"""The marts on the scores through Dagster: real dbt CLI, a real DuckDB file with tiny scores and reports.

The expected rows are worked out here in Python from the same inputs, so the SQL (join, per-card best
transaction, top-100 cut, ranking) is checked against an independent statement of the rules.
"""

import datetime as dt
from pathlib import Path

import pytest

from jobs.platform.settings import load_settings
from jobs.platform.warehouse import connect
from orchestration.defs import transform
from orchestration.partitions import WAREHOUSE_POOL
from tests.support import materialize

pytestmark = pytest.mark.slow
"""Two dbt builds through Dagster: out of ``make test-fast``."""

DAYS = (dt.date(2018, 4, 1), dt.date(2018, 4, 2))
CARDS_ON_FIRST_DAY = 105  # more than the 100 alerted, so the cut is exercised
SCORES_DDL = """
create schema if not exists scoring;
create table scoring.transaction_scores (
    transaction_id bigint not null, tx_datetime timestamptz not null, customer_id bigint not null,
    terminal_id bigint not null, score double not null, decision boolean not null,
    reason_1 varchar, reason_2 varchar, reason_3 varchar, model_name varchar not null,
    model_version integer not null, feature_set_version varchar not null, dagster_run_id varchar not null,
    scored_at timestamptz not null, day date not null
);
create schema if not exists staging;
create table staging.stg_landing__fraud_reports (
    transaction_id bigint not null, reported_at timestamptz not null, report_date date not null,
    extras varchar, source_file varchar, ingest_run_id varchar
);
"""


def score_rows() -> list[dict]:
    """Day 1: one transaction per card, card 7 has a second, higher one; equal scores on cards 20 and 21.
    Day 2: three cards."""
    rows = []
    for card in range(CARDS_ON_FIRST_DAY):
        score = 0.3 if card in (20, 21) else round((card * 37 % 101) / 101, 4)
        rows.append({"transaction_id": 1000 + card, "customer_id": card, "score": score, "day": DAYS[0]})
    rows.append({"transaction_id": 2000, "customer_id": 7, "score": 0.995, "day": DAYS[0]})
    for card, score in ((1, 0.2), (2, 0.9), (3, 0.5)):
        rows.append({"transaction_id": 3000 + card, "customer_id": card, "score": score, "day": DAYS[1]})
    for position, row in enumerate(rows):
        start = dt.datetime.combine(row["day"], dt.time(), dt.UTC)
        row["tx_datetime"] = start + dt.timedelta(minutes=position)
        row["decision"] = row["score"] >= 0.9
        row["reasons"] = [f"feature_{row['transaction_id']}_{n}" for n in (1, 2, 3)]
    return rows


REPORTS = [  # transaction id, reported at: a second report does not move the first one's time
    (2000, dt.datetime(2018, 4, 3, 9, tzinfo=dt.UTC)),
    (2000, dt.datetime(2018, 4, 9, 9, tzinfo=dt.UTC)),
    (3002, dt.datetime(2018, 4, 2, 22, tzinfo=dt.UTC)),
]


def load_inputs(path: Path, rows: list[dict]) -> None:
    with connect(path) as connection:
        connection.execute(SCORES_DDL)
        for row in rows:
            connection.execute(
                "insert into scoring.transaction_scores values "
                "(?, ?, ?, 5, ?, ?, ?, ?, ?, 'txguard-fraud', 3, 'v1', 'run-1', ?, ?)",
                [
                    row["transaction_id"],
                    row["tx_datetime"],
                    row["customer_id"],
                    row["score"],
                    row["decision"],
                    *row["reasons"],
                    dt.datetime(2018, 4, 3, tzinfo=dt.UTC),
                    row["day"],
                ],
            )
        for transaction_id, reported_at in REPORTS:
            connection.execute(
                "insert into staging.stg_landing__fraud_reports values (?, ?, ?, null, 'f.csv', 'run-0')",
                [transaction_id, reported_at, reported_at.date()],
            )


def expected_alerts(rows: list[dict]) -> list[tuple]:
    """Per day: each card's best transaction (highest score, then lowest id), the 100 best cards ranked."""
    alerts = []
    for day in DAYS:
        best: dict[int, dict] = {}
        for row in sorted(rows, key=lambda r: (-r["score"], r["transaction_id"])):
            if row["day"] == day:
                best.setdefault(row["customer_id"], row)
        ranked = sorted(best.values(), key=lambda r: (-r["score"], r["customer_id"]))[:100]
        alerts += [
            (day, rank, r["customer_id"], r["transaction_id"], r["reasons"][0])
            for rank, r in enumerate(ranked, 1)
        ]
    return alerts


def test_the_scoring_marts_join_reports_and_rank_each_days_top_cards(txguard_home: Path) -> None:
    settings = load_settings()
    rows = score_rows()
    load_inputs(settings.warehouse_path, rows)

    result = materialize(
        [transform.dbt_scoring_marts],
        partition_key=DAYS[1].isoformat(),
        resources={"dbt": transform.defs.resources["dbt"]},
        raise_on_error=True,
    )

    assert result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"fct_transaction_scores", "rpt_daily_alerts"}
    assert all(check.passed for check in result.get_asset_check_evaluations())
    with connect(settings.snapshot_path, read_only=True) as snapshot:
        facts = {
            row[0]: row[1:]
            for row in snapshot.execute(
                "select transaction_id, reported_fraud, reported_at, days_to_report"
                " from marts.fct_transaction_scores"
            ).fetchall()
        }
        alerts = snapshot.execute(
            "select tx_date, alert_rank, customer_id, transaction_id, reason_1"
            " from marts.rpt_daily_alerts order by tx_date, alert_rank"
        ).fetchall()
    assert len(facts) == len(rows)
    assert facts[2000] == (True, REPORTS[0][1], 2)
    assert facts[3002] == (True, REPORTS[2][1], 0)
    assert {tid for tid, fact in facts.items() if fact[0]} == {2000, 3002}
    assert facts[1000] == (False, None, None)
    assert alerts == expected_alerts(rows)
    assert [a[1:4] for a in alerts if a[0] == DAYS[1]] == [(1, 2, 3002), (2, 3, 3003), (3, 1, 3001)]
    assert alerts[0][2:4] == (7, 2000)  # card 7's alert is its higher transaction, with its reasons


def test_the_scoring_marts_are_apart_from_the_other_marts() -> None:
    scoring_keys = {key.to_user_string() for key in transform.dbt_scoring_marts.keys}
    assert scoring_keys == {"fct_transaction_scores", "rpt_daily_alerts"}
    assert not scoring_keys & {key.to_user_string() for key in transform.dbt_marts.keys}
    deps = {
        dep.asset_key.to_user_string()
        for spec in transform.dbt_scoring_marts.specs_by_key.values()
        for dep in spec.deps
    }
    assert {"transaction_scores", "stg_landing__fraud_reports"} <= deps
    assert transform.dbt_scoring_marts.op.pool == WAREHOUSE_POOL
    assert transform.dbt_scoring_marts.partitions_def == transform.dbt_marts.partitions_def
