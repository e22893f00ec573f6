"""The analysts' catalog: the warehouse's tables as day-partitioned Parquet in the lake, and a small DuckDB
file of views over them that is published atomically after every warehouse write.

Why this shape (docs/architecture.md, "Warehouse"):

- A table with a day column (``DAY_COLUMNS``) is published one file per day, at
  ``<tables>/<schema>.<table>/<day>/<version>.parquet``. A file is never modified: a changed day gets a new
  file and the old one is retired, so Spark, Trino or DuckDB can read the files while runs write.
- A publication re-exports only the days it is told changed, and of those only the days whose rows differ
  (a per-day fingerprint), so its cost follows the run's days, not the history. Without days it
  reconciles every day, and so does the first publication of a table: a new table, or every table of a
  home made before this layout, whose whole-file copy is replaced by the first catalog (the migration).
- The catalog is a new DuckDB file each time: a view per day-partitioned table over exactly its current
  files, a copy of every other table (dimensions, the audit ledger; small), the warehouse's own views, and
  ``txguard_catalog.files``, the file list Spark reads. A view matches columns by name only where its files'
  schemas differ (a column added later): that reads every file's footer, a cost that grows with the
  history, where files of one schema need one. ``snapshot`` is a symbolic link switched to it by an
  atomic rename: a reader resolves the link once and reads one catalog, whose files stay in place.
- Retired files are kept ``RETIRED_GRACE_SECONDS``: a connection opened on an older catalog keeps its view
  at least that long after a newer one is published, and sees the new one when it reconnects.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.platform.storage import filesystem, join, write_parquet_atomic
from jobs.platform.warehouse import LOCK_WAIT_SECONDS, connect, open_with_backoff, quoted_relation

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from jobs.platform.settings import Settings

DAY_COLUMNS = ("day", "tx_date", "report_date")
"""A table with a DATE column of one of these names is published by day, on the first one it has."""
CATALOG_SCHEMA = "txguard_catalog"
FILES_TABLE = f"{CATALOG_SCHEMA}.files"
_MANIFEST = "publication.table_files"
_RETIRED = "publication.retired_files"
_LOG = "publication.log"
CATALOG_COPIES_KEPT = 3
CATALOG_GRACE_SECONDS = 60.0
RETIRED_GRACE_SECONDS = 3600.0
_PRIVATE_SCHEMAS = ("publication", "information_schema", "pg_catalog")

_DDL = f"""
create schema if not exists publication;
create table if not exists {_MANIFEST} (
    relation varchar not null,
    day date not null,
    uri varchar not null,
    row_count bigint not null,
    fingerprint hugeint not null,
    published_at timestamptz not null,
    file_schema varchar,
    primary key (relation, day)
);
alter table {_MANIFEST} add column if not exists file_schema varchar;
create table if not exists {_RETIRED} (uri varchar not null, retired_at timestamptz not null);
create table if not exists {_LOG} (
    published_at timestamptz not null,
    catalog varchar not null,
    days integer,
    files_written integer not null,
    files_retired integer not null,
    seconds double not null
);
"""


@dataclass(frozen=True)
class Publication:
    """What one publication did: the catalog it published and the day files it wrote and retired."""

    catalog: Path
    files_written: int
    files_retired: int
    seconds: float


@dataclass(frozen=True)
class _Table:
    relation: str
    day_column: str | None
    has_transaction_id: bool
    """Rows are then written in transaction order, so a day's file is the same on a re-export."""


