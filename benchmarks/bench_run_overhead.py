"""Per-run overhead of the daily chain: a daily run's wall time against the sum of its steps' compute.

Goal: the overhead, ``wall − Σ step compute``, is under half the run's wall time.

Set-up (not timed): a temporary ``TXGUARD_HOME`` and ``DAGSTER_HOME`` (the repository's ``dagster.yaml``,
so the ``warehouse`` pool limit applies), a small simulated landing zone, and its history run through the
whole chain as one headless range run, as ``txguard demo`` does, which leaves a promoted champion.

Timed: ONE run of ``daily_pipeline`` for the next day's partition, launched the way the daemon's runs
execute: ``execute_job`` on the job reconstructed from the code location ``workspace.yaml`` names (through
``ReconstructableRepository``, Dagster's own origin for a job of a code location; no public API builds one
for a job inside a ``Definitions``), on the location's executor (``step_processes``: a process per step,
at most one per core, forked from a server that loaded the location once), recorded in the instance. What
is counted, all from the run's event log:

* wall: ``RUN_START`` → ``RUN_SUCCESS``/``RUN_FAILURE``; the process-level time around ``execute_job`` is
  shown too (it adds planning and the instance's bookkeeping before ``RUN_START``). A run launched by the
  daemon also starts a run worker first, which loads the code location once more before ``RUN_START``;
  that is not in either figure, and the code-location load time shown below is its size.
* compute of a step: ``STEP_START`` → ``STEP_SUCCESS``/``STEP_FAILURE``. The Spark feature job's JVM and
  dbt's start-up happen inside their steps and count as compute.
* launch of a step: ``STEP_WORKER_STARTING`` (the run process asks for it) → ``STEP_START`` (the forked
  process has planned its step and built its resources; the first step also waits for the server to load
  the code location).
* overhead: wall − Σ compute. Steps that overlap (two cores, two step processes at once) make this an
  underestimate, even a negative one, so the time during which no step was computing is printed too; that
  one is never smaller, and the first verdict needs both under the goal.

Reference, same run: the same day again as ``txguard run --from D --to D`` executes it, every step in one
fresh process. A step's compute in the daily run also holds the imports its fresh process makes inside the
asset body (pandas, LightGBM, MLflow, GX: kept out of the code location on purpose), which the one-process
run pays once; ``daily run wall − one-process wall`` shows what the per-step processes cost in all, and
the second verdict holds it to the same goal.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository

from benchmarks.bench_code_location import import_seconds
from jobs.platform.settings import REPO_ROOT, load_settings

CUSTOMERS = 1_000
TERMINALS = 2_000
HISTORY_DAYS = 60
START = dt.date(2018, 4, 1)
SEED = 7
LOAD_REPEATS = 3
GOAL_SHARE = 0.5
LOAD_JOB = (
    "from dagster._core.definitions.reconstruct import ReconstructableRepository as R;"
    "R.for_module('orchestration.definitions', 'defs').get_reconstructable_job('daily_pipeline')"
    ".get_definition()"
)


@dataclass
class StepTiming:
    """One step of the run, in seconds since the epoch (``None`` where the event is missing)."""

    key: str
    launched: float | None = None
    started: float | None = None
    ended: float | None = None
    status: str = "not started"

    @property
    def compute(self) -> float:
        return self.ended - self.started if self.started is not None and self.ended is not None else 0.0

    @property
    def launch(self) -> float | None:
        return (
            self.started - self.launched if self.started is not None and self.launched is not None else None
        )


@contextlib.contextmanager
def temporary_home() -> Iterator[Path]:
    """A fresh data and Dagster home in the environment (inherited by step processes), restored after."""
    from orchestration.cli.pipeline import OFFLINE_ENVIRONMENT

    saved = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="txguard-bench-run-") as folder:
        try:
            for name in [n for n in os.environ if n.startswith("TXGUARD_")]:
                del os.environ[name]
            home = Path(folder) / "txguard"
            os.environ.update(OFFLINE_ENVIRONMENT)
            os.environ["TXGUARD_HOME"] = str(home)
            os.environ["DAGSTER_HOME"] = str(home / "dagster")
            yield home
        finally:
            os.environ.clear()
            os.environ.update(saved)


def build_history(last_day: dt.date, instance: dg.DagsterInstance) -> tuple[float, list[str]]:
    """Simulate ``HISTORY_DAYS + 1`` days of landing files and run the chain on all but the last one.

    Returns the time it took and the checks that failed: on a history this short the drift monitor fires,
    which is the monitor's business; a failed step or a missing score is not.
    """
    from jobs.simulation.simulator import SimulationConfig, simulate, write_landing
    from orchestration.definitions import defs
    from orchestration.runs import run_partition_range

    started = time.perf_counter()
    config = SimulationConfig(
        customers=CUSTOMERS, terminals=TERMINALS, days=HISTORY_DAYS + 1, start=START, seed=SEED
    )
    write_landing(simulate(config), load_settings().landing, "csv")
    history_end = last_day - dt.timedelta(days=1)
    outcome = run_partition_range(
        defs, START.isoformat(), history_end.isoformat(), instance, log_level="WARNING"
    )
    if outcome.failed_steps or outcome.skipped_steps or "transaction_scores" not in outcome.materialized:
        raise RuntimeError(
            f"history run {outcome.run_id} failed: steps {outcome.failed_steps}, "
            f"skipped {outcome.skipped_steps}, checks {outcome.failed_checks}"
        )
    return time.perf_counter() - started, outcome.failed_checks


@contextlib.contextmanager
def output_to(log: Path) -> Iterator[None]:
    """Send this process's and its children's stdout and stderr (dbt, Spark, MLflow) to ``log``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log.open("ab") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_daily(day: dt.date, instance: dg.DagsterInstance) -> tuple[str, bool, float]:
    """One daily run of the chain, out of process, as a scheduled run executes; returns id, success, wall."""
    from orchestration.runs import PIPELINE_JOB

    job = ReconstructableRepository.for_module(
        "orchestration.definitions", "defs", working_directory=str(REPO_ROOT)
    ).get_reconstructable_job(PIPELINE_JOB)
    started = time.perf_counter()
    result = dg.execute_job(
        job,
        instance=instance,
        tags={"dagster/partition": day.isoformat(), "txguard/trigger": "benchmark"},
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    return result.run_id, result.success, time.perf_counter() - started


def run_reference(day: dt.date, instance: dg.DagsterInstance) -> str:
    """The same day as ``txguard run`` runs it: one fresh process, every step in it; returns the run id.

    ``txguard run`` exits 1 when a check fails (the drift monitor does on this history); the run's steps
    succeeding is what matters here.
    """
    import subprocess

    command = [str(Path(sys.executable).parent / "txguard"), "run", "--from", day.isoformat(), "--to"]
    subprocess.run([*command, day.isoformat()], cwd=REPO_ROOT)
    run = instance.get_runs(filters=dg.RunsFilter(tags={"txguard/trigger": "cli"}), limit=1)[0]
    if run.status != dg.DagsterRunStatus.SUCCESS:
        raise RuntimeError(f"the one-process run {run.run_id} ended {run.status.value}")
    return run.run_id


def run_timings(instance: dg.DagsterInstance, run_id: str) -> tuple[float, float, list[StepTiming]]:
    """Run start and end, and each step's launch, start and end, from the run's event log."""
    kinds = dg.DagsterEventType
    wanted = {
        kinds.RUN_START,
        kinds.RUN_SUCCESS,
        kinds.RUN_FAILURE,
        kinds.STEP_WORKER_STARTING,
        kinds.STEP_START,
        kinds.STEP_SUCCESS,
        kinds.STEP_FAILURE,
        kinds.STEP_SKIPPED,
    }
    run_start = run_end = None
    steps: dict[str, StepTiming] = {}
    for record in instance.get_records_for_run(run_id, of_type=wanted).records:
        entry = record.event_log_entry
        kind = entry.dagster_event.event_type
        if kind == kinds.RUN_START:
            run_start = entry.timestamp
        elif kind in (kinds.RUN_SUCCESS, kinds.RUN_FAILURE):
            run_end = entry.timestamp
        elif entry.step_key is not None:
            step = steps.setdefault(entry.step_key, StepTiming(entry.step_key))
            if kind == kinds.STEP_WORKER_STARTING:
                step.launched = entry.timestamp
            elif kind == kinds.STEP_START:
                step.started, step.status = entry.timestamp, "running"
            else:
                step.ended = entry.timestamp
                step.status = {kinds.STEP_SUCCESS: "ok", kinds.STEP_FAILURE: "FAILED"}.get(kind, "skipped")
    if run_start is None or run_end is None:
        raise RuntimeError(f"run {run_id} has no RUN_START or end event")
    return run_start, run_end, sorted(steps.values(), key=lambda s: (s.started or s.launched or 0, s.key))


def busy_seconds(steps: list[StepTiming]) -> float:
    """Time during which at least one step was computing (the union of the compute intervals)."""
    busy, reach = 0.0, float("-inf")
    for started, ended in sorted((s.started, s.ended) for s in steps if s.compute > 0):
        busy += max(0.0, ended - max(started, reach))
        reach = max(reach, ended)
    return busy


def main() -> None:
    from orchestration.instance import prepare_dagster_home

    day = START + dt.timedelta(days=HISTORY_DAYS)
    with temporary_home() as home:
        prepare_dagster_home(load_settings())
        log = home / "bench.log"
        print(
            "history, one daily run, then the same day in one process (their output is not shown)", flush=True
        )
        try:
            with dg.DagsterInstance.get() as instance, output_to(log):
                history, history_checks = build_history(day, instance)
                run_id, success, process_wall = run_daily(day, instance)
                run_start, run_end, steps = run_timings(instance, run_id)
                reference_start, reference_end, reference_steps = run_timings(
                    instance, run_reference(day, instance)
                )
        except Exception:
            print("".join(log.read_text(errors="replace").splitlines(keepends=True)[-60:]))
            raise
    location = statistics.median(
        import_seconds("import orchestration.definitions") for _ in range(LOAD_REPEATS)
    )
    job_load = statistics.median(import_seconds(LOAD_JOB) for _ in range(LOAD_REPEATS))

    wall = run_end - run_start
    compute = sum(s.compute for s in steps)
    overhead = wall - compute
    idle = wall - busy_seconds(steps)
    launches = [s.launch for s in steps if s.launch is not None]
    reference_wall = reference_end - reference_start
    in_one_process = {s.key: s.compute for s in reference_steps}
    beyond = wall - reference_wall
    print(
        f"history: {CUSTOMERS:,} customers, {TERMINALS:,} terminals, {HISTORY_DAYS} days from {START}, "
        f"one range run in {history:.0f} s (set-up, not timed); "
        f"failed checks: {', '.join(history_checks) or 'none'}"
    )
    print(f"daily run of {day} ({'succeeded' if success else 'FAILED'}), {len(steps)} steps, run {run_id}")
    print(f"\n{'step':24} {'at':>7} {'launch':>7} {'compute':>8} {'in one process':>15}  status")
    for step in steps:
        at = f"{step.launched - run_start:7.1f}" if step.launched is not None else f"{'':7}"
        launch = f"{step.launch:7.1f}" if step.launch is not None else f"{'':7}"
        alone = in_one_process.get(step.key)
        alone_text = f"{alone:15.1f}" if alone is not None else f"{'':15}"
        print(f"{step.key:24} {at} {launch} {step.compute:8.1f} {alone_text}  {step.status}")
    print(
        f"\nrun wall (RUN_START → end)       {wall:7.1f} s   "
        f"process wall around execute_job {process_wall:.1f} s"
    )
    print(f"Σ step compute                   {compute:7.1f} s   steps overlap on {os.cpu_count()} cores")
    if launches:
        print(
            f"Σ step launch                    {sum(launches):7.1f} s   "
            f"median {statistics.median(launches):.1f} s per step, {len(launches)} step processes"
        )
    print(f"overhead (wall − Σ compute)      {overhead:7.1f} s   {overhead / wall:6.1%} of wall")
    print(f"no step computing                {idle:7.1f} s   {idle / wall:6.1%} of wall")
    print(
        f"\nsame day in one process (txguard run): wall {reference_wall:.1f} s, "
        f"Σ compute {sum(in_one_process.values()):.1f} s"
    )
    print(
        f"daily run wall − one-process wall {beyond:6.1f} s   {beyond / wall:6.1%} of wall   "
        "(step processes, code-location loads,\n"
        "  and the imports each step process repeats inside its compute)"
    )
    print(
        f"code location load (fresh interpreter, median of {LOAD_REPEATS}): import {location:.2f} s, "
        f"import and resolve daily_pipeline {job_load:.2f} s; the run and its fork server pay it"
    )
    print(f"\ngoal: overhead < {GOAL_SHARE:.0%} of wall")
    verdict = "OK" if success and max(overhead, idle) < GOAL_SHARE * wall else "MISSED"
    print(f"  by the event log's step times (both measures above)       {verdict}")
    verdict = "OK" if success and beyond < GOAL_SHARE * wall else "MISSED"
    print(f"  counting what step processes add (against one process)    {verdict}")


if __name__ == "__main__":
    main()
