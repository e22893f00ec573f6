"""Crash recovery: no run is blocked by a dead one, and a headless run stops on Ctrl-C and SIGTERM.

The first tests check the parts on their own: owners told dead or alive by ``/proc`` (a reused pid
included), the reaper on a real instance with a dead, a live and a finished run holding slots, and children
that die with a parent killed by SIGKILL (a bound program, the dbt launcher, the Spark job and its JVM).

The slow ones start the real ``txguard`` in its own process group on a small simulated landing zone. A run
is killed by SIGKILL in ingest, in dbt and in scoring (seen in the Dagster event log; scoring through
``txguard rescore``, as this little history trains no model good enough to be promoted): no child of it may
survive, the next run must reap it (failed, slots freed, dbt folder removed) and go on, and a last run must
complete. Another waits for the warehouse slot a live process holds: it must say who holds it,
stop on SIGTERM or SIGINT within seconds without freeing the holder's slot, and go on at once when the
holder dies.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest

from jobs.platform.settings import REPO_ROOT
from orchestration.partitions import WAREHOUSE_POOL
from orchestration.processes import (
    OWNER_HOST_TAG,
    OWNER_PID_TAG,
    OWNER_PROCESS_TAG,
    ProcessOwner,
    bound_launcher,
    owner_alive,
    owner_from_tags,
    owner_tags,
    process_token,
    this_host,
)
from orchestration.recovery import dbt_targets, reap_dead_runs, slot_holders
from tests.e2e.dagster_server import stop_group

GONE_S = 15.0
"""How long the children of a killed process may take to die (the JVM notices its closed pipe)."""


# --- processes ---------------------------------------------------------------------------------------------


def live(pid: int) -> bool:
    """A process with this pid runs (a zombie, dead but not yet waited for, does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def program(pid: int) -> str:
    """The name of the program a process runs now (after its last exec)."""
    return Path(cmdline(pid).split(" ")[0]).name


def runs_dbt(pid: int) -> bool:
    """The process runs dbt (a Python script: the interpreter runs it with the script as first argument)."""
    args = cmdline(pid).split(" ")
    return len(args) > 1 and Path(args[1]).name == "dbt"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group: what a killed command left running."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and live(int(entry.name)):
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    found.append(int(entry.name))
            except ProcessLookupError:
                continue
    return found


def wait_until(condition: Callable[[], object], timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            pytest.fail(f"{what}: not within {timeout_s:.0f} s\n{tail}")
        time.sleep(0.25)


def sleeper() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "600"])