def publish_snapshot(
    warehouse: Path,
    snapshot: Path,
    *,
    tables: str,
    days: Iterable[dt.date] | None = None,
    relations: Collection[str] | None = None,
) -> Publication:
    """Export the changed days to ``tables`` and atomically point ``snapshot`` at a new catalog over them.

    ``days``: the days this write may have changed, in the day-partitioned ``relations`` (all of them when
    omitted); ``None`` reconciles every day of every table. The warehouse stays open for writing throughout,
    so no other writer changes it between the export and the catalog.
    """
    started = time.perf_counter()
    wanted = None if days is None else sorted(set(days))
    with connect(warehouse) as connection:
        connection.execute(_DDL)
        _register_filesystem(connection, tables)
        found = _tables(connection)
        written = retired = 0
        for table in found:
            if table.day_column is None or (relations is not None and table.relation not in relations):
                continue
            new, old = _export(connection, table, tables, wanted)
            written, retired = written + new, retired + old
        catalog = _new_catalog(connection, snapshot, found)
        _prune_retired(connection)
        _switch(snapshot, catalog)
        _prune_catalogs(catalog.parent.parent, catalog.parent)
        published = Publication(catalog, written, retired, time.perf_counter() - started)
        connection.execute(
            f"insert into {_LOG} values (now(), ?, ?, ?, ?, ?)",
            [str(catalog), None if wanted is None else len(wanted), written, retired, published.seconds],
        )
    return published


def publication_log(warehouse: Path, since: dt.datetime) -> list[Publication]:
    """The publications made since ``since``, oldest first: what each cost (the scale benchmark reads it)."""
    with connect(warehouse, read_only=True) as connection:
        logged = connection.execute(
            f"select catalog, files_written, files_retired, seconds from {_LOG} "
            "where published_at >= ? order by published_at",
            [since],
        ).fetchall()
    return [Publication(Path(name), written, retired, seconds) for name, written, retired, seconds in logged]


def publish(
    settings: Settings, days: Iterable[dt.date] | None = None, relations: Collection[str] | None = None
) -> Publication:
    """``publish_snapshot`` for a data home: its warehouse, its snapshot path and its lake tables."""
    warehouse, snapshot = settings.warehouse_path, settings.snapshot_path
    return publish_snapshot(warehouse, snapshot, tables=settings.lake_tables, days=days, relations=relations)


def _tables(connection: duckdb.DuckDBPyConnection) -> list[_Table]:
    """The warehouse's base tables outside the private schemas, each with its day column if it has one."""
    rows = connection.execute(
        """
        select t.table_schema, t.table_name, list(c.column_name order by c.ordinal_position)
            filter (where c.data_type = 'DATE'), bool_or(c.column_name = 'transaction_id')
        from information_schema.tables t
        join information_schema.columns c using (table_catalog, table_schema, table_name)
        where t.table_type = 'BASE TABLE' and t.table_catalog = current_database()
            and t.table_schema not in (select unnest(?))
        group by all
        order by 1, 2
        """,
        [list(_PRIVATE_SCHEMAS)],
    ).fetchall()
    tables = []
    for schema, name, dates, has_transaction_id in rows:
        day_column = next((c for c in DAY_COLUMNS if c in (dates or [])), None)
        tables.append(_Table(f"{schema}.{name}", day_column, bool(has_transaction_id)))
    return tables


