"""The scores in the warehouse: one day's partition of ``scoring.transaction_scores`` replaced atomically.

Why the write is shaped this way (docs/architecture.md, "Warehouse"):

- The day's rows are staged as an Arrow table, then swapped in by ONE DuckDB transaction: delete the day's
  rows, insert the staged rows, replace the day's line in ``scoring.score_partitions`` and append the
  partition's audit record (``jobs.governance.audit``), commit. DuckDB logs a transaction only when it
  commits, so a process killed anywhere before the commit leaves the previous rows, and one killed after it
  leaves the new rows; a rerun simply replaces the partition again.
- Idempotence: a rerun of a partition gives the same rows (same model, same features, rows ordered by
  ``transaction_id``), never extra ones. Row identity is every column except the provenance of the write:
  ``dagster_run_id`` and ``run_created_at`` (the run's creation time, the same on every partition and retry
  of a run) come with the batch, and ``scored_at`` is stamped here, in the swap's transaction, so it says
  when the row was written, never earlier than the model version that scored it.
- ``TXGUARD_FAULT_INJECTION`` (tests only, ``Settings.fault_injection``) makes the writer SIGKILL its own
  process at a named point of the swap: ``kill_between_delete_and_insert`` or ``kill_mid_swap`` (new rows
  inserted, partition record and commit not yet done).
- Another process holding the warehouse lock is waited for (``jobs.platform.warehouse.connect``); a
  write-write conflict inside one process (two threads, two days) is retried.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from jobs.platform.layout import SCORES_TABLE
from jobs.platform.settings import FaultPoint, load_settings
from jobs.platform.warehouse import connect

if TYPE_CHECKING:
    import duckdb

    from jobs.governance.audit import ScoringRun

PARTITIONS_TABLE = "scoring.score_partitions"
REASON_COLUMNS = ("reason_1", "reason_2", "reason_3")
WRITTEN_AT_COLUMN = "scored_at"
"""Stamped by the writer when the row is written; a batch never carries it."""
PROVENANCE_COLUMNS = ("dagster_run_id", "run_created_at", WRITTEN_AT_COLUMN)
"""Columns that say which run wrote a row and when; every other column is the same on a rerun."""

SCORES_SCHEMA = pa.schema(
    [
        pa.field("transaction_id", pa.int64(), nullable=False),
        pa.field("tx_datetime", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("customer_id", pa.int64(), nullable=False),
        pa.field("terminal_id", pa.int64(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("decision", pa.bool_(), nullable=False),
        *(pa.field(name, pa.string()) for name in REASON_COLUMNS),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.int32(), nullable=False),
        pa.field("feature_set_version", pa.string(), nullable=False),
        pa.field("dagster_run_id", pa.string(), nullable=False),
        pa.field("run_created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field(WRITTEN_AT_COLUMN, pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("day", pa.date32(), nullable=False),
    ]
)
SCORE_COLUMNS: tuple[str, ...] = tuple(SCORES_SCHEMA.names)
"""The table's columns, as ``read_scores`` returns them."""
BATCH_SCHEMA = SCORES_SCHEMA.remove(SCORES_SCHEMA.get_field_index(WRITTEN_AT_COLUMN))
BATCH_COLUMNS: tuple[str, ...] = tuple(BATCH_SCHEMA.names)
"""The columns a partition write takes, as ``jobs.scoring.batch.score_features`` gives them: all but
``scored_at``."""

_DDL = f"""
create schema if not exists scoring;
create table if not exists {SCORES_TABLE} (
    transaction_id bigint not null,
    tx_datetime timestamptz not null,
    customer_id bigint not null,
    terminal_id bigint not null,
    score double not null,
    decision boolean not null,
    reason_1 varchar,
    reason_2 varchar,
    reason_3 varchar,
    model_name varchar not null,
    model_version integer not null,
    feature_set_version varchar not null,
    dagster_run_id varchar not null,
    run_created_at timestamptz not null,
    scored_at timestamptz not null,
    day date not null
);
create table if not exists {PARTITIONS_TABLE} (
    day date not null,
    row_count bigint not null,
    alert_count bigint not null,
    model_name varchar,
    model_version integer,
    feature_set_version varchar,
    dagster_run_id varchar,
    scored_at timestamptz
);
"""

_CONFLICT_RETRIES = 5


class ScoreWriteError(ValueError):
    """Scores that must not be written: the message names the partition, the row and the rule."""


@dataclass(frozen=True)
class PartitionWrite:
    """What one partition write replaced, for run metadata and logs."""

    day: dt.date
    rows: int
    alerts: int
    replaced_rows: int
    seconds: float


