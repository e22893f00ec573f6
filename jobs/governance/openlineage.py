"""OpenLineage run events for asset materializations, built and sent with the ``openlineage-python`` client.

Each materialization of an asset (one partition of it) is one OpenLineage run: a START and then one of
COMPLETE, FAIL or ABORT, sharing a run id derived from the Dagster run, the asset and the partition (so a
re-sent pair is recognisably the same run). The job is the asset, the output dataset is the asset, the inputs
are its upstream assets; schemas travel as ``schema`` dataset facets, the Dagster run as the ``parent`` facet.

Events go to ``<lineage_dir>/openlineage.ndjson`` (one JSON event per line) by default, or to an HTTP endpoint
(Marquez or any OpenLineage consumer) when the settings name one (``TXGUARD_OPENLINEAGE_URL``); if that
endpoint refuses them they are written to the file instead, so none is lost.

    build_events(materialization) -> [start, end]      emit(events, settings) -> where they went
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from jobs.governance.audit import git_commit
from jobs.platform.settings import variable

if TYPE_CHECKING:
    from openlineage.client import OpenLineageClient
    from openlineage.client.event_v2 import RunEvent

    from jobs.platform.settings import Settings

NAMESPACE = "txguard"
"""Namespace of every job and dataset: asset keys are unique within the code location."""
EVENTS_FILE = "openlineage.ndjson"
URL_VARIABLE = variable("openlineage_url")
_RUN_IDS = uuid.UUID("6f1c5c1e-52a4-4f43-9a53-0d1f6a1b7e21")

log = logging.getLogger(__name__)

EndState = Literal["COMPLETE", "FAIL", "ABORT"]


@dataclass(frozen=True)
class Column:
    name: str
    type: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class DatasetRef:
    """An asset seen as a dataset: its name (the asset key) and, when known, its columns."""

    name: str
    columns: tuple[Column, ...] = ()
    row_count: int | None = None


@dataclass(frozen=True)
class Materialization:
    """One asset materialization (or a failed attempt) as the orchestrator saw it."""

    asset: str
    partition: str | None
    dagster_run_id: str
    dagster_job: str
    state: EndState
    started_at: dt.datetime
    ended_at: dt.datetime
    output: DatasetRef
    inputs: tuple[DatasetRef, ...] = ()
    error: str | None = None
    stack_trace: str | None = None
    engine_version: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def producer() -> str:
    """The producer URI of every event: txguard at the commit of the code that ran."""
    return f"urn:txguard:git:{git_commit()}"


def run_id(dagster_run_id: str, asset: str, partition: str | None) -> str:
    """A stable UUID per (Dagster run, asset, partition): sending the same events twice names the same run."""
    return str(uuid.uuid5(_RUN_IDS, f"{dagster_run_id}\n{asset}\n{partition or ''}"))


def _time(moment: dt.datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _schema_facets(dataset: DatasetRef) -> dict:
    from openlineage.client.facet_v2 import schema_dataset

    if not dataset.columns:
        return {}
    fields = [
        schema_dataset.SchemaDatasetFacetFields(name=c.name, type=c.type, description=c.description)
        for c in dataset.columns
    ]
    return {"schema": schema_dataset.SchemaDatasetFacet(fields=fields)}


def build_events(materialization: Materialization) -> list[RunEvent]:
    """The START and the closing event of one materialization, inputs and output with their schemas."""
    from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
    from openlineage.client.facet_v2 import (
        error_message_run,
        job_type_job,
        output_statistics_output_dataset,
        parent_run,
        processing_engine_run,
        tags_run,
    )

    m = materialization
    tags = {
        "dagster_run_id": m.dagster_run_id,
        **({"partition": m.partition} if m.partition else {}),
        **m.tags,
    }
    run_facets: dict = {
        "parent": parent_run.ParentRunFacet(
            run=parent_run.Run(runId=m.dagster_run_id),
            job=parent_run.Job(namespace=NAMESPACE, name=m.dagster_job),
        ),
        "tags": tags_run.TagsRunFacet(
            tags=[tags_run.TagsRunFacetFields(key=k, value=v, source="DAGSTER") for k, v in tags.items()]
        ),
    }
    if m.engine_version:
        run_facets["processing_engine"] = processing_engine_run.ProcessingEngineRunFacet(
            version=m.engine_version, name="Dagster"
        )
    job = Job(
        namespace=NAMESPACE,
        name=m.asset,
        facets={
            "jobType": job_type_job.JobTypeJobFacet(
                processingType="BATCH", integration="DAGSTER", jobType="ASSET"
            )
        },
    )
    inputs = [InputDataset(namespace=NAMESPACE, name=d.name, facets=_schema_facets(d)) for d in m.inputs]
    output = OutputDataset(namespace=NAMESPACE, name=m.output.name, facets=_schema_facets(m.output))
    end_output = output
    if m.state == "COMPLETE" and m.output.row_count is not None:
        statistics = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
            rowCount=m.output.row_count
        )
        end_output = OutputDataset(
            namespace=NAMESPACE,
            name=output.name,
            facets=output.facets,
            outputFacets={"outputStatistics": statistics},
        )
    end_facets = dict(run_facets)
    if m.state != "COMPLETE" and m.error:
        end_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=m.error, programmingLanguage="python", stackTrace=m.stack_trace
        )
    identity = run_id(m.dagster_run_id, m.asset, m.partition)
    return [
        RunEvent(
            eventType=state,
            eventTime=_time(moment),
            run=Run(runId=identity, facets=facets),
            job=job,
            inputs=inputs,
            outputs=[out],
            producer=producer(),
        )
        for state, moment, facets, out in (
            (RunState.START, m.started_at, run_facets, output),
            (RunState[m.state], m.ended_at, end_facets, end_output),
        )
    ]


def events_file(settings: Settings) -> Path:
    return settings.lineage_dir / EVENTS_FILE


def transport_config(settings: Settings, url: str | None = None) -> dict:
    """The client's transport: HTTP when a URL is configured, else the append-only NDJSON file.

    A URL with a path (``http://host:5000/api/v1/lineage``) is used as given; a bare host gets the standard
    ``api/v1/lineage`` endpoint. Retries are few and short so that a dead endpoint cannot stall the sensor.
    """
    url = url or settings.openlineage_url
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{URL_VARIABLE}={url!r}: expected http(s)://host[:port][/path]")
        return {
            "type": "http",
            "url": f"{parts.scheme}://{parts.netloc}",
            "endpoint": parts.path.lstrip("/") or "api/v1/lineage",
            "timeout": 5.0,
            "retry": {"total": 2, "connect": 2, "read": 2, "backoff_factor": 0.2},
        }
    return _file_config(settings)


def _file_config(settings: Settings) -> dict:
    return {"type": "file", "log_file_path": str(events_file(settings)), "append": True}


def client(config: dict) -> OpenLineageClient:
    from openlineage.client import OpenLineageClient

    if config["type"] == "file":
        Path(config["log_file_path"]).parent.mkdir(parents=True, exist_ok=True)
    return OpenLineageClient(config={"transport": config})


def emit(events: Sequence[RunEvent], settings: Settings, url: str | None = None) -> str:
    """Send the events; return where they went. An HTTP failure diverts the rest to the file (warned)."""
    config = transport_config(settings, url)
    sender = client(config)
    for index, event in enumerate(events):
        try:
            sender.emit(event)
        except OSError as error:
            if config["type"] == "file":
                raise
            fallback = events_file(settings)
            log.warning(
                "OpenLineage endpoint %s failed (%s); writing events to %s", config["url"], error, fallback
            )
            local = client(_file_config(settings))
            for rest in events[index:]:
                local.emit(rest)
            return str(fallback)
    return f"{config['url']}/{config['endpoint']}" if config["type"] == "http" else config["log_file_path"]
