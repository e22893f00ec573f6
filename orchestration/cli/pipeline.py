"""``txguard run``, ``mlflow`` and ``ui``: the pipeline through the same Dagster definitions the UI shows.

A headless run keeps Dagster's console quiet and shows, on a terminal, a bar of the steps it has finished;
at the end it says what was materialized and, for each failed step, the error in a line or two (with the fix
when a person can make it). ``txguard --debug`` streams the run's Dagster logs instead, tracebacks included.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import click

from orchestration.cli import spark_server as warm_spark
from orchestration.cli.arguments import PARTITION_DAY, checked_range, require_landing_files
from orchestration.cli.errors import DEBUG, explain, first_lines, strip_class_prefix

if TYPE_CHECKING:
    import dagster as dg
    from dagster._utils.error import SerializableErrorInfo

    from jobs.platform.settings import Settings
    from orchestration.runs import RangeRunOutcome

OFFLINE_ENVIRONMENT = {
    "DO_NOT_TRACK": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "TQDM_DISABLE": "1",
}
"""No telemetry, and no progress bars but ours: tqdm reads ``TQDM_DISABLE`` as the default of ``disable``
when it is imported, and our own bars pass ``disable`` explicitly."""


def quiet_libraries() -> None:
    """Apply ``OFFLINE_ENVIRONMENT`` (a variable already set wins) before any library reads it."""
    for name, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def prepared_settings() -> Settings:
    """Settings from the environment, with the Dagster home ready."""
    from jobs.platform.settings import load_settings
    from orchestration.instance import prepare_dagster_home

    quiet_libraries()
    settings = load_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    prepare_dagster_home(settings)
    return settings


def debug_requested() -> bool:
    context = click.get_current_context(silent=True)
    return bool(context and context.meta.get(DEBUG))


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address the web UI binds to")
@click.option("--port", default=3000, show_default=True, type=int)
@click.option("--read-only", is_flag=True, help="serve a read-only UI for reviewers (no daemon)")
@click.option(
    "--spark-port",
    default=warm_spark.DEFAULT_CONNECT_PORT,
    show_default=True,
    type=warm_spark.PORT,
    help="port of the warm Spark Connect server started for the feature builds (none is started when the "
    "settings name one, or with --read-only)",
)
def ui(host: str, port: int, read_only: bool, spark_port: int) -> None:
    """Start the Dagster web UI (and the daemon that runs schedules and sensors, with a warm Spark).

    The Spark Connect server is bound to die with this command, and its URL is in the environment that
    ``dagster dev`` passes to the code location, so every run's feature job connects to it.
    """
    from jobs.platform.settings import REPO_ROOT, variable

    settings = prepared_settings()
    start_spark = not read_only and not settings.spark_remote
    if start_spark:
        warm_spark.require_free_port("127.0.0.1", spark_port, "--spark-port")
    workspace = str(REPO_ROOT / "workspace.yaml")
    if read_only:
        argv = ["dagster-webserver", "-w", workspace, "-h", host, "-p", str(port), "--read-only"]
    else:
        argv = ["dagster", "dev", "-w", workspace, "-h", host, "-p", str(port)]
    click.echo(f"Dagster UI on http://{host}:{port}  (DAGSTER_HOME={os.environ['DAGSTER_HOME']})")
    environment, server = dict(os.environ), None
    if start_spark:
        log = settings.home / "spark" / "connect-server.log"
        server = warm_spark.start_bound_server("127.0.0.1", spark_port, log)
        environment[variable("spark_remote")] = warm_spark.connect_url("127.0.0.1", spark_port)
        click.echo(f"Spark Connect server on {warm_spark.connect_url('127.0.0.1', spark_port)}  (log {log})")
    elif not read_only:
        click.echo(f"Spark Connect server {settings.spark_remote} (from {variable('spark_remote')})")
    bin_dir = os.path.dirname(sys.executable)
    try:
        code = subprocess.call([os.path.join(bin_dir, argv[0]), *argv[1:]], cwd=REPO_ROOT, env=environment)
    finally:
        if server is not None:
            warm_spark.stop_server(server)
    raise SystemExit(code)


@click.command("mlflow")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
def mlflow_ui(host: str, port: int) -> None:
    """Start the MLflow tracking server and UI on the pipeline's tracking store."""
    settings = prepared_settings()
    if not settings.tracking_uri.startswith("sqlite:"):
        raise click.ClickException(f"MLflow already runs as a server at {settings.tracking_uri}")
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


