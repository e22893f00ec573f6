"""The vectorised path for clean files (jobs/ingest/columnar.py) against the row-by-row path it stands in for.

Every file here is ingested twice, through ``ingest_days`` with and without ``columnar``, into two lakes, and
the two must agree on everything a day produces: the accepted rows, the quarantine rows (row number, rule,
reason, raw record), the counts and the extra columns. The catalogue of bad files and a simulated range go
through both; so do edge cases picked to sit just inside or just outside what the vectorised path takes, and
for those the test also pins which path took the file, so the comparison is never vacuous.
"""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.ingest.boundary import read_regular_file
from jobs.ingest.columnar import clean_file_outcome
from jobs.ingest.contract import FRAUD_REPORTS, SOURCES, TRANSACTIONS
from jobs.ingest.day import DayResult, ingest_days
from jobs.ingest.landing import FORMATS, day_keys
from jobs.simulation.bad_files import CATALOGUE_DAYS, write_bad_file_catalogue
from jobs.simulation.simulator import SimulationConfig, simulate, write_landing

DAY = dt.date(2018, 4, 1)
NOW = dt.datetime(2018, 4, 2, 6, 0, tzinfo=dt.UTC)
HEADER = "transaction_id,tx_datetime,customer_id,terminal_id,tx_amount"


def ingest_both(landing: Path, lake_root: Path, days: list[dt.date]) -> dict[bool, list[DayResult]]:
    """Transactions then fraud reports over ``days`` (those with a file), once per path, each in its lake."""
    results: dict[bool, list[DayResult]] = {}
    for columnar in (True, False):
        lake = str(lake_root / ("columnar" if columnar else "row-by-row"))
        results[columnar] = []
        for source in (TRANSACTIONS, FRAUD_REPORTS):
            present = [d for d in days if day_keys(str(landing), source, d)]
            if present:
                results[columnar] += ingest_days(
                    str(landing), lake, source, present, "run-1", NOW, columnar=columnar
                )
    return results


def assert_same(results: dict[bool, list[DayResult]]) -> None:
    fast, slow = results[True], results[False]
    assert [(r.source, r.day) for r in fast] == [(r.source, r.day) for r in slow]
    for one, other in zip(fast, slow, strict=True):
        where = f"{one.source} {one.day}"
        assert one.accepted.equals(other.accepted), where
        assert one.quarantine.equals(other.quarantine), (where, one.quarantine, other.quarantine)
        assert one.rows_in == other.rows_in, where
        assert one.extras_columns == other.extras_columns, where
        places = {"partition", "quarantine"}
        assert {k: v for k, v in one.summary().items() if k not in places} == {
            k: v for k, v in other.summary().items() if k not in places
        }, where


def took_the_vectorised_path(landing: Path, source: str, name: str, day: dt.date) -> bool:
    data = read_regular_file(str(landing), f"{source}/{name}")
    return clean_file_outcome(f"{landing}/{source}/{name}", data, SOURCES[source], day) is not None


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_bad_file_catalogue_and_clean_days_ingest_the_same_through_both_paths(
    tmp_path: Path, fmt: str
) -> None:
    landing = tmp_path / "landing"
    config = SimulationConfig(customers=200, terminals=400, days=4, start=DAY)
    data = simulate(config)
    write_landing(data, str(landing), fmt)
    first_bad = config.end + dt.timedelta(days=1)
    ids = data.transactions.column("transaction_id").to_numpy()
    catalogue = write_bad_file_catalogue(str(landing), first_bad, ids, customers=200, terminals=400)
    days = [DAY + dt.timedelta(days=i) for i in range(config.days + CATALOGUE_DAYS)]

    results = ingest_both(landing, tmp_path, days)

    assert_same(results)
    rules = {rule for result in results[True] for rule in result.rules}
    assert {"malformed_row", "duplicate_id_across_files", "unknown_transaction", "non_utf8"} <= rules
    simulated = [DAY + dt.timedelta(days=i) for i in range(config.days)]
    assert all(took_the_vectorised_path(landing, TRANSACTIONS, f"{d}.{fmt}", d) for d in simulated)
    by_name = {entry.name: entry for entry in catalogue}
    clean = {"extra_column", "duplicate_id_across_files", "unknown_transaction"}
    for name, entry in by_name.items():
        if name.endswith("_name"):
            continue
        fast = took_the_vectorised_path(landing, entry.source, Path(entry.path).name, entry.day)
        assert fast == (name in clean), name


def csv(*lines: str, header: str = HEADER, end: str = "\n") -> bytes:
    return (end.join([header, *lines]) + end).encode()