def _export(
    connection: duckdb.DuckDBPyConnection, table: _Table, tables: str, days: list[dt.date] | None
) -> tuple[int, int]:
    """Write a new file for each given day whose rows differ from its published file, and retire the files
    of replaced days and of days that no longer have rows. Returns (files written, files retired)."""
    relation, column = quoted_relation(table.relation), quoted_relation(str(table.day_column))
    published = {
        day: (uri, (int(rows), int(fingerprint)))
        for day, uri, rows, fingerprint in connection.execute(
            f"select day, uri, row_count, fingerprint from {_MANIFEST} where relation = ?", [table.relation]
        ).fetchall()
    }
    if not published:  # never published: a new table, or the first publication of a home made before the lake
        days = None
    scope = "" if days is None else f"where {column} in (select unnest(?::date[]))"
    current: dict[dt.date, tuple[int, int] | None] = dict.fromkeys(days or [])
    current.update(
        (day, (int(rows), int(fingerprint)))
        for day, rows, fingerprint in connection.execute(
            f"select {column}, count(*), sum(hash(t)::hugeint) from {relation} t {scope} group by 1",
            [] if days is None else [days],
        ).fetchall()
    )
    if days is None:
        current.update(dict.fromkeys(set(published) - set(current)))
    now = dt.datetime.now(dt.UTC)
    order = "order by transaction_id" if table.has_transaction_id else ""
    written: list[tuple[object, ...]] = []
    replaced: list[dt.date] = []
    retired: list[tuple[str, dt.datetime]] = []
    for day, facts in sorted(current.items()):
        uri, before = published.get(day, (None, None))
        if facts == before:
            continue
        if uri is not None:
            replaced.append(day)
            retired.append((uri, now))
        if facts is not None:
            uri = join(tables, table.relation, day.isoformat(), f"{_version()}.parquet")
            query = f"select * from {relation} where {column} = ? {order}"
            rows = connection.sql(query, params=[day]).to_arrow_table()
            write_parquet_atomic(rows, uri)
            written.append((table.relation, day, uri, *facts, now, _schema_digest(rows.schema)))
    if not (written or retired):
        return 0, 0
    connection.execute("begin transaction")
    connection.execute(
        f"delete from {_MANIFEST} where relation = ? and day in (select unnest(?::date[]))",
        [table.relation, replaced],
    )
    if written:
        connection.executemany(
            f"insert into {_MANIFEST} (relation, day, uri, row_count, fingerprint, published_at, "
            "file_schema) values (?, ?, ?, ?, ?, ?, ?)",
            written,
        )
    if retired:
        connection.executemany(f"insert into {_RETIRED} values (?, ?)", retired)
    connection.execute("commit")
    return len(written), len(retired)


def _schema_digest(schema: pa.Schema) -> str:
    """A day file's columns and types, in order: files with the same digest can be read as one."""
    return hashlib.sha256(";".join(f"{field.name}:{field.type}" for field in schema).encode()).hexdigest()


def _version() -> str:
    """A name that sorts by creation time and never repeats: for a day file or a catalog folder."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"


def _new_catalog(connection: duckdb.DuckDBPyConnection, snapshot: Path, found: list[_Table]) -> Path:
    """A new catalog file beside ``snapshot``: views over the published files, copies of the small tables,
    the warehouse's views, and the file list. Never modified once written."""
    folder = _versions(snapshot) / _version()
    folder.mkdir(parents=True)
    path = folder / snapshot.name
    warehouse = connection.execute("select current_database()").fetchall()[0][0]
    files = {
        relation: (uris, one_schema)
        for relation, uris, one_schema in connection.execute(
            f"select relation, list(uri order by day), "
            f"count(distinct file_schema) = 1 and count(file_schema) = count(*) from {_MANIFEST} group by 1"
        ).fetchall()
    }
    views = connection.execute(
        "select schema_name, sql from duckdb_views() "
        "where not internal and database_name = current_database() and schema_name not in (select unnest(?))",
        [list(_PRIVATE_SCHEMAS)],
    ).fetchall()
    connection.execute(f"attach {_literal(str(path))} as published")
    try:
        schemas = {t.relation.split(".")[0] for t in found} | {schema for schema, _ in views}
        schemas.add(CATALOG_SCHEMA)
        for schema in sorted(schemas):
            connection.execute(f"create schema if not exists published.{quoted_relation(schema)}")
        for table in found:
            target = f"published.{quoted_relation(table.relation)}"
            if table.day_column is not None and table.relation in files:
                uris, one_schema = files[table.relation]
                listed = ", ".join(_literal(uri) for uri in uris)
                connection.execute(
                    f"create view {target} as "
                    f"select * from read_parquet([{listed}], union_by_name = {str(not one_schema).lower()})"
                )
            else:
                empty = " limit 0" if table.day_column is not None else ""
                connection.execute(f"create table {target} as from {quoted_relation(table.relation)}{empty}")
        connection.execute(
            f"create table published.{FILES_TABLE} as "
            f"select relation, day, uri, row_count from {_MANIFEST} order by relation, day"
        )
        connection.execute("use published")
        try:
            for _, sql in views:
                connection.execute(sql)
        finally:
            connection.execute(f"use {quoted_relation(warehouse)}")
    finally:
        connection.execute("detach published")
    return path


