"""Append-only, hash-chained audit records in the warehouse schema ``audit``, with the chain's head in MLflow.

Regulated users must answer, months later, which model scored a transaction, trained on what, gated by which
checks and promoted by whom; these records are that memory, and the hash chain makes a later edit visible.

Recording API (each call takes the caller's open DuckDB connection and issues one INSERT, so it joins the
caller's transaction when one is open, e.g. the scoring writer's partition write, and commits on its own
otherwise; it never begins, commits or rolls back):

    record(connection, entry) -> AuditRecord      entry: TrainingRun | ModelVersion | Promotion |
                                                   ScoringRun | ValidationResult | MonitoringResult
    append(connection, kind, payload) -> AuditRecord   the same from a plain dict; kind in KINDS
    anchored(connection, heads, write, run_id)         around a write: check against the head kept in
                                                       MLflow first, keep the new head there after
    verify_chain(connection, heads) -> VerifyReport    recompute every hash; the first broken link
    git_commit() -> str                                the code's commit, "unknown" outside a git checkout
    monitoring_results(asset, check, results, run_id)  a monitor's drift or performance verdicts as entries
    record_monitoring(settings, entries, run_id)       append them in one anchored write, republish

There is deliberately no update or delete function. ``git_commit`` is filled in when a payload lacks it.

Storage: one ledger ``audit.records(seq, kind, recorded_at, payload, prev_hash, record_hash)`` holding every
kind in one chain, and one typed view per kind (``audit.training_runs``, ``audit.model_versions``,
``audit.promotions``, ``audit.scoring_runs``, ``audit.validation_results``, ``audit.monitoring_results``) for
analysts and lineage queries. A ledger created before a kind existed is rebuilt once, unchanged, to admit it
(``admit_new_kinds``).
``payload`` is the record as canonical JSON (sorted keys, no whitespace, UTF-8) and
``record_hash = sha256(prev_hash \\n seq \\n kind \\n recorded_at \\n payload)`` with ``recorded_at`` written
``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC); the first record's ``prev_hash`` is 64 zeros.

What DuckDB itself enforces (it has no triggers or grants): a CHECK constraint recomputes ``record_hash`` on
every insert and update, so an edit that does not also forge the hash is refused; ``seq`` is the primary key
and ``prev_hash`` is unique, so the chain cannot fork. A forger who rewrites a hash breaks the next link; a
deleted record leaves a gap in ``seq``.

Every append first checks the chain and raises ``ChainBroken`` instead of extending a broken one. With the
ledger's constraints in place (compared with the definition ``ensure_schema`` creates) DuckDB has already
hashed every row's content, so the check reads only the links: ``seq`` without gaps and each ``prev_hash``
equal to the previous ``record_hash``. A ledger that lost its constraints is verified in full.

Only the newest records can be removed, or rewritten with consistently recomputed hashes, without a trace
inside the file, so after each write ``anchored`` keeps the head (seq and hash) outside the warehouse: one
run per write in the MLflow experiment ``txguard-audit`` (``MlflowHeads``), whose params cannot be changed
once logged. The next write and ``verify_chain`` compare the warehouse with those heads
(docs/architecture.md, "Lineage and audit").
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from jobs.platform.layout import parse_day
from jobs.platform.settings import REPO_ROOT
from jobs.registry.client import MODEL_NAME

if TYPE_CHECKING:
    import duckdb
    from mlflow import MlflowClient

    from jobs.monitoring.monitors import DriftReport, PerformanceReport, Skipped
    from jobs.platform.settings import Settings

SCHEMA = "audit"
LEDGER = f"{SCHEMA}.records"
GENESIS_HASH = "0" * 64
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
HEADS_EXPERIMENT = "txguard-audit"

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
    """``great_expectations``, ``dbt``, ``pandera`` or ``txguard``; monitoring has its own kind."""
    check_name: str
    asset: str
    passed: bool
    details: dict[str, Any]
    dagster_run_id: str | None
    git_commit: str = field(default_factory=git_commit)


@dataclass(frozen=True)
class MonitoringResult:
    """One monitor's verdict on one day (feature drift, matured performance), with the model it judged.

    ``level`` is ``ok``, ``warn`` or ``error`` for drift; ``ok``, ``error`` (below a floor) or ``not judged``
    (too few frauds) for performance; ``skipped`` when the monitor did not judge the day (warm-up, labels not
    mature). ``values`` holds the numbers the verdict rests on.
    """

    KIND: ClassVar[str] = "monitoring_results"
    day: dt.date
    asset: str
    check_name: str
    level: str
    passed: bool
    model_name: str
    model_versions: list[str]
    """The versions whose scores were judged: the day's for drift, the judged window's for performance."""
    values: dict[str, Any]
    description: str
    dagster_run_id: str | None
    git_commit: str = field(default_factory=git_commit)


AuditEntry = TrainingRun | ModelVersion | Promotion | ScoringRun | ValidationResult | MonitoringResult
KINDS: dict[str, type[AuditEntry]] = {
    cls.KIND: cls
    for cls in (TrainingRun, ModelVersion, Promotion, ScoringRun, ValidationResult, MonitoringResult)
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
class ChainHead:
    """A record's place in the chain and its hash: kept outside the warehouse, it pins everything up to it."""

    seq: int
    record_hash: str
    where: str = field(default="", compare=False)
    """Where this head is kept (``MLflow run <id>``), for messages."""

    def describe(self) -> str:
        return f"seq {self.seq} {self.record_hash}" + (f" ({self.where})" if self.where else "")


