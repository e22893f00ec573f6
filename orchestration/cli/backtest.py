"""``txguard backtest``: the weekly backtest of out-of-time scores: a table, an HTML page, an MLflow run.

The range is checked before pandas, matplotlib or MLflow is imported; the computation is
``jobs.monitoring.backtest``. It reads the analysts' snapshot, never the live warehouse.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from orchestration.cli.arguments import PARTITION_DAY, checked_range


@click.command()
@click.option("--from", "start", required=True, type=PARTITION_DAY, help="first scored day")
@click.option("--to", "end", required=True, type=PARTITION_DAY, help="last scored day, inclusive")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="the HTML report; default: $TXGUARD_HOME/reports/backtest-FROM..TO.html",
)
def backtest(start: dt.date, end: dt.date, output: Path | None) -> None:
    """Per ISO week: ROC AUC, AP, card precision@budget, alerts a day, frauds and fraud amount caught and
    missed, from out-of-time scores only. Refuses, naming the missing report days, while the fraud reports
    of the range (up to 7 days after its last day) have not all been ingested.
    """
    checked_range(start, end)
    from jobs.monitoring.backtest import (
        BacktestError,
        compute_backtest,
        log_backtest,
        render_html,
        render_table,
    )
    from jobs.platform.settings import load_settings
    from jobs.training.maturity import ImmatureLabels

    settings = load_settings()
    try:
        result = compute_backtest(settings.snapshot_path, settings.lake, start, end, settings.budget)
    except (ImmatureLabels, BacktestError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(render_table(result))
    html = render_html(result)
    path = output or settings.home / "reports" / f"backtest-{start}..{end}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html)
    run_id = log_backtest(
        result, html, tracking_uri=settings.tracking_uri, artifact_root=settings.mlflow_artifact_root
    )
    click.echo(f"\nreport: {path}\nMLflow run {run_id} in experiment txguard-backtest")


commands: list[click.Command] = [backtest]
