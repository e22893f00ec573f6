"""A catalogue of bad landing files, one per producer fault of DESIGN.md §2, for ingestion tests and demos.

Each file is what a careless or hostile producer could drop. Where the fault is in a row, the file is mostly
good (20 good rows) with a few bad rows among them: the good rows must be accepted and only the bad rows
quarantined. Where the fault is the file itself, the whole file is quarantined (one record, ``row_number`` 0).
Entry k lives on day D+k (D = ``day``, normally the day after the simulated range), so it never replaces a
good delivery or another entry; every row of entry k is timestamped on day D+k.

| k | name = expected rule | file | fault | expected outcome |
| --- | --- | --- | --- | --- |
| 0 | malformed_row | tx/D+0.csv | row 4 has 4 fields, row 12 has 6 | rows 4, 12 out; 20 in |
| 1 | wrong_type | tx/D+1.csv | id `TX-0042` (row 3), amount `N/A` (9), | rows 3, 9, 15, 18 out; |
| | | | hour 25 (15), customer `4.5` (18) | 20 in |
| 2 | missing_column | tx/D+2.csv | no `tx_amount` column | whole file out (20 rows) |
| 3 | extra_column | tx/D+3.csv | an extra `merchant_category` column | accepted, extras kept: 20 in |
| 4 | duplicate_id_in_file | tx/D+4.csv | row 11 repeats row 2; row 18 reuses row 7's id | rows 11, 18 out; |
| | | | | 20 in |
| 5 | duplicate_id_across_files | tx/D+5.csv | row 6 reuses an id of an earlier file | row 6 out; 20 in |
| 6 | negative_amount | tx/D+6.csv | `-12.50` (row 5), `-0.01` (16); a good `0.00` | rows 5, 16 out; 20 in |
| 7 | outside_file_day | tx/D+7.csv | row 2 the second before the day, row 22 the | rows 2, 22 out; 20 in |
| | | | midnight after; good rows at 00:00:00, 23:59:59 | |
| 8 | empty_file | tx/D+8.csv | zero bytes | whole file out (0 rows) |
| 9 | non_utf8 | tx/D+9.csv | row 8 ends in byte 0xA0 (Latin-1 no-break space) | row 8 out; 20 in |
| 10 | bad_file_name | tx/latest.csv | not a date (rows dated D+10) | whole file out (20 rows) |
| 11 | path_traversal_name | tx/..D+11.csv | starts with `..` (rows dated D+11) | whole file out (20 rows) |
| 12 | truncated_parquet | tx/D+12.parquet | 20-row Parquet cut to half its bytes | whole file out (20 rows) |
| 13 | unknown_transaction | fr/D+13.csv | rows 2, 5 report ids no transaction has; | rows 2, 5 out; 3 in |
| | | | rows 1, 3, 4 report good rows of entries 7, 9 | |

``tx/`` is ``transactions/`` and ``fr/`` is ``fraud_reports/`` under the landing root; D+k is the date.
Row numbers are 1-based data rows (the header is not a row). ``duplicate_id_in_file`` keeps the first
occurrence. ``duplicate_id_across_files`` reuses one of ``existing_ids`` (the simulated transactions) when
given, else the first id of entry 0. ``unknown_transaction`` expects the transaction files of entries 7 and 9
ingested first. ``BadFile`` carries the exact counts and row numbers for tests to assert.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from jobs.platform.storage import join
from jobs.simulation.simulator import (
    DAY_SECONDS,
    FRAUD_REPORT_COLUMNS,
    TRANSACTION_COLUMNS,
    write_file_atomic,
)

Source = Literal["transactions", "fraud_reports"]

GOOD_ROWS = 20
RULES = (
    "malformed_row",
    "wrong_type",
    "missing_column",
    "extra_column",
    "duplicate_id_in_file",
    "duplicate_id_across_files",
    "negative_amount",
    "outside_file_day",
    "empty_file",
    "non_utf8",
    "bad_file_name",
    "path_traversal_name",
    "truncated_parquet",
    "unknown_transaction",
)
CATALOGUE_DAYS = len(RULES)


@dataclass(frozen=True)
class BadFile:
    """One catalogued file and what ingestion must do with it; ``day`` is the day its rows are dated."""

    name: str
    source: Source
    path: str
    day: dt.date
    fault: str
    expected_rule: str
    expected_outcome: str
    rows: int
    bad_rows: tuple[int, ...] = ()
    whole_file: bool = False

    @property
    def expected_rejected_rows(self) -> int:
        return self.rows if self.whole_file else len(self.bad_rows)

    @property
    def expected_accepted_rows(self) -> int:
        return self.rows - self.expected_rejected_rows


def write_bad_file_catalogue(
    landing: str,
    day: dt.date,
    existing_ids: Sequence[int] | np.ndarray | None = None,
    *,
    customers: int = 5_000,
    terminals: int = 10_000,
    seed: int = 0,
) -> list[BadFile]:
    """Write the catalogue under ``landing`` from ``day`` on (entry k on day + k) and describe each file."""
    existing = np.asarray(existing_ids if existing_ids is not None else [], dtype=np.int64)
    maker = _Maker(
        rng=np.random.default_rng(seed),
        next_id=int(existing.max()) + 1 if existing.size else 0,
        customers=customers,
        terminals=terminals,
    )
    days = [day + dt.timedelta(days=k) for k in range(CATALOGUE_DAYS)]
    entries: list[tuple[BadFile, bytes]] = []

    def add(
        k: int,
        name: str,
        fault: str,
        outcome: str,
        payload: bytes,
        rows: int,
        bad_rows: tuple[int, ...] = (),
        whole_file: bool = False,
        source: Source = "transactions",
        file_name: str | None = None,
    ) -> None:
        path = join(landing, source, file_name or f"{days[k].isoformat()}.csv")
        bad = BadFile(name, source, path, days[k], fault, name, outcome, rows, bad_rows, whole_file)
        entries.append((bad, payload))

    good = maker.rows(days[0])
    first_id = good[0][0]
    bad = {4: maker.row(days[0])[:4], 12: [*maker.row(days[0]), "EUR"]}
    add(
        0,
        "malformed_row",
        "row 4 has 4 fields, row 12 has 6",
        "rows 4, 12 quarantined",
        _csv(good, bad),
        rows=22,
        bad_rows=(4, 12),
    )

    good = maker.rows(days[1])
    bad = {
        3: _set(maker.row(days[1]), 0, "TX-0042"),
        9: _set(maker.row(days[1]), 4, "N/A"),
        15: _set(maker.row(days[1]), 1, f"{days[1].isoformat()}T25:61:00Z"),
        18: _set(maker.row(days[1]), 2, "4.5"),
    }
    add(
        1,
        "wrong_type",
        "an id, an amount, a timestamp and a customer id that are not of their type",
        "rows 3, 9, 15, 18 quarantined",
        _csv(good, bad),
        rows=24,
        bad_rows=(3, 9, 15, 18),
    )

    good = maker.rows(days[2])
    add(
        2,
        "missing_column",
        "no tx_amount column",
        "whole file quarantined",
        _csv([r[:4] for r in good], {}, header=TRANSACTION_COLUMNS[:4]),
        rows=20,
        whole_file=True,
    )

    categories = ("grocery", "fuel", "travel", "online", "restaurant")
    good = [[*r, categories[i % len(categories)]] for i, r in enumerate(maker.rows(days[3]))]
    add(
        3,
        "extra_column",
        "an extra merchant_category column",
        "accepted, extras kept: all 20 rows, merchant_category in extras",
        _csv(good, {}, header=(*TRANSACTION_COLUMNS, "merchant_category")),
        rows=20,
    )

    good = maker.rows(days[4])
    conflicting = maker.row(days[4], at_second=DAY_SECONDS - 2)
    conflicting[0] = good[6][0]
    bad = {11: list(good[1]), 18: conflicting}
    add(
        4,
        "duplicate_id_in_file",
        "row 11 repeats row 2; row 18 reuses row 7's id with other values",
        "rows 11, 18 quarantined, first occurrences kept",
        _csv(good, bad),
        rows=22,
        bad_rows=(11, 18),
    )

    good = maker.rows(days[5])
    reused = maker.row(days[5])
    reused[0] = str(int(existing[existing.size // 2]) if existing.size else first_id)
    add(
        5,
        "duplicate_id_across_files",
        f"row 6 reuses transaction_id {reused[0]} of an earlier file",
        "row 6 quarantined",
        _csv(good, {6: reused}),
        rows=21,
        bad_rows=(6,),
    )

    good = maker.rows(days[6])
    good[9][4] = "0.00"
    bad = {
        5: _set(maker.row(days[6]), 4, "-12.50"),
        16: _set(maker.row(days[6]), 4, "-0.01"),
    }
    add(
        6,
        "negative_amount",
        "two negative amounts (a zero amount among the good rows)",
        "rows 5, 16 quarantined",
        _csv(good, bad),
        rows=22,
        bad_rows=(5, 16),
    )

    good = maker.rows(days[7], first_second=0, last_second=DAY_SECONDS - 1)
    report_targets = [good[0][0], good[10][0]]
    bad = {
        2: _set(maker.row(days[7]), 1, _iso(days[7] - dt.timedelta(days=1), DAY_SECONDS - 1)),
        22: _set(maker.row(days[7]), 1, _iso(days[7] + dt.timedelta(days=1), 0)),
    }
    add(
        7,
        "outside_file_day",
        "rows one second before and at midnight after the file's day",
        "rows 2, 22 quarantined",
        _csv(good, bad),
        rows=22,
        bad_rows=(2, 22),
    )

    add(8, "empty_file", "zero bytes", "whole file quarantined", b"", rows=0, whole_file=True)

    good = maker.rows(days[9])
    report_targets.append(good[3][0])
    lines = _csv(good, {}).split(b"\n")
    lines.insert(8, ",".join(maker.row(days[9])).encode() + b"\xa0")
    add(
        9,
        "non_utf8",
        "row 8 ends in byte 0xA0 (a Latin-1 no-break space)",
        "row 8 quarantined",
        b"\n".join(lines),
        rows=21,
        bad_rows=(8,),
    )

    add(
        10,
        "bad_file_name",
        "file name is not a date",
        "whole file quarantined",
        _csv(maker.rows(days[10]), {}),
        rows=20,
        whole_file=True,
        file_name="latest.csv",
    )

    add(
        11,
        "path_traversal_name",
        "file name starts with '..'",
        "whole file quarantined",
        _csv(maker.rows(days[11]), {}),
        rows=20,
        whole_file=True,
        file_name=f"..{days[11].isoformat()}.csv",
    )

    parquet = _parquet(maker.rows(days[12]))
    add(
        12,
        "truncated_parquet",
        "a 20-row Parquet file cut to half its bytes",
        "whole file quarantined",
        parquet[: len(parquet) // 2],
        rows=20,
        whole_file=True,
        file_name=f"{days[12].isoformat()}.parquet",
    )

    unknown = [str(maker.next_id + 1_000_000), str(maker.next_id + 2_000_000)]
    reports = [
        [report_targets[0], _iso(days[13], 3_600)],
        [unknown[0], _iso(days[13], 4_000)],
        [report_targets[1], _iso(days[13], 5_000)],
        [report_targets[2], _iso(days[13], 6_000)],
        [unknown[1], _iso(days[13], 7_000)],
    ]
    add(
        13,
        "unknown_transaction",
        f"rows 2 and 5 report transactions {unknown[0]} and {unknown[1]}, which do not exist",
        "rows 2, 5 quarantined",
        _csv(reports, {}, header=FRAUD_REPORT_COLUMNS),
        rows=5,
        bad_rows=(2, 5),
        source="fraud_reports",
    )

    for entry, payload in entries:
        write_file_atomic(entry.path, payload)
    return [entry for entry, _ in entries]


@dataclass
class _Maker:
    """Good rows with fresh, increasing ids and timestamps inside their day."""

    rng: np.random.Generator
    next_id: int
    customers: int
    terminals: int

    def rows(
        self,
        day: dt.date,
        n: int = GOOD_ROWS,
        first_second: int | None = None,
        last_second: int | None = None,
    ) -> list[list[str]]:
        seconds = np.sort(self.rng.integers(1, DAY_SECONDS - 1, size=n))
        if first_second is not None:
            seconds[0] = first_second
        if last_second is not None:
            seconds[-1] = last_second
        return [self.row(day, at_second=int(s)) for s in seconds]

    def row(self, day: dt.date, at_second: int | None = None) -> list[str]:
        second = int(self.rng.integers(1, DAY_SECONDS - 1)) if at_second is None else at_second
        row = [
            str(self.next_id),
            _iso(day, second),
            str(int(self.rng.integers(0, self.customers))),
            str(int(self.rng.integers(0, self.terminals))),
            f"{self.rng.uniform(1, 150):.2f}",
        ]
        self.next_id += 1
        return row


def _iso(day: dt.date, second: int) -> str:
    moment = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC) + dt.timedelta(seconds=second)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _set(row: list[str], index: int, value: str) -> list[str]:
    row[index] = value
    return row


def _csv(
    good: list[list[str]], bad: dict[int, list[str]], header: Sequence[str] = TRANSACTION_COLUMNS
) -> bytes:
    """``good`` rows with ``bad`` rows inserted at their 1-based data-row numbers."""
    rows = [list(r) for r in good]
    for number in sorted(bad):
        rows.insert(number - 1, bad[number])
    return ("\n".join([",".join(header), *(",".join(r) for r in rows)]) + "\n").encode()


def _parquet(rows: list[list[str]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = list(zip(*rows, strict=True))
    table = pa.table(
        {
            "transaction_id": pa.array([int(v) for v in columns[0]], pa.int64()),
            "tx_datetime": pa.array(
                [dt.datetime.fromisoformat(v) for v in columns[1]], pa.timestamp("us", tz="UTC")
            ),
            "customer_id": pa.array([int(v) for v in columns[2]], pa.int64()),
            "terminal_id": pa.array([int(v) for v in columns[3]], pa.int64()),
            "tx_amount": pa.array([float(v) for v in columns[4]], pa.float64()),
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()
