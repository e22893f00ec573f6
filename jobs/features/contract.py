"""The feature table's contract: what training and scoring may assume about every written partition.

Types, ranges (counts >= 0, customer counts >= 1 since the current transaction is in its own windows, flags
in {0, 1}, risks in [0, 1]), nested windows (a 1-day count never exceeds the 7-day one), no nulls, unique
transaction ids, the current feature-set version, and every row on the partition's own day. Checked with
pandas on the files as written (no Spark needed), so the check reads exactly what consumers will read.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pandera.pandas as pa

from jobs.features.definitions import FEATURE_COLUMNS, FEATURE_SET_VERSION, KEY_COLUMNS, WINDOWS_DAYS
from jobs.platform.layout import TRANSACTION_FEATURES, partition_uri
from jobs.platform.storage import exists, read_parquet


def _nested(prefix: str) -> pa.Check:
    """Counts over nested windows are nested: the w-day count never exceeds the next wider one."""
    pairs = list(itertools.pairwise(WINDOWS_DAYS))

    def nested(frame: pd.DataFrame) -> pd.Series:
        ok = pd.Series(True, index=frame.index)
        for narrow, wide in pairs:
            ok &= frame[f"{prefix}_nb_tx_{narrow}day_window"] <= frame[f"{prefix}_nb_tx_{wide}day_window"]
        return ok

    return pa.Check(nested, name=f"{prefix}_windows_nested")


def _columns() -> dict[str, pa.Column]:
    columns = {
        "transaction_id": pa.Column(np.int64, unique=True),
        "tx_datetime": pa.Column(pd.DatetimeTZDtype(unit="us", tz="UTC")),
        "customer_id": pa.Column(np.int64),
        "terminal_id": pa.Column(np.int64),
        "tx_amount": pa.Column(np.float64, pa.Check.ge(0)),
        "tx_during_weekend": pa.Column(np.int32, pa.Check.isin([0, 1])),
        "tx_during_night": pa.Column(np.int32, pa.Check.isin([0, 1])),
    }
    for w in WINDOWS_DAYS:
        columns[f"customer_id_nb_tx_{w}day_window"] = pa.Column(np.int64, pa.Check.ge(1))
        columns[f"customer_id_avg_amount_{w}day_window"] = pa.Column(np.float64, pa.Check.ge(0))
        columns[f"terminal_id_nb_tx_{w}day_window"] = pa.Column(np.int64, pa.Check.ge(0))
        columns[f"terminal_id_risk_{w}day_window"] = pa.Column(np.float64, pa.Check.in_range(0, 1))
        columns[f"customer_id_amount_ratio_{w}day_window"] = pa.Column(np.float64, pa.Check.ge(0))
        columns[f"terminal_id_nb_reported_frauds_{w}day_window"] = pa.Column(np.int64, pa.Check.ge(0))
    columns["feature_set_version"] = pa.Column(str, pa.Check.isin([FEATURE_SET_VERSION]))
    return {name: columns[name] for name in (*KEY_COLUMNS, *FEATURE_COLUMNS, "feature_set_version")}


FEATURE_SCHEMA = pa.DataFrameSchema(
    _columns(),
    checks=[_nested("customer_id"), _nested("terminal_id")],
    strict=True,
    coerce=False,
    name="transaction_features",
)
"""Every column non-nullable (pandera's default); no extra column allowed."""


def feature_schema_for_day(day: dt.date) -> pa.DataFrameSchema:
    """FEATURE_SCHEMA plus: every transaction lies on the partition's UTC day."""
    start = pd.Timestamp(day, tz="UTC")
    on_day = pa.Check(
        lambda stamps: (stamps >= start) & (stamps < start + pd.Timedelta(days=1)), name="on_partition_day"
    )
    return FEATURE_SCHEMA.update_column("tx_datetime", checks=[on_day])


def contract_failures(frame: pd.DataFrame, day: dt.date) -> pd.DataFrame:
    """Pandera's failure cases (column, check, index, failure_case), empty when the frame is valid."""
    try:
        feature_schema_for_day(day).validate(frame, lazy=True)
    except pa.errors.SchemaErrors as errors:
        return errors.failure_cases
    return pd.DataFrame(columns=["column", "check", "index", "failure_case"])


@dataclass
class ContractReport:
    """The outcome over a range of partitions: what was checked and, per failure, file, row and rule."""

    partitions: int = 0
    rows: int = 0
    failures: list[str] = field(default_factory=list)
    failure_count: int = 0

    @property
    def passed(self) -> bool:
        return self.failure_count == 0


def check_feature_partitions(lake: str, days: list[dt.date], max_messages: int = 20) -> ContractReport:
    """Validate each day's written feature partition; a missing partition is a failure, not a skip."""
    report = ContractReport()
    for day in days:
        uri = partition_uri(lake, TRANSACTION_FEATURES, day)
        if not exists(uri):
            report.failure_count += 1
            report.failures.append(f"{uri}: partition is missing (rule: one file per built day)")
            continue
        frame = read_parquet(uri).to_pandas()
        report.partitions += 1
        report.rows += len(frame)
        failures = contract_failures(frame, day)
        report.failure_count += len(failures)
        for case in failures.head(max(0, max_messages - len(report.failures))).itertuples():
            row = "file" if pd.isna(case.index) else f"row {int(case.index) + 1}"
            report.failures.append(
                f"{uri}, {row}, column {case.column}: rule {case.check} failed (value {case.failure_case!r})"
            )
    return report