def row(tx_id: int, when: str = "2018-04-01T10:00:00Z", amount: str = "12.50") -> str:
    return f"{tx_id},{when},{tx_id % 7},{tx_id % 11},{amount}"


GOOD = [row(i) for i in range(1, 6)]

CSV_CASES: dict[str, tuple[bytes, bool]] = {
    "plain": (csv(*GOOD), True),
    "crlf line ends": (csv(*GOOD, end="\r\n"), True),
    "byte order mark": (b"\xef\xbb\xbf" + csv(*GOOD), True),
    "no final newline": (csv(*GOOD)[:-1], True),
    "extra columns": (csv(*(r + ",web,ok" for r in GOOD), header=HEADER + ",channel,"), True),
    "columns in another order": (
        csv(*(",".join(reversed(r.split(","))) for r in GOOD), header=",".join(reversed(HEADER.split(",")))),
        True,
    ),
    "padded header names": (csv(*GOOD, header=HEADER.replace(",", " , ")), True),
    "a repeated column": (csv(*(r + ",9" for r in GOOD), header=HEADER + ",customer_id"), True),
    "ids with leading zeros": (csv(row(1), "000000000000000002,2018-04-01T10:00:00Z,1,1,1.00"), True),
    "amounts of one, two or no decimals": (csv(row(1, amount="12"), row(2, amount="3.5"), row(3)), True),
    "the day's first and last second": (
        csv(row(1, "2018-04-01T00:00:00Z"), row(2, "2018-04-01T23:59:59Z")),
        True,
    ),
    "thirteen-digit amount": (csv(row(1, amount="9999999999999.99")), True),
    "a blank line": (csv(GOOD[0], "", *GOOD[1:]), False),
    "a trailing blank line": (csv(*GOOD) + b"\n", False),
    "a carriage return inside a line": (csv(GOOD[0], GOOD[1].replace(",", ",\r", 1), *GOOD[2:]), False),
    "a quoted value": (csv(GOOD[0], GOOD[1].replace("12.50", '"12.50"'), *GOOD[2:]), False),
    "a quote spanning lines": (csv(GOOD[0], '2,"2018-04-01T10:00:00Z,3,4,5.00', *GOOD[2:]), False),
    "a leap second": (csv(row(1), row(2, "2018-04-01T12:00:60Z")), False),
    "30 February": (csv(row(1), row(2, "2018-02-30T12:00:00Z")), False),
    "hour 24": (csv(row(1), row(2, "2018-04-01T24:00:00Z")), False),
    "minute 60": (csv(row(1), row(2, "2018-04-01T10:60:00Z")), False),
    "day zero": (csv(row(1), row(2, "2018-04-00T10:00:00Z")), False),
    "an offset": (csv(row(1), row(2, "2018-04-01T12:00:00+00:00")), False),
    "fractional seconds": (csv(row(1), row(2, "2018-04-01T12:00:00.250Z")), False),
    "no zone": (csv(row(1), row(2, "2018-04-01T12:00:00")), False),
    "a nineteen-digit id": (csv(row(1), "1234567890123456789,2018-04-01T10:00:00Z,1,1,1.00"), False),
    "a signed id": (
        csv(row(1), "+2,2018-04-01T10:00:00Z,1,1,1.00", "-3,2018-04-01T10:00:00Z,1,1,1.00"),
        False,
    ),
    "spaces around a value": (csv(row(1), "2, 2018-04-01T10:00:00Z ,1,1, 1.00"), False),
    "an exponent": (csv(row(1), row(2, amount="1e3")), False),
    "three decimals": (csv(row(1), row(2, amount="12.500"), row(3, amount="1.005")), False),
    "a fourteen-digit amount": (csv(row(1, amount="12345678901234.5")), False),
    "an empty value": (csv(row(1), "2,2018-04-01T10:00:00Z,1,,1.00"), False),
    "a short row": (csv(row(1), "2,2018-04-01T10:00:00Z,1"), False),
    "not UTF-8": (csv(row(1) + ",ok", header=HEADER + ",note") + row(2).encode() + b",caf\xe9\n", False),
    "a negative amount": (csv(row(1), row(2, amount="-1.00")), False),
    "outside the day": (csv(row(1), row(2, "2018-04-02T00:00:00Z")), False),
    "a repeated id": (csv(row(1), row(2), row(1)), False),
    "a missing column": (csv("1,2018-04-01T10:00:00Z,1,1", header=HEADER.rsplit(",", 1)[0]), False),
    "header only": (csv(), False),
    "empty": (b"", False),
}


