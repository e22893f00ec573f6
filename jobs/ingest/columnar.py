"""The vectorised path for clean landing files: parsed, typed and checked a column at a time.

A clean file has the contract's columns (extra ones allowed), at least one row, and no fault of its own:
every value types and no row breaks a check of the day's pandera schema (what the lake already holds is
checked afterwards, for every file alike, in jobs/ingest/lake_index.py). A CSV file must also be plain: no
quotes, no blank lines, ids as digits, timestamps as ``YYYY-MM-DDTHH:MM:SSZ``, amounts with at most two
decimals. For such a file this path builds, with pyarrow and numpy, exactly the outcome of the row-by-row
path (jobs/ingest/reading.py, typing_rules.py, validation.py). Any other file is declined whole and taken
row by row, which names every fault: this path never writes a reason, so the two cannot disagree on one.
"""

from __future__ import annotations

import codecs
import datetime as dt
import io
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from jobs.ingest.contract import Source
from jobs.ingest.reading import parse_landing_bytes, quarantine_frame, unique_names
from jobs.ingest.typing_rules import typed_columns
from jobs.ingest.validation import FileOutcome, contract_holds, extras_json

_PLAIN = {
    "int64": r"^[0-9]{1,18}$",
    "timestamp": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$",
    "amount": r"^[0-9]{1,13}(\.[0-9]{1,2})?$",
}
"""CSV value forms whose Arrow parse equals the row-by-row path's pandas parse: an id of at most 18 digits
(as jobs/ingest/typing_rules.py allows), a timestamp that Arrow's strict ISO-8601 cast accepts (it refuses
hour 24, a leap second or 30 February, as pandas does), an amount of at most 15 significant digits (where
both parsers round to the same double)."""

_ARROW_TYPES = {"int64": pa.int64(), "timestamp": pa.timestamp("s", tz="UTC"), "amount": pa.float64()}


def clean_file_outcome(uri: str, data: bytes, source: Source, day: dt.date) -> FileOutcome | None:
    """The outcome of a clean landing file (every row accepted); None when the file is not clean."""
    if uri.endswith(".parquet"):
        return _clean_parquet(uri, data, source, day)
    return _clean_csv(uri, data, source, day)


def _clean_parquet(uri: str, data: bytes, source: Source, day: dt.date) -> FileOutcome | None:
    """Parquet is read and typed as the row-by-row path does (both are column-wise already); only the
    per-row bookkeeping of failures is skipped."""
    parsed = parse_landing_bytes(uri, data)
    if parsed.file_rule or parsed.rows.empty or not set(source.columns) <= set(parsed.rows.columns):
        return None
    typed, wrong = typed_columns(parsed.rows, source.columns)
    if not wrong.empty:
        return None
    extras = parsed.rows[[name for name in parsed.rows.columns if name not in source.columns]]
    return _accepted(uri, typed, extras, source, day, parsed.raw_record)


def _clean_csv(uri: str, data: bytes, source: Source, day: dt.date) -> FileOutcome | None:
    """Fields split by pyarrow.csv as text, checked against the plain forms, then cast column by column.

    Every line must be one row: no quotes (a quoted field may span lines), a carriage return only before a
    newline, and as many rows as lines (pyarrow skips blank lines, which the row numbers count).
    """
    body = data.removeprefix(codecs.BOM_UTF8)
    if b'"' in body or body.count(b"\r") != body.count(b"\r\n"):
        return None
    end = body.find(b"\n")
    if end <= 0 or end == len(body) - 1:
        return None
    try:
        names = unique_names(body[:end].removesuffix(b"\r").decode("utf-8").split(","))
    except UnicodeDecodeError:
        return None
    if not set(source.columns) <= set(names):
        return None
    body = body[end + 1 :]
    rows = body.count(b"\n") + (not body.endswith(b"\n"))
    try:
        table = pcsv.read_csv(
            io.BytesIO(body),
            read_options=pcsv.ReadOptions(column_names=names, use_threads=False),
            convert_options=pcsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string())),
        )
        if table.num_rows != rows:
            return None
        columns = {}
        for name, kind in source.columns.items():
            text = table.column(name)
            if not pc.all(pc.match_substring_regex(text, _PLAIN[kind])).as_py():
                return None
            columns[name] = pc.cast(text, _ARROW_TYPES[kind])
        stamps = source.timestamp_column
        columns[stamps] = pc.cast(columns[stamps], pa.timestamp("ns", "UTC"))
    except pa.ArrowInvalid:
        return None
    index = pd.Index(np.arange(1, rows + 1), dtype="int64", name="row_number")
    typed = pd.DataFrame({name: _pandas(values) for name, values in columns.items()}, index=index)
    extras = pd.DataFrame(index=index)
    extra_names = [name for name in names if name not in source.columns]
    if extra_names:
        extras = table.select(extra_names).to_pandas().set_axis(index)

    def raw_record(numbers: Sequence[int]) -> list[str | None]:
        return parse_landing_bytes(uri, data).raw_record(numbers)

    return _accepted(uri, typed, extras, source, day, raw_record)


def _pandas(values: pa.ChunkedArray) -> np.ndarray | pd.DatetimeIndex:
    """A typed column as the row-by-row path holds it: numpy int64 or float64, or nanoseconds in UTC."""
    if pa.types.is_timestamp(values.type):
        return pd.DatetimeIndex(values.to_numpy()).tz_localize("UTC")
    return values.to_numpy()


def _accepted(
    uri: str,
    typed: pd.DataFrame,
    extras: pd.DataFrame,
    source: Source,
    day: dt.date,
    raw_record: Callable[[Sequence[int]], list[str | None]],
) -> FileOutcome | None:
    if not contract_holds(typed, source, day):
        return None
    accepted = typed.assign(extras=extras_json(extras))
    return FileOutcome(uri, accepted, quarantine_frame(), len(typed), list(extras.columns), raw_record)
