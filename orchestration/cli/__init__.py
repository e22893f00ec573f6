"""The ``txguard`` command: people's hands on the pipeline, the registry, the scores and the audit trail.

Each sub-command lives in its own module and imports its heavy dependencies only when it runs, so the
command line is parsed and checked in a fraction of a second. Errors people cause (a bad setting, a model
artifact that is not the registered one, a missing landing file) end in a line or two with the fix;
``--debug`` shows their traceback instead.
"""

from __future__ import annotations

import subprocess
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import click

from orchestration.cli import analyst, backtest, demo, lineage, models, pipeline, simulate, spark_server
from orchestration.cli.errors import DEBUG, explain_exception


def describe_version() -> str:
    """The package version, and in a git checkout the commit (marked when the tree has local changes)."""
    from jobs.platform.settings import REPO_ROOT

    try:
        text = f"txguard {version('txguard')}"
    except PackageNotFoundError:
        text = "txguard (not installed)"
    if not (REPO_ROOT / ".git").exists():
        return text
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12", "--exclude=*"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return text
    commit, dirty, _ = described.partition("-dirty")
    return f"{text} (commit {commit}{', with local changes' if dirty else ''})"


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(describe_version())
        ctx.exit()


class Txguard(click.Group):
    """The command group; turns the errors people cause into their message and the fix."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as error:
            explained = explain_exception(error)
            if explained is None or ctx.meta.get(DEBUG):
                raise
            raise click.ClickException(explained) from None


@click.group(cls=Txguard, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version (and the git commit in a checkout) and exit.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks, and stream a run's Dagster logs as it runs.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """txguard: batch fraud scoring for card transactions."""
    ctx.meta[DEBUG] = debug
    pipeline.quiet_libraries()


for command in (
    *simulate.commands,
    *pipeline.commands,
    *demo.commands,
    *lineage.commands,
    *analyst.commands,
    *models.commands,
    *backtest.commands,
    *spark_server.commands,
):
    main.add_command(command)
