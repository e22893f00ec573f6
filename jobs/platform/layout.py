"""Where each dataset lives in the lake and the warehouse: the one place that names them.

Lake partitions are ``<lake>/<dataset>/date=YYYY-MM-DD/data.parquet``; a partition is always replaced whole.
"""

from __future__ import annotations

import datetime as dt
import re

from jobs.platform.storage import join

RAW_TRANSACTIONS = "raw/transactions"
RAW_FRAUD_REPORTS = "raw/fraud_reports"
QUARANTINE = "quarantine"
TRANSACTION_FEATURES = "features/transaction_features"
CUSTOMER_TILES = "feature_tiles/customers"
TERMINAL_TILES = "feature_tiles/terminals"
REPORT_TILES = "feature_tiles/reports"

LANDING_SOURCES = ("transactions", "fraud_reports")

SCORES_TABLE = "scoring.transaction_scores"

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_day(value: str) -> dt.date:
    """A partition key as a date; anything else (injection attempts included) is refused before use."""
    if not isinstance(value, str) or not _DAY.match(value):
        raise ValueError(f"partition key {value!r} is not a YYYY-MM-DD date")
    return dt.date.fromisoformat(value)


def partition_uri(lake: str, dataset: str, day: str | dt.date) -> str:
    key = day.isoformat() if isinstance(day, dt.date) else parse_day(day).isoformat()
    return join(lake, dataset, f"date={key}", "data.parquet")


def dataset_uri(lake: str, dataset: str) -> str:
    return join(lake, dataset)


def quarantine_uri(lake: str, source: str, day: str | dt.date) -> str:
    return partition_uri(lake, f"{QUARANTINE}/{source}", day)
