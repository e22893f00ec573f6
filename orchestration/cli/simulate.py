"""``txguard simulate``: write a landing zone of simulated card transactions, and the bad-file catalogue."""

from __future__ import annotations

import datetime as dt

import click

_DATE = click.DateTime(formats=["%Y-%m-%d"])


@click.command()
@click.option("--customers", default=5_000, show_default=True, type=click.IntRange(min=1), help="customers")
@click.option("--terminals", default=10_000, show_default=True, type=click.IntRange(min=1), help="terminals")
@click.option("--days", default=183, show_default=True, type=click.IntRange(min=1), help="days to simulate")
@click.option("--start", default="2018-04-01", show_default=True, type=_DATE, help="first day, YYYY-MM-DD")
@click.option(
    "--seed", default=0, show_default=True, type=click.IntRange(min=0), help="same seed, same files"
)
@click.option(
    "--landing",
    default=None,
    metavar="PATH_OR_S3_URI",
    help="where to write [default: TXGUARD_LANDING_ROOT, else $TXGUARD_HOME/landing]",
)
@click.option(
    "--format",
    "fmt",
    default="parquet",
    show_default=True,
    type=click.Choice(["csv", "parquet"]),
    help="file format of the landing files",
)
@click.option(
    "--radius",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="a customer uses the terminals closer than this (grid is 100 x 100)",
)
@click.option(
    "--drift-from",
    default=None,
    type=_DATE,
    metavar="YYYY-MM-DD",
    help="from this day on: amounts x1.5, a quarter of the transactions at night, and a new fraud pattern "
    "(bursts of small night-time 'card testing' transactions), so that a PSI drift monitor fires",
)
@click.option(
    "--bad-files",
    is_flag=True,
    help="also write the catalogue of bad files (jobs/simulation/bad_files.py), one per fault, on the days "
    "after the simulated range",
)
@click.option(
    "--no-progress", is_flag=True, help="no progress bar (it is also off when stderr is not a terminal)"
)
def simulate(
    customers: int,
    terminals: int,
    days: int,
    start: dt.datetime,
    seed: int,
    landing: str | None,
    fmt: str,
    radius: float,
    drift_from: dt.datetime | None,
    bad_files: bool,
    no_progress: bool,
) -> None:
    """Write simulated transactions and fraud reports into the landing zone.

    The Fraud Detection Handbook's simulator (defaults: its 5,000 customers, 10,000 terminals and 183 days
    from 2018-04-01, about 1.8 M transactions and 0.84 % fraud): one transactions file and one fraud-reports
    file per day. Fraud reports arrive up to 7 days after the transaction; those that would arrive after the
    last day are not written.
    """
    from jobs.platform.settings import load_settings
    from jobs.simulation.bad_files import write_bad_file_catalogue
    from jobs.simulation.simulator import SimulationConfig, write_landing
    from jobs.simulation.simulator import simulate as run_simulation

    if landing is None:
        landing = load_settings().landing
    try:
        config = SimulationConfig(
            customers=customers,
            terminals=terminals,
            days=days,
            start=start.date(),
            seed=seed,
            radius=radius,
            drift_from=drift_from.date() if drift_from else None,
        )
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    data = run_simulation(config)
    try:
        summary = write_landing(data, landing, fmt, progress=not no_progress)
    except FileExistsError as error:
        raise click.ClickException(str(error)) from None
    click.echo(summary.line())
    if bad_files:
        first = config.end + dt.timedelta(days=1)
        catalogue = write_bad_file_catalogue(
            landing,
            first,
            data.transactions["transaction_id"].to_numpy(),
            customers=customers,
            terminals=terminals,
            seed=seed,
        )
        names = ", ".join(b.name for b in catalogue)
        click.echo(f"bad-file catalogue: {len(catalogue)} files from {first} ({names})")


commands: list[click.Command] = [simulate]