def killed(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()


def test_owner_is_told_alive_dead_reused_or_unknown() -> None:
    mine = owner_from_tags(owner_tags())
    assert mine == ProcessOwner(os.getpid(), this_host(), process_token(os.getpid()))
    assert owner_alive(mine) is True

    other = sleeper()
    owner = ProcessOwner(other.pid, this_host(), process_token(other.pid))
    assert owner_alive(owner) is True
    killed(other)
    assert owner_alive(owner) is False
    assert owner_alive(ProcessOwner(os.getpid(), this_host(), "another-boot:1")) is False, "a reused pid"
    assert owner_alive(ProcessOwner(os.getpid(), "another-host")) is None
    assert owner_alive(ProcessOwner(os.getpid(), this_host(), started_by=time.time())) is True
    assert owner_alive(ProcessOwner(os.getpid(), this_host(), started_by=time.time() - 3600)) is False
    assert owner_from_tags({"dagster/partition": "2018-04-01"}) is None


@pytest.fixture
def instance(txguard_home: Path) -> Iterator[dg.DagsterInstance]:
    """The instance ``txguard`` prepares (dagster.yaml's pools), on a temporary home."""
    from jobs.platform.settings import load_settings
    from orchestration.instance import prepare_dagster_home

    prepare_dagster_home(load_settings())
    with dg.DagsterInstance.get() as prepared:
        yield prepared


def started_run(
    instance: dg.DagsterInstance,
    tags: dict[str, str],
    status: dg.DagsterRunStatus = dg.DagsterRunStatus.STARTED,
) -> str:
    run_id = str(uuid.uuid4())
    instance.add_run(dg.DagsterRun(job_name="daily_pipeline", run_id=run_id, status=status, tags=tags))
    return run_id


def claim(instance: dg.DagsterInstance, run_id: str, step: str, pool: str = WAREHOUSE_POOL) -> bool:
    return instance.event_log_storage.claim_concurrency_slot(pool, run_id, step).is_claimed


def holders_of(instance: dg.DagsterInstance, pool: str) -> set[str]:
    return {slot.run_id for slot in instance.event_log_storage.get_concurrency_info(pool).claimed_slots}


def tags_of(process: subprocess.Popen) -> dict[str, str]:
    token = process_token(process.pid)
    assert token is not None
    return {OWNER_PID_TAG: str(process.pid), OWNER_HOST_TAG: this_host(), OWNER_PROCESS_TAG: token}


def test_reaper_fails_dead_runs_frees_their_slots_and_leaves_live_ones(
    instance: dg.DagsterInstance, txguard_home: Path
) -> None:
    holder, victim = sleeper(), sleeper()
    try:
        live_run = started_run(instance, tags_of(holder))
        dead_run = started_run(instance, tags_of(victim))
        foreign = started_run(instance, {OWNER_PID_TAG: "1", OWNER_HOST_TAG: "another-host"})
        assert claim(instance, dead_run, "dbt_staging")
        folder = dbt_targets(txguard_home) / f"dbt_staging-{dead_run}"
        folder.mkdir(parents=True)
        waiting = started_run(instance, owner_tags())
        assert not claim(instance, waiting, "dbt_marts")

        (holder_seen,) = slot_holders(instance, waiting)
        assert holder_seen.run_id == dead_run and holder_seen.alive is True and not holder_seen.dead
        assert f"kill -INT {victim.pid}" in holder_seen.describe()

        killed(victim)
        (done,) = reap_dead_runs(instance, dbt_targets(txguard_home))
        assert (done.run_id, done.marked, done.pools) == (dead_run, "failed", [WAREHOUSE_POOL])
        assert not folder.exists()
        assert instance.get_run_by_id(dead_run).status == dg.DagsterRunStatus.FAILURE
        assert "is gone" in done.describe()
        assert claim(instance, waiting, "dbt_marts"), "the slot went to the run that waited"
        for run_id in (live_run, foreign, waiting):
            assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED

        instance.report_run_canceled(instance.get_run_by_id(waiting), "canceled in the UI")
        assert holders_of(instance, WAREHOUSE_POOL) == {waiting}, "Dagster keeps a canceled run's slot"
        (freed,) = reap_dead_runs(instance, None)
        assert (freed.run_id, freed.marked, freed.status) == (waiting, None, "CANCELED")
        assert holders_of(instance, WAREHOUSE_POOL) == set()
        assert reap_dead_runs(instance, None) == []
    finally:
        killed(holder)
        killed(victim)


def test_the_daemons_reaper_fails_a_run_whose_worker_died(instance: dg.DagsterInstance) -> None:
    """A run the default launcher started has no owner tags: its worker is the process of its RUN_START."""
    from orchestration.defs.recovery import dead_run_reaper
    from orchestration.resources import TxguardSettings

    worker = sleeper()
    run_id = started_run(instance, {})
    instance.report_dagster_event(
        dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name="daily_pipeline", pid=worker.pid),
        run_id,
    )
    assert claim(instance, run_id, "dbt_staging")

    def tick() -> str:
        context = dg.build_sensor_context(instance=instance, resources={"settings": TxguardSettings()})
        return dead_run_reaper(context).skip_message

    assert tick() == "no dead run", "its worker lives"
    killed(worker)
    assert f"run {run_id} (daily_pipeline) was STARTED but its process (pid {worker.pid} " in tick()
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
    assert holders_of(instance, WAREHOUSE_POOL) == set()
    assert tick() == "no dead run"


def orphan_after_parent_killed(child_argv: list[str], ready: Callable[[int], bool]) -> tuple[int, list[int]]:
    """Start a parent that starts ``child_argv`` and waits; SIGKILL the parent once ``ready(child)``.
    Returns the child and the child's own descendants seen just before the kill."""
    code = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen({child_argv!r}, stdout=subprocess.DEVNULL)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        child = int(parent.stdout.readline())
        wait_until(lambda: ready(child), 90, f"{child_argv[:3]} ready")
        from orchestration.processes import descendants

        below = descendants(child)
    finally:
        killed(parent)
    return child, below


