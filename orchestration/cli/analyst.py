"""``txguard sql`` and ``txguard rescore``: analysts' hands on the scores.

``sql`` reads only the published snapshot, never the live warehouse, so a query can neither block a run
nor see half a partition. ``rescore`` rewrites partitions with the current champion through the same
Dagster job the schedule uses, as one run the UI lists.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import click

from orchestration.cli.arguments import PARTITION_DAY, checked_range, refuse

if TYPE_CHECKING:
    import dagster as dg
    import pandas as pd

FORMATS = ("table", "csv", "json")


def render(frame: pd.DataFrame, fmt: str, max_rows: int) -> str:
    """A query result as a text table (first ``max_rows`` rows), CSV or JSON records (all rows)."""
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "json":
        return frame.to_json(orient="records", date_format="iso", indent=2) + "\n"
    shown = frame.head(max_rows)
    body = shown.to_string(index=False, na_rep="NULL") if len(frame.columns) else "(no columns)"
    footer = f"({len(frame)} row{'s' if len(frame) != 1 else ''}"
    footer += f", first {max_rows} shown)" if len(frame) > max_rows else ")"
    return f"{body}\n{footer}\n"


@click.command("sql")
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--max-rows", default=100, show_default=True, help="rows shown in table format")
def sql(query: str, fmt: str, max_rows: int) -> None:
    """Run QUERY on the analysts' read-only snapshot of the warehouse and print the result; a QUERY of -
    reads it from stdin (txguard sql - < query.sql).

    Example: txguard sql "select day, count(*) alerts from scoring.transaction_scores where decision
    group by day order by day"
    """
    import duckdb

    from jobs.platform.catalog import connect_snapshot, refuse_file_writes
    from jobs.platform.settings import load_settings

    if query == "-":
        query = click.get_text_stream("stdin").read()
    if not query.strip():
        raise refuse("the query is empty; give it as an argument, or - and the query on stdin", "QUERY")
    snapshot = load_settings().snapshot_path
    try:
        with connect_snapshot(snapshot) as connection:
            refuse_file_writes(connection, query)
            result = connection.sql(query)
            frame = result.df() if result is not None else None
    except (FileNotFoundError, PermissionError) as error:
        raise click.ClickException(str(error)) from None
    except duckdb.Error as error:
        raise click.ClickException(f"query failed on the read-only snapshot {snapshot}: {error}") from None
    click.echo("OK" if frame is None else render(frame, fmt, max_rows), nl=frame is None)


def _definitions() -> dg.Definitions:
    from orchestration.definitions import defs

    return defs


@click.command()
@click.option("--from", "start", required=True, type=PARTITION_DAY, help="first partition to rewrite")
@click.option("--to", "end", required=True, type=PARTITION_DAY, help="last partition, inclusive")
def rescore(start: dt.date, end: dt.date) -> None:
    """Rewrite the scores of a partition range with the current @champion, as one Dagster run.

    After ``txguard rollback`` this puts the restored version's scores in place of the rolled-back one's.
    """
    checked_range(start, end)
    import dagster as dg

    from jobs.scoring.store import read_partitions
    from orchestration.cli.pipeline import (
        execute_range,
        exit_unless_succeeded,
        prepared_settings,
        print_outcome,
    )
    from orchestration.defs.scoring import SCORING_JOB

    settings = prepared_settings()
    with dg.DagsterInstance.get() as instance:
        outcome = execute_range(_definitions(), start, end, instance, SCORING_JOB)
        print_outcome(instance, outcome)
    exit_unless_succeeded(outcome)
    partitions = read_partitions(settings.snapshot_path)
    chosen = partitions[partitions["day"].astype(str).between(start.isoformat(), end.isoformat())]
    for row in chosen.itertuples():
        model = f"{row.model_name} v{row.model_version}"
        click.echo(f"  {row.day}: {row.row_count} rows, {row.alert_count} alerts, {model}")


commands: list[click.Command] = [sql, rescore]