class ChainBroken(RuntimeError):
    """The chain no longer verifies, so nothing is appended to it; ``broken`` names the first bad record."""

    def __init__(self, broken: BrokenLink) -> None:
        self.broken = broken
        super().__init__(
            f"audit chain BROKEN at seq {broken.seq} ({broken.kind}): {broken.reason}; nothing was appended"
            " (txguard audit verify recomputes every record)"
        )


class HeadsUnavailable(RuntimeError):
    """The MLflow store that keeps the chain's heads cannot be read or written."""


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of recomputing the chain, compared with the heads kept outside the warehouse."""

    records: int
    head_seq: int
    head_hash: str
    per_kind: dict[str, int]
    broken: BrokenLink | None
    anchor: ChainHead | None = None
    """The newest head kept outside the warehouse that this file's chain contains."""
    newest_head: ChainHead | None = None
    """The newest head kept outside the warehouse (None when none was given)."""

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
        text = f"audit chain OK: {self.records} records ({kinds}); head seq {self.head_seq} {self.head_hash}"
        newest = self.newest_head
        if newest is None:
            return text
        if newest.seq > self.head_seq:
            matched = f"; its records match the head kept at seq {self.anchor.seq}" if self.anchor else ""
            return (
                f"{text}; a copy that ends before the newest head kept outside the warehouse,"
                f" {newest.describe()}{matched}"
            )
        text = f"{text}; matches the newest head kept outside the warehouse, {newest.describe()}"
        if newest.seq < self.head_seq:
            text += f"; records {newest.seq + 1}..{self.head_seq} were written after it"
        return text


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


_LEDGER_DDL = f"""
create table if not exists {LEDGER} (
    seq bigint primary key check (seq >= 1),
    kind varchar not null check (kind in ({", ".join(f"'{kind}'" for kind in KINDS)})),
    recorded_at timestamp not null,
    payload varchar not null check (json_valid(payload)),
    prev_hash varchar not null unique check (length(prev_hash) = 64),
    record_hash varchar not null unique check (record_hash = {_HASH_SQL})
)
"""
_CONSTRAINTS_SQL = (
    "select constraint_text from duckdb_constraints()"
    f" where database_name = current_database() and schema_name = '{SCHEMA}' and table_name = 'records'"
    " order by constraint_text"
)


@functools.cache
def _ledger_constraints() -> tuple[str, ...]:
    """The constraints of a ledger as ``ensure_schema`` creates it, in DuckDB's own words."""
    import duckdb

    with duckdb.connect(":memory:") as scratch:
        scratch.execute(f"create schema {SCHEMA}")
        scratch.execute(_LEDGER_DDL)
        return tuple(text for (text,) in scratch.execute(_CONSTRAINTS_SQL).fetchall())


def ensure_schema(connection: duckdb.DuckDBPyConnection) -> None:
    """Create the ledger and its views when absent; idempotent, and cheap once they exist."""
    if has_ledger(connection):
        return
    connection.execute(f"create schema if not exists {SCHEMA}")
    connection.execute(_LEDGER_DDL)
    _create_views(connection)


