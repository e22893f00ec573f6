"""Landing bytes → raw rows: each value as written, indexed by its 1-based row number, nothing typed yet.

The row number is the CSV line counted from the header (the first data line is 1) or the Parquet row. Lines
that cannot be split into the header's fields (``malformed_row``) or decoded (``non_utf8``) are set apart
here; a file that cannot be read at all (empty, truncated or unreadable Parquet, not a regular file) becomes
one whole-file record with row number 0. Line boundaries are found with numpy and fields split with
pyarrow.csv; Python loops run only over the lines that fail.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from jobs.ingest.boundary import NotARegularFile

QUARANTINE_COLUMNS = ["row_number", "rule", "reason", "raw_record"]


@dataclass
class ParsedFile:
    """A landing file as raw values indexed by row number, plus the rows that failed before typing."""

    uri: str
    rows: pd.DataFrame
    rejects: pd.DataFrame
    raw_record: Callable[[Sequence[int]], list[str | None]]
    file_rule: str | None = None
    file_reason: str = ""

    @property
    def rows_in(self) -> int:
        return len(self.rows) + int((self.rejects["row_number"] > 0).sum())


def quarantine_frame(rows: Iterable[tuple[int, str, str, str | None]] = ()) -> pd.DataFrame:
    """Quarantine records being built: row number (0 = the whole file), rule, reason, raw record or None."""
    columns = list(zip(*rows, strict=True)) or [()] * len(QUARANTINE_COLUMNS)
    return pd.DataFrame(
        {
            name: np.array(values, dtype=np.int64 if name == "row_number" else object)
            for name, values in zip(QUARANTINE_COLUMNS, columns, strict=True)
        }
    )


def _whole_file(uri: str, data: bytes, rule: str, reason: str) -> ParsedFile:
    digest = hashlib.sha256(data).hexdigest()
    summary = f"{len(data)} bytes, sha256 {digest}, starts {data[:64]!r}"
    return ParsedFile(
        uri, pd.DataFrame(), quarantine_frame(), lambda rows: [summary] * len(rows), rule, reason
    )


def _no_raw_records(rows: Sequence[int]) -> list[str | None]:
    return [None] * len(rows)


def refused_entry(uri: str, refused: NotARegularFile) -> ParsedFile:
    """An entry that is not a regular file, quarantined whole by its name and kind.

    Not a byte of it, or of a link's target, was read, so none can reach the quarantine, the logs or the
    run's metadata.
    """
    return ParsedFile(uri, pd.DataFrame(), quarantine_frame(), _no_raw_records, refused.rule, str(refused))


def parse_landing_bytes(uri: str, data: bytes) -> ParsedFile:
    """A landing file's bytes (CSV or Parquet, by its name) as raw values; never raises on bad bytes."""
    if not data.strip():
        return _whole_file(uri, data, "empty_file", "the file is empty: no header and no rows")
    if uri.endswith(".parquet"):
        return _read_parquet(uri, data)
    return _read_csv(uri, data)


def unique_names(names: Iterable[object]) -> list[str]:
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
    frame.columns = unique_names(frame.columns)
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="row_number")

    def raw_record(rows: Sequence[int]) -> list[str]:
        columns = json.dumps({"columns": list(frame.columns)})
        found = dict(zip(rows, json_lines(frame.loc[[row for row in rows if row > 0]]), strict=False))
        return [found.get(row, columns) if row > 0 else columns for row in rows]

    return ParsedFile(uri, frame, quarantine_frame(), raw_record)


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
    names = unique_names(next(csv.reader([lines.raw(header).decode("utf-8", "replace")])))
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

    return ParsedFile(uri, frame, quarantine_frame(rejects), raw_record)


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


def json_lines(frame: pd.DataFrame) -> list[str]:
    """Each row as one JSON object (dates as ISO-8601, text as written)."""
    if frame.empty:
        return ["{}"] * len(frame)
    text = frame.to_json(
        orient="records", lines=True, date_format="iso", default_handler=str, force_ascii=False
    )
    return text.rstrip("\n").split("\n")
