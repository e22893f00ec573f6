"""Alerting: webhook deliveries to a local HTTP server, the alert record, the sensors, and the secret URL.

Everything is real: an ``http.server`` on 127.0.0.1 started by the test, a DuckDB warehouse in a temporary
home, failing and check-failing Dagster runs on a temporary on-disk instance, and the two alert sensors
evaluated on those runs.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest

from jobs.monitoring.alerts import (
    WEBHOOK_ENV,
    Alert,
    post_webhook,
    raise_alert,
    read_alerts,
    record_alert,
    redact,
)
from jobs.platform.settings import load_settings
from orchestration.defs.monitoring import AlertWebhook, alert_on_failed_checks, alert_on_run_failure
from orchestration.resources import TxguardSettings

SECRET = "hooktoken-7f3a9c1e5b"


class Hook(ThreadingHTTPServer):
    """A webhook receiver that remembers every request and answers with ``status`` after ``delay`` s."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[dict[str, object]] = []
        self.status = 200
        self.delay = 0.0

    def url(self, path: str = "/hooks/alerts") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(BaseHTTPRequestHandler):
    server: Hook

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(
            {"path": self.path, "content_type": self.headers["Content-Type"], "body": json.loads(body)}
        )
        time.sleep(self.server.delay)
        self.send_response(self.server.status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def sample_alert(alert_id: str = "run:1") -> Alert:
    return Alert(
        alert_id=alert_id,
        kind="run_failure",
        severity="error",
        title="run of daily_pipeline failed",
        details={"failed_steps": ["transaction_scores: boom"]},
        source="1",
        raised_at=dt.datetime(2018, 6, 1, 6, 0, tzinfo=dt.UTC),
    )


def test_the_webhook_receives_the_alert_as_json(hook: Hook) -> None:
    status = post_webhook(hook.url(), sample_alert())
    assert status == f"delivered to http://127.0.0.1:{hook.server_address[1]}/…: HTTP 200"
    (request,) = hook.received
    assert request["path"] == "/hooks/alerts" and request["content_type"] == "application/json"
    assert request["body"] == json.loads(json.dumps(sample_alert().payload()))
    assert (
        request["body"]["service"] == "txguard"
        and request["body"]["raised_at"] == "2018-06-01T06:00:00+00:00"
    )


def test_failed_deliveries_are_reported_by_host_only(hook: Hook) -> None:
    hook.status = 500
    assert post_webhook(hook.url(f"/hooks/{SECRET}"), sample_alert()).endswith("HTTP 500")
    hook.status, hook.delay = 200, 2.0
    late = post_webhook(hook.url(f"/hooks/{SECRET}"), sample_alert(), timeout_s=0.3)
    assert late.startswith("failed") and "Timeout" in late, late
    closed = Hook()
    closed.server_close()
    refused = post_webhook(closed.url(f"/hooks/{SECRET}"), sample_alert(), timeout_s=2)
    assert refused.startswith("failed") and "ConnectionRefused" in refused
    assert post_webhook(f"file:///tmp/{SECRET}", sample_alert()).startswith("not sent")
    for status in (late, refused):
        assert SECRET not in status and "/hooks" not in status
    assert redact(f"https://user:{SECRET}@hooks.example.com:8443/T/{SECRET}?k={SECRET}") == (
        "https://hooks.example.com:8443/…"
    )


def test_an_alert_is_recorded_once_with_its_delivery(hook: Hook, txguard_home: Path) -> None:
    warehouse = load_settings().warehouse_path
    first = raise_alert(warehouse, sample_alert(), hook.url())
    again = raise_alert(warehouse, sample_alert(), None)
    assert (first.recorded, again.recorded) == ("warehouse", "duplicate")
    (row,) = read_alerts(warehouse)
    assert row["alert_id"] == "run:1" and row["severity"] == "error" and row["webhook"] == first.webhook
    assert json.loads(row["details"]) == {"failed_steps": ["transaction_scores: boom"]}
    unset = raise_alert(warehouse, sample_alert("run:2"), None)
    assert unset.webhook.startswith("not configured") and len(hook.received) == 1


def test_a_locked_warehouse_spools_the_alert_and_the_next_write_moves_it(txguard_home: Path) -> None:
    warehouse = load_settings().warehouse_path
    record_alert(warehouse, sample_alert("run:0"), "not configured")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(warehouse)!r}); print('x', flush=True); "
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "x"
        assert record_alert(warehouse, sample_alert("run:1"), "not configured", lock_wait_s=0.5) == "spool"
    finally:
        holder.kill()
        holder.wait()
    spool = warehouse.with_name("alerts_spool.jsonl")
    assert json.loads(spool.read_text())["alert_id"] == "run:1"
    assert record_alert(warehouse, sample_alert("run:2"), "not configured") == "warehouse"
    assert [a["alert_id"] for a in read_alerts(warehouse)] == ["run:0", "run:1", "run:2"]
    assert not spool.exists()


