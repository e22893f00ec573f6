"""Proof under the real daemon: ``dagster dev`` (webserver and daemon) takes a landed day to scores alone.

History is built first, the fast way: the simulated landing zone's first weeks go through one in-process
range run (the ``txguard run`` path), which also trains and promotes the champion; those files are then
archived, as a producer's processed deliveries would be. ``dagster dev`` then starts on a free port, prepared
as ``txguard ui`` prepares it, with sensors ticking every few seconds and the scoring schedule every minute.
The next day is dropped into the landing zone with drift injected (every amount doubled, as if the producer
had switched currency), and nothing else is started by the test: the landing sensor ingests both files,
declarative automation builds dbt staging, the Great Expectations gate, the marts, the features and
model_performance, the scoring schedule scores the day, automation measures its drift and builds the scoring
marts, the drift check fails at error level, and the retraining sensor launches ``weekly_retraining``. The
test watches through the webserver's GraphQL API and asserts on run statuses, materializations and check
verdicts.
"""

from __future__ import annotations

import csv
import datetime as dt
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from jobs.platform.settings import REPO_ROOT, Settings
from tests.e2e.dagster_server import LOCATION, graphql, location_loaded, stop_group
from tests.support import free_port

START = dt.date(2018, 4, 1)
HISTORY_DAYS = 86
"""Enough history that the champion's training window starts after the 30-day feature windows (delayed a
week for terminals) have filled: a reference sample from the warm-up weeks would read every later day as
drift."""
DRIFT_DAY = START + dt.timedelta(days=HISTORY_DAYS)
DRIFT_FACTOR = 2.0
"""The drift injected on the last day: every amount doubles. (The simulator's own drift, amounts 1.5x and a
quarter of transactions at night, reads as a warning on its first day at this size: worst PSI about 0.24.)"""
CUSTOMERS, TERMINALS, SEED = 1_000, 2_000, 7
"""About 2,000 transactions a day: enough frauds for a first model that clears the promotion floor."""
TICK_SECONDS = 5
SERVER_START_S = 240
CHAIN_S = 1200
"""How long the daemon may take from the landed files to the finished retraining run (about eight runs, each
step a process that loads the code location; on a loaded 2-core machine the chain took over 600 s)."""
POLL_S = 2.0

CHAIN = {
    "stg_landing__transactions",
    "stg_landing__fraud_reports",
    "int_transactions_labelled",
    "fct_transactions",
    "dim_customers",
    "dim_terminals",
    "rpt_daily_fraud_summary",
    "transaction_features",
    "model_performance",
}
"""What automation requests once both files of a day are ingested."""
AFTER_SCORING = {"feature_drift", "fct_transaction_scores", "rpt_daily_alerts"}
DAY_ASSETS = {"raw_transactions", "raw_fraud_reports", *CHAIN, "transaction_scores", *AFTER_SCORING}
"""Every partitioned asset: each must get the drift day's partition from a run the daemon launched."""
GATES = {
    "raw_transactions:rejected_share_below_threshold",
    "raw_fraud_reports:rejected_share_below_threshold",
    "stg_landing__transactions:gx_suite",
    "stg_landing__fraud_reports:gx_suite",
    "stg_landing__transactions:unique_stg_landing__transactions_transaction_id",
    "fct_transactions:unique_fct_transactions_transaction_id",
    "transaction_features:feature_contract",
    "model_performance:performance_floor",
}
"""Checks that must have been evaluated, and passed, in the daemon's runs (all others that ran must pass
too, except the drift check)."""
DRIFT_CHECK = "feature_drift:drift_psi"

T = TypeVar("T")


# --- the GraphQL side ------------------------------------------------------------------------------------

RUN_FIELDS = "runId jobName status tags { key value }"
RUNS = f"""
query Runs($after: Float) {{ runsOrError(filter: {{createdAfter: $after}}) {{
  __typename ... on Runs {{ results {{ {RUN_FIELDS} }} }} ... on PythonError {{ message }} }} }}
"""
RUN_DETAILS = """
query Run($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run {
  assetMaterializations { partition assetKey { path } }
  eventConnection(limit: 5000) { events {
    __typename
    ... on AssetCheckEvaluationEvent {
      evaluation { checkName assetKey { path } success severity description } }
    ... on ExecutionStepFailureEvent { stepKey error { message cause { message } } }
    ... on RunFailureEvent { message }
  } } } } }
"""
SENSOR_TICKS = """
query Ticks($location: String!, $sensor: String!) { sensorOrError(sensorSelector: {
  repositoryLocationName: $location, repositoryName: "__repository__", sensorName: $sensor}) {
  __typename ... on Sensor { sensorState { status ticks(limit: 5) { status skipReason } } }
  ... on PythonError { message } } }
"""
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
WEEKLY_SCHEDULE = "weekly_retraining_schedule"
"""Its Monday 04:00 UTC tick may fall inside the test and add a retraining run of its own: left out."""


