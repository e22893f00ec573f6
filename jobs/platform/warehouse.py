"""The DuckDB warehouse: one writer (the pipeline), and a read-only snapshot that analysts query.

After every write the pipeline publishes a copy of the warehouse file and atomically points the snapshot
path at it, so an analyst holding the snapshot open keeps a consistent view, a new connection sees the
latest publication, and no analyst ever takes the writer's file lock.

DuckDB lets one process at a time open a file for writing. The Dagster pool serialises the pipeline's own
writers; anything else that meets the lock (a CLI command, a second scheduler) waits for it with backoff
instead of failing, up to ``LOCK_WAIT_SECONDS``.
"""

from __future__ import annotations

import os
import random
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datetime as dt

    import duckdb

LOCK_WAIT_SECONDS = 300.0
SNAPSHOT_COPIES_KEPT = 3
SNAPSHOT_GRACE_SECONDS = 60.0
_FIRST_BACKOFF_S = 0.02
_MAX_BACKOFF_S = 1.0


class WarehouseBusy(TimeoutError):
    """The warehouse file stayed locked by another process for longer than the caller would wait."""


def _is_lock_conflict(error: Exception) -> bool:
    message = str(error)
    return "Could not set lock" in message or "Conflicting lock" in message


def _open(path: Path, read_only: bool, config: dict[str, object], lock_timeout_s: float):
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
    return _open(path, read_only, {"autoinstall_known_extensions": False}, lock_timeout_s)


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


def connect_snapshot(snapshot: Path) -> duckdb.DuckDBPyConnection:
    """An analyst's connection: read-only, and unable to reach other files (no ATTACH of the live warehouse,
    no COPY, no file readers), so an ad-hoc query can neither block a run nor write anywhere."""
    if not snapshot.exists():
        raise FileNotFoundError(
            f"no analysts' snapshot at {snapshot}: it is published after the first warehouse write "
            "(run the pipeline first, e.g. txguard run --from D --to D)"
        )
    config = {
        "autoinstall_known_extensions": False,
        "enable_external_access": False,
        "lock_configuration": True,
        "TimeZone": "UTC",
    }
    return _open(snapshot, True, config, LOCK_WAIT_SECONDS)


def publish_snapshot(warehouse: Path, snapshot: Path) -> Path:
    """Checkpoint the warehouse and atomically replace the analysts' snapshot with a copy of it.

    DuckDB opens a database file several times while it connects, so renaming a new file over the one a
    reader is opening could hand it the header of one copy and the blocks of another. Each publication is
    therefore a new file that is never modified again, and ``snapshot`` is a symbolic link switched to it
    with an atomic rename: a reader resolves the link once and reads one copy throughout. The copy is taken
    while this process holds the warehouse open, so no other writer changes the file between the checkpoint
    and the end of the copy. The newest copies stay for readers still opening them; older ones are removed
    (a connection already open keeps reading its copy).
    """
    versions = snapshot.parent / f"{snapshot.stem}_versions"
    folder = versions / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    link = snapshot.with_name(f".{snapshot.name}.{uuid.uuid4().hex}.link")
    try:
        with connect(warehouse) as connection:
            connection.execute("checkpoint")
            shutil.copyfile(warehouse, folder / snapshot.name)
        os.symlink(os.path.relpath(folder / snapshot.name, snapshot.parent), link)
        os.replace(link, snapshot)
    except BaseException:
        link.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    _prune_versions(versions, folder)
    return snapshot


def _prune_versions(versions: Path, current: Path) -> None:
    """Remove published copies beyond the newest ``SNAPSHOT_COPIES_KEPT`` once they are a minute old."""
    older = sorted(p for p in versions.iterdir() if p.is_dir() and p != current)[: -SNAPSHOT_COPIES_KEPT + 1]
    for folder in older:
        if time.time() - folder.stat().st_mtime > SNAPSHOT_GRACE_SECONDS:
            shutil.rmtree(folder, ignore_errors=True)
