"""Headless runs: the whole chain for a partition range, through the same definitions the UI shows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import dagster as dg

from jobs.platform.layout import parse_day

PIPELINE_JOB = "daily_pipeline"


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


def run_partition_range(
    defs: dg.Definitions,
    start: str,
    end: str,
    instance: dg.DagsterInstance,
    job_name: str = PIPELINE_JOB,
    log_level: str = "INFO",
) -> RangeRunOutcome:
    """Execute the job for ``[start, end]`` as one run recorded in ``instance`` (so the UI lists it)."""
    job = defs.resolve_job_def(job_name)
    result = job.execute_in_process(
        instance=instance,
        tags={**partition_range_tags(start, end), "txguard/trigger": "cli"},
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        raise_on_error=False,
    )
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
    outcome.success = result.success and not outcome.failed_checks
    return outcome