@dataclass
class DaemonRun:
    """A run as the webserver reports it, with what it materialized and evaluated once it finished."""

    run_id: str
    job: str
    status: str
    tags: dict[str, str]
    materialized: set[tuple[str, str | None]] = field(default_factory=set)
    checks: dict[str, dict] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def launched_by(self) -> str:
        return (
            self.tags.get("dagster/sensor_name")
            or self.tags.get("dagster/schedule_name")
            or self.tags.get("dagster/backfill")
            or "?"
        )

    def line(self) -> str:
        return f"{self.run_id[:8]} {self.job} {self.status} by {self.launched_by} {sorted(self.materialized)}"


class DagsterDev:
    """``dagster dev`` in its own process group, its log in a file, and its webserver's GraphQL API."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "dagster-dev.log"
        self.process: subprocess.Popen | None = None
        self.started_at = time.time()

    def start(self) -> None:
        txguard = Path(sys.executable).with_name("txguard")
        argv = [str(txguard), "ui", "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--spark-port", str(free_port())]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else "(no log)"

    def graphql(self, query: str, **variables: object) -> dict:
        return graphql(self.base, query, variables)

    def location_loaded(self) -> bool:
        return location_loaded(self.base)

    def ticks(self, sensor: str) -> list[dict]:
        found = self.graphql(SENSOR_TICKS, location=LOCATION, sensor=sensor)["sensorOrError"]
        assert found["__typename"] == "Sensor", found
        assert found["sensorState"]["status"] == "RUNNING", f"{sensor} is not running by default"
        return found["sensorState"]["ticks"]

    def runs(self) -> list[DaemonRun]:
        """Every run created since the server started (but the weekly schedule's), newest first; finished
        ones with what they materialized and evaluated."""
        found = self.graphql(RUNS, after=self.started_at)["runsOrError"]
        assert found["__typename"] == "Runs", found
        runs = [
            DaemonRun(r["runId"], r["jobName"], r["status"], {t["key"]: t["value"] for t in r["tags"]})
            for r in found["results"]
        ]
        runs = [run for run in runs if run.launched_by != WEEKLY_SCHEDULE]
        for run in runs:
            if run.status in FINISHED:
                self._add_details(run)
        return runs

    def _add_details(self, run: DaemonRun) -> None:
        found = self.graphql(RUN_DETAILS, runId=run.run_id)["runOrError"]
        for event in found["assetMaterializations"]:
            run.materialized.add(("/".join(event["assetKey"]["path"]), event["partition"]))
        for event in found["eventConnection"]["events"]:
            if event["__typename"] == "AssetCheckEvaluationEvent":
                evaluation = event["evaluation"]
                run.checks["/".join(evaluation["assetKey"]["path"]) + ":" + evaluation["checkName"]] = (
                    evaluation
                )
            elif event["__typename"] == "ExecutionStepFailureEvent":
                error = event["error"] or {}
                cause = (error.get("cause") or {}).get("message", "")
                run.errors.append(f"{event['stepKey']}: {error.get('message', '')} {cause}".strip())
            elif event["__typename"] == "RunFailureEvent":
                run.errors.append(event["message"])

    def diagnosis(self, runs: list[DaemonRun] | None = None) -> str:
        """The daemon's log tail and every run with its errors: what a failure message should show."""
        try:
            runs = runs if runs is not None else self.runs()
            listing = "\n".join(f"  {run.line()}" + "".join(f"\n    {e}" for e in run.errors) for run in runs)
        except Exception as error:  # the server may be what broke
            listing = f"  (runs unavailable: {error!r})"
        return f"runs since the server started:\n{listing}\n--- dagster dev log tail ---\n{self.log_tail()}"

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout_s: float) -> T:
        """Poll ``probe`` until it returns something; a dead server or a failed run ends the wait at once."""
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(
                    f"dagster dev exited with {self.process.returncode} waiting for {what}\n"
                    + self.diagnosis([])
                )
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {timeout_s:.0f} s\n{self.diagnosis()}")
            time.sleep(POLL_S)