def _create_views(connection: duckdb.DuckDBPyConnection) -> None:
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
    """Add one record at the head of the chain, in the caller's transaction when one is open.

    Raises ``ChainBroken`` (and appends nothing) when the chain already fails ``check_appendable``.
    """
    text = canonical_json(_normalize(kind, payload))
    ensure_schema(connection)
    check_appendable(connection)
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
    rows = connection.execute(
        "select count(*) from duckdb_tables() where schema_name = ? and table_name = 'records'", [SCHEMA]
    ).fetchall()
    return bool(rows[0][0])


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


def verify_chain(
    connection: duckdb.DuckDBPyConnection, heads: Sequence[ChainHead] = (), *, live: bool = True
) -> VerifyReport:
    """Recompute every hash in ``seq`` order and report the first record that does not fit the chain.

    ``heads`` are the heads kept outside the warehouse: each record at a head's ``seq`` must carry its hash,
    which catches a tail rewritten with consistently recomputed hashes. A ``live`` warehouse must also reach
    the newest head (records removed from the end otherwise leave no trace); a copy such as the analysts'
    snapshot may end before it.
    """
    pinned: dict[int, list[ChainHead]] = {}
    for head in heads:
        pinned.setdefault(head.seq, []).append(head)
    newest = max(heads, key=lambda head: head.seq, default=None)
    per_kind: dict[str, int] = {}
    expected_seq, prev, anchor = 1, GENESIS_HASH, None

    def report(broken: BrokenLink | None) -> VerifyReport:
        return VerifyReport(expected_seq - 1, expected_seq - 1, prev, per_kind, broken, anchor, newest)

    if has_ledger(connection):
        cursor = connection.cursor()
        cursor.execute(
            f"select seq, kind, recorded_at, payload, prev_hash, record_hash from {LEDGER} order by seq"
        )
        while batch := cursor.fetchmany(1000):
            for row in batch:
                seq, kind = row[0], row[1]
                first = anchor.seq + 1 if anchor else 1
                problem = _link_problem(expected_seq, prev, row) or _pin_problem(
                    pinned.get(seq, []), seq, row[5], first
                )
                if problem:
                    return report(BrokenLink(seq, kind, problem))
                per_kind[kind] = per_kind.get(kind, 0) + 1
                expected_seq, prev = seq + 1, row[5]
                anchor = pinned[seq][0] if seq in pinned else anchor
    if live and newest is not None and newest.seq >= expected_seq:
        return report(BrokenLink(expected_seq, "missing", _truncation(expected_seq - 1, newest)))
    return report(None)


def _pin_problem(pins: list[ChainHead], seq: int, stored: str, first: int | None) -> str | None:
    """Why a record differs from the heads kept outside the warehouse at its ``seq``, if it does.

    ``first`` is the first record that may have been rewritten (the one after the last head that matched),
    when known.
    """
    for head in pins:
        if head.record_hash != stored:
            if first is None:
                span = f"one or more records up to {seq} were"
            else:
                span = f"record {seq} was" if first == seq else f"records {first}..{seq} were"
            return (
                f"its record_hash {stored} differs from the head kept outside the warehouse,"
                f" {head.describe()}: {span} rewritten (hashes recomputed) after that head was kept"
            )
    return None


def _truncation(last_seq: int, newest: ChainHead) -> str:
    return (
        f"records {last_seq + 1}..{newest.seq} are missing: the warehouse ends at seq {last_seq}, but the"
        f" newest head kept outside it is {newest.describe()} (the newest records were removed)"
    )


def _link_problem(expected_seq: int, prev: str, row: tuple) -> str | None:
    seq, kind, recorded_at, payload, prev_hash, stored = row
    broken = _broken_link(expected_seq, prev, seq, prev_hash)
    if broken:
        return broken
    if record_hash(prev_hash, seq, kind, recorded_at, payload) != stored:
        return "its content does not match its record_hash: the record was altered after it was written"
    return None


def _broken_link(expected_seq: int, prev: str, seq: int, prev_hash: str) -> str | None:
    if seq != expected_seq:
        return f"records {expected_seq}..{seq - 1} are missing (deleted?)"
    if prev_hash != prev:
        return (
            f"prev_hash does not match the hash of record {seq - 1}: "
            f"record {seq - 1} (or this one) was altered after it was written"
        )
    return None


