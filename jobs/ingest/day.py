"""A day of one landing source: its files ingested, reconciled and written as one lake partition.

Each file is read (jobs/ingest/reading.py), checked against the contract (jobs/ingest/validation.py; a
clean file a column at a time, jobs/ingest/columnar.py) and against what the lake already holds
(jobs/ingest/lake_index.py). Every data row ends in exactly one place, so
``rows_in = accepted + quarantined`` is checked before anything is written, not assumed; a file that cannot
be read at all leaves one quarantine row with ``row_number`` 0. A day is replaced whole, quarantine first.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from jobs.ingest.boundary import NotARegularFile, read_regular_file
from jobs.ingest.columnar import clean_file_outcome
from jobs.ingest.contract import QUARANTINE_SCHEMA, RULE_RANK, SOURCES, Source
from jobs.ingest.lake_index import LakeIndexes, cross_file
from jobs.ingest.landing import day_keys, expected_uris
from jobs.ingest.reading import parse_landing_bytes, refused_entry
from jobs.ingest.validation import FileOutcome, validate_file
from jobs.platform.layout import partition_uri, quarantine_uri
from jobs.platform.storage import join, write_parquet_atomic


class MissingLandingFile(FileNotFoundError):
    """A day that must have a landing file has none; the message names the expected paths."""


class ReconciliationError(RuntimeError):
    """Rows in did not equal accepted plus quarantined: a row was lost or counted twice."""


@dataclass
class DayResult:
    """One partition of one source after ingestion: the tables to write and the counts that must reconcile."""

    source: str
    day: dt.date
    files: list[str]
    accepted: pa.Table
    quarantine: pa.Table
    rows_in: int
    extras_columns: list[str]
    partition_uri: str
    quarantine_uri: str
    expected_files: list[str] = field(default_factory=list)

    @property
    def quarantined(self) -> int:
        """Quarantined data rows (row_number ≥ 1); whole-file records are counted apart."""
        return int(pc.sum(pc.greater(self.quarantine["row_number"], 0)).as_py() or 0)

    @property
    def file_rejections(self) -> int:
        return self.quarantine.num_rows - self.quarantined

    @property
    def rules(self) -> dict[str, int]:
        counts = Counter(self.quarantine.column("rule").to_pylist())
        return dict(sorted(counts.items(), key=lambda item: (-item[1], RULE_RANK[item[0]])))

    @property
    def rejected_share(self) -> float:
        """Quarantined share of the rows in; a file rejected whole (other than as empty) counts as 1."""
        if self.rows_in:
            return self.quarantined / self.rows_in
        whole = [rule for rule in self.quarantine.column("rule").to_pylist() if rule != "empty_file"]
        return 1.0 if whole else 0.0

    @property
    def source_file(self) -> str:
        return (
            ", ".join(self.files) if self.files else f"(no file; expected {' or '.join(self.expected_files)})"
        )

    def summary(self) -> dict[str, object]:
        """The reconciliation, as recorded in the materialization metadata."""
        return {
            "rows_in": self.rows_in,
            "accepted": self.accepted.num_rows,
            "quarantined": self.quarantined,
            "file_rejections": self.file_rejections,
            "rejected_share": round(self.rejected_share, 6),
            "rules": self.rules,
            "source_file": self.source_file,
            "extras_columns": self.extras_columns,
            "partition": self.partition_uri,
            "quarantine": self.quarantine_uri,
        }


def reconcile(result: DayResult) -> None:
    """Every data row read is either accepted or quarantined, exactly once."""
    if result.rows_in != result.accepted.num_rows + result.quarantined:
        raise ReconciliationError(
            f"{result.source} {result.day}: rows_in {result.rows_in} != accepted {result.accepted.num_rows}"
            f" + quarantined {result.quarantined} ({result.source_file})"
        )


def validate_landing_file(
    landing: str, key: str, source: Source, day: dt.date, *, columnar: bool = True
) -> FileOutcome:
    """One landing entry against the contract: a clean file the vectorised way (jobs/ingest/columnar.py),
    any other row by row; ``columnar=False`` takes every file row by row, the reference the other must match.
    """
    uri = join(landing, key)
    try:
        data = read_regular_file(landing, key)
    except NotARegularFile as refused:
        return validate_file(refused_entry(uri, refused), source, day)
    clean = clean_file_outcome(uri, data, source, day) if columnar else None
    return clean if clean is not None else validate_file(parse_landing_bytes(uri, data), source, day)


def ingest_day(
    landing: str,
    keys: Sequence[str],
    lake: str,
    source: str,
    day: dt.date,
    run_id: str,
    indexes: LakeIndexes,
    now: dt.datetime | None = None,
    *,
    columnar: bool = True,
) -> DayResult:
    """Ingest one day's landing entries (``source/name`` keys, usually one) into the tables of its partition;
    writes nothing."""
    spec = SOURCES[source]
    now = now or dt.datetime.now(dt.UTC)
    accepted_tables, quarantine_tables, rows_in, extras = [], [], 0, []
    same_day = pd.DataFrame({"transaction_id": np.empty(0, np.int64), "source_file": np.empty(0, object)})
    uris = [join(landing, key) for key in keys]
    for key, uri in zip(keys, uris, strict=True):
        outcome = validate_landing_file(landing, key, spec, day, columnar=columnar)
        outcome = cross_file(outcome, spec, day, indexes, same_day)
        rows_in += outcome.rows_in
        extras += [name for name in outcome.extras_columns if name not in extras]
        accepted_tables.append(_lake_table(outcome.accepted, spec, uri, run_id))
        ids = outcome.accepted["transaction_id"].to_numpy()
        same_day = pd.concat([same_day, pd.DataFrame({"transaction_id": ids, "source_file": uri})])
        quarantine_tables.append(_with_raw_records(outcome, run_id, now))
    accepted_table = pa.concat_tables(accepted_tables) if keys else spec.lake_schema.empty_table()
    quarantine_table = pa.concat_tables(quarantine_tables) if keys else QUARANTINE_SCHEMA.empty_table()
    return DayResult(
        source,
        day,
        uris,
        accepted_table,
        quarantine_table,
        rows_in,
        extras,
        partition_uri(lake, spec.dataset, day),
        quarantine_uri(lake, source, day),
    )


def _with_raw_records(outcome: FileOutcome, run_id: str, now: dt.datetime) -> pa.Table:
    if outcome.quarantine.empty:
        return QUARANTINE_SCHEMA.empty_table()
    frame = outcome.quarantine.sort_values("row_number", kind="stable")
    missing = frame["raw_record"].isna()
    if missing.any():
        frame.loc[missing, "raw_record"] = outcome.raw_record(frame.loc[missing, "row_number"].tolist())
    frame = frame.assign(source_file=outcome.uri, ingest_run_id=run_id, quarantined_at=pd.Timestamp(now))
    return pa.Table.from_pandas(
        frame[QUARANTINE_SCHEMA.names], schema=QUARANTINE_SCHEMA, preserve_index=False, nthreads=1
    )


def _lake_table(accepted: pd.DataFrame, source: Source, uri: str, run_id: str) -> pa.Table:
    """One file's accepted rows in the lake schema, timestamps floored to the lake's microseconds."""
    stamps = accepted[source.timestamp_column]
    if (stamps.array.asi8 % 1_000).any():
        accepted = accepted.assign(**{source.timestamp_column: stamps.dt.floor("us")})
    lineage = {"source_file": uri, "ingest_run_id": run_id}
    return pa.table(
        {
            field.name: pa.array([lineage[field.name]] * len(accepted), field.type)
            if field.name in lineage
            else pa.Array.from_pandas(accepted[field.name], type=field.type)
            for field in source.lake_schema
        },
        schema=source.lake_schema,
    )


def write_day(result: DayResult) -> None:
    """Replace the day's quarantine and lake partition (a re-delivered file rebuilds, never duplicates)."""
    write_parquet_atomic(result.quarantine, result.quarantine_uri)
    write_parquet_atomic(result.accepted, result.partition_uri)