@contextmanager
def dagster_dev(home: Path) -> Iterator[DagsterDev]:
    """``txguard ui`` (``dagster dev``: webserver and daemon), stopped on the way out whatever happened."""
    server = DagsterDev(home)
    server.start()
    try:
        server.wait_for("loaded code location", server.location_loaded, SERVER_START_S)
        yield server
    finally:
        server.stop()


# --- the data side ---------------------------------------------------------------------------------------


def simulate_deliveries(folder: Path) -> None:
    """Every day's files, history and drift day, written where a producer keeps them before delivery."""
    from jobs.simulation.simulator import SimulationConfig, simulate, write_landing

    config = SimulationConfig(
        customers=CUSTOMERS,
        terminals=TERMINALS,
        days=HISTORY_DAYS + 1,
        start=START,
        seed=SEED,
    )
    write_landing(simulate(config), str(folder), "csv")


def deliver(deliveries: Path, landing: Path, day: dt.date, amount_factor: float = 1.0) -> None:
    """Drop one day's two files into the landing zone, each renamed into place whole, as producers do;
    ``amount_factor`` scales every transaction amount on the way (a producer's currency switch)."""
    for source in ("transactions", "fraud_reports"):
        target = landing / source / f"{day.isoformat()}.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.part")
        if amount_factor == 1.0:
            shutil.copyfile(deliveries / source / target.name, staging)
        else:
            scale_amounts(deliveries / source / target.name, staging, amount_factor)
        staging.rename(target)


def scale_amounts(source: Path, target: Path, factor: float) -> None:
    with source.open(newline="") as src, target.open("w", newline="") as out:
        rows = csv.DictReader(src)
        writer = csv.DictWriter(out, fieldnames=rows.fieldnames or [], lineterminator="\n")
        writer.writeheader()
        for row in rows:
            if "tx_amount" in row:
                row["tx_amount"] = f"{float(row['tx_amount']) * factor:.2f}"
            writer.writerow(row)


def build_history(settings: Settings, deliveries: Path) -> None:
    """The history days in one in-process range run (``txguard run``), then their files archived."""
    import dagster as dg

    from orchestration.definitions import defs
    from orchestration.runs import run_partition_range

    landing = Path(settings.landing)
    days = [START + dt.timedelta(days=i) for i in range(HISTORY_DAYS)]
    for day in days:
        deliver(deliveries, landing, day)
    with dg.DagsterInstance.get() as instance:
        outcome = run_partition_range(
            defs, days[0].isoformat(), days[-1].isoformat(), instance, log_level="WARNING"
        )
        assert outcome.success, (outcome.failed_steps, outcome.failed_checks)
        assert not outcome.warned_checks, outcome.warned_checks
        drift = instance.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(dg.AssetKey("feature_drift"), "drift_psi")
        )
        assert drift is not None and drift.evaluation.passed, "history must end without drift"
    archive = settings.home / "landing-archive"
    shutil.move(landing, archive)
    landing.mkdir()


def champion_version(settings: Settings) -> int:
    from jobs.registry.aliases import CHAMPION, resolve_alias

    return resolve_alias(CHAMPION, tracking_uri=settings.tracking_uri).version


def scored_rows(settings: Settings, day: dt.date) -> list[tuple]:
    from jobs.platform.warehouse import connect

    with connect(settings.snapshot_path, read_only=True) as connection:
        return connection.execute(
            "select model_version, dagster_run_id, count(*) from scoring.transaction_scores where day = ? "
            "group by all",
            [day],
        ).fetchall()


def delivered_rows(deliveries: Path, day: dt.date) -> int:
    with (deliveries / "transactions" / f"{day.isoformat()}.csv").open() as file:
        return sum(1 for _ in file) - 1


# --- the tests -------------------------------------------------------------------------------------------


