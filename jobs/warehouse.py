"""The DuckDB warehouse: one writer (the pipeline), and a read-only snapshot that analysts query.

After every write the pipeline publishes a copy of the warehouse file with an atomic rename, so an analyst
holding the snapshot open keeps a consistent view and never takes the writer's file lock.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb


def connect(path: Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    import duckdb

    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    return duckdb.connect(str(path), read_only=read_only, config={"autoinstall_known_extensions": False})


def publish_snapshot(warehouse: Path, snapshot: Path) -> Path:
    """Checkpoint the warehouse and atomically replace the analysts' snapshot with a copy of it."""
    with connect(warehouse) as connection:
        connection.execute("checkpoint")
    staging = snapshot.with_name(f".{snapshot.name}.{uuid.uuid4().hex}.tmp")
    shutil.copyfile(warehouse, staging)
    os.replace(staging, snapshot)
    return snapshot