_LINKS_SQL = f"""
select seq, kind, prev_hash, record_hash, before_seq, before_hash, broken from (
    select *, seq <> before_seq + 1 or prev_hash <> before_hash as broken, max(seq) over () as last_seq
    from (
        select seq, kind, prev_hash, record_hash, lag(seq, 1, 0) over w as before_seq,
               lag(record_hash, 1, '{GENESIS_HASH}') over w as before_hash
        from {LEDGER} window w as (order by seq)
    )
)
where broken or seq = last_seq or seq = $pinned
order by broken desc, seq
"""
"""One pass over the hash columns: each broken link first, then the record at a pinned seq and the head."""


def chain_head(connection: duckdb.DuckDBPyConnection) -> ChainHead:
    """The newest record's seq and hash (seq 0 and the genesis hash for an empty or absent ledger)."""
    if not has_ledger(connection):
        return ChainHead(0, GENESIS_HASH)
    rows = connection.execute(f"select seq, record_hash from {LEDGER} order by seq desc limit 1").fetchall()
    return ChainHead(*rows[0]) if rows else ChainHead(0, GENESIS_HASH)


def check_appendable(connection: duckdb.DuckDBPyConnection, newest: ChainHead | None = None) -> ChainHead:
    """The head to append after, or ``ChainBroken`` naming the first record that breaks the chain.

    Cheap enough for every write: while the ledger keeps the constraints ``ensure_schema`` gave it, DuckDB
    has recomputed every row's hash on insert and update, so only the links are read (seq without gaps,
    ``prev_hash`` equal to the previous ``record_hash``), plus the record at ``newest``, the newest head kept
    outside the warehouse. A ledger rebuilt without those constraints is recomputed in full instead.
    """
    if not has_ledger(connection):
        if newest is not None and newest.seq > 0:
            raise ChainBroken(BrokenLink(1, "missing", _truncation(0, newest)))
        return ChainHead(0, GENESIS_HASH)
    constraints = tuple(text for (text,) in connection.execute(_CONSTRAINTS_SQL).fetchall())
    if constraints != _ledger_constraints():
        report = verify_chain(connection, [newest] if newest else [])
        if report.broken is not None:
            raise ChainBroken(report.broken)
        return ChainHead(report.head_seq, report.head_hash)
    rows = connection.execute(_LINKS_SQL, {"pinned": newest.seq if newest else None}).fetchall()
    if rows and rows[0][6]:
        seq, kind, prev_hash, _, before_seq, before_hash, _ = rows[0]
        raise ChainBroken(
            BrokenLink(seq, kind, str(_broken_link(before_seq + 1, before_hash, seq, prev_hash)))
        )
    head = ChainHead(rows[-1][0], rows[-1][3]) if rows else ChainHead(0, GENESIS_HASH)
    if newest is not None:
        if newest.seq > head.seq:
            raise ChainBroken(BrokenLink(head.seq + 1, "missing", _truncation(head.seq, newest)))
        seq, kind, _, stored, *_ = next(row for row in rows if row[0] == newest.seq)
        problem = _pin_problem([newest], seq, stored, None)
        if problem:
            raise ChainBroken(BrokenLink(seq, kind, problem))
    return head


