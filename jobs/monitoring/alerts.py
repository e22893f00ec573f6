"""Alerts: an append-only record in the warehouse and, when a webhook is configured, an HTTP POST.

Nobody watches nightly runs, so a failed run or a failing check must reach people by itself. Every alert is
first recorded (``monitoring.alerts``, one row per ``alert_id``: re-raising the same alert adds nothing), then
posted as JSON to the webhook when one is configured. The webhook URL usually carries a token, so it is a
secret: it is passed in by the caller, never stored, and never written to a log, a record or an error
message; deliveries are reported by host only (``redact``).

Recording never loses an alert: when the warehouse stays locked (a long dbt run holds it) for longer than
the caller will wait, the alert goes to a JSON-lines spool next to the warehouse, and the next recording that
gets the lock moves the spool into the table.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import duckdb

ALERTS_TABLE = "monitoring.alerts"
WEBHOOK_ENV = "TXGUARD_ALERT_WEBHOOK_URL"
WEBHOOK_TIMEOUT_S = 10.0
RECORD_LOCK_WAIT_S = 15.0
SPOOL_NAME = "alerts_spool.jsonl"

Severity = Literal["warning", "error"]

_DDL = f"""
create schema if not exists monitoring;
create table if not exists {ALERTS_TABLE} (
    alert_id varchar primary key,
    kind varchar not null,
    severity varchar not null,
    title varchar not null,
    details json,
    source varchar,
    raised_at timestamptz not null,
    webhook varchar not null
);
"""


@dataclass(frozen=True)
class Alert:
    """One thing people must know about; ``alert_id`` makes raising it twice harmless."""

    alert_id: str
    kind: str
    severity: Severity
    title: str
    details: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    raised_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def payload(self) -> dict[str, Any]:
        body = asdict(self)
        body["details"] = dict(self.details)
        body["raised_at"] = self.raised_at.isoformat()
        return {"service": "txguard", **body}


@dataclass(frozen=True)
class Delivery:
    """What happened to one alert: where it was recorded and what the webhook said."""

    alert_id: str
    recorded: Literal["warehouse", "duplicate", "spool"]
    webhook: str


def redact(url: str) -> str:
    """The URL reduced to scheme, host and port: what may appear in logs and records."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


def post_webhook(url: str, alert: Alert, timeout_s: float = WEBHOOK_TIMEOUT_S) -> str:
    """POST the alert as JSON; returns a status line that never contains the URL's path or query."""
    target = redact(url)
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        return f"not sent: {target} is not an http(s) URL"
    request = urllib.request.Request(
        url,
        data=json.dumps(alert.payload(), sort_keys=True, default=str).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "txguard-alerts"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return f"delivered to {target}: HTTP {response.status}"
    except urllib.error.HTTPError as error:
        return f"failed at {target}: HTTP {error.code}"
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        return f"failed at {target}: {type(reason).__name__}"


def ensure_table(connection: duckdb.DuckDBPyConnection) -> None:
    connection.execute(_DDL)


def _insert(connection: duckdb.DuckDBPyConnection, row: Mapping[str, Any]) -> bool:
    inserted = connection.execute(
        f"""
        insert into {ALERTS_TABLE} by name
        select ? as alert_id, ? as kind, ? as severity, ? as title, ?::json as details, ? as source,
            ?::timestamptz as raised_at, ? as webhook
        on conflict do nothing
        """,
        [
            row["alert_id"],
            row["kind"],
            row["severity"],
            row["title"],
            json.dumps(row["details"], sort_keys=True, default=str),
            row["source"],
            row["raised_at"],
            row["webhook"],
        ],
    ).fetchone()
    return bool(inserted and inserted[0])


def record_alert(
    warehouse: Path, alert: Alert, webhook: str, lock_wait_s: float = RECORD_LOCK_WAIT_S
) -> Literal["warehouse", "duplicate", "spool"]:
    """Append the alert (and any spooled ones) to the table, or to the spool when the lock stays taken."""
    from jobs.platform.warehouse import WarehouseBusy, connect

    row = {**alert.payload(), "webhook": webhook}
    spool = warehouse.with_name(SPOOL_NAME)
    try:
        connection = connect(warehouse, lock_timeout_s=lock_wait_s)
    except WarehouseBusy:
        with spool.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, sort_keys=True, default=str) + "\n")
        return "spool"
    with connection:
        ensure_table(connection)
        pending = spool.read_text(encoding="utf-8").splitlines() if spool.exists() else []
        connection.execute("begin transaction")
        for line in pending:
            _insert(connection, json.loads(line))
        inserted = _insert(connection, row)
        connection.execute("commit")
        spool.unlink(missing_ok=True)
    return "warehouse" if inserted else "duplicate"


def raise_alert(
    warehouse: Path, alert: Alert, webhook_url: str | None, timeout_s: float = WEBHOOK_TIMEOUT_S
) -> Delivery:
    """Post the alert to the webhook (when configured), then record it with the delivery status."""
    if webhook_url:
        status = post_webhook(webhook_url, alert, timeout_s)
    else:
        status = f"not configured ({WEBHOOK_ENV} unset)"
    return Delivery(alert.alert_id, record_alert(warehouse, alert, status), status)


def read_alerts(warehouse: Path) -> list[dict[str, Any]]:
    """Every recorded alert, oldest first (for tests, the CLI and people)."""
    from jobs.platform.warehouse import connect

    if not warehouse.exists():
        return []
    with connect(warehouse, read_only=True) as connection:
        exists = connection.execute(
            "select count(*) from information_schema.tables where table_schema = 'monitoring' "
            "and table_name = 'alerts'"
        ).fetchone()[0]
        if not exists:
            return []
        cursor = connection.execute(f"select * from {ALERTS_TABLE} order by raised_at, alert_id")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
