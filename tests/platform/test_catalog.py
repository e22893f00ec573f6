"""The analysts' catalog: day files in the lake written only for changed days, a catalog of views that
answers as the warehouse does, the migration of a home from the whole-file copy, and Spark reading the
same tables."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from jobs.platform.catalog import FILES_TABLE, connect_snapshot, publication_log, publish
from jobs.platform.layout import SCORES_TABLE
from jobs.platform.settings import Settings, load_settings
from jobs.platform.warehouse import connect
from jobs.scoring.store import PARTITIONS_TABLE, write_scores
from orchestration.cli.analyst import sql
from tests.support import scores_for

DAYS = [dt.date(2018, 8, 1), dt.date(2018, 8, 2), dt.date(2018, 8, 3)]
ROWS = {DAYS[0]: 300, DAYS[1]: 120, DAYS[2]: 75}
PER_DAY = "select day, count(*), round(sum(score), 6) from scoring.transaction_scores group by 1 order by 1"


@pytest.fixture
def home(txguard_home: Path) -> Settings:
    """A warehouse with three scored days, a view of its own and a table without days, published once."""
    settings = load_settings()
    for day, rows in ROWS.items():
        write_scores(settings.warehouse_path, day, scores_for(day, rows, "run-1", seed=rows))
    with connect(settings.warehouse_path) as connection:
        connection.execute(
            "create or replace view scoring.daily_alerts as "
            "select day, count(*) filter (where decision) alerts from scoring.transaction_scores group by day"
        )
        connection.execute("create or replace table scoring.reviewers as select 'ana' reviewer, 3 queue")
    publish(settings)
    return settings


def warehouse_answer(settings: Settings, query: str) -> list[tuple]:
    with connect(settings.warehouse_path, read_only=True) as connection:
        return connection.sql(query).fetchall()


def snapshot_answer(settings: Settings, query: str) -> list[tuple]:
    with connect_snapshot(settings.snapshot_path) as connection:
        return connection.sql(query).fetchall()


def day_files(settings: Settings, relation: str) -> dict[dt.date, str]:
    with connect_snapshot(settings.snapshot_path) as connection:
        query = f"select day, uri from {FILES_TABLE} where relation = ?"
        return dict(connection.execute(query, [relation]).fetchall())


def test_the_catalog_answers_as_the_warehouse_does_from_one_file_per_day(home: Settings) -> None:
    assert snapshot_answer(home, PER_DAY) == warehouse_answer(home, PER_DAY)
    assert [count for _, count, _ in snapshot_answer(home, PER_DAY)] == list(ROWS.values())
    alerts = "select day, alerts from scoring.daily_alerts order by day"
    assert snapshot_answer(home, alerts) == warehouse_answer(home, alerts)
    assert snapshot_answer(home, "select reviewer, queue from scoring.reviewers") == [("ana", 3)]
    assert snapshot_answer(home, f"select count(*) from {PARTITIONS_TABLE}") == [(3,)]

    files = day_files(home, SCORES_TABLE)
    assert sorted(files) == DAYS
    for day, uri in files.items():
        assert uri.startswith(f"{home.lake_tables}/{SCORES_TABLE}/{day.isoformat()}/") and Path(uri).exists()
        assert duckdb.sql(f"select count(*) from '{uri}'").fetchall()[0][0] == ROWS[day]
    assert Path(home.snapshot_path).is_symlink() and home.snapshot_path.stat().st_size < 2_000_000


def test_a_publication_writes_only_the_days_that_changed(home: Settings) -> None:
    before = day_files(home, SCORES_TABLE)
    unchanged = publish(home, [DAYS[1]], relations=(SCORES_TABLE, PARTITIONS_TABLE))
    assert (unchanged.files_written, unchanged.files_retired) == (0, 0)
    assert day_files(home, SCORES_TABLE) == before

    write_scores(home.warehouse_path, DAYS[1], scores_for(DAYS[1], 50, "run-2", seed=9))
    changed = publish(home, [DAYS[1]], relations=(SCORES_TABLE, PARTITIONS_TABLE))
    assert (changed.files_written, changed.files_retired) == (2, 2)
    after = day_files(home, SCORES_TABLE)
    assert after[DAYS[0]] == before[DAYS[0]] and after[DAYS[2]] == before[DAYS[2]]
    assert after[DAYS[1]] != before[DAYS[1]]
    assert Path(before[DAYS[1]]).exists(), "a retired file is kept a while"
    assert snapshot_answer(home, PER_DAY) == warehouse_answer(home, PER_DAY)
    assert snapshot_answer(home, PER_DAY)[1][1] == 50
    logged = publication_log(home.warehouse_path, since=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    assert [(p.catalog, p.files_written, p.files_retired) for p in logged[-2:]] == [
        (unchanged.catalog, 0, 0),
        (changed.catalog, 2, 2),
    ]
    assert all(p.seconds > 0 for p in logged)


def test_a_day_without_rows_leaves_the_catalog_and_a_full_reconcile_finds_unannounced_changes(
    home: Settings,
) -> None:
    with connect(home.warehouse_path) as connection:
        connection.execute(f"delete from {SCORES_TABLE} where day = ?", [DAYS[0]])
        connection.execute(f"update {SCORES_TABLE} set score = 0.5 where day = ?", [DAYS[2]])
    publish(home, days=())
    assert snapshot_answer(home, PER_DAY) != warehouse_answer(home, PER_DAY), "days=() republishes no day"
    reconciled = publish(home)
    assert reconciled.files_written == 1 and reconciled.files_retired == 2
    assert snapshot_answer(home, PER_DAY) == warehouse_answer(home, PER_DAY)
    assert sorted(day_files(home, SCORES_TABLE)) == DAYS[1:]


def test_a_connection_keeps_its_catalog_until_it_reconnects(home: Settings) -> None:
    held = duckdb.connect(str(home.snapshot_path), read_only=True)
    try:
        seen_before = held.sql(PER_DAY).fetchall()
        write_scores(home.warehouse_path, DAYS[0], scores_for(DAYS[0], 10, "run-2", seed=3))
        publish(home, [DAYS[0]])
        assert held.sql(PER_DAY).fetchall() == seen_before
    finally:
        held.close()
    assert snapshot_answer(home, PER_DAY)[0][1] == 10


REVIEWED = "select day, count(reviewed), count(*) from scoring.transaction_scores group by 1 order by 1"


def add_reviewed_column(settings: Settings, day: dt.date) -> None:
    """A column added to the scores after the first publication, set on one day."""
    with connect(settings.warehouse_path) as connection:
        connection.execute(f"alter table {SCORES_TABLE} add column reviewed boolean")
        connection.execute(f"update {SCORES_TABLE} set reviewed = true where day = ?", [day])


def test_a_column_added_later_reads_as_null_on_the_days_published_before_it(home: Settings) -> None:
    """The republished day's file has the new column and the others do not: the view matches by name."""
    add_reviewed_column(home, DAYS[1])
    publish(home, [DAYS[1]], relations=(SCORES_TABLE,))
    assert snapshot_answer(home, REVIEWED) == warehouse_answer(home, REVIEWED)
    assert snapshot_answer(home, REVIEWED) == [(DAYS[0], 0, 300), (DAYS[1], 120, 120), (DAYS[2], 0, 75)]