def test_the_scoring_schedule_asks_once_for_each_stretch_of_unscored_days(txguard_home: Path) -> None:
    import dagster as dg

    from orchestration.defs.scoring import FEATURE_CONTRACT, SCORING_JOB, daily_scoring_schedule

    def day(n: int) -> str:
        return (START + dt.timedelta(days=n)).isoformat()

    def tick(instance: dg.DagsterInstance):
        return daily_scoring_schedule(dg.build_schedule_context(instance=instance))

    def contract(instance: dg.DagsterInstance, passed: bool) -> None:
        instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(
                asset_key=FEATURE_CONTRACT.asset_key, check_name=FEATURE_CONTRACT.name, passed=passed
            )
        )

    with dg.instance_for_test(temp_dir=str(txguard_home / "dagster")) as instance:
        assert "no day has features" in tick(instance).skip_message
        for n in (0, 1, 2, 4):
            instance.report_runless_asset_event(
                dg.AssetMaterialization("transaction_features", partition=day(n))
            )
        instance.report_runless_asset_event(dg.AssetMaterialization("transaction_scores", partition=day(0)))
        assert "did not pass" in tick(instance).skip_message
        contract(instance, passed=True)

        stretch, single = tick(instance)
        assert (stretch.partition_key, stretch.tags["dagster/asset_partition_range_start"]) == (None, day(1))
        assert stretch.tags["dagster/asset_partition_range_end"] == day(2)
        assert single.partition_key == day(4)
        assert [r.run_key for r in tick(instance)] == [stretch.run_key, single.run_key], "same key: no rerun"

        instance.add_run(
            dg.DagsterRun(job_name=SCORING_JOB, status=dg.DagsterRunStatus.STARTED, tags=stretch.tags)
        )
        (waiting,) = tick(instance)
        assert waiting.partition_key == day(4), "days a running scoring run covers are not asked for again"
        instance.report_runless_asset_event(dg.AssetMaterialization("transaction_features", partition=day(4)))
        assert tick(instance)[0].run_key != single.run_key, "rebuilt features get a new attempt"
        contract(instance, passed=False)
        assert "did not pass" in tick(instance).skip_message


LANDED = 14
"""The day landed after a two-week history: model_performance judges the scores of 7 to 13 days back."""
INGEST_CHECK = "rejected_share_below_threshold"


@pytest.mark.slow
def test_automation_follows_a_landed_day_down_the_chain_and_stops_at_a_failed_gate(
    txguard_home: Path,
) -> None:
    import dagster as dg

    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()

    def day(n: int) -> str:
        return (START + dt.timedelta(days=n)).isoformat()

    def materialize(instance: dg.DagsterInstance, assets: set[str], partition: str) -> None:
        for asset in assets:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=partition))

    def land(instance: dg.DagsterInstance, partition: str, transactions_pass: bool = True) -> None:
        materialize(instance, {"raw_transactions", "raw_fraud_reports"}, partition)
        for asset, passed in (("raw_transactions", transactions_pass), ("raw_fraud_reports", True)):
            instance.report_runless_asset_event(
                dg.AssetCheckEvaluation(asset_key=dg.AssetKey(asset), check_name=INGEST_CHECK, passed=passed)
            )

    def requested(result) -> dict[str, set[str]]:
        return {
            key.to_user_string(): set(result.get_requested_partitions(key))
            for key in graph.materializable_asset_keys
            if result.get_num_requested(key)
        }

    with dg.instance_for_test(temp_dir=str(txguard_home / "dagster")) as instance:
        for key in graph.materializable_asset_keys:
            partitioned = graph.get(key).partitions_def is not None
            for partition in [day(n) for n in range(LANDED)] if partitioned else [None]:
                instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=partition))
        for check_key in graph.asset_check_keys:
            instance.report_runless_asset_event(
                dg.AssetCheckEvaluation(asset_key=check_key.asset_key, check_name=check_key.name, passed=True)
            )
        result = dg.evaluate_automation_conditions(defs, instance)
        assert result.total_requested == 0, "history alone asks for nothing"

        land(instance, day(LANDED))
        result = dg.evaluate_automation_conditions(defs, instance, cursor=result.cursor)
        assert requested(result) == {asset: {day(LANDED)} for asset in CHAIN}
        materialize(instance, CHAIN, day(LANDED))
        result = dg.evaluate_automation_conditions(defs, instance, cursor=result.cursor)
        assert result.total_requested == 0, "scoring is the schedule's, and what follows it waits for it"

        materialize(instance, {"transaction_scores"}, day(LANDED))
        result = dg.evaluate_automation_conditions(defs, instance, cursor=result.cursor)
        assert requested(result) == {asset: {day(LANDED)} for asset in AFTER_SCORING}
        materialize(instance, AFTER_SCORING, day(LANDED))

        land(instance, day(LANDED + 1), transactions_pass=False)
        result = dg.evaluate_automation_conditions(defs, instance, cursor=result.cursor)
        held = requested(result)
        assert "stg_landing__transactions" not in held and "transaction_features" not in held, held
        assert held == {
            "stg_landing__fraud_reports": {day(LANDED + 1)},
            "model_performance": {day(LANDED + 1)},
        }


