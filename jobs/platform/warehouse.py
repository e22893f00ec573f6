"""The DuckDB warehouse: one writer (the pipeline); analysts read the catalog published from it
(``jobs.platform.catalog``) and never take the writer's file lock.

DuckDB lets one process at a time open a file for writing. The Dagster pool serialises the pipeline's own
writers; anything else that meets the lock (a CLI command, a second scheduler) waits for it with backoff
instead of failing, up to ``LOCK_WAIT_SECONDS``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datetime as dt

    import duckdb

LOCK_WAIT_SECONDS = 300.0
_FIRST_BACKOFF_S = 0.02
_MAX_BACKOFF_S = 1.0


class WarehouseBusy(TimeoutError):
    """The warehouse file stayed locked by another process for longer than the caller would wait."""


def _is_lock_conflict(error: Exception) -> bool:
    message = str(error)
    return "Could not set lock" in message or "Conflicting lock" in message


def open_with_backoff(path: Path, read_only: bool, config: dict[str, object], lock_timeout_s: float):
    import duckdb

    deadline = time.monotonic() + lock_timeout_s
    backoff = _FIRST_BACKOFF_S
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=config)
        except duckdb.IOException as error:
            left = deadline - time.monotonic()
            if not _is_lock_conflict(error):
                raise
            if left <= 0:
                raise WarehouseBusy(
                    f"{path} is still locked by another process after {lock_timeout_s:.0f} s: {error}"
                ) from error
            time.sleep(min(left, backoff * random.uniform(0.5, 1.0)))
            backoff = min(backoff * 2, _MAX_BACKOFF_S)


def connect(
    path: Path, read_only: bool = False, *, lock_timeout_s: float = LOCK_WAIT_SECONDS
) -> duckdb.DuckDBPyConnection:
    """Open the warehouse, waiting (with backoff) while another process holds its lock."""
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    return open_with_backoff(path, read_only, {"autoinstall_known_extensions": False}, lock_timeout_s)


def quoted_relation(relation: str) -> str:
    """``schema.table`` as quoted identifiers, so a relation name from a manifest is never read as SQL."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in relation.split("."))


def table_rows(connection: duckdb.DuckDBPyConnection, relation: str) -> int:
    return int(connection.execute(f"select count(*) from {quoted_relation(relation)}").fetchone()[0])


def rows_per_day(
    connection: duckdb.DuckDBPyConnection, relation: str, day_column: str, days: Sequence[dt.date]
) -> dict[dt.date, int]:
    """Each day's rows of a day-partitioned table (zero for a day without rows): one day's own number for
    that day's materialization, not the table's total."""
    found = dict.fromkeys(days, 0)
    if not days:
        return found
    column = quoted_relation(day_column)
    rows = connection.execute(
        f"select {column}, count(*) from {quoted_relation(relation)} "
        f"where {column} between ? and ? group by {column}",
        [min(days), max(days)],
    ).fetchall()
    found.update((day, int(count)) for day, count in rows if day in found)
    return found
