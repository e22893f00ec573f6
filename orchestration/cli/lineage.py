"""``txguard lineage``, ``txguard audit verify`` and ``txguard report model``: the compliance trail.

They read the analysts' snapshot, read-only: the answer is the last complete state the pipeline published,
and asking never takes the warehouse's write lock, so it never blocks a run (and a run never blocks it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from jobs.platform.settings import SettingsError, load_settings

if TYPE_CHECKING:
    import duckdb

    from jobs.platform.settings import Settings


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


@contextlib.contextmanager
def _snapshot(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to the snapshot (or another warehouse file); a clear error if it is missing."""
    import duckdb

    from jobs.platform.warehouse import connect

    if not path.exists():
        raise click.ClickException(
            f"no warehouse snapshot at {path}: run the pipeline first (txguard run --from D --to D)"
        )
    try:
        connection = connect(path, read_only=True)
    except duckdb.Error as error:
        raise click.ClickException(f"cannot open {path} read-only: {error}") from None
    with connection:
        yield connection


def _answer(question: Callable[..., dict[str, Any]], args: tuple, fmt: str, output: Path | None) -> None:
    from jobs.governance.lineage import LineageNotFound, render

    with _snapshot(_settings().snapshot_path) as connection:
        try:
            answer = question(connection, *args)
        except (LineageNotFound, ValueError) as error:
            raise click.ClickException(str(error)) from None
    text = render(answer, fmt)
    if output is None:
        click.echo(text, nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    click.echo(f"wrote {output}")


def _format_options(command: Callable) -> Callable:
    command = click.option(
        "--output",
        "-o",
        type=click.Path(dir_okay=False, path_type=Path),
        help="write the answer to this file instead of the terminal",
    )(command)
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["text", "json", "html"]),
        default="text",
        show_default=True,
        help="html is one self-contained page to archive",
    )(command)


@click.group()
def lineage() -> None:
    """The compliance trail of a transaction, a partition or a model version, rebuilt from the records."""


@lineage.command("transaction")
@click.argument("transaction_id", type=int)
@_format_options
def lineage_transaction(transaction_id: int, fmt: str, output: Path | None) -> None:
    """Score, decision and reasons of TRANSACTION_ID, and the model, data, checks, runs and code behind it."""
    from jobs.governance.lineage import transaction_lineage

    _answer(transaction_lineage, (transaction_id,), fmt, output)


@lineage.command("partition")
@click.argument("day", metavar="YYYY-MM-DD")
@_format_options
def lineage_partition(day: str, fmt: str, output: Path | None) -> None:
    """Every scoring of one business day, the model that scored it last and the checks that gated it."""
    from jobs.governance.lineage import partition_lineage

    _answer(partition_lineage, (day,), fmt, output)


@lineage.command("model")
@click.argument("version")
@click.option("--model-name", default=None, help="needed only when several models share VERSION")
@_format_options
def lineage_model(version: str, model_name: str | None, fmt: str, output: Path | None) -> None:
    """What trained model VERSION, when it was champion, and what it scored."""
    from jobs.governance.lineage import model_lineage

    _answer(model_lineage, (version, model_name), fmt, output)


@click.group()
def audit() -> None:
    """Integrity of the append-only audit records."""


@audit.command("verify")
@click.option(
    "--database",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="a warehouse file to check (default: the analysts' snapshot)",
)
def audit_verify(database: Path | None) -> None:
    """Recompute the hash chain of every audit record; exit 1 at the first broken link."""
    from jobs.governance.audit import verify_chain

    with _snapshot(database or _settings().snapshot_path) as connection:
        report = verify_chain(connection)
    if not report.ok:
        raise click.ClickException(report.describe())
    click.echo(report.describe())


@click.group()
def report() -> None:
    """Documents generated from the records."""


@report.command("model")
@click.argument("version")
@click.option("--model-name", default=None, help="needed only when several models share VERSION")
@click.option(
    "--output",
    "-o",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="directory for the Markdown and HTML files (default: $TXGUARD_HOME/reports)",
)
def report_model(version: str, model_name: str | None, out_dir: Path | None) -> None:
    """Technical documentation of model VERSION in the shape of the EU AI Act's Annex IV (Markdown + HTML)."""
    from jobs.governance.lineage import LineageNotFound
    from jobs.governance.model_report import write_model_report

    settings = _settings()
    with _snapshot(settings.snapshot_path) as connection:
        try:
            files = write_model_report(
                connection,
                version,
                out_dir or settings.home / "reports",
                model_name=model_name,
                tracking_uri=settings.tracking_uri,
            )
        except LineageNotFound as error:
            raise click.ClickException(str(error)) from None
    click.echo(f"wrote {files.markdown}\nwrote {files.html}")


commands: list[click.Command] = [lineage, audit, report]
