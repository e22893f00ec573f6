"""``txguard lineage``, ``txguard audit verify`` and ``txguard report model``: the compliance trail.

They read the analysts' snapshot, read-only: the answer is the last complete state the pipeline published,
and asking never takes the warehouse's write lock, so it never blocks a run (and a run never blocks it).
``audit verify`` is the exception: it checks the live warehouse, read-only, and waits (bounded) for a run that
is writing, since a snapshot can hide an edit made after it was published.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from jobs.platform.warehouse import LOCK_WAIT_SECONDS

if TYPE_CHECKING:
    import duckdb

    from jobs.governance.lineage import UiLinks
    from jobs.platform.settings import Settings


def _settings() -> Settings:
    from jobs.platform.settings import load_settings

    return load_settings()


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


def _links(settings: Settings) -> UiLinks:
    """Where answers link: this deployment's MLflow UI, ``txguard ui``, and the GX Data Docs once built."""
    from jobs.governance.lineage import UiLinks

    docs = settings.home / "gx" / "data_docs" / "index.html"
    return UiLinks(mlflow=settings.mlflow_ui_url, data_docs=docs.as_uri() if docs.exists() else None)


def _answer(
    question: Callable[..., dict[str, Any]], args: tuple, fmt: str, output: Path | None, **options: Any
) -> None:
    from jobs.governance.lineage import LineageNotFound, render

    settings = _settings()
    with _snapshot(settings.snapshot_path) as connection:
        try:
            answer = question(connection, *args, links=_links(settings), **options)
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
    """Score, decision and reasons of TRANSACTION_ID, and the model, data, checks, runs and code behind it.

    Each reason's feature value and contribution are recomputed from the lake and the verified model.
    """
    from jobs.governance.lineage import ReasonExplainer, transaction_lineage

    settings = _settings()
    explain = ReasonExplainer(settings.lake, settings.tracking_uri)
    _answer(transaction_lineage, (transaction_id,), fmt, output, explain=explain)


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
    """What trained model VERSION, when it was champion, and what it scored, by period of days."""
    from jobs.governance.lineage import model_lineage

    _answer(model_lineage, (version, model_name), fmt, output)


@click.group()
def audit() -> None:
    """Integrity of the append-only audit records."""


@contextlib.contextmanager
def _read_only_waiting(path: Path, wait_s: float) -> Iterator[duckdb.DuckDBPyConnection]:
    """``path`` opened read-only; while a writer holds its lock, say so and wait up to ``wait_s``."""
    import duckdb

    from jobs.platform.warehouse import WarehouseBusy, connect

    if not path.exists():
        raise click.ClickException(
            f"no warehouse at {path}: run the pipeline first (txguard run --from D --to D)"
        )
    try:
        try:
            connection = connect(path, read_only=True, lock_timeout_s=0)
        except WarehouseBusy:
            click.echo(
                f"{path} is being written (a run holds its lock): waiting up to {wait_s:g} s", err=True
            )
            connection = connect(path, read_only=True, lock_timeout_s=wait_s)
    except WarehouseBusy:
        raise click.ClickException(
            f"{path} is still locked by a writer after {wait_s:g} s: verify again when the run ends, or give"
            " a longer --wait"
        ) from None
    except duckdb.Error as error:
        raise click.ClickException(f"cannot open {path} read-only: {error}") from None
    with connection:
        yield connection


@audit.command("verify")
@click.option(
    "--database",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="another warehouse file to check, e.g. the snapshot or a backup (default: the live warehouse)",
)
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    default=LOCK_WAIT_SECONDS,
    show_default=True,
    help="seconds to wait while a pipeline run holds the warehouse's write lock",
)
def audit_verify(database: Path | None, wait_s: float) -> None:
    """Recompute the hash chain of every audit record in the live warehouse, compare it with the chain heads
    kept in MLflow, and exit 1 at the first broken link (an edit, a removed or a rewritten tail).

    A file other than the live warehouse (--database) may end before the newest head, as a snapshot does.
    """
    from jobs.governance.audit import HEADS_EXPERIMENT, HeadsUnavailable, MlflowHeads, verify_chain

    settings = _settings()
    path = database or settings.warehouse_path
    try:
        heads = MlflowHeads.of(settings).all()
    except HeadsUnavailable as error:
        raise click.ClickException(f"{error}; nothing was verified") from None
    with _read_only_waiting(path, wait_s) as connection:
        report = verify_chain(connection, heads, live=path.resolve() == settings.warehouse_path.resolve())
    if not report.ok:
        raise click.ClickException(report.describe())
    click.echo(report.describe())
    if not heads:
        click.echo(
            f"no chain head is kept in MLflow yet (experiment {HEADS_EXPERIMENT}): until a pipeline write"
            " keeps one, removed or rewritten newest records cannot be detected",
            err=True,
        )


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
                links=_links(settings),
            )
        except LineageNotFound as error:
            raise click.ClickException(str(error)) from None
    click.echo(f"wrote {files.markdown}\nwrote {files.html}")


commands: list[click.Command] = [lineage, audit, report]