class MlflowHeads:
    """The chain's heads kept in MLflow: one run per write in the experiment ``txguard-audit``.

    MLflow is part of every deployment, and in production a server apart from the warehouse file, so
    whoever can edit the warehouse cannot quietly move these too. A head is two params (``head_seq``,
    ``head_hash``), which MLflow refuses to change once logged; deleted runs are still read. Runs are tagged
    with the warehouse they pin (several deployments may share one tracking server).
    """

    def __init__(self, tracking_uri: str, warehouse: Path, artifact_root: Path) -> None:
        self.tracking_uri = tracking_uri
        self.warehouse = warehouse.resolve()
        self.artifact_root = artifact_root
        self.chain = hashlib.sha256(str(self.warehouse).encode("utf-8")).hexdigest()[:16]

    @classmethod
    def of(cls, settings: Settings) -> MlflowHeads:
        """The heads of the deployment's warehouse, in its MLflow tracking store."""
        return cls(settings.tracking_uri, settings.warehouse_path, settings.mlflow_artifact_root)

    def newest(self) -> ChainHead | None:
        """The head kept by the latest write (what the next write is checked against)."""
        found = self._search(max_results=1)
        return found[0] if found else None

    def all(self) -> list[ChainHead]:
        """Every head kept for this warehouse, newest first."""
        return self._search(max_results=None)

    def keep(self, head: ChainHead, write: str, dagster_run_id: str | None) -> ChainHead:
        """Record ``head`` as the newest, with the write that produced it; returns it with its place."""
        import time

        from mlflow.entities import Metric, Param

        tags = {"txguard.chain": self.chain, "txguard.warehouse": str(self.warehouse), "txguard.write": write}
        if dagster_run_id:
            tags["txguard.dagster_run_id"] = dagster_run_id
        try:
            client = self._client()
            experiment_id = self._experiment_id(client, create=True)
            run = client.create_run(experiment_id, run_name=f"audit head {head.seq}", tags=tags)
            client.log_batch(
                run.info.run_id,
                metrics=[Metric("head_seq", head.seq, int(time.time() * 1000), head.seq)],
                params=[Param("head_seq", str(head.seq)), Param("head_hash", head.record_hash)],
            )
            client.set_terminated(run.info.run_id)
        except Exception as error:
            raise HeadsUnavailable(
                f"could not keep the audit chain's head {head.describe()} in MLflow {self.tracking_uri}:"
                f" {error}"
            ) from error
        return ChainHead(head.seq, head.record_hash, f"MLflow run {run.info.run_id}")

    def _client(self) -> MlflowClient:
        from mlflow import MlflowClient

        database = self._sqlite_file()
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        return MlflowClient(tracking_uri=self.tracking_uri)

    def _sqlite_file(self) -> Path | None:
        """The tracking store's file when it is SQLite: reading heads never creates it."""
        prefix = "sqlite:///"
        return Path(self.tracking_uri.removeprefix(prefix)) if self.tracking_uri.startswith(prefix) else None

    def _experiment_id(self, client: MlflowClient, create: bool) -> str | None:
        experiment = client.get_experiment_by_name(HEADS_EXPERIMENT)
        if experiment is not None:
            return experiment.experiment_id
        if not create:
            return None
        return client.create_experiment(
            HEADS_EXPERIMENT,
            artifact_location=self.artifact_root.resolve().as_uri(),
            tags={"mlflow.note.content": "Heads of the warehouse's audit chain, one run per write."},
        )

    def _search(self, max_results: int | None) -> list[ChainHead]:
        from mlflow.entities import ViewType

        database = self._sqlite_file()
        if database is not None and not database.exists():
            return []
        heads: list[ChainHead] = []
        try:
            client = self._client()
            experiment_id = self._experiment_id(client, create=False)
            if experiment_id is None:
                return []
            token = None
            while True:
                page = client.search_runs(
                    [experiment_id],
                    f"tags.`txguard.chain` = '{self.chain}'",
                    run_view_type=ViewType.ALL,
                    max_results=max_results or 1000,
                    order_by=["metrics.head_seq DESC"],
                    page_token=token,
                )
                heads.extend(
                    ChainHead(
                        int(run.data.params["head_seq"]),
                        run.data.params["head_hash"],
                        f"MLflow run {run.info.run_id}",
                    )
                    for run in page
                    if {"head_seq", "head_hash"} <= run.data.params.keys()
                )
                token = page.token
                if max_results is not None or not token:
                    break
        except Exception as error:
            raise HeadsUnavailable(
                f"could not read the audit chain's heads from MLflow {self.tracking_uri}: {error}"
            ) from error
        return sorted(heads, key=lambda head: head.seq, reverse=True)


@contextlib.contextmanager
def anchored(
    connection: duckdb.DuckDBPyConnection, heads: MlflowHeads, write: str, dagster_run_id: str | None
) -> Iterator[ChainHead]:
    """Around one write: refuse it unless the chain matches the newest head kept outside the warehouse, and
    keep the new head there once the body has committed its records.

    A refusal names the first broken record: only then is the whole chain recomputed against every head.
    The body must have committed (or rolled back) when it ends: the head kept is the one every later reader
    sees. A body that raises keeps no head; the next write keeps one that covers whatever was committed.
    """
    newest = heads.newest()
    try:
        head = check_appendable(connection, newest)
    except ChainBroken as refused:
        first = verify_chain(connection, heads.all()).broken
        raise ChainBroken(first or refused.broken) from None
    yield head
    after = chain_head(connection)
    if after.seq > (newest.seq if newest else 0):
        heads.keep(after, write, dagster_run_id)


