"""``python -m benchmarks scale --factor F``: the pipeline at F× the handbook's cards and terminals.

Not part of ``make bench`` (``make bench-scale`` runs it): at F=10 it runs for the better part of an hour.

What runs, on a fresh data home, exactly as ``txguard run`` runs it (``run_range``, in this process):

1. ``txguard simulate`` at F × 5,000 cards and F × 10,000 terminals, ``--days`` days (default: the late day);
2. the backfill of days 1 .. early − 1, as one run; no champion exists yet, so it trains;
3. day ``early`` (45) alone: the daily chain on a short history, without training (a champion exists);
4. the backfill of days early + 1 .. late − 1, as one run;
5. day ``late`` (180) alone: the daily chain on a long history.

With ``--warm-spark`` a Spark Connect server is started first and every feature build connects to it, as
the daemon's do under ``txguard ui``; without it each build starts its own local Spark, as a plain
``txguard run`` does. Every run shares this process, as the days of one ``txguard run`` do: libraries
imported by one run's steps are not imported again by the next.

The early and late days are run on a lake that holds only the days before them, so each measures a day's
cost on the history behind it, which is what grows with time. For every step of every run (from the run's
Dagster event log, ``STEP_START`` to ``STEP_SUCCESS``/``STEP_FAILURE``) it prints the wall time, the run's
transactions per second, and the peak resident memory of this process and all its children (the dbt and
Spark JVM processes included), sampled from ``/proc`` every 0.1 s; then each step's late/early ratio, and
the issue's targets next to the measured values. The rows of a step are the transactions of the days its
run covers, so rows/s compares steps and runs on one scale.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

HANDBOOK_CUSTOMERS = 5_000
HANDBOOK_TERMINALS = 10_000
START = dt.date(2018, 4, 1)
EARLY_DAY = 45
LATE_DAY = 180
FIRST_TRAINABLE_DAY = 23
"""The first early day whose backfill (days 1 .. early − 1) can train: a matured window needs 7 days of
label delay, 7 of holdout, 7 of validation and at least 1 of training. Whether that first model is promoted
(it must clear the gate's AP floor, else the single-day runs train too) needs more days at a small factor:
the tests use 45 at factor 0.2."""
GIB = 1024**3
SAMPLE_SECONDS = 0.1


class TreeMemory:
    """Samples the resident memory of a process and all its descendants, from ``/proc``, in a thread."""

    def __init__(self, pid: int | None = None, interval: float = SAMPLE_SECONDS) -> None:
        self.pid = pid or os.getpid()
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="txguard-tree-memory", daemon=True)
        self._page = os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def tree_rss(self) -> int:
        """Bytes resident in the process and its descendants now (processes that vanish are skipped)."""
        children: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{entry.name}/stat", "rb") as handle:
                    parent = int(handle.read().rsplit(b")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
        total, todo = 0, [self.pid]
        while todo:
            pid = todo.pop()
            todo.extend(children.get(pid, []))
            with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * self._page
        return total

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self.tree_rss()))
            self._stop.wait(self.interval)

    def peak(self, since: float = 0.0, until: float = float("inf")) -> int:
        """The highest sample between two instants (seconds since the epoch); the nearest one if none."""
        inside = [rss for at, rss in self.samples if since <= at <= until]
        if inside:
            return max(inside)
        return min(self.samples, key=lambda s: abs(s[0] - since))[1] if self.samples else self.tree_rss()


@dataclass
class StepRow:
    """One step of one run: its wall time, the run's transactions, and the process tree's peak memory."""

    run: str
    step: str
    seconds: float
    rows: int
    peak_bytes: int
    status: str

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass
class RunRow:
    """One ``txguard run`` of the benchmark, with its steps."""

    name: str
    first: dt.date
    last: dt.date
    rows: int
    seconds: float
    peak_bytes: int
    success: bool
    run_ids: list[str]
    steps: list[StepRow] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    materialized: list[str] = field(default_factory=list)
    publication_seconds: list[float] = field(default_factory=list)
    """Each analysts' publication the run made (after every warehouse write), from the warehouse's log."""

    @property
    def step_seconds(self) -> float:
        return sum(step.seconds for step in self.steps)

    @property
    def dbt_seconds(self) -> float:
        """The dbt steps, each with the publication that follows its build."""
        return sum(step.seconds for step in self.steps if step.step in DBT_STEPS)


@dataclass
class ScaleReport:
    """Everything the benchmark measured."""

    factor: float
    customers: int
    terminals: int
    days: int
    early: int
    late: int
    simulate: StepRow
    runs: list[RunRow]
    spark: str = "a local Spark per feature build"

    def run(self, name: str) -> RunRow | None:
        return next((run for run in self.runs if run.name == name), None)

    @property
    def rows(self) -> list[StepRow]:
        return [self.simulate, *(step for run in self.runs for step in run.steps)]


def day_of(day_number: int) -> dt.date:
    """Day 1 is the first simulated day."""
    return START + dt.timedelta(days=day_number - 1)


def step_rows(run_ids: list[str], name: str, rows: int, memory: TreeMemory) -> list[StepRow]:
    """Each step of the runs, in the order they started, from the Dagster event log of this home."""
    import dagster as dg

    kinds = {
        dg.DagsterEventType.STEP_START,
        dg.DagsterEventType.STEP_SUCCESS,
        dg.DagsterEventType.STEP_FAILURE,
    }
    spans: dict[str, dict[str, float]] = {}
    with dg.DagsterInstance.get() as instance:
        for run_id in run_ids:
            for entry in instance.all_logs(run_id, of_type=kinds):
                event = entry.dagster_event
                if event is None or entry.step_key is None:
                    continue
                span = spans.setdefault(entry.step_key, {})
                span[event.event_type_value] = entry.timestamp
    steps = []
    for key, span in sorted(spans.items(), key=lambda item: item[1].get("STEP_START", 0.0)):
        started = span.get("STEP_START")
        ended = span.get("STEP_SUCCESS", span.get("STEP_FAILURE"))
        if started is None or ended is None:
            continue
        status = "ok" if "STEP_SUCCESS" in span else "FAILED"
        peak = memory.peak(started, ended)
        steps.append(StepRow(name, key, ended - started, rows, peak, status))
    return steps


def timed_run(
    name: str, first: int, last: int, rows_by_day: dict[dt.date, int], memory: TreeMemory
) -> RunRow:
    """``txguard run --from day(first) --to day(last)`` (training as that command decides), measured."""
    from jobs.platform.catalog import publication_log
    from jobs.platform.settings import load_settings
    from orchestration.cli.pipeline import run_range

    start, end = day_of(first), day_of(last)
    rows = sum(count for day, count in rows_by_day.items() if start <= day <= end)
    began, wall = time.time(), time.perf_counter()
    outcomes = run_range(start, end)
    seconds = time.perf_counter() - wall
    run_ids = [outcome.run_id for outcome in outcomes]
    run = RunRow(
        name=name,
        first=start,
        last=end,
        rows=rows,
        seconds=seconds,
        peak_bytes=memory.peak(began, time.time()),
        success=all(outcome.success for outcome in outcomes),
        run_ids=run_ids,
        failed=[f for outcome in outcomes for f in outcome.failed_steps + outcome.failed_checks],
        materialized=[key for outcome in outcomes for key in outcome.materialized],
    )
    run.steps = step_rows(run_ids, name, rows, memory)
    since = dt.datetime.fromtimestamp(began, dt.UTC)
    run.publication_seconds = [p.seconds for p in publication_log(load_settings().warehouse_path, since)]
    return run


def measure(
    factor: float, *, days: int | None = None, early: int = EARLY_DAY, late: int = LATE_DAY, seed: int = 0
) -> ScaleReport:
    """Simulate and run the benchmark's runs on the data home the environment names (see the module doc)."""
    from jobs.platform.settings import load_settings
    from jobs.simulation.simulator import SimulationConfig, simulate, write_landing

    days = days or late
    if not FIRST_TRAINABLE_DAY <= early < late <= days:
        raise ValueError(
            f"need {FIRST_TRAINABLE_DAY} <= early ({early}) < late ({late}) <= days ({days}): the backfill "
            "before the early day must be long enough to train the first model"
        )
    customers = max(1, round(HANDBOOK_CUSTOMERS * factor))
    terminals = max(1, round(HANDBOOK_TERMINALS * factor))
    config = SimulationConfig(customers=customers, terminals=terminals, days=days, start=START, seed=seed)
    with TreeMemory() as memory:
        began, wall = time.time(), time.perf_counter()
        data = simulate(config)
        summary = write_landing(data, load_settings().landing, "parquet")
        seconds = time.perf_counter() - wall
        print(summary.line(), flush=True)
        simulated = StepRow(
            "simulate", "simulate", seconds, summary.transactions, memory.peak(began, time.time()), "ok"
        )
        rows_by_day = transactions_by_day(data.transactions)
        del data
        plan = [("backfill to early", 1, early - 1), ("early day", early, early)]
        if late - early > 1:
            plan.append(("backfill to late", early + 1, late - 1))
        plan.append(("late day", late, late))
        runs = []
        for name, first, last in plan:
            print(f"\n--- {name}: days {first}..{last}", flush=True)
            runs.append(timed_run(name, first, last, rows_by_day, memory))
    remote = load_settings().spark_remote
    spark = f"the Spark Connect server at {remote}" if remote else ScaleReport.spark
    return ScaleReport(factor, customers, terminals, days, early, late, simulated, runs, spark)


def transactions_by_day(transactions: pa.Table) -> dict[dt.date, int]:
    """How many transactions each day holds."""
    import pyarrow.compute as pc

    days = pc.cast(pc.cast(transactions["tx_datetime"], pa.timestamp("us")), pa.date32())
    counts = pc.value_counts(days)
    return {value["values"].as_py(): value["counts"].as_py() for value in counts}


def _gib(size: int) -> str:
    return f"{size / GIB:6.2f}"


def report_lines(report: ScaleReport) -> list[str]:
    """The table of every step, the late/early ratios, and the targets next to the measured values."""
    lines = [
        f"factor {report.factor:g}: {report.customers:,} cards, {report.terminals:,} terminals, "
        f"{report.days} days; early day {report.early} ({day_of(report.early)}), late day {report.late} "
        f"({day_of(report.late)}); features on {report.spark}",
        "",
        f"{'run':18} {'step':26} {'seconds':>9} {'rows':>12} {'rows/s':>11} {'peak GiB':>9}  status",
    ]
    for row in report.rows:
        lines.append(
            f"{row.run:18} {row.step:26} {row.seconds:9.1f} {row.rows:12,} {row.rows_per_second:11,.0f} "
            f"{_gib(row.peak_bytes):>9}  {row.status}"
        )
    lines.append("")
    lines.append(f"{'run':18} {'days':23} {'wall s':>9} {'Σ steps s':>10} {'peak GiB':>9}  outcome")
    for run in report.runs:
        outcome = "ok" if run.success else "FAILED: " + ", ".join(run.failed)
        lines.append(
            f"{run.name:18} {f'{run.first}..{run.last}':23} {run.seconds:9.1f} {run.step_seconds:10.1f} "
            f"{_gib(run.peak_bytes):>9}  {outcome}"
        )
    early, late = report.run("early day"), report.run("late day")
    if early and late:
        lines += ["", f"late/early (day {report.late} against day {report.early}; target ≤ {RATIO_TARGET}×)"]
        by_step = {step.step: step for step in early.steps}
        for step in late.steps:
            if step.step in by_step and by_step[step.step].seconds > 0:
                ratio = step.seconds / by_step[step.step].seconds
                lines.append(f"  {step.step:26} {ratio:6.2f}×  {_verdict(ratio <= RATIO_TARGET)}")
    lines += ["", "dbt and the analysts' publication"] + [f"  {line}" for line in warehouse_lines(report)]
    lines += ["", "targets (2 cores, 24 GiB)"] + [f"  {line}" for line in target_lines(report)]
    return lines


RATIO_TARGET = 1.2
DBT_STEPS = ("dbt_staging", "dbt_marts", "dbt_scoring_marts")
DBT_DAILY_SECONDS = 15.0
"""At F=1, the three dbt steps of a daily run in all."""
INGEST_ROWS_PER_SECOND = 200_000
DAILY_SECONDS = {1.0: 45.0, 10.0: 120.0}
BACKFILL_F10 = (30 * 60.0, 12 * GIB)
F100_DAY = (15 * 60.0, 16 * GIB)


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def target_lines(report: ScaleReport) -> list[str]:
    """Each of the issue's targets that this factor measures, with the measured value and met/missed."""
    lines = []
    ingest = [s for s in report.rows if s.step == "raw_transactions" and s.status == "ok"]
    for step in ingest:
        measured = step.rows_per_second
        lines.append(
            f"ingestion ({step.run}): {measured:,.0f} rows/s, target ≥ {INGEST_ROWS_PER_SECOND:,}  "
            f"{_verdict(measured >= INGEST_ROWS_PER_SECOND)}"
        )
    late = report.run("late day")
    daily_target = DAILY_SECONDS.get(report.factor)
    for name in ("early day", "late day"):
        run = report.run(name)
        if run is None:
            continue
        chain = sum(s.seconds for s in run.steps if s.step not in TRAINING_STEPS)
        target = (
            f"target ≤ {daily_target:.0f} s  {_verdict(chain <= daily_target)}"
            if daily_target
            else ("no target at this factor")
        )
        lines.append(f"daily chain, {name}: {chain:.1f} s of steps ({run.seconds:.1f} s wall), {target}")
    if report.runs:
        seconds = sum(run.seconds for run in report.runs)
        peak = max(run.peak_bytes for run in report.runs)
        line = f"all {report.late} days, every run: {seconds / 60:.1f} min, peak {_gib(peak).strip()} GiB"
        if report.factor == 10.0:
            line += (
                f", target ≤ {BACKFILL_F10[0] / 60:.0f} min and ≤ {BACKFILL_F10[1] / GIB:.0f} GiB  "
                f"{_verdict(seconds <= BACKFILL_F10[0] and peak <= BACKFILL_F10[1])}"
            )
        lines.append(line)
    if report.factor == 100.0 and late is not None:
        lines.append(
            f"F=100 day on its history: {late.seconds / 60:.1f} min, peak {late.peak_bytes / GIB:.2f} GiB, "
            f"target ≤ {F100_DAY[0] / 60:.0f} min and ≤ {F100_DAY[1] / GIB:.0f} GiB  "
            f"{_verdict(late.seconds <= F100_DAY[0] and late.peak_bytes <= F100_DAY[1])}"
        )
    return lines


TRAINING_STEPS = ("fraud_model", "model_promotion")


def warehouse_lines(report: ScaleReport) -> list[str]:
    """Per run, the dbt steps and the publications in them; the single days against their targets."""
    lines = []
    for run in report.runs:
        published = run.publication_seconds
        lines.append(
            f"{run.name:18} dbt steps {run.dbt_seconds:7.1f} s   {len(published)} publications "
            f"{sum(published):6.2f} s (longest {max(published, default=0.0):.2f} s)"
        )
    early, late = report.run("early day"), report.run("late day")
    if early is None or late is None:
        return lines
    if report.factor == 1.0:
        for run in (early, late):
            lines.append(
                f"dbt, {run.name}: {run.dbt_seconds:.1f} s, target ≤ {DBT_DAILY_SECONDS:.0f} s  "
                f"{_verdict(run.dbt_seconds <= DBT_DAILY_SECONDS)}"
            )
    for what, measured_early, measured_late in (
        ("dbt steps", early.dbt_seconds, late.dbt_seconds),
        ("publication", sum(early.publication_seconds), sum(late.publication_seconds)),
    ):
        if measured_early > 0:
            ratio = measured_late / measured_early
            lines.append(
                f"{what}, day {report.late} against day {report.early}: {ratio:.2f}×, "
                f"target ≤ {RATIO_TARGET}×  {_verdict(ratio <= RATIO_TARGET)}"
            )
    return lines


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks scale", description=__doc__.split("\n")[0])
    parser.add_argument("--factor", type=float, default=1.0, help="cards and terminals, × the handbook's")
    parser.add_argument("--days", type=int, default=None, help="days to simulate [default: the late day]")
    parser.add_argument("--early", type=int, default=EARLY_DAY, help="the short-history day")
    parser.add_argument("--late", type=int, default=LATE_DAY, help="the long-history day")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--warm-spark",
        action="store_true",
        help="start a Spark Connect server first and build the features on it, as the daemon does under "
        "txguard ui (its JVM counts in the peak memory)",
    )
    return parser.parse_args(argv)