@pytest.mark.slow
def test_the_daemon_takes_a_landed_day_to_scores_and_its_drift_to_retraining(
    txguard_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestration.cli.pipeline import prepared_settings

    monkeypatch.setenv("TXGUARD_SENSOR_INTERVAL_SECONDS", str(TICK_SECONDS))
    monkeypatch.setenv("TXGUARD_SCORING_CRON", "* * * * *")
    settings = prepared_settings()
    deliveries = tmp_path / "deliveries"
    simulate_deliveries(deliveries)
    build_history(settings, deliveries)
    assert champion_version(settings) == 1

    with dagster_dev(txguard_home) as server:

        def finished(sensor: str) -> list[dict]:
            """The sensor's ticks that have ended (a tick still evaluating reads STARTED)."""
            return [tick for tick in server.ticks(sensor) if tick["status"] != "STARTED"]

        # Every sensor has evaluated once before the file lands: automation starts from the history, and
        # the retraining sensor has looked at the history's checks and found nothing to act on.
        for sensor in ("landing_sensor", "automation_sensor", "retraining_sensor"):
            server.wait_for(f"first finished tick of {sensor}", lambda s=sensor: finished(s), SERVER_START_S)
        quiet = finished("retraining_sensor")[0]
        assert quiet["status"] == "SKIPPED" and "no new failing" in quiet["skipReason"], quiet
        assert server.runs() == [], "nothing may run before a file lands"

        deliver(deliveries, Path(settings.landing), DRIFT_DAY, amount_factor=DRIFT_FACTOR)

        def finished_retraining() -> list[DaemonRun] | None:
            runs = server.runs()
            failed = [run for run in runs if run.status in {"FAILURE", "CANCELED"}]
            if failed:
                pytest.fail("a run the daemon launched failed\n" + server.diagnosis(runs))
            done = any(run.job == "weekly_retraining" and run.status == "SUCCESS" for run in runs)
            if done and all(run.status in FINISHED for run in runs):
                return runs
            return None

        runs = server.wait_for("finished retraining run", finished_retraining, CHAIN_S)
        report = server.diagnosis(runs)

    day = DRIFT_DAY.isoformat()
    by_launcher: dict[str, list[DaemonRun]] = {}
    for run in runs:
        by_launcher.setdefault(run.launched_by, []).append(run)
    assert set(by_launcher) == {
        "landing_sensor",
        "automation_sensor",
        "daily_scoring_schedule",
        "retraining_sensor",
    }, report

    ingested = {asset for run in by_launcher["landing_sensor"] for asset, _ in run.materialized}
    assert ingested == {"raw_transactions", "raw_fraud_reports"}, report
    assert all(run.tags.get("dagster/partition") == day for run in by_launcher["landing_sensor"]), report

    (scoring,) = by_launcher["daily_scoring_schedule"]
    assert scoring.job == "scoring_job" and scoring.materialized == {("transaction_scores", day)}, report

    materialized: dict[str, DaemonRun] = {}
    for run in runs:
        for asset, partition in run.materialized:
            if partition == day:
                materialized[asset] = run
    assert set(materialized) == DAY_ASSETS, report
    automated = DAY_ASSETS - {"raw_transactions", "raw_fraud_reports", "transaction_scores"}
    assert all(materialized[asset].launched_by == "automation_sensor" for asset in automated), report

    checks = {name: evaluation for run in runs for name, evaluation in run.checks.items()}
    assert GATES | {DRIFT_CHECK} <= set(checks), sorted(checks)
    failing = {name for name, evaluation in checks.items() if not evaluation["success"]}
    assert failing == {DRIFT_CHECK}, {name: checks[name]["description"] for name in failing}
    assert checks[DRIFT_CHECK]["severity"] == "ERROR", checks[DRIFT_CHECK]

    (retraining,) = by_launcher["retraining_sensor"]
    assert retraining.job == "weekly_retraining", report
    assert retraining.tags["txguard/trigger"] == "retraining_sensor"
    assert DRIFT_CHECK in retraining.tags["txguard/retraining_reason"], retraining.tags
    assert {asset for asset, _ in retraining.materialized} == {"fraud_model", "model_promotion"}, report

    assert scoring.tags["txguard/model_version"] == "1", "the scoring run pinned the champion it used"
    ((model_version, scored_by, rows),) = scored_rows(settings, DRIFT_DAY)
    assert (int(model_version), scored_by) == (1, scoring.run_id)
    assert rows == delivered_rows(deliveries, DRIFT_DAY)