def test_files_published_before_schemas_were_recorded_are_read_by_column_name(home: Settings) -> None:
    """A manifest from before the file schemas were recorded: its files may differ, so they are matched."""
    with connect(home.warehouse_path) as connection:
        connection.execute("alter table publication.table_files drop column file_schema")
    add_reviewed_column(home, DAYS[2])
    publish(home, [DAYS[2]], relations=(SCORES_TABLE,))
    assert snapshot_answer(home, REVIEWED) == [(DAYS[0], 0, 300), (DAYS[1], 0, 120), (DAYS[2], 75, 75)]


def test_a_home_published_as_a_whole_file_copy_migrates_on_its_first_publication(txguard_home: Path) -> None:
    """A home of the previous layout: a warehouse never published to the lake, its snapshot a link to a full
    copy. The first publication, though told of one day only, publishes every day and replaces the link."""
    settings = load_settings()
    for day, rows in ROWS.items():
        write_scores(settings.warehouse_path, day, scores_for(day, rows, "run-1", seed=rows))
    old_copy = settings.snapshot_path.parent / "txguard_snapshot_versions" / "0001-old" / "snapshot.duckdb"
    old_copy.parent.mkdir(parents=True)
    with connect(settings.warehouse_path) as connection:
        connection.execute("checkpoint")
    old_copy.write_bytes(settings.warehouse_path.read_bytes())
    os.symlink(os.path.relpath(old_copy, settings.snapshot_path.parent), settings.snapshot_path)

    migrated = publish(settings, [DAYS[2]], relations=(SCORES_TABLE,))
    assert migrated.files_written == 3
    assert sorted(day_files(settings, SCORES_TABLE)) == DAYS
    assert settings.snapshot_path.resolve() != old_copy.resolve()
    assert snapshot_answer(settings, PER_DAY) == warehouse_answer(settings, PER_DAY)