SPARK_SERVER_START_S = 180.0


@contextlib.contextmanager
def warm_spark(home: Path) -> Iterator[None]:
    """A Spark Connect server for the runs, named in the settings' environment: what ``txguard ui`` keeps."""
    from jobs.platform.settings import variable
    from jobs.platform.spark import connect_server_reachable
    from orchestration.cli.spark_server import connect_url, start_bound_server, stop_server

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = connect_url("127.0.0.1", port)
    began = time.perf_counter()
    server = start_bound_server("127.0.0.1", port, home / "spark" / "connect-server.log")
    try:
        while not connect_server_reachable(url, timeout_s=1.0):
            if server.poll() is not None or time.perf_counter() - began > SPARK_SERVER_START_S:
                raise SystemExit(f"the Spark Connect server did not start: see {home / 'spark'}")
            time.sleep(0.5)
        print(f"Spark Connect server {url} up in {time.perf_counter() - began:.1f} s", flush=True)
        os.environ[variable("spark_remote")] = url
        yield
    finally:
        stop_server(server)


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, run the benchmark on a temporary data home, print the report."""
    from benchmarks.bench_run_overhead import temporary_home

    args = arguments(argv)
    if not args.factor > 0:
        raise SystemExit("--factor must be positive")
    with temporary_home() as home, warm_spark(home) if args.warm_spark else contextlib.nullcontext():
        report = measure(args.factor, days=args.days, early=args.early, late=args.late, seed=args.seed)
    print()
    print("\n".join(report_lines(report)))