# --- monitoring results --------------------------------------------------------------------------------


def monitoring_results(
    asset: str,
    check_name: str,
    results: Sequence[DriftReport | PerformanceReport | Skipped],
    dagster_run_id: str | None,
    model_name: str = MODEL_NAME,
) -> list[MonitoringResult]:
    """A monitor's run as audit entries: one per day judged or skipped, with the verdict its check gave."""
    from jobs.monitoring.monitors import DriftReport, Skipped

    entries = []
    for result in results:
        if isinstance(result, Skipped):
            day, level, passed, versions = result.day, "skipped", True, []
            values: dict[str, Any] = {"reason": result.reason, **result.details}
            description = result.description
        elif isinstance(result, DriftReport):
            day, level, versions = result.day, result.level, [str(result.model_version)]
            passed = level == "ok"
            feature, worst = result.worst
            values = {"max_psi": worst, "worst_feature": feature, "rows": result.rows, "psi": result.psi}
            description = f"worst PSI {worst:.3f} ({feature}) is {level}"
        else:
            day, passed = result.evaluated_on, not result.breaches()
            versions = [str(v) for v in result.model_versions]
            level = "not judged" if not result.judged else "ok" if passed else "error"
            values = {
                "window_start": result.window_start,
                "window_end": result.window_end,
                "rows": result.rows,
                "frauds": result.frauds,
                **(result.metrics.as_dict() if result.metrics else {}),
            }
            description = result.summary()
        entries.append(
            MonitoringResult(
                day=day,
                asset=asset,
                check_name=check_name,
                level=level,
                passed=passed,
                model_name=model_name,
                model_versions=versions,
                values=values,
                description=description,
                dagster_run_id=dagster_run_id,
            )
        )
    return entries


def record_monitoring(
    settings: Settings, entries: Sequence[MonitoringResult], dagster_run_id: str | None
) -> list[AuditRecord]:
    """Append a monitor's results to the live warehouse's chain in one transaction, keep the new head in
    MLflow and republish the snapshot, so that lineage and model reports see them at once."""
    from jobs.platform.catalog import publish
    from jobs.platform.warehouse import connect

    if not entries:
        return []
    with (
        connect(settings.warehouse_path) as connection,
        anchored(connection, MlflowHeads.of(settings), f"monitoring {entries[0].asset}", dagster_run_id),
    ):
        connection.execute("begin transaction")
        try:
            admit_new_kinds(connection)
            written = [record(connection, entry) for entry in entries]
        except BaseException:
            connection.execute("rollback")
            raise
        connection.execute("commit")
    publish(settings, days=())
    return written


_KIND_CHECK = "CHECK((kind IN "


def admit_new_kinds(connection: duckdb.DuckDBPyConnection) -> bool:
    """Rebuild a ledger created before some of ``KINDS`` existed, so that it accepts them; True if it did.

    Such a ledger's CHECK lists fewer kinds, and DuckDB cannot alter a constraint. Only a ledger that differs
    from the current definition in that list alone, holds no other kind and verifies is rebuilt: its rows are
    copied back unchanged (same seq, payload and hashes) under the current constraints, which recompute each
    hash on the way in. Any other ledger is left as it is, for ``check_appendable`` to judge. Runs in the
    caller's transaction, which must be open.
    """
    if not has_ledger(connection):
        return False
    found = [text for (text,) in connection.execute(_CONSTRAINTS_SQL).fetchall()]
    expected = list(_ledger_constraints())
    kind_checks = [text for text in found if text.startswith(_KIND_CHECK)]
    if found == expected or len(kind_checks) != 1:
        return False
    if [t for t in found if t not in kind_checks] != [t for t in expected if not t.startswith(_KIND_CHECK)]:
        return False
    stored = {kind for (kind,) in connection.execute(f"select distinct kind from {LEDGER}").fetchall()}
    if not stored <= KINDS.keys() or verify_chain(connection).broken is not None:
        return False
    connection.execute(f"create temp table audit_ledger_before as select * from {LEDGER}")
    for kind in KINDS:
        connection.execute(f"drop view if exists {SCHEMA}.{kind}")
    connection.execute(f"drop table {LEDGER}")
    connection.execute(_LEDGER_DDL)
    connection.execute(f"insert into {LEDGER} select * from audit_ledger_before order by seq")
    connection.execute("drop table audit_ledger_before")
    _create_views(connection)
    return True