def _register_filesystem(connection: duckdb.DuckDBPyConnection, uri: str) -> None:
    """Let DuckDB read an ``s3://`` lake through s3fs (its own S3 extension is never downloaded here)."""
    if uri.startswith("s3://"):
        connection.register_filesystem(filesystem(uri)[0])


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _versions(snapshot: Path) -> Path:
    return snapshot.parent / f"{snapshot.stem}_versions"


def _switch(snapshot: Path, catalog: Path) -> None:
    """Point ``snapshot`` at ``catalog`` with one atomic rename of a symbolic link."""
    link = snapshot.with_name(f".{snapshot.name}.{uuid.uuid4().hex}.link")
    try:
        os.symlink(os.path.relpath(catalog, snapshot.parent), link)
        os.replace(link, snapshot)
    except BaseException:
        link.unlink(missing_ok=True)
        shutil.rmtree(catalog.parent, ignore_errors=True)
        raise


def _prune_catalogs(versions: Path, current: Path) -> None:
    """Remove catalogs beyond the newest ``CATALOG_COPIES_KEPT`` once they are a minute old."""
    older = sorted(p for p in versions.iterdir() if p.is_dir() and p != current)[: -CATALOG_COPIES_KEPT + 1]
    for folder in older:
        if time.time() - folder.stat().st_mtime > CATALOG_GRACE_SECONDS:
            shutil.rmtree(folder, ignore_errors=True)


def _prune_retired(connection: duckdb.DuckDBPyConnection) -> None:
    """Delete the files retired longer ago than ``RETIRED_GRACE_SECONDS``."""
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=RETIRED_GRACE_SECONDS)
    query = f"select uri from {_RETIRED} where retired_at < ?"
    expired = [uri for (uri,) in connection.execute(query, [cutoff]).fetchall()]
    for uri in expired:
        fs, path = filesystem(uri)
        if fs.exists(path):
            fs.rm(path)
    if expired:
        connection.execute(f"delete from {_RETIRED} where retired_at < ?", [cutoff])


def connect_snapshot(snapshot: Path) -> duckdb.DuckDBPyConnection:
    """An analyst's connection: read-only, and unable to reach any file but the catalog's own (no ATTACH of
    the live warehouse, no file readers elsewhere), so an ad-hoc query can neither block a run nor read
    around the catalog. ``txguard sql`` also refuses statements that write files (``refuse_file_writes``)."""
    if not snapshot.exists():
        raise FileNotFoundError(
            f"no analysts' snapshot at {snapshot}: it is published after the first warehouse write "
            "(run the pipeline first, e.g. txguard run --from D --to D)"
        )
    config = {"autoinstall_known_extensions": False, "TimeZone": "UTC"}
    connection = open_with_backoff(snapshot.resolve(), True, config, LOCK_WAIT_SECONDS)
    uris = [uri for (uri,) in connection.execute(f"select uri from {FILES_TABLE}").fetchall()]
    if uris:
        _register_filesystem(connection, uris[0])
    connection.execute("set allowed_paths = ?", [uris])
    connection.execute("set enable_external_access = false")
    connection.execute("set lock_configuration = true")
    return connection


FILE_WRITING_STATEMENTS = ("COPY", "EXPORT", "COPY_DATABASE")


def refuse_file_writes(connection: duckdb.DuckDBPyConnection, query: str) -> None:
    """Raise ``PermissionError`` for a statement that writes files: the catalog's own files are readable, so
    DuckDB's configuration alone would let a COPY overwrite one."""
    for statement in connection.extract_statements(query):
        if statement.type.name in FILE_WRITING_STATEMENTS:
            raise PermissionError(
                f"{statement.type.name} is not allowed on the analysts' snapshot: it would write files"
            )
