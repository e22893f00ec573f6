"""Append-only, hash-chained audit records in the warehouse schema ``audit`` (DESIGN.md §6).

Regulated users must answer, months later, which model scored a transaction, trained on what, gated by which
checks and promoted by whom; these records are that memory, and the hash chain makes a later edit visible.

Recording API (each call takes the caller's open DuckDB connection and issues one INSERT, so it joins the
caller's transaction when one is open, e.g. the scoring writer's partition write, and commits on its own
otherwise; it never begins, commits or rolls back):

    record(connection, entry) -> AuditRecord      entry: TrainingRun | ModelVersion | Promotion |
                                                   ScoringRun | ValidationResult
    append(connection, kind, payload) -> AuditRecord   the same from a plain dict; kind in KINDS
    verify_chain(connection) -> VerifyReport           recompute every hash; the first broken link
    git_commit() -> str                                the code's commit, "unknown" outside a git checkout

There is deliberately no update or delete function. ``git_commit`` is filled in when a payload lacks it.

Storage: one ledger ``audit.records(seq, kind, recorded_at, payload, prev_hash, record_hash)`` holding every
kind in one chain, and one typed view per kind (``audit.training_runs``, ``audit.model_versions``,
``audit.promotions``, ``audit.scoring_runs``, ``audit.validation_results``) for analysts and lineage queries.
``payload`` is the record as canonical JSON (sorted keys, no whitespace, UTF-8) and
``record_hash = sha256(prev_hash \\n seq \\n kind \\n recorded_at \\n payload)`` with ``recorded_at`` written
``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC); the first record's ``prev_hash`` is 64 zeros.

What DuckDB itself enforces (it has no triggers or grants): a CHECK constraint recomputes ``record_hash`` on
every insert and update, so an edit that does not also forge the hash is refused; ``seq`` is the primary key
and ``prev_hash`` is unique, so the chain cannot fork. A forger who rewrites a hash breaks the next link,
which ``verify_chain`` reports; a deleted record leaves a gap in ``seq``. Only the newest record can be
replaced or removed without a trace inside the file, so keep ``VerifyReport.head_hash`` somewhere else too
(the CLI prints it; Dagster metadata is a good place).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import hashlib
import json
import math
import re
import subprocess
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from jobs.platform.layout import parse_day
from jobs.platform.settings import REPO_ROOT

if TYPE_CHECKING:
    import duckdb

SCHEMA = "audit"
LEDGER = f"{SCHEMA}.records"
GENESIS_HASH = "0" * 64
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

_HASH_SQL = (
    "sha256(prev_hash || chr(10) || CAST(seq AS VARCHAR) || chr(10) || kind || chr(10)"
    f" || strftime(recorded_at, '{TIME_FORMAT}') || chr(10) || payload)"
)


@functools.lru_cache(maxsize=8)
def git_commit(repo: Path = REPO_ROOT) -> str:
    """The commit of the code that runs (``git rev-parse HEAD``), or ``"unknown"`` outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = result.stdout.strip()
    return commit if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", commit) else "unknown"


@dataclass(frozen=True)
class TrainingRun:
    """One training run: what data, which features, which numbers, on which device, from which code."""

    KIND: ClassVar[str] = "training_runs"
    model_name: str
    mlflow_run_id: str
    train_start: dt.date
    """First day of the training window (transactions' business days)."""
    train_end: dt.date
    """Last day of the training window, inclusive."""
    data_digest: str
    """SHA-256 of the training rows' content, so the same window can be shown to be the same data."""
    row_count: int
    feature_set_version: str
    metrics: dict[str, Any]
    params: dict[str, Any]
    device: str
    dagster_run_id: str | None
    label_cutoff: dt.date | None = None
    """Fraud reports with ``reported_at`` up to this day labelled the window."""
    evaluation: dict[str, Any] = field(default_factory=dict)
    """How the metrics were measured: protocol, holdout window, baseline."""
    git_commit: str = field(default_factory=git_commit)


