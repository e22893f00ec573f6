"""Headless runs: the whole chain for a partition range, through the same definitions the UI shows.

Such a run executes in this process and names it as the run's owner in its tags, so that a later run (or
the daemon's reaper) can tell when it died; runs left behind by dead processes are reaped before it starts,
and ``RunGuard`` keeps it stoppable with Ctrl-C or SIGTERM and explains any wait for a pool slot.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

import dagster as dg

from jobs.platform.layout import parse_day
from jobs.platform.settings import load_settings
from orchestration.processes import owner_tags
from orchestration.recovery import dbt_targets, reap_dead_runs
from orchestration.run_guard import RunGuard, free_run_slots, tell

PIPELINE_JOB = "daily_pipeline"
CHAIN_AFTER_INGEST_JOB = "chain_after_ingest"
"""Everything below ingestion: what a range run reruns for the days whose ingestion passed its check."""
INGEST_CHECK = "rejected_share_below_threshold"


@dataclass
class RangeRunOutcome:
    """What a headless run did, for the terminal and for the exit code."""

    run_id: str
    success: bool
    materialized: list[str] = field(default_factory=list)
    failed_steps: list[str] = field(default_factory=list)
    failed_checks: list[str] = field(default_factory=list)
    warned_checks: list[str] = field(default_factory=list)
    skipped_steps: list[str] = field(default_factory=list)
    stopped_by: str | None = None
    """The signal (``SIGINT``, ``SIGTERM``) that stopped the run, None when it ran to its end."""
    held_days: list[str] = field(default_factory=list)
    """Days whose ingestion failed its blocking check: nothing below ingestion may be built on them."""
    check_details: list[str] = field(default_factory=list)
    """Each failed check's own account: for ingestion, the day, the file, the counts and the rules."""


PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def partition_range_tags(start: str, end: str) -> dict[str, str]:
    """Run tags that make one run cover a whole partition range (single-run backfill)."""
    first, last = parse_day(start), parse_day(end)
    if last < first:
        raise ValueError(f"--to {end} is before --from {start}")
    return {RANGE_START_TAG: first.isoformat(), RANGE_END_TAG: last.isoformat()}


def partition_range_of(tags: Mapping[str, str]) -> tuple[str, str] | None:
    """The first and last partition key a run covers (one partition or a range), None when unpartitioned."""
    if PARTITION_TAG in tags:
        return tags[PARTITION_TAG], tags[PARTITION_TAG]
    first, last = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
    return (first, last) if first and last else None


def ranges_without(start: str, end: str, held: Iterable[str]) -> list[tuple[str, str]]:
    """The contiguous stretches of ``[start, end]`` left once the ``held`` days are taken out."""
    first, last, skipped = parse_day(start), parse_day(end), {parse_day(day) for day in held}
    ranges: list[tuple[str, str]] = []
    day, open_from = first, None
    while day <= last:
        if day in skipped:
            if open_from is not None:
                ranges.append((open_from.isoformat(), (day - dt.timedelta(days=1)).isoformat()))
            open_from = None
        elif open_from is None:
            open_from = day
        day += dt.timedelta(days=1)
    if open_from is not None:
        ranges.append((open_from.isoformat(), last.isoformat()))
    return ranges


def run_partition_range(
    defs: dg.Definitions,
    start: str,
    end: str,
    instance: dg.DagsterInstance,
    job_name: str = PIPELINE_JOB,
    log_level: str = "INFO",
    notify: Callable[[str], None] = tell,
    leave_out: Collection[dg.AssetKey] = (),
) -> RangeRunOutcome:
    """Execute the job for ``[start, end]`` as one run recorded in ``instance`` (so the UI lists it).

    ``leave_out`` names assets of the job not to run (training, when the run does not train): the run is
    then the job's subset, which the UI shows as such. Dead runs are reaped first (``notify`` says what was
    done); the run's slots are freed once it ended, however it ended, since Dagster keeps the slot of a step
    that an interruption stopped.
    """
    job = defs.resolve_job_def(job_name)
    selected = job.asset_layer.selected_asset_keys
    subset = sorted(selected - set(leave_out)) if selected & set(leave_out) else None
    targets = dbt_targets(load_settings().home)
    for done in reap_dead_runs(instance, targets):
        notify(done.describe())
    run_id = str(uuid.uuid4())
    with RunGuard(instance, run_id, targets, notify) as guard:
        try:
            result = job.execute_in_process(
                instance=instance,
                run_id=run_id,
                tags={**partition_range_tags(start, end), "txguard/trigger": "cli", **owner_tags()},
                run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
                raise_on_error=False,
                asset_selection=subset,
            )
        finally:
            free_run_slots(instance, run_id)
    outcome = RangeRunOutcome(run_id=result.run_id, success=result.success)
    for event in result.all_events:
        if event.is_step_failure:
            outcome.failed_steps.append(event.step_key or "?")
        elif event.is_step_skipped:
            outcome.skipped_steps.append(event.step_key or "?")
        elif event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            key = event.asset_key.to_user_string() if event.asset_key else "?"
            if key not in outcome.materialized:
                outcome.materialized.append(key)
        elif event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            if evaluation is not None and not evaluation.passed:
                name = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
                if evaluation.severity == dg.AssetCheckSeverity.ERROR:
                    outcome.failed_checks.append(name)
                else:
                    outcome.warned_checks.append(name)
                if evaluation.description:
                    outcome.check_details.extend(
                        f"{name}: {line}" for line in evaluation.description.splitlines()
                    )
                if evaluation.check_name == INGEST_CHECK:
                    failing = evaluation.metadata.get("failing_days")
                    days = failing.value if failing is not None else []
                    outcome.held_days.extend(day for day in days if day not in outcome.held_days)
    outcome.success = result.success and not outcome.failed_checks
    if guard.signal is not None:
        outcome.success = False
        outcome.stopped_by = guard.signal.name
        run = instance.get_run_by_id(run_id)
        if run is not None:
            instance.report_engine_event(f"txguard stopped this run on {guard.signal.name}.", run)
    return outcome