# --- the sensors, on real runs ------------------------------------------------------------------------


@dg.asset
def broken(alerting: AlertWebhook) -> None:
    raise RuntimeError("the warehouse is on fire")


@dg.asset(check_specs=[dg.AssetCheckSpec("enough_rows", asset="thin")])
def thin() -> dg.MaterializeResult:
    return dg.MaterializeResult(
        check_results=[
            dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, description="3 rows < 10")
        ]
    )


def alert_on_a_failed_run(instance: dg.DagsterInstance, alerting: AlertWebhook | None = None) -> str:
    """Run ``broken`` (it fails), then evaluate the run-failure sensor on that run; returns the run id."""
    alerting = alerting or AlertWebhook()
    result = dg.materialize(
        [broken], instance=instance, resources={"alerting": alerting}, raise_on_error=False
    )
    assert not result.success
    with dg.build_run_status_sensor_context(
        sensor_name="alert_on_run_failure",
        dagster_event=result.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        resources={"settings": TxguardSettings(), "alerting": alerting},
    ) as context:
        alert_on_run_failure(context.for_run_failure())
    return result.run_id


def alert_on_a_failing_check(instance: dg.DagsterInstance, alerting: AlertWebhook | None = None) -> None:
    """Materialize ``thin`` (the run succeeds, its check fails), then evaluate the check-alert sensor."""
    result = dg.materialize([thin], instance=instance)
    assert result.success
    with dg.build_run_status_sensor_context(
        sensor_name="alert_on_failed_checks",
        dagster_event=result.get_run_success_event(),
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        resources={"settings": TxguardSettings(), "alerting": alerting or AlertWebhook()},
    ) as context:
        alert_on_failed_checks(context)


def test_a_failed_run_raises_an_alert_with_its_failed_step(hook: Hook, dagster_instance, monkeypatch) -> None:
    monkeypatch.setenv("TXGUARD_ALERT_WEBHOOK_URL", hook.url())
    run_id = alert_on_a_failed_run(dagster_instance)
    (request,) = hook.received
    body = request["body"]
    assert body["kind"] == "run_failure" and body["alert_id"] == f"run:{run_id}"
    assert body["details"]["job"] == "__ephemeral_asset_job__"
    assert any(s.startswith("broken:") and "on fire" in s for s in body["details"]["failed_steps"])
    (row,) = read_alerts(load_settings().warehouse_path)
    assert row["alert_id"] == f"run:{run_id}" and row["webhook"].endswith("HTTP 200")


def test_a_failing_check_in_a_successful_run_raises_a_warning(
    hook: Hook, dagster_instance, monkeypatch
) -> None:
    monkeypatch.setenv("TXGUARD_ALERT_WEBHOOK_URL", hook.url())
    alert_on_a_failing_check(dagster_instance)
    (request,) = hook.received
    body = request["body"]
    assert body["kind"] == "check_failure" and body["severity"] == "warning"
    assert body["details"]["check"] == "thin:enough_rows" and body["details"]["description"] == "3 rows < 10"
    assert [a["kind"] for a in read_alerts(load_settings().warehouse_path)] == ["check_failure"]


@pytest.mark.parametrize("bound", [False, True], ids=["read-at-send", "bound-to-EnvVar"])
def test_the_webhook_secret_never_reaches_the_instance(
    bound: bool,
    hook: Hook,
    txguard_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(WEBHOOK_ENV, hook.url(f"/hooks/{SECRET}"))
    alerting = AlertWebhook(webhook_url=dg.EnvVar(WEBHOOK_ENV)) if bound else AlertWebhook()
    with dg.instance_for_test(temp_dir=str(txguard_home / "dagster")) as instance:
        alert_on_a_failed_run(instance, alerting)
        alert_on_a_failing_check(instance, alerting)
        assert [r["path"] for r in hook.received] == [f"/hooks/{SECRET}"] * 2
        runs = instance.get_runs()
        assert len(runs) == 2
        for run in runs:
            assert SECRET not in json.dumps(run.run_config, default=str) + json.dumps(dict(run.tags))
            for entry in instance.all_logs(run.run_id):
                assert SECRET not in dg.serialize_value(entry), entry.dagster_event_type
    logged = capfd.readouterr()
    assert "webhook delivered to" in logged.err and SECRET not in logged.out + logged.err
    stored = [p for p in (txguard_home / "dagster").rglob("*") if p.is_file()]
    assert stored and not [p for p in stored if SECRET.encode() in p.read_bytes()]
    assert SECRET not in json.dumps(read_alerts(load_settings().warehouse_path), default=str)