@dataclass(frozen=True)
class ModelVersion:
    """A registered model version and the digest of its artifact (checked again before it is loaded)."""

    KIND: ClassVar[str] = "model_versions"
    model_name: str
    model_version: str
    mlflow_run_id: str
    artifact_uri: str
    artifact_sha256: str
    feature_set_version: str
    dagster_run_id: str | None
    git_commit: str = field(default_factory=git_commit)


@dataclass(frozen=True)
class Promotion:
    """A change of champion, or a refused one: who or what decided, why, and the numbers behind it.

    ``action`` is ``promote`` (``model_version`` becomes champion), ``rollback`` (``model_version``, an
    earlier version, becomes champion again) or ``reject`` (the gate kept ``previous_version``).
    """

    KIND: ClassVar[str] = "promotions"
    model_name: str
    action: Literal["promote", "rollback", "reject"]
    model_version: str
    previous_version: str | None
    actor: str
    """``pipeline:<asset>`` for the automatic gate, the person's login for ``txguard promote/rollback``."""
    reason: str
    metrics: dict[str, Any]
    dagster_run_id: str | None
    git_commit: str = field(default_factory=git_commit)


@dataclass(frozen=True)
class ScoringRun:
    """One scored partition: the model that scored it and the checks that allowed it to be scored."""

    KIND: ClassVar[str] = "scoring_runs"
    day: dt.date
    model_name: str
    model_version: str
    artifact_sha256: str
    feature_set_version: str
    row_count: int
    checks: list[dict[str, Any]]
    """The gates, each ``{"name", "tool", "passed", ...}`` as evaluated right before scoring."""
    dagster_run_id: str
    mlflow_run_id: str | None = None
    upstream_runs: dict[str, str] = field(default_factory=dict)
    """Asset key → Dagster run id that materialized the inputs of this partition."""
    git_commit: str = field(default_factory=git_commit)


@dataclass(frozen=True)
class ValidationResult:
    """One data check (GX expectation suite, dbt test, pandera schema) on one partition."""

    KIND: ClassVar[str] = "validation_results"
    day: dt.date | None
    tool: str
    """``great_expectations``, ``dbt``, ``pandera``, or a monitoring check (``drift``, ``performance``)."""
    check_name: str
    asset: str
    passed: bool
    details: dict[str, Any]
    dagster_run_id: str | None
    git_commit: str = field(default_factory=git_commit)


AuditEntry = TrainingRun | ModelVersion | Promotion | ScoringRun | ValidationResult
KINDS: dict[str, type[AuditEntry]] = {
    cls.KIND: cls for cls in (TrainingRun, ModelVersion, Promotion, ScoringRun, ValidationResult)
}


@dataclass(frozen=True)
class AuditRecord:
    """A record as stored: its place in the chain and the hashes that bind it there."""

    seq: int
    kind: str
    recorded_at: dt.datetime
    payload: dict[str, Any]
    prev_hash: str
    record_hash: str