@contextlib.contextmanager
def step_progress(instance: dg.DagsterInstance, shown: bool) -> Iterator[None]:
    """While the block runs the CLI's range run, a bar of its finished steps, read from the instance.

    The run is found by its trigger tag and start time; its step events are read incrementally (a cursor),
    once a second, in a thread that stops when the block ends.
    """
    if not shown:
        yield
        return
    import threading

    import dagster as dg
    from tqdm import tqdm

    finished = {
        dg.DagsterEventType.STEP_SUCCESS,
        dg.DagsterEventType.STEP_FAILURE,
        dg.DagsterEventType.STEP_SKIPPED,
    }
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    stop = threading.Event()

    def follow() -> None:
        run_id, cursor = None, None
        with tqdm(desc="steps finished", unit=" steps", disable=False, leave=False) as bar:
            while not stop.wait(1.0):
                if run_id is None:
                    runs = instance.get_runs(
                        dg.RunsFilter(tags={"txguard/trigger": "cli"}, created_after=since), limit=1
                    )
                    run_id = runs[0].run_id if runs else None
                    continue
                page = instance.get_records_for_run(run_id, cursor=cursor, of_type=finished)
                cursor = page.cursor
                if page.records:
                    bar.update(len(page.records))
                    bar.set_postfix_str(page.records[-1].event_log_entry.step_key or "", refresh=True)

    thread = threading.Thread(target=follow, name="txguard-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def execute_range(
    defs: dg.Definitions,
    start: dt.date,
    end: dt.date,
    instance: dg.DagsterInstance,
    job_name: str,
    leave_out: Sequence[dg.AssetKey] = (),
) -> RangeRunOutcome:
    """Run ``job_name`` for ``[start, end]``, less the ``leave_out`` assets, as one recorded run: quiet with a
    progress bar, or with Dagster's console logs under ``--debug``."""
    from orchestration.runs import run_partition_range

    debug = debug_requested()
    where = "its logs stream below" if debug else "txguard --debug streams its logs; make ui shows them"
    click.echo(f"{job_name} for {start}..{end}, as one Dagster run ({where})")
    with step_progress(instance, shown=not debug and sys.stderr.isatty()):
        return run_partition_range(
            defs,
            start.isoformat(),
            end.isoformat(),
            instance,
            job_name=job_name,
            log_level="INFO" if debug else "CRITICAL",
            leave_out=leave_out,
        )


def explain_failure(error: SerializableErrorInfo, run_id: str) -> str:
    """A step's error in a line or two: the message and the fix of the first error in its cause chain that
    a person can fix, else the innermost error and where the whole log is."""
    causes = []
    cause: SerializableErrorInfo | None = error
    while cause is not None:
        causes.append(cause)
        cause = cause.cause
    for cause in causes:
        name = cause.cls_name or ""
        explained = explain([name], strip_class_prefix(cause.message, name))
        if explained:
            return explained
    root = causes[-1]
    message = first_lines(strip_class_prefix(root.message, root.cls_name or ""))
    return f"{root.cls_name}: {message}\n  see the run's log: make ui, Runs, {run_id}"


