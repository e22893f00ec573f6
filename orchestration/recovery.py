"""Dead runs: find the runs whose process is gone, mark them failed and free what they held.

A run killed by SIGKILL (or by a reboot) stays STARTED and keeps its pool slots: Dagster frees a step's slot
when the step ends, and its run monitoring checks a run worker only through a launcher that reports its
workers' health, which the default launcher (``make ui``) does not; an in-process run (``txguard run``) has
no launcher at all. ``reap_dead_runs`` closes the gap for every run, however it started: a run whose owner
(``orchestration.processes``) is gone is reported failed, its step processes still running are killed, its
slots are freed and its dbt target folders removed; a finished run that still holds a slot has it freed.
``txguard run`` reaps before it starts and while a step waits for a slot, and the ``dead_run_reaper`` sensor
reaps under the daemon. A run owned by another host is never judged from here.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from orchestration.processes import (
    ProcessOwner,
    owner_alive,
    owner_from_tags,
    process_started_before,
    started_at_text,
    stop_processes,
    this_host,
)

DBT_TARGETS = "dbt"
"""The folder under ``TXGUARD_HOME`` where each dbt step keeps its target, ``<op>-<run id>`` (``build_window``
in ``orchestration/defs/transform.py``)."""

IN_PROGRESS = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
STEP_KILL_GRACE_S = 3.0


@dataclass
class ReapedRun:
    """What the reaper did about one run, for a terminal, a sensor tick or the run's own log."""

    run_id: str
    job_name: str
    status: str
    owner: ProcessOwner | None = None
    marked: str | None = None
    pools: list[str] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.marked:
            gone = f"its process ({self.owner.describe() if self.owner else '?'}) is gone"
            what = f"run {self.run_id} ({self.job_name}) was {self.status} but {gone}: marked {self.marked}"
        else:
            what = f"run {self.run_id} ({self.job_name}) had ended ({self.status}) but still held slots"
        done = [f"freed its slots in {', '.join(sorted(set(self.pools)))}"] if self.pools else []
        if self.killed:
            done.append(f"killed its step processes {', '.join(map(str, self.killed))}")
        if self.removed:
            done.append(f"removed {', '.join(self.removed)}")
        return "; ".join([what, *done])


@dataclass(frozen=True)
class SlotHolder:
    """A run holding a slot another run waits for, and what this machine knows of its process."""

    pool: str
    limit: int
    run_id: str
    step_key: str | None
    since: str
    job_name: str
    owner: ProcessOwner | None
    alive: bool | None
    finished: bool

    @property
    def dead(self) -> bool:
        """A holder the reaper frees: its run ended, or its process is gone."""
        return self.finished or self.alive is False

    def describe(self) -> str:
        head = (
            f"waiting for a slot of pool '{self.pool}' (limit {self.limit}), held by run {self.run_id} "
            f"({self.job_name}, step {self.step_key or '?'}) since {self.since}"
        )
        if self.owner is not None and self.alive:
            return (
                f"{head}, owned by the live process {self.owner.describe()}. Wait for it, or stop it "
                f"(Ctrl-C in its terminal, or kill -INT {self.owner.pid}): its slot is then freed at once."
            )
        where = f"its process ({self.owner.describe()})" if self.owner else "the process that runs it"
        return (
            f"{head}; {where} cannot be checked from this machine. If that run is dead, terminate it in "
            f"the UI (Runs, {self.run_id}, Terminate): its slot is then freed within seconds."
        )


def uses_local_launcher(instance: dg.DagsterInstance) -> bool:
    """Whether the daemon's runs run on this machine (the default launcher's subprocesses)."""
    return isinstance(instance.run_launcher, dg.DefaultRunLauncher)


def run_owner(instance: dg.DagsterInstance, run: dg.DagsterRun) -> ProcessOwner | None:
    """The process a run belongs to: the one its tags name, else (for a run the default launcher started
    here) the one that logged its ``RUN_START``; None when neither is known."""
    owner = owner_from_tags(run.tags)
    if owner is not None or not uses_local_launcher(instance):
        return owner
    started = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_START, limit=1)
    for record in started.records:
        event = record.event_log_entry.dagster_event
        if event is not None and event.pid is not None:
            return ProcessOwner(pid=event.pid, host=this_host(), started_by=record.event_log_entry.timestamp)
    return None


def _step_processes(instance: dg.DagsterInstance, run_id: str, owner: ProcessOwner) -> list[int]:
    """The run's step processes other than its owner that are still the same processes and alive."""
    pids = {}
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_START).records:
        event = record.event_log_entry.dagster_event
        if event is not None and event.pid is not None and event.pid != owner.pid:
            pids[event.pid] = record.event_log_entry.timestamp
    return [pid for pid, moment in pids.items() if process_started_before(pid, moment)]


