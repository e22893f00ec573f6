"""Landing files → accepted lake rows and quarantined rows (DESIGN.md §2): nothing lost, nothing silent.

A file is read as raw values with their 1-based row number (the CSV line after the header, the Parquet row),
each value parsed to its contract type, then checked with the pandera contract (jobs/ingest/contract.py) and
against what the lake already holds. Every data row ends in exactly one place, so ``rows_in = accepted +
quarantined`` is checked, not assumed. A file that cannot be read at all leaves one quarantine row with
``row_number`` 0. The work is vectorised (pyarrow.csv, pandas); Python loops run only over lines that fail.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import hashlib
import io
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pandera.pandas as pandera
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pandera.errors import SchemaErrors

from jobs.ingest.contract import (
    FRAUD_REPORT_COLUMNS,
    QUARANTINE_SCHEMA,
    RAW_FRAUD_REPORTS_SCHEMA,
    RAW_TRANSACTIONS_SCHEMA,
    RULES,
    TRANSACTION_COLUMNS,
    LandingFraudReports,
    LandingTransactions,
    schema_for_day,
)
from jobs.ingest.landing import LandingFile, expected_uris, landing_uris
from jobs.platform.layout import (
    QUARANTINE,
    RAW_FRAUD_REPORTS,
    RAW_TRANSACTIONS,
    dataset_uri,
    partition_uri,
    quarantine_uri,
)
from jobs.platform.storage import filesystem, join, write_parquet_atomic

TRANSACTIONS = "transactions"
FRAUD_REPORTS = "fraud_reports"
MISNAMED = f"{QUARANTINE}/misnamed"

_RULE_ORDER = {rule: rank for rank, rule in enumerate(RULES)}
_KIND_WORDS = {"int64": "a whole number", "timestamp": "an ISO-8601 timestamp", "amount": "a decimal number"}
_KIND_DTYPES = {"int64": "int64", "timestamp": "datetime64[ns, UTC]", "amount": "float64"}
_ISO = "%Y-%m-%dT%H:%M:%SZ"
_QUARANTINE_COLUMNS = ["row_number", "rule", "reason", "raw_record"]


class MissingLandingFile(FileNotFoundError):
    """A day that must have a landing file has none; the message names the expected paths."""


class ReconciliationError(RuntimeError):
    """Rows in did not equal accepted plus quarantined: a row was lost or counted twice."""


@dataclass(frozen=True)
class Source:
    """What differs between the two landing sources."""

    name: str
    dataset: str
    columns: dict[str, str]
    model: type[pandera.DataFrameModel]
    timestamp_column: str
    lake_schema: pa.Schema
    file_required: bool


SOURCES = {
    TRANSACTIONS: Source(
        TRANSACTIONS,
        RAW_TRANSACTIONS,
        TRANSACTION_COLUMNS,
        LandingTransactions,
        "tx_datetime",
        RAW_TRANSACTIONS_SCHEMA,
        file_required=True,
    ),
    FRAUD_REPORTS: Source(
        FRAUD_REPORTS,
        RAW_FRAUD_REPORTS,
        FRAUD_REPORT_COLUMNS,
        LandingFraudReports,
        "reported_at",
        RAW_FRAUD_REPORTS_SCHEMA,
        file_required=False,
    ),
}


# ---------------------------------------------------------------------------------------------- reading


@dataclass
class ParsedFile:
    """A landing file as raw values indexed by row number, plus the rows that failed before typing."""

    uri: str
    rows: pd.DataFrame
    rejects: pd.DataFrame
    raw_record: Callable[[Sequence[int]], list[str]]
    file_rule: str | None = None
    file_reason: str = ""

    @property
    def rows_in(self) -> int:
        return len(self.rows) + int((self.rejects["row_number"] > 0).sum())


def _quarantine_frame(rows: Iterable[tuple[int, str, str, str | None]] = ()) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=_QUARANTINE_COLUMNS)
    return frame.astype({"row_number": "int64"})


def _whole_file(uri: str, data: bytes, rule: str, reason: str) -> ParsedFile:
    digest = hashlib.sha256(data).hexdigest()
    summary = f"{len(data)} bytes, sha256 {digest}, starts {data[:64]!r}"
    return ParsedFile(
        uri, pd.DataFrame(), _quarantine_frame(), lambda rows: [summary] * len(rows), rule, reason
    )


def read_landing_file(uri: str, data: bytes | None = None) -> ParsedFile:
    """Read one landing file (CSV or Parquet, local or s3://) into raw values; never raises on bad bytes."""
    if data is None:
        fs, path = filesystem(uri)
        data = fs.cat_file(path)
    if not data.strip():
        return _whole_file(uri, data, "empty_file", "the file is empty: no header and no rows")
    if uri.endswith(".parquet"):
        return _read_parquet(uri, data)
    return _read_csv(uri, data)


def _unique_names(names: Iterable[object]) -> list[str]:
    """Header names, stripped; blanks and repeats get a suffix so that no value is lost to a name clash."""
    result: list[str] = []
    for position, name in enumerate(names, start=1):
        text = str(name).strip() or f"column_{position}"
        candidate, copy = text, 1
        while candidate in result:
            copy += 1
            candidate = f"{text}__{copy}"
        result.append(candidate)
    return result


def _read_parquet(uri: str, data: bytes) -> ParsedFile:
    try:
        frame = pq.read_table(io.BytesIO(data)).to_pandas()
    except Exception as error:  # pyarrow raises several types for damaged files; each is quarantined
        truncated = data[:4] == b"PAR1" and data[-4:] != b"PAR1"
        rule = "truncated_parquet" if truncated else "unreadable_file"
        return _whole_file(uri, data, rule, f"cannot read Parquet ({type(error).__name__}: {error})")
    frame.columns = _unique_names(frame.columns)
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="row_number")

    def raw_record(rows: Sequence[int]) -> list[str]:
        columns = json.dumps({"columns": list(frame.columns)})
        found = dict(zip(rows, _json_lines(frame.loc[[row for row in rows if row > 0]]), strict=False))
        return [found.get(row, columns) if row > 0 else columns for row in rows]

    return ParsedFile(uri, frame, _quarantine_frame(), raw_record)


