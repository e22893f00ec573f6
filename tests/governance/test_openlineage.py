"""OpenLineage: one START and one COMPLETE/FAIL per asset materialization, valid events, to a file or to HTTP.

No JSON schema ships with ``openlineage-python`` 1.54 (it carries generated classes only), and nothing may be
downloaded at test time, so the events are validated against ``OPENLINEAGE_SCHEMA`` below: the required
fields and formats of the OpenLineage 2-0-2 spec (RunEvent, Run, Job, datasets, BaseFacet) and of the
SchemaDatasetFacet 1-2-0, written out from the spec.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import jsonschema
import pytest

from jobs.governance import openlineage as ol
from jobs.platform.settings import REPO_ROOT, load_settings
from orchestration.defs import governance as lineage_defs
from orchestration.partitions import daily_partitions, single_run_backfill
from orchestration.resources import TxguardSettings

_FACETS = {"type": "object", "additionalProperties": {"$ref": "#/$defs/BaseFacet"}}
_NAMED = {
    "namespace": {"type": "string", "minLength": 1},
    "name": {"type": "string", "minLength": 1},
}
OPENLINEAGE_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$defs": {
        "BaseFacet": {
            "type": "object",
            "required": ["_producer", "_schemaURL"],
            "properties": {
                "_producer": {"type": "string", "format": "uri"},
                "_schemaURL": {"type": "string", "format": "uri"},
            },
        },
        "SchemaDatasetFacet": {
            "allOf": [
                {"$ref": "#/$defs/BaseFacet"},
                {
                    "type": "object",
                    "properties": {
                        "fields": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "type": {"type": "string"},
                                    "description": {"type": "string"},
                                },
                            },
                        }
                    },
                },
            ]
        },
        "Run": {
            "type": "object",
            "required": ["runId"],
            "properties": {"runId": {"type": "string", "format": "uuid"}, "facets": _FACETS},
        },
        "Job": {
            "type": "object",
            "required": ["namespace", "name"],
            "properties": {**_NAMED, "facets": _FACETS},
        },
        "Dataset": {
            "type": "object",
            "required": ["namespace", "name"],
            "properties": {
                **_NAMED,
                "facets": {
                    "type": "object",
                    "properties": {"schema": {"$ref": "#/$defs/SchemaDatasetFacet"}},
                    "additionalProperties": {"$ref": "#/$defs/BaseFacet"},
                },
            },
        },
        "InputDataset": {"allOf": [{"$ref": "#/$defs/Dataset"}, {"properties": {"inputFacets": _FACETS}}]},
        "OutputDataset": {"allOf": [{"$ref": "#/$defs/Dataset"}, {"properties": {"outputFacets": _FACETS}}]},
    },
    "type": "object",
    "required": ["eventTime", "producer", "schemaURL", "run", "job"],
    "properties": {
        "eventType": {"enum": ["START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER"]},
        "eventTime": {"type": "string", "format": "date-time"},
        "producer": {"type": "string", "format": "uri"},
        "schemaURL": {"type": "string", "format": "uri"},
        "run": {"$ref": "#/$defs/Run"},
        "job": {"$ref": "#/$defs/Job"},
        "inputs": {"type": "array", "items": {"$ref": "#/$defs/InputDataset"}},
        "outputs": {"type": "array", "items": {"$ref": "#/$defs/OutputDataset"}},
    },
}

_FORMATS = jsonschema.FormatChecker()


@_FORMATS.checks("uri")
def _is_uri(value: object) -> bool:
    return isinstance(value, str) and bool(urlsplit(value).scheme) and " " not in value


VALIDATOR = jsonschema.Draft202012Validator(OPENLINEAGE_SCHEMA, format_checker=_FORMATS)


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _materialization(state: ol.EndState = "COMPLETE", **more: object) -> ol.Materialization:
    start = dt.datetime(2018, 4, 3, 5, 0, tzinfo=dt.UTC)
    return ol.Materialization(
        asset="transaction_features",
        partition="2018-04-02",
        dagster_run_id="0b20eb63-e2ca-419c-93e8-b8a2d10b6f4e",
        dagster_job="daily_pipeline",
        state=state,
        started_at=start,
        ended_at=start + dt.timedelta(minutes=3),
        output=ol.DatasetRef("transaction_features", (ol.Column("tx_amount", "double", "amount"),), 42),
        inputs=(ol.DatasetRef("stg_landing__transactions"), ol.DatasetRef("stg_landing__fraud_reports")),
        **more,
    )


def test_events_validate_and_a_broken_event_does_not(txguard_home: Path) -> None:
    settings = load_settings()
    events = ol.build_events(_materialization()) + ol.build_events(
        _materialization("FAIL", error="ValueError: boom", stack_trace="Traceback ...")
    )
    assert ol.emit(events, settings) == str(settings.lineage_dir / "openlineage.ndjson")
    written = _events(settings.lineage_dir / "openlineage.ndjson")
    assert [e["eventType"] for e in written] == ["START", "COMPLETE", "START", "FAIL"]
    for event in written:
        VALIDATOR.validate(event)
    broken = json.loads(json.dumps(written[0]))
    broken["run"]["runId"] = "run-1"
    del broken["outputs"][0]["facets"]["schema"]["fields"][0]["name"]
    errors = {e.message for e in VALIDATOR.iter_errors(broken)}
    assert any("'run-1' is not a 'uuid'" in m for m in errors)
    assert any("'name' is a required property" in m for m in errors)
    complete, fail = written[1], written[3]
    assert complete["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 42
    assert fail["run"]["facets"]["errorMessage"]["message"] == "ValueError: boom"
    assert complete["run"]["runId"] == written[0]["run"]["runId"] == fail["run"]["runId"]
    assert complete["run"]["facets"]["parent"]["run"]["runId"] == "0b20eb63-e2ca-419c-93e8-b8a2d10b6f4e"
    assert complete["eventTime"] == "2018-04-03T05:03:00.000Z"


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[str, dict]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, json.loads(body)))
        self.send_response(201)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list]]:
    """A local OpenLineage endpoint on 127.0.0.1 that keeps what it receives."""
    received: list[tuple[str, dict]] = []
    handler = type("Handler", (_Receiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


def test_http_transport_when_configured(
    txguard_home: Path, receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, received = receiver
    monkeypatch.setenv("TXGUARD_OPENLINEAGE_URL", url)
    settings = load_settings()
    where = ol.emit(ol.build_events(_materialization()), settings)
    assert where == f"{url}/api/v1/lineage"
    assert [(path, event["eventType"]) for path, event in received] == [
        ("/api/v1/lineage", "START"),
        ("/api/v1/lineage", "COMPLETE"),
    ]
    for _, event in received:
        VALIDATOR.validate(event)
    assert not (settings.lineage_dir / "openlineage.ndjson").exists()
    ol.emit(ol.build_events(_materialization()), settings, url=f"{url}/custom/lineage")
    assert received[-1][0] == "/custom/lineage"


def test_an_unreachable_endpoint_diverts_events_to_the_file(
    txguard_home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("TXGUARD_OPENLINEAGE_URL", f"http://127.0.0.1:{port}")
    settings = load_settings()
    with caplog.at_level(logging.WARNING, logger="jobs.governance.openlineage"):
        where = ol.emit(ol.build_events(_materialization()), settings)
    assert where == str(settings.lineage_dir / "openlineage.ndjson")
    assert [e["eventType"] for e in _events(Path(where))] == ["START", "COMPLETE"]
    assert "failed" in caplog.text


def test_a_malformed_endpoint_is_refused_with_the_variable_named(txguard_home: Path) -> None:
    with pytest.raises(ValueError, match="TXGUARD_OPENLINEAGE_URL='ftp://x'"):
        ol.transport_config(load_settings(), url="ftp://x")


COLUMNS = dg.TableSchema(
    columns=[dg.TableColumn("transaction_id", "bigint"), dg.TableColumn("tx_amount", "double")]
)


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=single_run_backfill,
    metadata={"dagster/column_schema": COLUMNS},
)
def raw_transactions() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"dagster/row_count": 3})


@dg.asset(partitions_def=daily_partitions, backfill_policy=single_run_backfill, deps=[raw_transactions])
def transaction_features() -> dg.MaterializeResult:
    schema = dg.TableSchema(
        columns=[dg.TableColumn("customer_id_nb_tx_1day_window", "bigint", description="n")]
    )
    return dg.MaterializeResult(metadata={"dagster/column_schema": schema, "dagster/row_count": 3})


@dg.asset(partitions_def=daily_partitions, backfill_policy=single_run_backfill, deps=[transaction_features])
def transaction_scores() -> None:
    raise RuntimeError("model artifact digest does not match the registry")


@dg.asset(partitions_def=daily_partitions, backfill_policy=single_run_backfill, deps=[transaction_scores])
def rpt_daily_alerts() -> None:
    """Never runs: its upstream fails."""


ASSETS = [raw_transactions, transaction_features, transaction_scores, rpt_daily_alerts]
DEFS = dg.Definitions(
    assets=ASSETS, sensors=lineage_defs.defs.sensors, resources={"settings": TxguardSettings()}
)


def _sense(sensor, result: dg.ExecuteInProcessResult, instance: dg.DagsterInstance):
    event = result.get_run_success_event() if result.success else result.get_run_failure_event()
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_event=event,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        resources={"settings": TxguardSettings()},
        repository_def=DEFS.get_repository_def(),
    )
    return sensor(context if result.success else context.for_run_failure())


@pytest.mark.filterwarnings("ignore::dagster.BetaWarning")
def test_one_start_and_one_end_per_asset_materialization(txguard_home: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    failed = dg.materialize(ASSETS, partition_key="2018-04-02", instance=instance, raise_on_error=False)
    assert not failed.success
    outcome = _sense(lineage_defs.openlineage_run_failure, failed, instance)
    assert outcome.skip_message.startswith("6 OpenLineage events")
    ranged = dg.materialize(
        ASSETS[:2],
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": "2018-04-03",
            "dagster/asset_partition_range_end": "2018-04-04",
        },
    )
    _sense(lineage_defs.openlineage_run_success, ranged, instance)

    events = _events(txguard_home / "lineage" / "openlineage.ndjson")
    for event in events:
        VALIDATOR.validate(event)
    by_run: dict[str, list[dict]] = {}
    for event in events:
        by_run.setdefault(event["run"]["runId"], []).append(event)
    pairs = {
        (e[0]["job"]["name"], _partition(e[0]), e[0]["run"]["facets"]["parent"]["run"]["runId"]): [
            x["eventType"] for x in e
        ]
        for e in by_run.values()
    }
    assert pairs == {
        ("raw_transactions", "2018-04-02", failed.run_id): ["START", "COMPLETE"],
        ("transaction_features", "2018-04-02", failed.run_id): ["START", "COMPLETE"],
        ("transaction_scores", "2018-04-02", failed.run_id): ["START", "FAIL"],
        ("raw_transactions", "2018-04-03", ranged.run_id): ["START", "COMPLETE"],
        ("raw_transactions", "2018-04-04", ranged.run_id): ["START", "COMPLETE"],
        ("transaction_features", "2018-04-03", ranged.run_id): ["START", "COMPLETE"],
        ("transaction_features", "2018-04-04", ranged.run_id): ["START", "COMPLETE"],
    }
    for start, end in by_run.values():
        assert start["eventTime"] <= end["eventTime"]
    features = next(
        e for e in events if e["job"]["name"] == "transaction_features" and e["eventType"] == "COMPLETE"
    )
    assert [d["name"] for d in features["inputs"]] == ["raw_transactions"]
    assert features["inputs"][0]["facets"]["schema"]["fields"] == [
        {"name": "transaction_id", "type": "bigint", "fields": []},
        {"name": "tx_amount", "type": "double", "fields": []},
    ]
    assert features["outputs"][0]["facets"]["schema"]["fields"][0]["description"] == "n"
    assert features["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 3
    fail = next(e for e in events if e["eventType"] == "FAIL")
    assert "model artifact digest does not match" in fail["run"]["facets"]["errorMessage"]["message"]
    assert [d["name"] for d in fail["inputs"]] == ["transaction_features"]


def _partition(event: dict) -> str | None:
    tags = event["run"]["facets"]["tags"]["tags"]
    return next((t["value"] for t in tags if t["key"] == "partition"), None)


def test_the_code_location_has_the_sensors_and_does_not_import_the_client() -> None:
    probe = (
        "import json, sys; from orchestration.definitions import defs;"
        "print(json.dumps([sorted(s.name for s in defs.sensors or []), 'openlineage' in sys.modules]))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    names, imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"openlineage_run_success", "openlineage_run_failure", "openlineage_run_canceled"} <= set(names)
    assert imported is False