def test_a_bound_program_and_the_dbt_launcher_die_with_their_killed_parent(tmp_path: Path) -> None:
    child, _ = orphan_after_parent_killed(
        [sys.executable, "-m", "orchestration.processes", "sleep", "600"], lambda pid: program(pid) == "sleep"
    )
    wait_until(lambda: not live(child), GONE_S, "the bound sleep dies with its parent")

    launcher = bound_launcher("sleep", tmp_path)
    assert bound_launcher("sleep", tmp_path) == launcher
    child, _ = orphan_after_parent_killed([launcher, "600"], lambda pid: program(pid) == "sleep")
    wait_until(lambda: not live(child), GONE_S, "the launched sleep dies with its parent")

    from orchestration.defs.transform import defs as transform_defs

    dbt = transform_defs.resources["dbt"].dbt_executable
    assert Path(dbt).read_text().startswith(f"#!{sys.executable}\n")
    assert subprocess.run([dbt, "--version"], capture_output=True, text=True, check=True).stdout.startswith(
        "Core:"
    )


@pytest.mark.slow
def test_the_spark_job_and_its_jvm_die_with_their_killed_parent(tmp_path: Path) -> None:
    from jobs.testing.reference_features import random_raw, write_raw_lake

    lake = str(tmp_path / "lake")
    transactions, reports = random_raw(days=40)
    write_raw_lake(lake, transactions, reports)

    def is_jvm(pid: int) -> bool:
        return program(pid) == "java" and "org.apache.spark.deploy.SparkSubmit" in cmdline(pid)

    def jvm_started(pid: int) -> bool:
        from orchestration.processes import descendants

        return any(is_jvm(below) for below in descendants(pid))

    job = [sys.executable, "-m", "jobs.features.spark_job", "--start", "2018-05-01", "--end", "2018-05-09"]
    child, below = orphan_after_parent_killed([*job, "--lake", lake, "--master", "local[1]"], jvm_started)
    java = [pid for pid in below if is_jvm(pid)]
    assert java, "the gateway JVM was running when the parent was killed"
    wait_until(lambda: not live(child), GONE_S, "the Spark driver dies with its parent")
    wait_until(lambda: not any(live(pid) for pid in java), GONE_S, "its JVM exits once the driver is gone")


# --- the real txguard run ----------------------------------------------------------------------------------

FIRST_DAY = dt.date(2018, 4, 1)
DAYS = 30
"""Few days that ``fraud_model`` trains on (a week of label delay, a holdout and a validation week, and a week
to train on, with frauds in each)."""
LAST_DAY = FIRST_DAY + dt.timedelta(days=DAYS - 1)
STEP_S = 420
"""How long a ``txguard run`` may take to reach a step (or a whole run to end) on a busy two-core machine."""
STOP_S = 15
"""How long a stopped ``txguard run`` may take to exit."""
SAID_S = 10
"""How long a run waiting for a slot may take to say who holds it."""


@dataclass
class World:
    """One small landing zone and data home that the slow tests share, one run after another."""

    home: Path
    env: dict[str, str]
    logs: Path
    dead_runs: list[str] = field(default_factory=list)

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.home / "dagster"))

    def start(self, *args: str, name: str) -> tuple[subprocess.Popen, Path]:
        """``txguard ARGS`` in its own process group, its output in a log file."""
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(Path(sys.executable).with_name("txguard")), *args],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return process, log

    def run(self, name: str) -> tuple[subprocess.Popen, Path]:
        return self.start("run", "--from", FIRST_DAY.isoformat(), "--to", LAST_DAY.isoformat(), name=name)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from jobs.simulation.simulator import SimulationConfig, simulate, write_landing

    home = tmp_path_factory.mktemp("crash") / "txguard"
    env = {name: value for name, value in os.environ.items() if not name.startswith("TXGUARD_")}
    env.update(TXGUARD_HOME=str(home), DAGSTER_HOME=str(home / "dagster"), TXGUARD_SPARK_MASTER="local[1]")
    config = SimulationConfig(customers=100, terminals=200, days=DAYS, start=FIRST_DAY, seed=0)
    write_landing(simulate(config), str(home / "landing"), "csv")
    logs = home.parent / "logs"
    logs.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        for name in os.environ:
            if name.startswith("TXGUARD_") and name not in env:
                patch.delenv(name)
        from jobs.platform.settings import load_settings
        from orchestration.instance import prepare_dagster_home

        prepare_dagster_home(load_settings())
    yield World(home, env, logs)


