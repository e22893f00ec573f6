"""One landing file against the contract: file-level rules, typing, then the pandera checks.

A row failing several rules is filed once, under the first rule in the precedence order of
``contract.RULES``, with every reason. What the lake already holds (ids accepted elsewhere, the transaction a
report is about) is checked afterwards, in jobs/ingest/lake_index.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pandera.errors import SchemaErrors

from jobs.ingest.contract import RULE_RANK, RULES, Source, checks_for_day, schema_for_day
from jobs.ingest.reading import QUARANTINE_COLUMNS, ParsedFile, json_lines, quarantine_frame
from jobs.ingest.typing_rules import KIND_DTYPES, typed_columns


def _contract_failures(typed: pd.DataFrame, source: Source, day: dt.date) -> pd.DataFrame:
    """Run the pandera contract and turn each failure case into a quarantine record named by its rule."""
    schema = schema_for_day(source.model, source.timestamp_column, day)
    try:
        schema.validate(typed, lazy=True)
        return quarantine_frame()
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
    return quarantine_frame(records)


def contract_holds(typed: pd.DataFrame, source: Source, day: dt.date) -> bool:
    """Whether every row passes every check of the day's schema, each check run once on its column.

    The clean-file path asks only this; the failure cases that a lazy ``validate`` collects are what the
    row-by-row path needs, to file each failing row under its rule.
    """
    checks = checks_for_day(source.model, source.timestamp_column, day)
    return all(bool(check(typed, column).check_passed) for column, check in checks)


def one_per_row(frame: pd.DataFrame) -> pd.DataFrame:
    """A row failing several rules is filed under the first rule in precedence order, with every reason."""
    if frame.empty:
        return frame
    frame = frame.assign(rank=frame["rule"].map(RULE_RANK)).sort_values(["row_number", "rank"], kind="stable")
    whole_file = frame[frame["row_number"] == 0]
    rows = frame[frame["row_number"] > 0]
    merged = rows.groupby("row_number", sort=True).agg(
        rule=("rule", "first"), reason=("reason", "; ".join), raw_record=("raw_record", "first")
    )
    return pd.concat(
        [whole_file[QUARANTINE_COLUMNS], merged.reset_index()[QUARANTINE_COLUMNS]], ignore_index=True
    )


@dataclass
class FileOutcome:
    """One landing file after the in-file contract: typed accepted rows and quarantine records."""

    uri: str
    accepted: pd.DataFrame
    quarantine: pd.DataFrame
    rows_in: int
    extras_columns: list[str]
    raw_record: Callable[[Sequence[int]], list[str | None]]


def validate_file(parsed: ParsedFile, source: Source, day: dt.date) -> FileOutcome:
    """Apply the file-level rules, typing and the pandera contract to one parsed landing file."""
    extras = [name for name in parsed.rows.columns if name not in source.columns]
    empty = _empty_accepted(source)
    if parsed.file_rule:
        records = quarantine_frame([(0, parsed.file_rule, parsed.file_reason, None)])
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
            parsed.uri, empty, one_per_row(quarantine), parsed.rows_in, extras, parsed.raw_record
        )
    if parsed.rows_in == 0:
        records = quarantine_frame([(0, "empty_file", "the file has a header but no data rows", None)])
        return FileOutcome(parsed.uri, empty, records, 0, extras, parsed.raw_record)
    typed, wrong = typed_columns(parsed.rows, source.columns)
    failures = _contract_failures(typed, source, day)
    accepted = typed.drop(index=failures["row_number"].unique())
    accepted["extras"] = extras_json(parsed.rows.loc[accepted.index, extras])
    quarantine = one_per_row(pd.concat([parsed.rejects, wrong, failures], ignore_index=True))
    return FileOutcome(parsed.uri, accepted, quarantine, parsed.rows_in, extras, parsed.raw_record)


def extras_json(frame: pd.DataFrame) -> pd.Series:
    """Columns outside the contract, kept per row as a JSON object (null when a file has none)."""
    if frame.shape[1] == 0 or frame.empty:
        return pd.Series(None, index=frame.index, dtype=object)
    return pd.Series(json_lines(frame), index=frame.index, dtype=object)


def _empty_accepted(source: Source) -> pd.DataFrame:
    columns = {name: pd.Series(dtype=KIND_DTYPES[kind]) for name, kind in source.columns.items()}
    return pd.DataFrame({**columns, "extras": pd.Series(dtype=object)}, index=pd.Index([], dtype="int64"))