def _slots_by_run(instance: dg.DagsterInstance) -> dict[str, set[str]]:
    """Pools in which each run holds or waits for a slot."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return {}
    held: dict[str, set[str]] = {}
    for pool in storage.get_concurrency_keys():
        info = storage.get_concurrency_info(pool)
        for slot in info.claimed_slots:
            held.setdefault(slot.run_id, set()).add(pool)
        for step in info.pending_steps:
            held.setdefault(step.run_id, set()).add(pool)
    return held


def _remove_dbt_targets(dbt_targets: Path | None, run_id: str) -> list[str]:
    if dbt_targets is None or not dbt_targets.is_dir():
        return []
    removed = []
    for folder in dbt_targets.glob(f"*-{run_id}"):
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(str(folder))
    return removed


def _dead_runs(instance: dg.DagsterInstance) -> Iterator[tuple[dg.DagsterRun, ProcessOwner]]:
    """In-progress runs whose owner is known to be gone; a run queued for the daemon (not started, no owner
    yet) is not one of them."""
    for run in instance.get_runs(dg.RunsFilter(statuses=IN_PROGRESS)):
        if run.status == dg.DagsterRunStatus.NOT_STARTED and owner_from_tags(run.tags) is None:
            continue
        owner = run_owner(instance, run)
        if owner is not None and owner_alive(owner) is False:
            yield run, owner


def reap_dead_runs(instance: dg.DagsterInstance, dbt_targets: Path | None = None) -> list[ReapedRun]:
    """Mark every run whose owner is gone failed (canceled if it was canceling), kill its leftover step
    processes, free its slots and remove its dbt target folders; free the slots finished runs still hold."""
    slots = _slots_by_run(instance)
    reaped = []
    for run, owner in _dead_runs(instance):
        done = ReapedRun(run.run_id, run.job_name, run.status.value, owner=owner)
        done.killed = stop_processes(_step_processes(instance, run.run_id, owner), STEP_KILL_GRACE_S)
        current = instance.get_run_by_id(run.run_id)
        if current is not None and not current.is_finished:
            message = (
                f"Marked by txguard's reaper: the process that ran this run ({owner.describe()}) is gone, "
                "so nothing will finish it; its pool slots are freed."
            )
            if current.status == dg.DagsterRunStatus.CANCELING:
                instance.report_run_canceled(current, message)
                done.marked = "canceled"
            else:
                instance.report_run_failed(current, message)
                done.marked = "failed"
        if run.run_id in slots:
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            done.pools = sorted(slots[run.run_id])
        done.removed = _remove_dbt_targets(dbt_targets, run.run_id)
        reaped.append(done)
    handled = {done.run_id for done in reaped}
    for run_id, pools in slots.items():
        if run_id in handled:
            continue
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            instance.event_log_storage.free_concurrency_slots_for_run(run_id)
            status = run.status.value if run is not None else "deleted"
            reaped.append(ReapedRun(run_id, run.job_name if run else "?", status, pools=sorted(pools)))
    return reaped


def slot_holders(instance: dg.DagsterInstance, run_id: str) -> list[SlotHolder]:
    """The runs holding the slots that ``run_id`` waits for; empty when it waits for none."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    holders = []
    for pool in sorted(storage.get_concurrency_keys()):
        info = storage.get_concurrency_info(pool)
        ours = {slot.step_key for slot in info.claimed_slots if slot.run_id == run_id}
        if not any(s.run_id == run_id and s.step_key not in ours for s in info.pending_steps):
            continue
        assigned = {(s.run_id, s.step_key): s.assigned_timestamp for s in info.pending_steps}
        for slot in info.claimed_slots:
            if slot.run_id == run_id:
                continue
            run = instance.get_run_by_id(slot.run_id)
            owner = run_owner(instance, run) if run is not None else None
            holders.append(
                SlotHolder(
                    pool=pool,
                    limit=info.limit,
                    run_id=slot.run_id,
                    step_key=slot.step_key,
                    since=started_at_text(assigned.get((slot.run_id, slot.step_key))),
                    job_name=run.job_name if run is not None else "deleted run",
                    owner=owner,
                    alive=owner_alive(owner) if owner is not None else None,
                    finished=run is None or run.is_finished,
                )
            )
    return holders


def dbt_targets(home: Path) -> Path:
    return home / DBT_TARGETS