@dataclass(frozen=True)
class PartitionFacts:
    """What the warehouse holds for one day, as the asset checks on the scores judge it."""

    day: dt.date
    rows: int
    distinct_transactions: int
    null_scores: int
    unversioned_rows: int
    alerts: int


def fault_point() -> FaultPoint | None:
    """The kill point the process's settings request; an unknown one is a ``SettingsError``."""
    return load_settings().fault_injection


def _maybe_kill(point: FaultPoint, requested: FaultPoint | None) -> None:
    if requested == point:
        os.kill(os.getpid(), signal.SIGKILL)


def ensure_tables(connection: duckdb.DuckDBPyConnection) -> None:
    """Create the tables; a scores table from before ``run_created_at`` gains it (empty on its old rows)."""
    connection.execute(_DDL)
    connection.execute(f"alter table {SCORES_TABLE} add column if not exists run_created_at timestamptz")


def _staged(day: dt.date, scores: pd.DataFrame) -> pa.Table:
    """The rows as Arrow in table order, after the checks that keep a partition whole and unique."""
    what = f"scores for partition {day}"
    missing = [c for c in BATCH_COLUMNS if c not in scores.columns]
    extra = [c for c in scores.columns if c not in BATCH_COLUMNS]
    if missing or extra:
        raise ScoreWriteError(
            f"{what}: columns differ from a batch of {SCORES_TABLE} (missing {missing}, unexpected {extra}; "
            f"{WRITTEN_AT_COLUMN} is stamped by the writer)"
        )
    required = [field.name for field in BATCH_SCHEMA if not field.nullable]
    null = scores[required].isna().to_numpy()
    if null.any():
        row, column = (int(i) for i in np.argwhere(null)[0])
        raise ScoreWriteError(
            f"{what}, row {row + 1}: {required[column]} is null (rule: only reasons may be null, "
            f"{int(null.any(axis=1).sum())} row(s) affected)"
        )
    try:
        table = pa.Table.from_pandas(scores[list(BATCH_COLUMNS)], schema=BATCH_SCHEMA, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as error:
        raise ScoreWriteError(f"{what}: {error}") from None
    days = table.column("day").to_numpy(zero_copy_only=False).astype("datetime64[D]")
    outside = np.flatnonzero(days != np.datetime64(day, "D"))
    if len(outside):
        raise ScoreWriteError(
            f"{what}, row {outside[0] + 1}: day {days[outside[0]]} is not the partition day "
            f"(rule: a partition write holds only its own day, {len(outside)} row(s) affected)"
        )
    ids = table.column("transaction_id").to_numpy()
    order = np.argsort(ids, kind="stable")
    duplicated = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if len(duplicated):
        raise ScoreWriteError(
            f"{what}, row {order[duplicated[0] + 1] + 1}: transaction_id {ids[order][duplicated[0]]} appears "
            "twice (rule: one score per transaction)"
        )
    score = table.column("score").to_numpy()
    bad = np.flatnonzero(~((score >= 0) & (score <= 1)))
    if len(bad):
        raise ScoreWriteError(
            f"{what}, row {bad[0] + 1}: score {score[bad[0]]} is not a probability in [0, 1]"
        )
    models = (
        table.select(["model_name", "model_version"]).group_by(["model_name", "model_version"]).aggregate([])
    )
    if models.num_rows > 1:
        raise ScoreWriteError(
            f"{what}: rows from {models.num_rows} model versions (rule: one model per partition)"
        )
    return table.take(pa.array(order))


@contextlib.contextmanager
def open_store(warehouse: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """One warehouse connection for a run's partition writes (each write is still its own transaction)."""
    with connect(warehouse) as connection:
        ensure_tables(connection)
        yield connection


def write_partition(
    connection: duckdb.DuckDBPyConnection,
    day: dt.date,
    scores: pd.DataFrame,
    *,
    audit_entry: ScoringRun | None = None,
) -> PartitionWrite:
    """Replace partition ``day`` of the scores table with ``scores`` in one transaction, stamping
    ``scored_at`` with the time of that transaction."""
    return _write_staged(connection, day, _staged(day, scores), fault_point(), audit_entry)


def write_scores(
    warehouse: Path, day: dt.date, scores: pd.DataFrame, *, audit_entry: ScoringRun | None = None
) -> PartitionWrite:
    """``write_partition`` on a connection of its own, opened once the batch and settings are valid."""
    staged, requested = _staged(day, scores), fault_point()
    with open_store(warehouse) as connection:
        return _write_staged(connection, day, staged, requested, audit_entry)


def _write_staged(
    connection: duckdb.DuckDBPyConnection,
    day: dt.date,
    staged: pa.Table,
    requested: str | None,
    audit_entry: ScoringRun | None,
) -> PartitionWrite:
    import duckdb

    started = time.perf_counter()
    connection.register("staged_scores", staged)
    try:
        for attempt in range(_CONFLICT_RETRIES):
            try:
                replaced = _swap(connection, day, requested, audit_entry)
                break
            except duckdb.TransactionException:
                if attempt == _CONFLICT_RETRIES - 1:
                    raise
                time.sleep(0.05 * 2**attempt)
    finally:
        connection.unregister("staged_scores")
    alerts = int(staged.column("decision").to_numpy(zero_copy_only=False).sum())
    return PartitionWrite(day, staged.num_rows, alerts, replaced, time.perf_counter() - started)


def _swap(
    connection: duckdb.DuckDBPyConnection, day: dt.date, requested: str | None, audit_entry: ScoringRun | None
) -> int:
    import duckdb

    columns = ", ".join(BATCH_COLUMNS)
    connection.execute("begin transaction")
    try:
        written_at = dt.datetime.now(dt.UTC)
        replaced = connection.execute(f"delete from {SCORES_TABLE} where day = ?", [day]).fetchone()[0]
        _maybe_kill("kill_between_delete_and_insert", requested)
        connection.execute(
            f"insert into {SCORES_TABLE} ({columns}, {WRITTEN_AT_COLUMN}) "
            f"select {columns}, ? from staged_scores",
            [written_at],
        )
        _maybe_kill("kill_mid_swap", requested)
        connection.execute(f"delete from {PARTITIONS_TABLE} where day = ?", [day])
        connection.execute(
            f"""
            insert into {PARTITIONS_TABLE}
            select ?, count(*), count(*) filter (where decision), any_value(model_name),
                any_value(model_version), any_value(feature_set_version), any_value(dagster_run_id), ?
            from staged_scores
            """,
            [day, written_at],
        )
        if audit_entry is not None:
            from jobs.governance import audit

            audit.record(connection, audit_entry)
        connection.execute("commit")
    except BaseException:
        with contextlib.suppress(duckdb.TransactionException):
            connection.execute("rollback")
        raise
    return int(replaced)


def read_scores(path: Path, start: dt.date | None = None, end: dt.date | None = None) -> pd.DataFrame:
    """The scores of ``[start, end]`` (every day when omitted) from the warehouse or a snapshot.

    Same column types as ``jobs.scoring.batch.score_features`` gives, rows in (day, transaction_id) order.
    """
    with connect(path, read_only=True) as connection:
        connection.execute("set TimeZone = 'UTC'")
        if not _has_table(connection):
            return _to_pandas(SCORES_SCHEMA.empty_table())
        query = f"""
            select {", ".join(SCORE_COLUMNS)} from {SCORES_TABLE}
            where day >= coalesce(cast($start as date), date '0001-01-01')
              and day <= coalesce(cast($end as date), date '9999-12-31')
            order by day, transaction_id
        """
        return _to_pandas(connection.sql(query, params={"start": start, "end": end}).to_arrow_table())


def read_partition_facts(path: Path, days: Sequence[dt.date]) -> dict[dt.date, PartitionFacts]:
    """Each day's rows, distinct transactions, null or NaN scores, rows without a model name or version, and
    alerts, read back from ``path`` after a write: a day without rows counts zeros."""
    found = {day: PartitionFacts(day, 0, 0, 0, 0, 0) for day in days}
    if not days:
        return found
    with connect(path, read_only=True) as connection:
        if not _has_table(connection):
            return found
        rows = connection.execute(
            f"""
            select day, count(*), count(distinct transaction_id),
                count(*) filter (where score is null or isnan(score)),
                count(*) filter (where model_name is null or model_version is null),
                count(*) filter (where decision)
            from {SCORES_TABLE}
            where day between ? and ?
            group by day
            """,
            [min(days), max(days)],
        ).fetchall()
    for day, *counts in rows:
        if day in found:
            found[day] = PartitionFacts(day, *(int(c) for c in counts))
    return found


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas(types_mapper={pa.date32(): pd.ArrowDtype(pa.date32())}.get)


def read_partitions(path: Path) -> pd.DataFrame:
    """One line per scored day: rows, alerts, the model version and the run that wrote it."""
    with connect(path, read_only=True) as connection:
        connection.execute("set TimeZone = 'UTC'")
        if not _has_table(connection):
            return pd.DataFrame()
        return _to_pandas(connection.sql(f"select * from {PARTITIONS_TABLE} order by day").to_arrow_table())


def _has_table(connection: duckdb.DuckDBPyConnection) -> bool:
    schema, table = SCORES_TABLE.split(".")
    found = connection.execute(
        "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
        [schema, table],
    ).fetchall()
    return bool(found[0][0])
