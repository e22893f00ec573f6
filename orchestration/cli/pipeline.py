"""``txguard run``, ``demo`` and ``ui``: the pipeline through the same Dagster definitions the UI shows."""

from __future__ import annotations

import os
import subprocess
import sys

import click

from jobs.platform.settings import REPO_ROOT, SettingsError, load_settings

OFFLINE_ENVIRONMENT = {
    "DO_NOT_TRACK": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def prepared_settings():
    """Settings from the environment, with the Dagster home ready; a bad setting exits with its name."""
    from orchestration.instance import prepare_dagster_home

    for name, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)

    try:
        settings = load_settings()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    settings.home.mkdir(parents=True, exist_ok=True)
    prepare_dagster_home(settings)
    return settings


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address the web UI binds to")
@click.option("--port", default=3000, show_default=True, type=int)
@click.option("--read-only", is_flag=True, help="serve a read-only UI for reviewers (no daemon)")
def ui(host: str, port: int, read_only: bool) -> None:
    """Start the Dagster web UI (and the daemon that runs schedules and sensors)."""
    prepared_settings()
    workspace = str(REPO_ROOT / "workspace.yaml")
    if read_only:
        argv = ["dagster-webserver", "-w", workspace, "-h", host, "-p", str(port), "--read-only"]
    else:
        argv = ["dagster", "dev", "-w", workspace, "-h", host, "-p", str(port)]
    click.echo(f"Dagster UI on http://{host}:{port}  (DAGSTER_HOME={os.environ['DAGSTER_HOME']})")
    bin_dir = os.path.dirname(sys.executable)
    raise SystemExit(subprocess.call([os.path.join(bin_dir, argv[0]), *argv[1:]], cwd=REPO_ROOT))


@click.command("mlflow")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
def mlflow_ui(host: str, port: int) -> None:
    """Start the MLflow tracking server and UI on the pipeline's tracking store."""
    settings = prepared_settings()
    if not settings.tracking_uri.startswith("sqlite:"):
        raise click.ClickException(f"TXGUARD_MLFLOW_URI={settings.tracking_uri} is a remote server already")
    settings.mlflow_artifact_root.mkdir(parents=True, exist_ok=True)
    argv = [
        os.path.join(os.path.dirname(sys.executable), "mlflow"),
        "server",
        "--backend-store-uri",
        settings.tracking_uri,
        "--artifacts-destination",
        str(settings.mlflow_artifact_root),
        "--host",
        host,
        "--port",
        str(port),
    ]
    click.echo(f"MLflow UI on http://{host}:{port}  (store {settings.tracking_uri})")
    raise SystemExit(subprocess.call(argv))


def run_range_or_exit(start: str, end: str) -> None:
    """Materialize the chain for ``[start, end]`` in one recorded run; exit non-zero if anything failed."""
    import dagster as dg

    from orchestration.definitions import defs
    from orchestration.defs.governance import emit_run_lineage
    from orchestration.runs import run_partition_range

    settings = prepared_settings()
    with dg.DagsterInstance.get() as instance:
        try:
            outcome = run_partition_range(defs, start, end, instance)
        except ValueError as error:
            raise click.ClickException(str(error)) from None
        run = instance.get_run_by_id(outcome.run_id)
        if run is not None:
            sent, where = emit_run_lineage(instance, run, settings, defs.resolve_asset_graph())
            click.echo(f"OpenLineage: {sent} events to {where}")
    click.echo(f"\nrun {outcome.run_id}: {'succeeded' if outcome.success else 'FAILED'}")
    click.echo(f"  materialized: {', '.join(outcome.materialized) or 'nothing'}")
    for label, items in (
        ("failed steps", outcome.failed_steps),
        ("failed checks", outcome.failed_checks),
        ("checks with warnings", outcome.warned_checks),
        ("skipped (upstream failed)", outcome.skipped_steps),
    ):
        if items:
            click.echo(f"  {label}: {', '.join(items)}")
    if not outcome.success:
        raise SystemExit(1)


@click.command("run")
@click.option("--from", "start", required=True, metavar="YYYY-MM-DD", help="first partition (business day)")
@click.option("--to", "end", required=True, metavar="YYYY-MM-DD", help="last partition, inclusive")
def run_command(start: str, end: str) -> None:
    """Materialize every asset for a partition range, headless, as one run the UI shows."""
    run_range_or_exit(start, end)


commands: list[click.Command] = [ui, mlflow_ui, run_command]