def failure_lines(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """Each failed step of the run with its error, indented under the run's summary."""
    import dagster as dg

    lines = []
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        event = entry.dagster_event
        if event is None or event.step_failure_data is None or event.step_failure_data.error is None:
            continue
        explained = explain_failure(event.step_failure_data.error, run_id)
        lines.append(f"  {entry.step_key}: " + explained.replace("\n", "\n  "))
    return lines


def unscored_lines(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The days the run left unscored (no model may score them out of time yet), grouped by reason."""
    import dagster as dg

    from jobs.training.maturity import format_days

    by_reason: dict[str, list[dt.date]] = {}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = entry.asset_materialization
        reason = materialization.metadata.get("unscored_reason") if materialization else None
        if materialization is not None and reason is not None and materialization.partition:
            day = dt.date.fromisoformat(materialization.partition)
            by_reason.setdefault(str(reason.value), []).append(day)
    return [f"  not scored {format_days(sorted(days))}: {why}" for why, days in by_reason.items()]


def print_outcome(instance: dg.DagsterInstance, outcome: RangeRunOutcome) -> None:
    """What the run did; the failed steps with their errors. The caller exits non-zero on failure."""
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
    for line in outcome.check_details:
        click.echo(f"    {line}")
    if outcome.held_days:
        click.echo(f"  held (ingestion failed its check): {', '.join(outcome.held_days)}")
    for line in unscored_lines(instance, outcome.run_id):
        click.echo(line)
    for line in failure_lines(instance, outcome.run_id):
        click.echo(line)


def exit_unless_succeeded(outcome: RangeRunOutcome) -> None:
    """Exit 128 + the signal when one stopped the run, 1 when it failed; return when it succeeded."""
    if outcome.stopped_by:
        click.echo(f"stopped by {outcome.stopped_by}: run {outcome.run_id} marked failed, its slots freed")
        raise SystemExit(128 + signal.Signals[outcome.stopped_by])
    if not outcome.success:
        raise SystemExit(1)


TRAINING_ASSETS = ("fraud_model", "model_promotion")
"""What ``--no-train`` leaves out of a run: training and its promotion gate run on their schedule, on drift
or on request, not in the daily chain."""


def decide_training(train: bool | None, settings: Settings) -> bool:
    """``--train`` or ``--no-train`` as given; neither: train only when no version holds @champion, since a
    fresh home has nothing to score with and a home with a champion keeps its daily run at one day's work."""
    if train is not None:
        return train
    from jobs.registry.aliases import CHAMPION, resolve_alias
    from jobs.registry.client import UnknownModelVersion

    try:
        resolve_alias(CHAMPION, tracking_uri=settings.tracking_uri)
    except UnknownModelVersion:
        return True
    return False


def run_range(start: dt.date, end: dt.date, *, train: bool | None = None) -> list[RangeRunOutcome]:
    """Materialize the chain for ``[start, end]`` in one recorded run, print what it did, return its outcomes.

    A day whose ingestion fails its check holds only itself: the chain below ingestion then runs again for
    the stretches of the range around it, and the summary names each held day with its file and rules.
    ``train`` is ``decide_training``'s choice."""
    import dagster as dg

    from jobs.platform.layout import parse_day
    from orchestration.definitions import defs
    from orchestration.defs.governance import emit_run_lineage
    from orchestration.runs import CHAIN_AFTER_INGEST_JOB, PIPELINE_JOB, ranges_without

    settings = prepared_settings()
    training = decide_training(train, settings)
    leave_out = () if training else [dg.AssetKey(name) for name in TRAINING_ASSETS]
    click.echo("training: " + ("yes" if training else "no (the champion scores; --train retrains)"))
    with dg.DagsterInstance.get() as instance:
        outcomes = [execute_range(defs, start, end, instance, PIPELINE_JOB, leave_out)]
        held = outcomes[0].held_days
        if held and not outcomes[0].stopped_by:
            click.echo(
                f"\ningestion failed its check on {', '.join(held)}: the other days go on without them"
            )
            for first, last in ranges_without(start.isoformat(), end.isoformat(), held):
                outcomes.append(
                    execute_range(
                        defs, parse_day(first), parse_day(last), instance, CHAIN_AFTER_INGEST_JOB, leave_out
                    )
                )
                if outcomes[-1].stopped_by:
                    break
        for outcome in outcomes:
            run = instance.get_run_by_id(outcome.run_id)
            if run is not None:
                sent, where = emit_run_lineage(instance, run, settings, defs.resolve_asset_graph())
                click.echo(f"OpenLineage: {sent} events to {where}")
            print_outcome(instance, outcome)
    return outcomes


def run_range_or_exit(start: dt.date, end: dt.date, *, train: bool | None = None) -> None:
    """``run_range``, then exit non-zero if anything failed."""
    for outcome in run_range(start, end, train=train):
        exit_unless_succeeded(outcome)


@click.command("run")
@click.option("--from", "start", required=True, type=PARTITION_DAY, help="first partition (business day)")
@click.option("--to", "end", required=True, type=PARTITION_DAY, help="last partition, inclusive")
@click.option(
    "--train/--no-train",
    default=None,
    help="retrain (fraud_model, model_promotion) in this run, or not [default: only when no champion exists]",
)
def run_command(start: dt.date, end: dt.date, train: bool | None) -> None:
    """Materialize every asset for a partition range, headless, as one run the UI shows.

    Every day of the range needs its transactions file in the landing zone. Training is not part of the
    daily chain: it runs when asked (--train), on a fresh home, or on its schedule and on drift under
    make ui.
    """
    days = checked_range(start, end)
    from jobs.platform.settings import load_settings

    require_landing_files(load_settings().landing, days)
    run_range_or_exit(start, end, train=train)


commands: list[click.Command] = [ui, mlflow_ui, run_command]
