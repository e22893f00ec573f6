"""The landing contract as pandera models, its quarantine rules, and the lake's raw and quarantine schemas.

The contract is described in docs/architecture.md (landing contract). Values reach the models already parsed
(jobs/ingest/typing_rules.py turns text into typed columns and quarantines what does not parse as
``wrong_type``); the models then say what a typed value can still get wrong. Each check is named after its
quarantine rule id, so a pandera failure case maps straight onto a quarantine row. ``SOURCES`` ties each
landing source to its columns, model and lake schema.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow
from pandera.typing import Series

from jobs.platform.layout import RAW_FRAUD_REPORTS, RAW_TRANSACTIONS

RULES: dict[str, str] = {
    "symlink": "a symbolic link where a landing file should be: never followed, nothing read",
    "not_a_regular_file": "a directory, FIFO, device or socket where a landing file should be: never opened",
    "unreadable_file": "the file cannot be read at all",
    "truncated_parquet": "a Parquet file cut short (no footer)",
    "empty_file": "no data rows",
    "missing_column": "a contract column is absent: the whole file is rejected",
    "malformed_row": "wrong field count or an unparseable CSV line",
    "non_utf8": "a line that is not valid UTF-8",
    "wrong_type": "a value that does not parse as its column's type (or is empty)",
    "negative_amount": "tx_amount below zero",
    "amount_precision": "tx_amount with more than 2 decimal places",
    "outside_file_day": "a timestamp outside the UTC day the file is named after",
    "duplicate_id_in_file": "a transaction_id repeated in the file (the first copy is kept)",
    "duplicate_id_across_files": "a transaction_id already accepted in another partition",
    "unknown_transaction": "a fraud report for a transaction not in the lake on or before the report's day",
    "report_before_transaction": "a fraud report dated before its transaction",
}
"""Every quarantine rule id, in precedence order: a row failing several rules is filed under the first."""

RULE_RANK = {rule: rank for rank, rule in enumerate(RULES)}

TRANSACTION_COLUMNS: dict[str, str] = {
    "transaction_id": "int64",
    "tx_datetime": "timestamp",
    "customer_id": "int64",
    "terminal_id": "int64",
    "tx_amount": "amount",
}
FRAUD_REPORT_COLUMNS: dict[str, str] = {"transaction_id": "int64", "reported_at": "timestamp"}

AMOUNT_TOLERANCE = 1e-6
"""Cents must be whole within this (absorbs binary floating point; 9+ decimal digits of dust pass)."""


class LandingTransactions(pa.DataFrameModel):
    """One row of ``transactions/YYYY-MM-DD.*`` once parsed; extra columns are allowed (kept as JSON)."""

    transaction_id: Series[np.int64]
    tx_datetime: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs={"unit": "ns", "tz": "UTC"})
    customer_id: Series[np.int64]
    terminal_id: Series[np.int64]
    tx_amount: Series[np.float64]

    class Config:
        strict = False
        coerce = False

    @pa.check("tx_amount", name="negative_amount")
    def _not_negative(cls, amount: Series[float]) -> Series[bool]:
        return amount >= 0

    @pa.check("tx_amount", name="amount_precision")
    def _two_decimals(cls, amount: Series[float]) -> Series[bool]:
        cents = amount * 100
        return (cents - cents.round()).abs() < AMOUNT_TOLERANCE

    @pa.check("transaction_id", name="duplicate_id_in_file")
    def _first_copy(cls, ids: Series[int]) -> Series[bool]:
        return ~ids.duplicated(keep="first")


class LandingFraudReports(pa.DataFrameModel):
    """One row of ``fraud_reports/YYYY-MM-DD.*`` once parsed: a confirmed fraud, reported that day."""

    transaction_id: Series[np.int64]
    reported_at: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs={"unit": "ns", "tz": "UTC"})

    class Config:
        strict = False
        coerce = False

    @pa.check("transaction_id", name="duplicate_id_in_file")
    def _first_copy(cls, ids: Series[int]) -> Series[bool]:
        return ~ids.duplicated(keep="first")


def file_day_check(day: dt.date) -> pa.Check:
    """``outside_file_day``: the file's name is its day, so its timestamps must fall in that UTC day."""
    start = pd.Timestamp(day, tz="UTC")
    end = start + pd.Timedelta(days=1)
    return pa.Check(lambda stamps: (stamps >= start) & (stamps < end), name="outside_file_day")


def schema_for_day(model: type[pa.DataFrameModel], timestamp_column: str, day: dt.date) -> pa.DataFrameSchema:
    """The model's schema plus ``outside_file_day`` on its timestamp column."""
    schema = model.to_schema()
    checks = [*schema.columns[timestamp_column].checks, file_day_check(day)]
    return schema.update_column(timestamp_column, checks=checks)


def checks_for_day(
    model: type[pa.DataFrameModel], timestamp_column: str, day: dt.date
) -> list[tuple[str | None, pa.Check]]:
    """The checks of ``schema_for_day``, each with its column (None for the whole frame), without building
    that schema (a deep copy of the model's)."""
    schema = model.to_schema()
    checks = [(name, check) for name, column in schema.columns.items() for check in column.checks]
    checks += [(None, check) for check in schema.checks]
    return [*checks, (timestamp_column, file_day_check(day))]


_LINEAGE = [
    pyarrow.field("extras", pyarrow.string()),
    pyarrow.field("source_file", pyarrow.string()),
    pyarrow.field("ingest_run_id", pyarrow.string()),
]
_UTC_US = pyarrow.timestamp("us", tz="UTC")

RAW_TRANSACTIONS_SCHEMA = pyarrow.schema(
    [
        pyarrow.field("transaction_id", pyarrow.int64()),
        pyarrow.field("tx_datetime", _UTC_US),
        pyarrow.field("customer_id", pyarrow.int64()),
        pyarrow.field("terminal_id", pyarrow.int64()),
        pyarrow.field("tx_amount", pyarrow.float64()),
        *_LINEAGE,
    ]
)
RAW_FRAUD_REPORTS_SCHEMA = pyarrow.schema(
    [pyarrow.field("transaction_id", pyarrow.int64()), pyarrow.field("reported_at", _UTC_US), *_LINEAGE]
)
QUARANTINE_SCHEMA = pyarrow.schema(
    [
        pyarrow.field("source_file", pyarrow.string()),
        pyarrow.field("row_number", pyarrow.int64()),
        pyarrow.field("rule", pyarrow.string()),
        pyarrow.field("reason", pyarrow.string()),
        pyarrow.field("raw_record", pyarrow.string()),
        pyarrow.field("ingest_run_id", pyarrow.string()),
        pyarrow.field("quarantined_at", _UTC_US),
    ]
)


TRANSACTIONS = "transactions"
FRAUD_REPORTS = "fraud_reports"


@dataclass(frozen=True)
class Source:
    """What differs between the two landing sources."""

    name: str
    dataset: str
    columns: dict[str, str]
    model: type[pa.DataFrameModel]
    timestamp_column: str
    lake_schema: pyarrow.Schema
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