class _Lines:
    """Line boundaries of a CSV file's bytes, found with numpy rather than a Python loop."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        buffer = np.frombuffer(data, dtype=np.uint8)
        newlines = np.flatnonzero(buffer == 0x0A)
        starts = np.concatenate(([0], newlines + 1))
        ends = np.concatenate((newlines, [len(data)]))
        if starts[-1] == len(data):
            starts, ends = starts[:-1], ends[:-1]
        carriage = (ends > starts) & (buffer[np.maximum(ends - 1, 0)] == 0x0D)
        self.starts, self.ends = starts, ends - carriage
        self.nonempty = self.ends > self.starts

    def raw(self, index: int) -> bytes:
        return self.data[self.starts[index] : self.ends[index]]

    def text(self, index: int) -> str:
        return self.raw(index).decode("utf-8", "backslashreplace")

    def non_utf8(self) -> dict[int, str]:
        """Lines that are not valid UTF-8, with the offending byte: decoded once, lines found with numpy."""
        try:
            self.data.decode("utf-8")
            return {}
        except UnicodeDecodeError:
            pass
        text = self.data.decode("utf-8", "surrogateescape")
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        is_newline = codes == 0x0A
        line_of = np.cumsum(is_newline) - is_newline
        reasons = {}
        for index in np.unique(line_of[(codes >= 0xDC80) & (codes <= 0xDCFF)]):
            raw = self.raw(int(index))
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                bad = raw[error.start : error.end]
                reasons[int(index)] = f"byte {error.start + 1} ({bad!r}) is not UTF-8: {error.reason}"
        return reasons

    def blanked(self, first_line: int, blank: Iterable[int]) -> bytes:
        """The bytes from ``first_line`` on, with the ``blank`` lines emptied (their newline kept)."""
        if first_line >= len(self.starts):
            return b""
        blank = list(blank)
        if not blank:
            return self.data[self.starts[first_line] :]
        keep = np.ones(len(self.data), dtype=bool)
        for index in blank:
            keep[self.starts[index] : self.ends[index]] = False
        keep[: self.starts[first_line]] = False
        return np.frombuffer(self.data, dtype=np.uint8)[keep].tobytes()


def _read_csv(uri: str, data: bytes) -> ParsedFile:
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    lines = _Lines(data)
    if not lines.nonempty.any():
        return _whole_file(uri, data, "empty_file", "the file is empty: no header and no rows")
    header = int(np.argmax(lines.nonempty))
    names = _unique_names(next(csv.reader([lines.raw(header).decode("utf-8", "replace")])))
    undecodable = lines.non_utf8()
    data_lines = np.flatnonzero(lines.nonempty)
    data_lines = data_lines[data_lines > header]
    bad_lines = data_lines[np.isin(data_lines, list(undecodable))].tolist()
    rejects = [(i - header, "non_utf8", undecodable[i], repr(lines.raw(i))) for i in bad_lines]
    good = data_lines[~np.isin(data_lines, bad_lines)]
    frame, malformed = _parse_rows(lines, header, names, good, bad_lines)
    rejects += [(i - header, "malformed_row", reason, lines.text(i)) for i, reason in malformed]
    frame.index = pd.Index(frame.index - header, name="row_number", dtype="int64")

    def raw_record(rows: Sequence[int]) -> list[str]:
        return [lines.text(header + int(row)) for row in rows]

    return ParsedFile(uri, frame, _quarantine_frame(rejects), raw_record)


def _parse_rows(
    lines: _Lines, header: int, names: list[str], good: np.ndarray, blank: list[int]
) -> tuple[pd.DataFrame, list[tuple[int, str]]]:
    """Split the ``good`` lines into fields with pyarrow; rows with the wrong field count come back apart.

    Every line is one row. When pyarrow disagrees (a quote spanning lines, say), the lines are split one by
    one with the csv module instead, so a single stray quote cannot swallow its neighbours.
    """
    if len(good) == 0:
        return pd.DataFrame(columns=names, index=pd.Index([], dtype="int64"), dtype=object), []
    internal = [f"c{i}" for i in range(len(names))]
    invalid: list[tuple[int | None, str, int]] = []

    def on_invalid(row: pcsv.InvalidRow) -> str:
        invalid.append((row.number, row.text, row.actual_columns))
        return "skip"

    body = lines.blanked(header + 1, blank)
    try:
        table = pcsv.read_csv(
            io.BytesIO(body),
            read_options=pcsv.ReadOptions(column_names=internal, use_threads=False),
            parse_options=pcsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pcsv.ConvertOptions(column_types=dict.fromkeys(internal, pa.string())),
        )
    except pa.ArrowInvalid:
        return _parse_rows_one_by_one(lines, names, good)
    consistent = table.num_rows + len(invalid) == len(good) and all(
        number is not None and "\n" not in text and "\r" not in text for number, text, _ in invalid
    )
    if not consistent:
        return _parse_rows_one_by_one(lines, names, good)
    positions = np.array([number - 1 for number, _, _ in invalid], dtype=np.int64)
    frame = table.to_pandas()
    frame.columns = names
    frame.index = np.delete(good, positions)
    malformed = [
        (int(good[pos]), f"expected {len(names)} fields, found {count}")
        for pos, (_, _, count) in zip(positions, invalid, strict=True)
    ]
    return frame, malformed


def _parse_rows_one_by_one(
    lines: _Lines, names: list[str], good: np.ndarray
) -> tuple[pd.DataFrame, list[tuple[int, str]]]:
    records, kept, malformed = [], [], []
    for index in good:
        try:
            fields = next(csv.reader([lines.raw(int(index)).decode("utf-8")], strict=True))
        except csv.Error as error:
            malformed.append((int(index), f"unparseable CSV line: {error}"))
            continue
        if len(fields) != len(names):
            malformed.append((int(index), f"expected {len(names)} fields, found {len(fields)}"))
            continue
        records.append(fields)
        kept.append(int(index))
    return pd.DataFrame(records, columns=names, index=pd.Index(kept, dtype="int64"), dtype=object), malformed


def _json_lines(frame: pd.DataFrame) -> list[str]:
    if frame.empty:
        return ["{}"] * len(frame)
    text = frame.to_json(
        orient="records", lines=True, date_format="iso", default_handler=str, force_ascii=False
    )
    return text.rstrip("\n").split("\n")


# ---------------------------------------------------------------------------------------------- typing


def _parse_int64(values: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(values):
        return pd.Series(pd.NA, index=values.index, dtype="Int64")
    if pd.api.types.is_integer_dtype(values):
        return values.astype("Int64")
    if pd.api.types.is_float_dtype(values):
        whole = np.isfinite(values) & (values == np.floor(values)) & (values.abs() < 2**63)
        return values.where(whole).astype("Int64")
    text = values.astype("string").str.strip()
    return text.where(text.str.fullmatch(r"[+-]?[0-9]{1,18}").fillna(False).astype(bool)).astype("Int64")


def _parse_timestamp(values: pd.Series) -> pd.Series:
    """UTC timestamps; naive values are read as UTC (the contract's zone), offsets converted to UTC."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        stamps = values.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(values):
        stamps = values.dt.tz_localize("UTC")
    else:
        text = values.astype("string").str.strip()
        return pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601").astype("datetime64[ns, UTC]")
    low, high = pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")
    return stamps.where((stamps >= low) & (stamps <= high)).astype("datetime64[ns, UTC]")


def _parse_amount(values: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(values):
        return pd.Series(np.nan, index=values.index)
    if pd.api.types.is_numeric_dtype(values):
        numbers = values.astype("float64")
    else:
        text = values.astype("string").str.strip()
        numbers = pd.to_numeric(text.astype(object).where(text.notna(), None), errors="coerce")
    return numbers.where(np.isfinite(numbers.astype("float64")))


_PARSERS = {"int64": _parse_int64, "timestamp": _parse_timestamp, "amount": _parse_amount}


def _typed(rows: pd.DataFrame, columns: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Contract columns parsed to their types, and a ``wrong_type`` record for each row that did not parse."""
    parsed = {name: _PARSERS[kind](rows[name]) for name, kind in columns.items()}
    failed = pd.DataFrame({name: values.isna() for name, values in parsed.items()}, index=rows.index)
    bad = failed.any(axis=1)
    reasons = []
    for row, flags in failed[bad].iterrows():
        parts = []
        for name in flags.index[flags]:
            raw = rows.at[row, name]
            empty = raw is None or (isinstance(raw, float) and np.isnan(raw)) or str(raw).strip() == ""
            parts.append(
                f"{name} is empty" if empty else f"{name}={raw!r} is not {_KIND_WORDS[columns[name]]}"
            )
        reasons.append((int(row), "wrong_type", "; ".join(parts), None))
    typed = pd.DataFrame(
        {name: parsed[name][~bad].astype(_KIND_DTYPES[kind]) for name, kind in columns.items()},
        index=rows.index[~bad],
    )
    return typed, _quarantine_frame(reasons)


# ---------------------------------------------------------------------------------------------- contract


def _contract_failures(typed: pd.DataFrame, source: Source, day: dt.date) -> pd.DataFrame:
    """Run the pandera contract and turn each failure case into a quarantine record named by its rule."""
    schema = schema_for_day(source.model, source.timestamp_column, day)
    try:
        schema.validate(typed, lazy=True)
        return _quarantine_frame()
    except SchemaErrors as errors:
        cases = errors.failure_cases
    unknown = set(cases["check"]) - set(RULES)
    if unknown or cases["index"].isna().any():
        raise RuntimeError(f"contract failed outside its rules (a bug, not bad input):\n{cases}")
    first_row = typed.index.to_series().groupby(typed["transaction_id"].to_numpy()).transform("first")
    records = []
    for rule, column, value, row in cases[["check", "column", "failure_case", "index"]].itertuples(
        index=False
    ):
        if rule == "duplicate_id_in_file":
            reason = (
                f"transaction_id {value} repeats row {first_row[row]} of this file; the first copy is kept"
            )
        elif rule == "outside_file_day":
            reason = f"{column} {pd.Timestamp(value).isoformat()} is outside the file's UTC day {day}"
        elif rule == "negative_amount":
            reason = f"tx_amount {value} is negative"
        else:
            reason = f"tx_amount {value} has more than 2 decimal places"
        records.append((int(row), rule, reason, None))
    return _quarantine_frame(records)


def _one_per_row(frame: pd.DataFrame) -> pd.DataFrame:
    """A row failing several rules is filed under the first rule in precedence order, with every reason."""
    if frame.empty:
        return frame
    frame = frame.assign(rank=frame["rule"].map(_RULE_ORDER)).sort_values(
        ["row_number", "rank"], kind="stable"
    )
    whole_file = frame[frame["row_number"] == 0]
    rows = frame[frame["row_number"] > 0]
    merged = rows.groupby("row_number", sort=True).agg(
        rule=("rule", "first"), reason=("reason", "; ".join), raw_record=("raw_record", "first")
    )
    return pd.concat(
        [whole_file[_QUARANTINE_COLUMNS], merged.reset_index()[_QUARANTINE_COLUMNS]], ignore_index=True
    )


@dataclass
class FileOutcome:
    """One landing file after the in-file contract: typed accepted rows and quarantine records."""

    uri: str
    accepted: pd.DataFrame
    quarantine: pd.DataFrame
    rows_in: int
    extras_columns: list[str]
    raw_record: Callable[[Sequence[int]], list[str]]


def validate_file(parsed: ParsedFile, source: Source, day: dt.date) -> FileOutcome:
    """Apply the file-level rules, typing and the pandera contract to one parsed landing file."""
    extras = [name for name in parsed.rows.columns if name not in source.columns]
    empty = _empty_accepted(source)
    if parsed.file_rule:
        records = _quarantine_frame([(0, parsed.file_rule, parsed.file_reason, None)])
        return FileOutcome(parsed.uri, empty, records, 0, extras, parsed.raw_record)
    missing = [name for name in source.columns if name not in parsed.rows.columns]
    if missing:
        reason = f"missing column(s) {', '.join(missing)}; the file has {list(parsed.rows.columns)}"
        numbers = parsed.rows.index.to_numpy() if len(parsed.rows) else np.array([0])
        rejected = pd.DataFrame(
            {"row_number": numbers, "rule": "missing_column", "reason": reason, "raw_record": None}
        )
        quarantine = pd.concat([parsed.rejects, rejected], ignore_index=True)
        return FileOutcome(
            parsed.uri, empty, _one_per_row(quarantine), parsed.rows_in, extras, parsed.raw_record
        )
    if parsed.rows_in == 0:
        records = _quarantine_frame([(0, "empty_file", "the file has a header but no data rows", None)])
        return FileOutcome(parsed.uri, empty, records, 0, extras, parsed.raw_record)
    typed, wrong = _typed(parsed.rows, source.columns)
    failures = _contract_failures(typed, source, day)
    accepted = typed.drop(index=failures["row_number"].unique())
    accepted["extras"] = _extras(parsed.rows.loc[accepted.index, extras])
    quarantine = _one_per_row(pd.concat([parsed.rejects, wrong, failures], ignore_index=True))
    return FileOutcome(parsed.uri, accepted, quarantine, parsed.rows_in, extras, parsed.raw_record)


def _extras(frame: pd.DataFrame) -> pd.Series:
    """Columns outside the contract, kept per row as a JSON object (null when a file has none)."""
    if frame.shape[1] == 0 or frame.empty:
        return pd.Series(None, index=frame.index, dtype=object)
    return pd.Series(_json_lines(frame), index=frame.index, dtype=object)


def _empty_accepted(source: Source) -> pd.DataFrame:
    columns = {name: pd.Series(dtype=_KIND_DTYPES[kind]) for name, kind in source.columns.items()}
    return pd.DataFrame({**columns, "extras": pd.Series(dtype=object)}, index=pd.Index([], dtype="int64"))


# ---------------------------------------------------------------------------------------------- the lake


class LakeIndex:
    """A few columns of what one lake dataset already accepted, with each row's partition ``date``.

    Read once per run (one scan, not one per day of a range) and kept current as the run writes each day.
    """

    def __init__(self, lake: str, dataset: str, columns: Sequence[str]) -> None:
        self._uri = dataset_uri(lake, dataset)
        self._columns = list(columns)
        self._base: pd.DataFrame | None = None
        self._written: dict[str, pd.DataFrame] = {}

    def _load(self) -> pd.DataFrame:
        fs, path = filesystem(self._uri)
        empty = pd.DataFrame(columns=[*self._columns, "date"])
        if not fs.exists(path):
            return empty
        dataset = ds.dataset(
            path,
            filesystem=fs,
            format="parquet",
            partitioning=ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive"),
        )
        if not dataset.files:
            return empty
        table = dataset.to_table(columns=[*self._columns, "date"])
        return table.set_column(
            table.schema.get_field_index("date"), "date", table.column("date").dictionary_encode()
        ).to_pandas()

    def lookup(
        self, ids: pd.Series, *, exclude_day: str | None = None, through_day: str | None = None
    ) -> pd.DataFrame:
        """Rows whose transaction_id is in ``ids``, optionally outside one day or up to a day (inclusive)."""
        if self._base is None:
            self._base = self._load()
        base = self._base[self._base["transaction_id"].isin(ids)]
        base = base[~base["date"].isin(list(self._written))].astype({"date": str})
        written = [rows[rows["transaction_id"].isin(ids)] for rows in self._written.values()]
        found = pd.concat(
            [frame for frame in [base, *written] if not frame.empty] or [base], ignore_index=True
        )
        if exclude_day is not None:
            found = found[found["date"] != exclude_day]
        if through_day is not None:
            found = found[found["date"] <= through_day]
        return found.sort_values("date", kind="stable").drop_duplicates("transaction_id")

    def replace(self, day: str, rows: pd.DataFrame) -> None:
        self._written[day] = rows[self._columns].assign(date=day).reset_index(drop=True)


@dataclass
class LakeIndexes:
    """The lake lookups the cross-file rules need, shared by every day of a run."""

    transactions: LakeIndex
    fraud_reports: LakeIndex

    @classmethod
    def open(cls, lake: str) -> LakeIndexes:
        return cls(
            LakeIndex(lake, RAW_TRANSACTIONS, ["transaction_id", "tx_datetime"]),
            LakeIndex(lake, RAW_FRAUD_REPORTS, ["transaction_id"]),
        )

    def for_source(self, source: str) -> LakeIndex:
        return self.transactions if source == TRANSACTIONS else self.fraud_reports


def _cross_file(
    outcome: FileOutcome, source: Source, day: dt.date, indexes: LakeIndexes, same_day: pd.DataFrame
) -> FileOutcome:
    """Quarantine what the lake contradicts: ids accepted elsewhere, reports of unknown or later tx."""
    key = day.isoformat()
    accepted = outcome.accepted
    flagged: list[pd.DataFrame] = []

    def quarantine(mask: pd.Series, rule: str, reasons: Callable[[pd.DataFrame], pd.Series]) -> None:
        nonlocal accepted
        if mask.any():
            hits = accepted[mask]
            reason = reasons(hits).to_numpy(dtype=object)
            flagged.append(
                pd.DataFrame({"row_number": hits.index, "rule": rule, "reason": reason, "raw_record": None})
            )
            accepted = accepted[~mask]

    elsewhere = indexes.for_source(source.name).lookup(accepted["transaction_id"], exclude_day=key)
    parts = [
        "partition " + elsewhere.set_index("transaction_id")["date"].astype("string"),
        same_day.set_index("transaction_id")["source_file"].astype("string") + " (same day)",
    ]
    places = pd.concat([part for part in parts if not part.empty] or [pd.Series(dtype="string")])
    place = accepted["transaction_id"].map(places[~places.index.duplicated()])
    quarantine(
        place.notna(),
        "duplicate_id_across_files",
        lambda hits: (
            "transaction_id "
            + hits["transaction_id"].astype(str)
            + " already accepted in "
            + place[hits.index]
        ),
    )
    if source.name == FRAUD_REPORTS:
        known = indexes.transactions.lookup(accepted["transaction_id"], through_day=key)
        tx_time = known.set_index("transaction_id")["tx_datetime"]
        quarantine(
            ~accepted["transaction_id"].isin(tx_time.index),
            "unknown_transaction",
            lambda hits: (
                "no accepted transaction " + hits["transaction_id"].astype(str) + f" on or before {key}"
            ),
        )
        when = pd.to_datetime(accepted["transaction_id"].map(tx_time), utc=True)
        quarantine(
            accepted["reported_at"] < when,
            "report_before_transaction",
            lambda hits: (
                "reported at "
                + hits["reported_at"].dt.strftime(_ISO)
                + ", before its transaction at "
                + when[hits.index].dt.strftime(_ISO)
            ),
        )
    if not flagged:
        return outcome
    quarantine_rows = _one_per_row(pd.concat([outcome.quarantine, *flagged], ignore_index=True))
    return FileOutcome(
        outcome.uri, accepted, quarantine_rows, outcome.rows_in, outcome.extras_columns, outcome.raw_record
    )


# ---------------------------------------------------------------------------------------------- a day


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
        return dict(sorted(counts.items(), key=lambda item: (-item[1], _RULE_ORDER[item[0]])))

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


def ingest_day(
    uris: Sequence[str],
    lake: str,
    source: str,
    day: dt.date,
    run_id: str,
    indexes: LakeIndexes,
    now: dt.datetime | None = None,
) -> DayResult:
    """Ingest one day's landing files (usually one) into the tables of its partition; writes nothing."""
    spec = SOURCES[source]
    now = now or dt.datetime.now(dt.UTC)
    accepted_frames, quarantine_frames, rows_in, extras = [], [], 0, []
    same_day = pd.DataFrame(columns=["transaction_id", "source_file"])
    for uri in uris:
        outcome = validate_file(read_landing_file(uri), spec, day)
        outcome = _cross_file(outcome, spec, day, indexes, same_day)
        rows_in += outcome.rows_in
        extras += [name for name in outcome.extras_columns if name not in extras]
        accepted = outcome.accepted.assign(source_file=uri, ingest_run_id=run_id)
        accepted_frames.append(accepted)
        same_day = pd.concat([same_day, accepted[["transaction_id", "source_file"]]], ignore_index=True)
        quarantine_frames.append(_with_raw_records(outcome, run_id, now))
    accepted_table = _to_lake_table(accepted_frames, spec)
    quarantine_table = (
        pa.concat_tables(quarantine_frames) if quarantine_frames else QUARANTINE_SCHEMA.empty_table()
    )
    return DayResult(
        source,
        day,
        list(uris),
        accepted_table,
        quarantine_table,
        rows_in,
        extras,
        partition_uri(lake, spec.dataset, day),
        quarantine_uri(lake, source, day),
    )


def _with_raw_records(outcome: FileOutcome, run_id: str, now: dt.datetime) -> pa.Table:
    frame = outcome.quarantine.sort_values("row_number", kind="stable")
    missing = frame["raw_record"].isna()
    if missing.any():
        frame.loc[missing, "raw_record"] = outcome.raw_record(frame.loc[missing, "row_number"].tolist())
    frame = frame.assign(source_file=outcome.uri, ingest_run_id=run_id, quarantined_at=pd.Timestamp(now))
    return pa.Table.from_pandas(
        frame[QUARANTINE_SCHEMA.names], schema=QUARANTINE_SCHEMA, preserve_index=False
    )


def _to_lake_table(frames: list[pd.DataFrame], source: Source) -> pa.Table:
    if not frames:
        return source.lake_schema.empty_table()
    frame = pd.concat(frames, ignore_index=True)
    frame[source.timestamp_column] = frame[source.timestamp_column].dt.floor("us")
    return pa.Table.from_pandas(
        frame[source.lake_schema.names], schema=source.lake_schema, preserve_index=False
    )


def write_day(result: DayResult) -> None:
    """Replace the day's quarantine and lake partition (a re-delivered file rebuilds, never duplicates)."""
    write_parquet_atomic(result.quarantine, result.quarantine_uri)
    write_parquet_atomic(result.accepted, result.partition_uri)


def ingest_days(
    landing: str, lake: str, source: str, days: Sequence[dt.date], run_id: str, now: dt.datetime | None = None
) -> list[DayResult]:
    """Ingest and write each day in order (a range backfill is one call); fail before writing if a
    transactions file is missing, naming every expected path."""
    spec = SOURCES[source]
    uris = {day: landing_uris(landing, source, day) for day in days}
    missing = [day for day in days if not uris[day]]
    if spec.file_required and missing:
        shown = "\n  ".join(" or ".join(expected_uris(landing, source, day)) for day in missing[:10])
        more = f"\n  … and {len(missing) - 10} more days" if len(missing) > 10 else ""
        raise MissingLandingFile(
            f"no {source} landing file for {len(missing)} day(s); expected\n  {shown}{more}"
        )
    indexes = LakeIndexes.open(lake)
    results = []
    for day in days:
        result = ingest_day(uris[day], lake, source, day, run_id, indexes, now)
        result.expected_files = expected_uris(landing, source, day)
        reconcile(result)
        write_day(result)
        indexes.for_source(source).replace(day.isoformat(), result.accepted.to_pandas())
        results.append(result)
    return results


# ---------------------------------------------------------------------------------------------- misnamed


def quarantine_misnamed(
    files: Iterable[tuple[LandingFile, str]], lake: str, run_id: str, now: dt.datetime | None = None
) -> list[dict[str, object]]:
    """Copy each badly named file's bytes under ``quarantine/misnamed`` with a record of its name and why.

    The folder is a digest of the file's fingerprint, never its name, so a hostile name cannot steer the
    write; the same version quarantined twice lands in the same place.
    """
    now = now or dt.datetime.now(dt.UTC)
    records = []
    for file, reason in files:
        folder = join(lake, MISNAMED, file.source, hashlib.sha256(file.fingerprint.encode()).hexdigest()[:16])
        source_fs, source_path = filesystem(file.uri)
        content = source_fs.cat_file(source_path)
        record = {
            "source": file.source,
            "name": file.name,
            "uri": file.uri,
            "size": file.size,
            "version": file.version,
            "reason": reason,
            "content": join(folder, "content"),
            "content_sha256": hashlib.sha256(content).hexdigest(),
            "ingest_run_id": run_id,
            "quarantined_at": now.isoformat(),
        }
        fs, path = filesystem(folder)
        fs.makedirs(path, exist_ok=True)
        fs.pipe_file(f"{path}/content", content)
        fs.pipe_file(f"{path}/record.json", json.dumps(record, indent=2).encode())
        records.append(record)
    return records