def ingest_days(
    landing: str,
    lake: str,
    source: str,
    days: Sequence[dt.date],
    run_id: str,
    now: dt.datetime | None = None,
    *,
    columnar: bool = True,
) -> list[DayResult]:
    """Ingest and write each day in order (a range backfill is one call); fail before writing if a
    transactions file is missing, naming every expected path.

    Fraud reports never wait for transactions: a day's reports are judged against the transactions the lake
    holds on or before that day, whether or not the day's own transactions file arrived or could be read.
    ``columnar=False`` takes every file row by row (see ``validate_landing_file``).
    """
    spec = SOURCES[source]
    keys = {day: day_keys(landing, source, day) for day in days}
    missing = [day for day in days if not keys[day]]
    if spec.file_required and missing:
        shown = "\n  ".join(" or ".join(expected_uris(landing, source, day)) for day in missing[:10])
        more = f"\n  … and {len(missing) - 10} more days" if len(missing) > 10 else ""
        raise MissingLandingFile(
            f"no {source} landing file for {len(missing)} day(s); expected\n  {shown}{more}"
        )
    indexes = LakeIndexes.open(lake)
    results = []
    for day in days:
        result = ingest_day(landing, keys[day], lake, source, day, run_id, indexes, now, columnar=columnar)
        result.expected_files = expected_uris(landing, source, day)
        reconcile(result)
        write_day(result)
        indexes.for_source(source).replace(day.isoformat(), result.accepted)
        results.append(result)
    return results