@pytest.mark.parametrize("name", list(CSV_CASES))
def test_edge_case_csv_files_ingest_the_same_through_both_paths(tmp_path: Path, name: str) -> None:
    content, vectorised = CSV_CASES[name]
    landing = tmp_path / "landing"
    (landing / TRANSACTIONS).mkdir(parents=True)
    (landing / TRANSACTIONS / f"{DAY}.csv").write_bytes(content)

    assert took_the_vectorised_path(landing, TRANSACTIONS, f"{DAY}.csv", DAY) == vectorised
    assert_same(ingest_both(landing, tmp_path, [DAY]))


def typed(**changes: pa.Array) -> pa.Table:
    n = 4
    stamps = pd.date_range("2018-04-01T01:00:00Z", periods=n, freq="3h")
    columns = {
        "transaction_id": pa.array(np.arange(1, n + 1), pa.int64()),
        "tx_datetime": pa.array(stamps, pa.timestamp("us", tz="UTC")),
        "customer_id": pa.array([5] * n, pa.int64()),
        "terminal_id": pa.array([7] * n, pa.int64()),
        "tx_amount": pa.array([1.25, 0.0, 99.99, 3.5]),
    }
    return pa.table({**columns, **changes})


PARQUET_CASES: dict[str, tuple[pa.Table, bool]] = {
    "typed": (typed(), True),
    "extra columns": (typed(channel=pa.array(["web", None, "pos", "web"])), True),
    "int32 ids": (typed(customer_id=pa.array([1, 2, 3, 4], pa.int32())), True),
    "naive timestamps": (typed(tx_datetime=pa.array(pd.date_range("2018-04-01", periods=4, freq="h"))), True),
    "another zone": (
        typed(
            tx_datetime=pa.array(pd.date_range("2018-04-01T05:00", periods=4, freq="h", tz="Europe/Paris"))
        ),
        True,
    ),
    "nanoseconds": (
        typed(tx_datetime=pa.array(pd.date_range("2018-04-01", periods=4, freq="1001ns", tz="UTC"))),
        True,
    ),
    "text columns": (typed(tx_amount=pa.array(["1.25", "2", "3.50", "4.1"])), True),
    "a text value that is not a number": (typed(tx_amount=pa.array(["1.25", "x", "3.50", "4.1"])), False),
    "a float id": (typed(terminal_id=pa.array([1.0, 2.5, 3.0, 4.0])), False),
    "a null": (typed(customer_id=pa.array([1, None, 3, 4], pa.int64())), False),
    "a NaN amount": (typed(tx_amount=pa.array([1.0, float("nan"), 3.0, 4.0])), False),
    "a sub-cent amount": (typed(tx_amount=pa.array([1.0, 1.005, 3.0, 4.0])), False),
    "a repeated id": (typed(transaction_id=pa.array([1, 2, 1, 4], pa.int64())), False),
    "no rows": (typed().slice(0, 0), False),
    "a missing column": (typed().drop_columns(["tx_amount"]), False),
}


@pytest.mark.parametrize("name", list(PARQUET_CASES))
def test_edge_case_parquet_files_ingest_the_same_through_both_paths(tmp_path: Path, name: str) -> None:
    table, vectorised = PARQUET_CASES[name]
    landing = tmp_path / "landing"
    (landing / TRANSACTIONS).mkdir(parents=True)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    (landing / TRANSACTIONS / f"{DAY}.parquet").write_bytes(sink.getvalue())

    assert took_the_vectorised_path(landing, TRANSACTIONS, f"{DAY}.parquet", DAY) == vectorised
    assert_same(ingest_both(landing, tmp_path, [DAY]))


def test_a_clean_file_flagged_across_files_keeps_its_raw_records(tmp_path: Path) -> None:
    """A clean file's raw records are built only when the lake flags a row, and match the row-by-row ones."""
    landing = tmp_path / "landing"
    (landing / TRANSACTIONS).mkdir(parents=True)
    later = DAY + dt.timedelta(days=1)
    (landing / TRANSACTIONS / f"{DAY}.csv").write_bytes(csv(*GOOD))
    (landing / TRANSACTIONS / f"{later}.csv").write_bytes(
        csv(row(3, "2018-04-02T08:00:00Z"), row(9, "2018-04-02T08:00:00Z"), end="\r\n")
    )

    results = ingest_both(landing, tmp_path, [DAY, later])

    assert_same(results)
    assert took_the_vectorised_path(landing, TRANSACTIONS, f"{later}.csv", later)
    (record,) = results[True][1].quarantine.to_pylist()
    assert record["row_number"] == 1 and record["rule"] == "duplicate_id_across_files"
    assert record["raw_record"] == row(3, "2018-04-02T08:00:00Z")