@pytest.mark.slow
def test_spark_reads_the_published_tables_with_the_same_counts_and_sums(home: Settings, spark) -> None:
    """The scale-out path: the file list in the catalog is all Spark needs (the README shows it)."""
    uris = [uri for uri in day_files(home, SCORES_TABLE).values()]
    spark.read.parquet(*uris).createOrReplaceTempView("transaction_scores")
    by_spark = spark.sql(
        "select day, count(*) n, round(sum(score), 6) s from transaction_scores group by day order by day"
    ).collect()
    assert [(row.day, row.n, row.s) for row in by_spark] == snapshot_answer(home, PER_DAY)


def test_an_analyst_can_read_only_the_catalogs_files_and_write_none(home: Settings) -> None:
    uri = next(iter(day_files(home, SCORES_TABLE).values()))
    runner = CliRunner()
    copied = runner.invoke(sql, [f"copy (select 1 as x) to '{uri}' (format parquet)"])
    assert copied.exit_code == 1 and "COPY is not allowed" in copied.output
    assert duckdb.sql(f"select count(*) from '{uri}'").fetchall()[0][0] == ROWS[DAYS[0]]
    elsewhere = runner.invoke(sql, [f"select count(*) from read_parquet('{home.lake}/*/*.parquet')"])
    assert elsewhere.exit_code == 1 and "disabled by configuration" in elsewhere.output
    direct = runner.invoke(sql, [f"select count(*) from '{uri}'"])
    assert direct.exit_code == 0 and str(ROWS[DAYS[0]]) in direct.output


def test_an_s3_lake_holds_the_tables_and_txguard_sql_reads_them(
    moto_s3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scaled out by configuration: with the lake on S3 (a real S3 API), the day files go there through s3fs,
    and the analysts' connection reads them through the same filesystem."""
    moto_s3.create_bucket(Bucket="txguard")
    monkeypatch.setenv("TXGUARD_LAKE_ROOT", "s3://txguard/lake")
    settings = load_settings()
    for day, rows in ROWS.items():
        write_scores(settings.warehouse_path, day, scores_for(day, rows, "run-1", seed=rows))
    publish(settings)
    keys = [o["Key"] for o in moto_s3.list_objects_v2(Bucket="txguard", Prefix="lake/tables/")["Contents"]]
    assert len([k for k in keys if k.startswith(f"lake/tables/{SCORES_TABLE}/")]) == len(DAYS)
    assert snapshot_answer(settings, PER_DAY) == warehouse_answer(settings, PER_DAY)
