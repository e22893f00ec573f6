"""``txguard sql`` and ``txguard rescore``: analysts' hands on the scores.

``sql`` reads only the published snapshot, never the live warehouse, so a query can neither block a run
nor see half a partition. ``rescore`` rewrites partitions with the current champion through the same
Dagster job the schedule uses, as one run the UI lists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

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
    """Run QUERY on the analysts' read-only snapshot of the warehouse and print the result.

    Example: txguard sql "select day, count(*) alerts from scoring.transaction_scores where decision
    group by day order by day"
    """
    import duckdb

    from jobs.platform.settings import SettingsError, load_settings
    from jobs.platform.warehouse import connect_snapshot

    try:
        snapshot = load_settings().snapshot_path
        with connect_snapshot(snapshot) as connection:
            result = connection.sql(query)
            frame = result.df() if result is not None else None
    except (SettingsError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from None
    except duckdb.Error as error:
        raise click.ClickException(f"query failed on the read-only snapshot {snapshot}: {error}") from None
    click.echo("OK" if frame is None else render(frame, fmt, max_rows), nl=frame is None)


def _definitions() -> dg.Definitions:
    from orchestration.definitions import defs

    return defs


@click.command()
@click.option("--from", "start", required=True, metavar="YYYY-MM-DD", help="first partition to rewrite")
@click.option("--to", "end", required=True, metavar="YYYY-MM-DD", help="last partition, inclusive")
def rescore(start: str, end: str) -> None:
    """Rewrite the scores of a partition range with the current @champion, as one Dagster run.

    After ``txguard rollback`` this puts the restored version's scores in place of the rolled-back one's.
    """
    import dagster as dg

    from jobs.scoring.store import read_partitions
    from orchestration.cli.pipeline import prepared_settings
    from orchestration.defs.scoring import SCORING_JOB
    from orchestration.runs import run_partition_range

    settings = prepared_settings()
    with dg.DagsterInstance.get() as instance:
        try:
            outcome = run_partition_range(_definitions(), start, end, instance, job_name=SCORING_JOB)
        except ValueError as error:
            raise click.ClickException(str(error)) from None
    click.echo(f"\nrun {outcome.run_id}: {'succeeded' if outcome.success else 'FAILED'}")
    if not outcome.success:
        click.echo(f"  failed steps: {', '.join(outcome.failed_steps) or 'none'} (see the run's logs above)")
        raise SystemExit(1)
    partitions = read_partitions(settings.snapshot_path)
    chosen = partitions[partitions["day"].astype(str).between(start, end)]
    for row in chosen.itertuples():
        model = f"{row.model_name} v{row.model_version}"
        click.echo(f"  {row.day}: {row.row_count} rows, {row.alert_count} alerts, {model}")


commands: list[click.Command] = [sql, rescore]