def owned_run(instance: dg.DagsterInstance, process: subprocess.Popen) -> dg.DagsterRun | None:
    runs = instance.get_runs(dg.RunsFilter(tags={OWNER_PID_TAG: str(process.pid)}), limit=1)
    return runs[0] if runs else None


def step_started(instance: dg.DagsterInstance, process: subprocess.Popen, step: str) -> bool:
    run = owned_run(instance, process)
    if run is None:
        return False
    started = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_START).records
    return any(record.event_log_entry.step_key == step for record in started)


def holds(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    """The pools in which a run holds or waits for a slot."""
    storage = instance.event_log_storage
    pools = set()
    for pool in storage.get_concurrency_keys():
        info = storage.get_concurrency_info(pool)
        if any(s.run_id == run_id for s in [*info.claimed_slots, *info.pending_steps]):
            pools.add(pool)
    return pools


def ended(process: subprocess.Popen, timeout_s: float, log: Path) -> int:
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"txguard did not exit within {timeout_s} s\n{log.read_text()[-3000:]}")


KILL_POINTS = {
    "ingest": ("raw_transactions", None),
    "dbt": ("dbt_staging", "dbt"),
    "scoring": ("transaction_scores", None),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_killed_run_leaves_no_child_and_blocks_no_later_run(world: World, point: str) -> None:
    """SIGKILL in a step: no dbt or Java process survives, the run stays STARTED with its slots until the next
    run reaps it (failed, slots freed, dbt folder removed), and that next run goes on.

    The scoring kill point is ``txguard rescore`` (the same headless run, scoring only) once the world has a
    champion: a first model trained on this few days does not pass the promotion floor, so a full run ends
    at scoring without one."""
    step, child = KILL_POINTS[point]
    if point == "scoring":
        ensure_champion(world)
    instance = world.instance()
    previous = world.dead_runs[-1] if world.dead_runs else None
    if point == "scoring":
        process, log = world.start(
            "rescore", "--from", "2018-04-28", "--to", LAST_DAY.isoformat(), name=point
        )
    else:
        process, log = world.run(point)
    try:
        wait_until(lambda: step_started(instance, process, step), STEP_S, f"{step} started", log)
        run = owned_run(instance, process)
        assert run is not None
        if child:
            from orchestration.processes import descendants

            wait_until(lambda: any(runs_dbt(p) for p in descendants(process.pid)), 60, "dbt runs", log)
            targets = dbt_targets(world.home)
            wait_until(lambda: list(targets.glob(f"*-{run.run_id}/*")), 60, "dbt writes its target", log)
        if previous is not None:
            reaped = instance.get_run_by_id(previous)
            assert reaped.status == dg.DagsterRunStatus.FAILURE, "the next run reaped the dead one"
            assert holds(instance, previous) == set()
            assert list(dbt_targets(world.home).glob(f"*-{previous}")) == []
            assert f"run {previous}" in log.read_text()
        process.kill()
        process.wait()
        wait_until(lambda: group_members(process.pid) == [], GONE_S, f"no child of the run killed in {point}")
        dead = instance.get_run_by_id(run.run_id)
        assert dead.status == dg.DagsterRunStatus.STARTED, "nothing reaps a run before a later one starts"
        assert holds(instance, run.run_id), "the dead run still holds its step's slot"
        world.dead_runs.append(run.run_id)
    finally:
        stop_group(process)


def ensure_champion(world: World) -> None:
    """A full run after the dead ones (it reaps them and trains a model), and that model made champion by
    ``txguard promote`` if the run's gate did not promote it."""
    from jobs.platform.settings import load_settings
    from jobs.registry.aliases import CHAMPION, resolve_alias
    from jobs.registry.client import UnknownModelVersion

    process, log = world.run("full")
    try:
        ended(process, STEP_S, log)
    finally:
        stop_group(process)
    instance = world.instance()
    run = owned_run(instance, process)
    assert run is not None
    failed = {
        entry.step_key for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    }
    assert failed <= {"transaction_scores"}, log.read_text()[-3000:]
    for dead in world.dead_runs:
        assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE
        assert holds(instance, dead) == set()
    world.dead_runs.clear()
    tracking = load_settings(home=str(world.home)).tracking_uri
    try:
        resolve_alias(CHAMPION, tracking_uri=tracking)
    except UnknownModelVersion:
        promoted = subprocess.run(
            [str(Path(sys.executable).with_name("txguard")), "promote", "--version", "1", "--reason", "test"],
            env=world.env,
            capture_output=True,
            text=True,
        )
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr


@pytest.mark.slow
def test_a_rerun_after_the_last_kill_completes(world: World) -> None:
    process, log = world.start("rescore", "--from", "2018-04-28", "--to", LAST_DAY.isoformat(), name="rerun")
    try:
        assert ended(process, STEP_S, log) == 0, log.read_text()[-3000:]
    finally:
        stop_group(process)
    instance = world.instance()
    for dead in world.dead_runs:
        assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE
    storage = instance.event_log_storage
    assert all(
        not storage.get_concurrency_info(pool).claimed_slots for pool in storage.get_concurrency_keys()
    )


def waiting_for_warehouse(instance: dg.DagsterInstance, process: subprocess.Popen) -> bool:
    run = owned_run(instance, process)
    if run is None:
        return False
    info = instance.event_log_storage.get_concurrency_info(WAREHOUSE_POOL)
    return any(s.run_id == run.run_id for s in info.pending_steps) and all(
        s.run_id != run.run_id for s in info.claimed_slots
    )


def hold_warehouse(instance: dg.DagsterInstance, owner: subprocess.Popen) -> str:
    """A run owned by ``owner`` that holds the warehouse slot, as a live ``txguard run`` in dbt would."""
    run_id = started_run(instance, tags_of(owner))
    assert claim(instance, run_id, "dbt_staging")
    return run_id


def release(instance: dg.DagsterInstance, run_id: str) -> None:
    run = instance.get_run_by_id(run_id)
    if not run.is_finished:
        instance.report_run_failed(run, "test over")
    instance.event_log_storage.free_concurrency_slots_for_run(run_id)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_run_waiting_for_a_live_holder_says_who_and_stops_on_a_signal(world: World, stop: int) -> None:
    instance = world.instance()
    holder = sleeper()
    holder_run = hold_warehouse(instance, holder)
    process, log = world.run(f"wait-{stop.name}")
    try:
        wait_until(lambda: waiting_for_warehouse(instance, process), STEP_S, "waiting for the slot", log)
        said = f"held by run {holder_run} (daily_pipeline, step dbt_staging)"
        wait_until(lambda: said in log.read_text(), SAID_S, "who holds the slot, said", log)
        assert f"live process pid {holder.pid} on {this_host()}" in log.read_text()
        assert f"kill -INT {holder.pid}" in log.read_text()

        process.send_signal(stop)
        assert ended(process, STOP_S, log) == 128 + stop
        run = owned_run(instance, process)
        assert f"{stop.name}: stopping run {run.run_id}" in log.read_text()
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        assert holds(instance, run.run_id) == set()
        assert holders_of(instance, WAREHOUSE_POOL) == {holder_run}, "the live holder keeps its slot"
        assert instance.get_run_by_id(holder_run).status == dg.DagsterRunStatus.STARTED
        wait_until(lambda: group_members(process.pid) == [], GONE_S, "nothing of the stopped run left")
    finally:
        stop_group(process)
        killed(holder)
        release(instance, holder_run)


@pytest.mark.slow
def test_a_waiting_run_goes_on_once_its_holder_dies_and_sigterm_stops_it_in_dbt(world: World) -> None:
    from orchestration.processes import descendants

    instance = world.instance()
    holder = sleeper()
    holder_run = hold_warehouse(instance, holder)
    process, log = world.run("holder-dies")
    try:
        wait_until(lambda: waiting_for_warehouse(instance, process), STEP_S, "waiting for the slot", log)
        killed(holder)
        wait_until(
            lambda: step_started(instance, process, "dbt_staging"), SAID_S, "dbt_staging got the slot", log
        )
        assert instance.get_run_by_id(holder_run).status == dg.DagsterRunStatus.FAILURE
        assert f"run {holder_run} (daily_pipeline) was STARTED but its process" in log.read_text()

        wait_until(lambda: any(runs_dbt(p) for p in descendants(process.pid)), 60, "dbt runs", log)
        process.send_signal(signal.SIGTERM)
        assert ended(process, STOP_S + 30, log) == 128 + signal.SIGTERM
        run = owned_run(instance, process)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        assert holds(instance, run.run_id) == set(), "the interrupted dbt step's slot is freed"
        wait_until(lambda: group_members(process.pid) == [], GONE_S, "no dbt left after SIGTERM")
    finally:
        stop_group(process)
        killed(holder)
        release(instance, holder_run)