@dataclass(frozen=True)
class BrokenLink:
    seq: int
    kind: str
    reason: str


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of recomputing the chain; ``head_hash`` is what to keep outside the warehouse."""

    records: int
    head_seq: int
    head_hash: str
    per_kind: dict[str, int]
    broken: BrokenLink | None

    @property
    def ok(self) -> bool:
        return self.broken is None

    def describe(self) -> str:
        if self.broken is not None:
            return (
                f"audit chain BROKEN at seq {self.broken.seq} ({self.broken.kind}): {self.broken.reason}; "
                f"{self.records} records checked"
            )
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self.per_kind.items())) or "none"
        return f"audit chain OK: {self.records} records ({kinds}); head seq {self.head_seq} {self.head_hash}"


def canonical_json(value: Any) -> str:
    """The one JSON text of a value: sorted keys, no whitespace, UTF-8, no NaN (JSON cannot carry it)."""
    return json.dumps(_plain(value, "payload"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _plain(value: Any, where: str) -> Any:
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value}: audit records hold finite numbers only")
        return value
    if isinstance(value, enum.Enum):
        return _plain(value.value, where)
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo is None else value.astimezone(dt.UTC).replace(tzinfo=None)
        return moment.strftime(TIME_FORMAT)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return _plain(float(value), where)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): _plain(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, set | frozenset):
        return sorted(_plain(item, f"{where}[]") for item in value)
    if hasattr(value, "item") and callable(value.item):
        return _plain(value.item(), where)
    raise TypeError(f"{where}: {type(value).__name__} cannot be stored in an audit record")


def _normalize(kind: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    if kind not in KINDS:
        raise ValueError(f"unknown audit record kind {kind!r}; expected one of {', '.join(KINDS)}")
    required = [
        f.name
        for f in dataclasses.fields(KINDS[kind])
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in payload]
    if missing:
        raise ValueError(f"audit record {kind}: missing field(s) {', '.join(missing)}")
    record = dict(payload)
    record.setdefault("git_commit", git_commit())
    hints = typing.get_type_hints(KINDS[kind])
    for name in hints.keys() & record.keys():
        record[name] = _checked(kind, name, hints[name], record[name])
    return record


def _checked(kind: str, name: str, hint: Any, value: Any) -> Any:
    """A typed field's value, or a clear error: the views cast these fields, so one bad value breaks them."""
    optional, base = _base_type(hint)
    if value is None:
        if optional:
            return value
        raise ValueError(f"audit record {kind}: field {name} may not be empty")
    if base is dt.date and isinstance(value, str):
        try:
            return parse_day(value)
        except ValueError as error:
            raise ValueError(f"audit record {kind}: field {name}: {error}") from None
    if base in (int, float, bool) and hasattr(value, "item"):
        value = value.item()
    accepted = (int, float) if base is float else (base,)
    if (
        not isinstance(value, accepted)
        or (isinstance(value, bool) and base is not bool)
        or (isinstance(value, dt.datetime) and base is dt.date)
    ):
        raise ValueError(
            f"audit record {kind}: field {name} must be {base.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _base_type(hint: Any) -> tuple[bool, Any]:
    """(may be None, the type without ``None``) of a field's annotation; Literal fields are strings."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        optional = type(None) in typing.get_args(hint)
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is Literal:
        return optional, str
    return optional, typing.get_origin(hint) or hint


def ensure_schema(connection: duckdb.DuckDBPyConnection) -> None:
    """Create the ledger and its views when absent; idempotent, and cheap once they exist."""
    if has_ledger(connection):
        return
    connection.execute(f"create schema if not exists {SCHEMA}")
    connection.execute(
        f"""
        create table if not exists {LEDGER} (
            seq bigint primary key check (seq >= 1),
            kind varchar not null check (kind in ({", ".join(f"'{kind}'" for kind in KINDS)})),
            recorded_at timestamp not null,
            payload varchar not null check (json_valid(payload)),
            prev_hash varchar not null unique check (length(prev_hash) = 64),
            record_hash varchar not null unique check (record_hash = {_HASH_SQL})
        )
        """
    )
    for kind, cls in KINDS.items():
        hints = typing.get_type_hints(cls)
        columns = ", ".join(
            f"{_column_sql(f.name, hints[f.name])} as {f.name}" for f in dataclasses.fields(cls)
        )
        connection.execute(
            f"create view if not exists {SCHEMA}.{kind} as select seq, recorded_at, record_hash, {columns}"
            f" from {LEDGER} where kind = '{kind}'"
        )


def _column_sql(name: str, hint: Any) -> str:
    """The typed SQL expression that reads one payload field in a view."""
    _, base = _base_type(hint)
    if base in (dict, list):
        return f"json_extract(payload, '$.{name}')"
    text = f"json_extract_string(payload, '$.{name}')"
    sql_type = {dt.date: "date", bool: "boolean", int: "bigint", float: "double"}.get(base)
    return f"cast({text} as {sql_type})" if sql_type else text


def append(connection: duckdb.DuckDBPyConnection, kind: str, payload: Mapping[str, Any]) -> AuditRecord:
    """Add one record at the head of the chain, in the caller's transaction when one is open."""
    ensure_schema(connection)
    text = canonical_json(_normalize(kind, payload))
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    row = connection.execute(
        f"""
        insert into {LEDGER}
        select seq, kind, recorded_at, payload, prev_hash, {_HASH_SQL}
        from (
            select coalesce(max(seq), 0) + 1 as seq, ?::varchar as kind, ?::timestamp as recorded_at,
                   ?::varchar as payload, coalesce(arg_max(record_hash, seq), '{GENESIS_HASH}') as prev_hash
            from {LEDGER}
        )
        returning seq, kind, recorded_at, payload, prev_hash, record_hash
        """,
        [kind, now, text],
    ).fetchone()
    assert row is not None
    return _record(row)


def record(connection: duckdb.DuckDBPyConnection, entry: AuditEntry) -> AuditRecord:
    """Append a typed entry (the form the pipeline's assets use)."""
    payload = {f.name: getattr(entry, f.name) for f in dataclasses.fields(entry)}
    return append(connection, entry.KIND, payload)


def _record(row: tuple) -> AuditRecord:
    seq, kind, recorded_at, payload, prev_hash, record_hash = row
    return AuditRecord(seq, kind, recorded_at, json.loads(payload), prev_hash, record_hash)


def has_ledger(connection: duckdb.DuckDBPyConnection) -> bool:
    row = connection.execute(
        "select count(*) from duckdb_tables() where schema_name = ? and table_name = 'records'", [SCHEMA]
    ).fetchone()
    return bool(row and row[0])


def records(connection: duckdb.DuckDBPyConnection, kind: str | None = None) -> Iterator[AuditRecord]:
    """Every record in chain order (optionally of one kind); nothing when the ledger does not exist yet."""
    if not has_ledger(connection):
        return
    query = f"select seq, kind, recorded_at, payload, prev_hash, record_hash from {LEDGER}"
    cursor = connection.cursor()
    if kind is None:
        cursor.execute(f"{query} order by seq")
    else:
        cursor.execute(f"{query} where kind = ? order by seq", [kind])
    while batch := cursor.fetchmany(1000):
        yield from (_record(row) for row in batch)


def record_hash(prev_hash: str, seq: int, kind: str, recorded_at: dt.datetime, payload: str) -> str:
    """The hash of one record, computed here independently of the SQL that stored it."""
    text = f"{prev_hash}\n{seq}\n{kind}\n{recorded_at.strftime(TIME_FORMAT)}\n{payload}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def verify_chain(connection: duckdb.DuckDBPyConnection) -> VerifyReport:
    """Recompute every hash in ``seq`` order and report the first record that does not fit the chain."""
    per_kind: dict[str, int] = {}
    expected_seq, prev = 1, GENESIS_HASH
    if has_ledger(connection):
        cursor = connection.cursor()
        cursor.execute(
            f"select seq, kind, recorded_at, payload, prev_hash, record_hash from {LEDGER} order by seq"
        )
        while batch := cursor.fetchmany(1000):
            for row in batch:
                seq, kind = row[0], row[1]
                problem = _link_problem(expected_seq, prev, row)
                if problem:
                    broken = BrokenLink(seq, kind, problem)
                    return VerifyReport(expected_seq - 1, expected_seq - 1, prev, per_kind, broken)
                per_kind[kind] = per_kind.get(kind, 0) + 1
                expected_seq, prev = seq + 1, row[5]
    return VerifyReport(expected_seq - 1, expected_seq - 1, prev, per_kind, None)


def _link_problem(expected_seq: int, prev: str, row: tuple) -> str | None:
    seq, kind, recorded_at, payload, prev_hash, stored = row
    if seq != expected_seq:
        return f"records {expected_seq}..{seq - 1} are missing (deleted?)"
    if prev_hash != prev:
        return (
            f"prev_hash does not match the hash of record {seq - 1}: "
            f"record {seq - 1} (or this one) was altered after it was written"
        )
    if record_hash(prev_hash, seq, kind, recorded_at, payload) != stored:
        return "its content does not match its record_hash: the record was altered after it was written"
    return None
