"""The scores partition write: atomic under SIGKILL, idempotent, refusing bad batches, patient with locks.

Real DuckDB files; the kills and the competing writers are real processes.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jobs.platform.layout import SCORES_TABLE
from jobs.platform.settings import FAULT_POINTS, REPO_ROOT
from jobs.platform.warehouse import connect
from jobs.scoring.store import (
    BATCH_COLUMNS,
    PARTITIONS_TABLE,
    PROVENANCE_COLUMNS,
    SCORE_COLUMNS,
    ScoreWriteError,
    read_partitions,
    read_scores,
    write_scores,
)
from tests.support import scores_for, scoring_record

DAY = dt.date(2018, 8, 1)
OTHER = dt.date(2018, 8, 2)
FAULT_ENV = "TXGUARD_FAULT_INJECTION"


def identity(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[[c for c in BATCH_COLUMNS if c not in PROVENANCE_COLUMNS]].reset_index(drop=True)


def count_by_day(path: Path) -> dict[dt.date, int]:
    with connect(path, read_only=True) as connection:
        rows = connection.execute(f"select day, count(*) from {SCORES_TABLE} group by day").fetchall()
    return dict(rows)


def test_a_partition_is_replaced_whole_and_a_rerun_gives_the_same_rows(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    write_scores(warehouse, OTHER, scores_for(OTHER, 30, "run-a"))
    first = write_scores(warehouse, DAY, scores_for(DAY, 120, "run-a"))
    assert (first.rows, first.replaced_rows) == (120, 0)
    stored = read_scores(warehouse, DAY, DAY)
    assert list(stored.columns) == list(SCORE_COLUMNS)

    again = write_scores(warehouse, DAY, scores_for(DAY, 120, "run-b").sample(frac=1, random_state=3))
    assert (again.rows, again.replaced_rows) == (120, 120)
    rerun = read_scores(warehouse, DAY, DAY)
    pd.testing.assert_frame_equal(identity(rerun), identity(stored))
    assert set(rerun["dagster_run_id"]) == {"run-b"}
    assert count_by_day(warehouse) == {DAY: 120, OTHER: 30}

    write_scores(warehouse, DAY, scores_for(DAY, 80, "run-c", version=2))
    assert count_by_day(warehouse) == {DAY: 80, OTHER: 30}
    partitions = read_partitions(warehouse).set_index("day")
    expected_alerts = int(scores_for(DAY, 80, "run-c")["decision"].sum())
    assert partitions.loc[DAY, ["row_count", "alert_count", "model_version"]].tolist() == [
        80,
        expected_alerts,
        2,
    ]
    assert partitions.loc[OTHER, "dagster_run_id"] == "run-a"


def test_the_audit_record_commits_with_the_partition(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    entry = scoring_record(
        DAY, 50, "run-a", checks=[{"name": "artifact_sha256", "tool": "txguard", "passed": True}]
    )
    write_scores(warehouse, DAY, scores_for(DAY, 50, "run-a"), audit_entry=entry)
    bad = scores_for(DAY, 50, "run-b")
    bad.loc[7, "score"] = 1.5
    with pytest.raises(ScoreWriteError):
        write_scores(warehouse, DAY, bad, audit_entry=entry)
    with connect(warehouse, read_only=True) as connection:
        records = connection.execute(
            "select day, dagster_run_id, row_count from audit.scoring_runs"
        ).fetchall()
    assert records == [(DAY, "run-a", 50)]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.assign(day=[DAY] * 59 + [OTHER]), r"row 60: day 2018-08-02 is not the partition day"),
        (
            lambda f: f.assign(
                transaction_id=f["transaction_id"].where(f.index != 9, f["transaction_id"][3])
            ),
            r"transaction_id \d+ appears twice",
        ),
        (lambda f: f.assign(score=f["score"].where(f.index != 4, np.nan)), r"row 5: score is null"),
        (lambda f: f.assign(model_version=[1] * 30 + [2] * 30), r"2 model versions"),
        (lambda f: f.drop(columns=["reason_3"]), r"missing \['reason_3'\]"),
    ],
    ids=["other_day", "duplicate_id", "nan_score", "two_models", "missing_column"],
)
def test_a_bad_batch_is_refused_and_the_partition_kept(tmp_path: Path, mutate, message: str) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    write_scores(warehouse, DAY, scores_for(DAY, 40, "run-a"))
    before = read_scores(warehouse)
    with pytest.raises(ScoreWriteError, match=f"partition {DAY}.*{message}"):
        write_scores(warehouse, DAY, mutate(scores_for(DAY, 60, "run-b")))
    pd.testing.assert_frame_equal(read_scores(warehouse), before)


def test_an_unknown_fault_point_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "kill_eventually")
    with pytest.raises(ValueError, match="kill_between_delete_and_insert, kill_mid_swap"):
        write_scores(tmp_path / "w.duckdb", DAY, scores_for(DAY, 5, "run-a"))
    assert not (tmp_path / "w.duckdb").exists()


WRITER = """
import sys, datetime as dt, pandas as pd
from pathlib import Path
from jobs.scoring.store import write_scores
day = dt.date.fromisoformat(sys.argv[2])
write_scores(Path(sys.argv[1]), day, pd.read_pickle(sys.argv[3]))
print("written", day)
"""


def writer(warehouse: Path, day: dt.date, frame: pd.DataFrame, tmp_path: Path, fault: str | None = None):
    batch = tmp_path / f"batch-{day}-{time.monotonic_ns()}.pkl"
    frame.to_pickle(batch)
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(warehouse), day.isoformat(), str(batch)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("fault", FAULT_POINTS)
def test_sigkill_mid_write_keeps_the_old_rows_and_a_rerun_completes(tmp_path: Path, fault: str) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    write_scores(warehouse, OTHER, scores_for(OTHER, 25, "run-a"))
    write_scores(warehouse, DAY, scores_for(DAY, 200, "run-a"))
    old = read_scores(warehouse)
    old_partitions = read_partitions(warehouse)

    new = scores_for(DAY, 150, "run-b", version=2, seed=1)
    killed = writer(warehouse, DAY, new, tmp_path, fault)
    _, stderr = killed.communicate(timeout=60)
    assert killed.returncode == -9, stderr

    pd.testing.assert_frame_equal(read_scores(warehouse), old)
    pd.testing.assert_frame_equal(read_partitions(warehouse), old_partitions)

    rerun = writer(warehouse, DAY, new, tmp_path)
    _, stderr = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, stderr
    assert count_by_day(warehouse) == {DAY: 150, OTHER: 25}
    pd.testing.assert_frame_equal(
        identity(read_scores(warehouse, DAY, DAY)),
        identity(new.sort_values("transaction_id").astype({"model_version": "int32"})),
        check_dtype=False,
    )
    with connect(warehouse, read_only=True) as connection:
        assert connection.execute(f"select count(*) from {PARTITIONS_TABLE}").fetchone() == (2,)


def test_writers_wait_for_the_lock_instead_of_failing(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    write_scores(warehouse, OTHER, scores_for(OTHER, 10, "run-a"))
    holder = connect(warehouse)
    try:
        writers = [
            writer(warehouse, DAY, scores_for(DAY, 300, "run-b"), tmp_path),
            writer(warehouse, OTHER, scores_for(OTHER, 70, "run-c", seed=2), tmp_path),
        ]
        time.sleep(3)
        assert all(w.poll() is None for w in writers), "a writer finished while the lock was held"
    finally:
        holder.close()
    for w in writers:
        stdout, stderr = w.communicate(timeout=90)
        assert w.returncode == 0, stderr
        assert "written" in stdout
    assert count_by_day(warehouse) == {DAY: 300, OTHER: 70}


def test_read_scores_filters_days_and_handles_a_fresh_warehouse(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    connect(warehouse).close()
    assert read_scores(warehouse).empty
    write_scores(warehouse, DAY, scores_for(DAY, 12, "run-a"))
    write_scores(warehouse, OTHER, scores_for(OTHER, 8, "run-a"))
    assert len(read_scores(warehouse, OTHER)) == 8
    assert len(read_scores(warehouse, end=DAY)) == 12
    assert read_scores(warehouse)["tx_datetime"].dt.tz is not None


def test_a_scores_table_from_before_run_created_at_gains_the_column(tmp_path: Path) -> None:
    import duckdb

    from jobs.scoring.store import SCORES_TABLE, ensure_tables

    connection = duckdb.connect(str(tmp_path / "old.duckdb"))
    connection.execute("create schema scoring")
    old_columns = "transaction_id bigint, scored_at timestamptz, day date"
    connection.execute(f"create table {SCORES_TABLE} ({old_columns})")
    connection.execute(f"insert into {SCORES_TABLE} values (1, now(), date '2018-04-01')")
    ensure_tables(connection)
    columns = [row[0] for row in connection.execute(f"describe {SCORES_TABLE}").fetchall()]
    assert "run_created_at" in columns
    assert connection.execute(f"select count(*) from {SCORES_TABLE}").fetchone() == (1,)
