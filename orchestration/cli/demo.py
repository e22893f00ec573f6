"""``txguard demo``: simulate a landing zone, run the whole chain on it, and say where to look.

The demo simulates the days up to yesterday, the newest partition, and makes its first day the data home's
first partition (jobs/platform/days.py), so the UI's daily partitions are the demo's days, all filled.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import click

from orchestration.cli.arguments import PARTITION_DAY, landed_days, refuse
from orchestration.cli.pipeline import prepared_settings, run_range_or_exit

DEMO_CUSTOMERS = 1_000
DEMO_TERMINALS = 2_000
DEMO_DAYS = 75


def demo_window(days: int, last: dt.date) -> tuple[dt.date, dt.date]:
    """The first and last of ``days`` days that end on ``last``."""
    return last - dt.timedelta(days=days - 1), last


@click.command()
@click.option("--customers", default=DEMO_CUSTOMERS, show_default=True, type=click.IntRange(min=10))
@click.option("--terminals", default=DEMO_TERMINALS, show_default=True, type=click.IntRange(min=10))
@click.option("--days", default=DEMO_DAYS, show_default=True, type=click.IntRange(min=45))
@click.option(
    "--to", "last", default=None, type=PARTITION_DAY, help="last simulated day  [default: yesterday (UTC)]"
)
@click.option("--seed", default=7, show_default=True, type=int)
def demo(customers: int, terminals: int, days: int, last: dt.date | None, seed: int) -> None:
    """Simulate the days up to yesterday into the landing zone (unless it has files), run every asset on them,
    and point at the results."""
    from jobs.platform.days import FIRST_DAY, last_day, record_first_day
    from jobs.platform.settings import load_settings
    from jobs.simulation.simulator import SimulationConfig, simulate, write_landing

    started = time.perf_counter()
    configured = load_settings()
    landed = landed_days(configured.landing)
    if landed:
        first, last = landed[0], landed[-1]
        click.echo(f"landing zone {configured.landing} already has files for {first}..{last}: using them")
    else:
        first, last = demo_window(days, last or last_day())
        if first < FIRST_DAY:
            raise refuse(f"{days} days up to {last} start before {FIRST_DAY}, the first partition", "--days")
        # before the Dagster home is prepared: that loads the partitions, which start on the recorded day
        record_first_day(configured.home, first)
    settings = prepared_settings()
    if not landed:
        config = SimulationConfig(customers=customers, terminals=terminals, days=days, start=first, seed=seed)
        summary = write_landing(simulate(config), settings.landing, "csv")
        click.echo(
            f"simulated {summary.transactions:,} transactions {first}..{last} "
            f"({summary.fraud_rate:.2%} fraud) into {settings.landing} as {summary.files_written} CSV files"
        )
    run_range_or_exit(first, last)
    click.echo(f"\ndemo finished in {time.perf_counter() - started:.0f} s.")
    example = top_alert_query(settings.snapshot_path)
    click.echo("\nWhere to look:")
    click.echo(f'  txguard sql "{ALERTS_BY_DAY}"')
    if example is not None:
        click.echo(f"  txguard lineage transaction {example}   # why was it scored that way?")
    click.echo("  txguard audit verify")
    click.echo(
        "  make ui        the asset graph, runs, checks, schedules and sensors (http://127.0.0.1:3000)"
    )
    click.echo("  make mlflow    the training runs, metrics, plots and model card (http://127.0.0.1:5000)")
    click.echo(f"  data home      {settings.home}")


ALERTS_BY_DAY = (
    "select day, count(*) as scored, count(*) filter (where decision) as alerts, round(max(score), 3) as top "
    "from scoring.transaction_scores group by day order by day desc limit 5"
)


def top_alert_query(snapshot: Path) -> int | None:
    """Print the last days' alert counts from the analysts' snapshot; return the top-scored transaction."""
    from jobs.platform.warehouse import connect

    with connect(snapshot, read_only=True) as connection:
        click.echo(f'\n$ txguard sql "{ALERTS_BY_DAY}"')
        click.echo(connection.sql(ALERTS_BY_DAY).df().to_string(index=False))
        top = connection.execute(
            "select transaction_id from scoring.transaction_scores "
            "order by score desc, transaction_id limit 1"
        ).fetchone()
    return int(top[0]) if top else None


commands: list[click.Command] = [demo]
