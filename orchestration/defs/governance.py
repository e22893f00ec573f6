"""OpenLineage events for every asset materialization, sent when the run that made them ends.

Run-status sensors (success, failure, cancellation) read the finished run's own event log once: each
materialization becomes a START (at its step's start) and a COMPLETE; each planned asset whose step failed
becomes a START and a FAIL with the error; on cancellation, the started but unfinished ones get an ABORT. The
inputs are the asset's upstream keys in the asset graph, the schema facet comes from ``dagster/column_schema``
metadata (the materialization's, else the definition's). One event-log read per run, no polling of assets,
and the OpenLineage client is imported only when a sensor fires.

``emit_run_lineage`` is public so that headless runs (``txguard run``), which no daemon watches, send theirs.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import dagster as dg

from orchestration.defs.conventions import COLUMN_SCHEMA, ROW_COUNT
from orchestration.resources import TxguardSettings

if TYPE_CHECKING:
    from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetGraph
    from dagster._utils.error import SerializableErrorInfo

    from jobs.governance.openlineage import Column, DatasetRef, EndState, Materialization
    from jobs.platform.settings import Settings

_EVENT_TYPES = {
    dg.DagsterEventType.STEP_START,
    dg.DagsterEventType.STEP_FAILURE,
    dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
    dg.DagsterEventType.ASSET_MATERIALIZATION,
    dg.DagsterEventType.ASSET_FAILED_TO_MATERIALIZE,
}


def _when(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC)


def _metadata_value(metadata: dict, key: str) -> object:
    value = metadata.get(key)
    return getattr(value, "value", value)


def _columns(metadata: dict) -> tuple[Column, ...]:
    from jobs.governance.openlineage import Column

    schema = _metadata_value(metadata, COLUMN_SCHEMA)
    if not isinstance(schema, dg.TableSchema):
        return ()
    return tuple(Column(c.name, c.type, c.description) for c in schema.columns)


def _dataset(key: dg.AssetKey, graph: BaseAssetGraph | None, metadata: dict | None = None) -> DatasetRef:
    from jobs.governance.openlineage import DatasetRef

    declared = dict(graph.get(key).metadata) if graph is not None and graph.has(key) else {}
    columns = _columns(metadata or {}) or _columns(declared)
    row_count = _metadata_value(metadata or {}, ROW_COUNT)
    return DatasetRef(key.to_user_string(), columns, row_count if isinstance(row_count, int) else None)


def materializations(
    instance: dg.DagsterInstance, run: dg.DagsterRun, graph: BaseAssetGraph | None
) -> list[Materialization]:
    """Every asset materialization (and failed or aborted attempt) of a finished run, from its event log."""
    from jobs.governance.openlineage import Materialization

    started: dict[str, float] = {}
    failures: dict[str, tuple[float, str, str | None]] = {}
    planned: dict[tuple[dg.AssetKey, str | None], str | None] = {}
    done: dict[tuple[dg.AssetKey, str | None], tuple[float, str | None, dict]] = {}
    for record in instance.all_logs(run.run_id, of_type=_EVENT_TYPES):
        event = record.dagster_event
        if event is None:
            continue
        kind, step = event.event_type, event.step_key
        if kind == dg.DagsterEventType.STEP_START and step:
            started.setdefault(step, record.timestamp)
        elif kind == dg.DagsterEventType.STEP_FAILURE and step:
            failures[step] = (record.timestamp, *_error(event.step_failure_data.error))
        elif kind == dg.DagsterEventType.ASSET_MATERIALIZATION and event.asset_key:
            metadata = dict(event.step_materialization_data.materialization.metadata)
            done[(event.asset_key, event.partition)] = (record.timestamp, step, metadata)
        elif event.asset_key:
            for partition in _planned_partitions(event):
                planned.setdefault((event.asset_key, partition), step)
    stats = instance.get_run_stats(run.run_id)
    base = {"dagster_run_id": run.run_id, "dagster_job": run.job_name, "engine_version": dg.__version__}
    found = []
    for (key, partition), (timestamp, step, metadata) in done.items():
        found.append(
            Materialization(
                asset=key.to_user_string(),
                partition=partition,
                state="COMPLETE",
                started_at=_when(started.get(step or "", timestamp)),
                ended_at=_when(timestamp),
                output=_dataset(key, graph, metadata),
                inputs=_inputs(key, graph),
                **base,
            )
        )
    for (key, partition), step in planned.items():
        if (key, partition) in done or step not in started:
            continue
        state: EndState = "FAIL" if step in failures else "ABORT"
        if state == "ABORT" and run.status != dg.DagsterRunStatus.CANCELED:
            continue
        ended, error, stack = failures.get(step, (stats.end_time or started[step], "run canceled", None))
        found.append(
            Materialization(
                asset=key.to_user_string(),
                partition=partition,
                state=state,
                started_at=_when(started[step]),
                ended_at=_when(ended),
                output=_dataset(key, graph),
                inputs=_inputs(key, graph),
                error=error,
                stack_trace=stack,
                **base,
            )
        )
    return sorted(found, key=lambda m: (m.started_at, m.asset, m.partition or ""))


def _error(error: SerializableErrorInfo | None) -> tuple[str, str | None]:
    """The root cause's message and stack: Dagster wraps the asset's exception in its own."""
    if error is None:
        return "step failed", None
    while error.cause is not None:
        error = error.cause
    return error.message.strip(), "".join(error.stack) or None


def _planned_partitions(event: dg.DagsterEvent) -> list[str | None]:
    data = event.event_specific_data
    subset = getattr(data, "partitions_subset", None)
    if subset is not None:
        return list(subset.get_partition_keys())
    return [event.partition]


def _inputs(key: dg.AssetKey, graph: BaseAssetGraph | None) -> tuple[DatasetRef, ...]:
    if graph is None or not graph.has(key):
        return ()
    return tuple(_dataset(parent, graph) for parent in sorted(graph.get(key).parent_keys))


def emit_run_lineage(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    settings: Settings,
    graph: BaseAssetGraph | None = None,
) -> tuple[int, str]:
    """Send the OpenLineage events of one finished run; returns (events sent, where they went)."""
    from jobs.governance.openlineage import build_events, emit

    events = [event for m in materializations(instance, run, graph) for event in build_events(m)]
    if not events:
        return 0, "nothing to send"
    return len(events), emit(events, settings)


def _on_run_end(context: dg.RunStatusSensorContext, settings: TxguardSettings) -> dg.SkipReason:
    graph = context.repository_def.asset_graph if context.repository_def else None
    sent, where = emit_run_lineage(context.instance, context.dagster_run, settings.load(), graph)
    return dg.SkipReason(f"{sent} OpenLineage events for run {context.dagster_run.run_id} → {where}")


def _lineage_sensor(status: dg.DagsterRunStatus, description: str) -> dg.SensorDefinition:
    """One run-status sensor per way a run can end, each sending that run's OpenLineage events."""

    @dg.run_status_sensor(
        run_status=status,
        name=f"openlineage_run_{status.value.lower()}",
        description=description,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def send_lineage(context: dg.RunStatusSensorContext, settings: TxguardSettings) -> dg.SkipReason:
        return _on_run_end(context, settings)

    return send_lineage


openlineage_run_success = _lineage_sensor(
    dg.DagsterRunStatus.SUCCESS,
    "OpenLineage START/COMPLETE events for each asset materialized by a successful run.",
)
openlineage_run_failure = _lineage_sensor(
    dg.DagsterRunStatus.FAILURE,
    "OpenLineage START/COMPLETE/FAIL events for each asset a failed run materialized or tried.",
)
openlineage_run_canceled = _lineage_sensor(
    dg.DagsterRunStatus.CANCELED,
    "OpenLineage events for a canceled run: COMPLETE for what it finished, ABORT for the rest.",
)

defs = dg.Definitions(sensors=[openlineage_run_success, openlineage_run_failure, openlineage_run_canceled])
