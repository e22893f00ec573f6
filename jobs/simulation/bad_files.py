"""A catalogue of bad landing files, one per producer fault of the landing contract, for ingestion tests and
demos (the contract: ``docs/architecture.md``, landing contract).

Each file is what a careless or hostile producer could drop. Where the fault is in a row, the file is mostly
good (20 good rows) with a few bad rows among them: the good rows must be accepted and only the bad rows
quarantined. Where the fault is the file itself, the whole file is quarantined (one record, ``row_number`` 0).

``CATALOGUE`` is the table: one ``Fault`` per row, in order. Entry k lives on day D+k (D = ``day``, normally
the day after the simulated range), so it never replaces a good delivery or another entry, and every row of
entry k is dated D+k. A fault's name is the rule ingestion must report (``bad_file_name`` and
``path_traversal_name`` never reach ingestion: the sensor quarantines the file as misnamed). Row numbers are
1-based data rows (the header is not a row). Adding a fault is adding one row and its builder.

The builders share one random generator and draw from it in table order, so the same seed writes the same
bytes. ``duplicate_id_across_files`` reuses one of ``existing_ids`` (the simulated transactions) when given,
else the first id of ``malformed_row``; ``unknown_transaction`` reports good rows of ``outside_file_day`` and
``non_utf8``, so it expects their transaction files ingested first.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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


@dataclass
class _Context:
    """What the builders share: the row maker, the existing ids, and what earlier entries leave for later
    ones (``facts`` fill the placeholders of a fault's description)."""

    maker: _Maker
    existing: np.ndarray
    first_id: str = ""
    report_targets: list[str] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)


Builder = Callable[[_Context, dt.date], bytes]


@dataclass(frozen=True)
class Fault:
    """One row of the catalogue: a producer fault, where its file goes, and what ingestion must make of it.

    ``name`` is also the rule ingestion must report; ``file_name`` and ``fault`` are templates (``{day}`` is
    the entry's day, other placeholders come from the builder's ``facts``).
    """

    name: str
    fault: str
    outcome: str
    rows: int
    build: Builder
    bad_rows: tuple[int, ...] = ()
    whole_file: bool = False
    source: Source = "transactions"
    file_name: str = "{day}.csv"


def _malformed_row(c: _Context, day: dt.date) -> bytes:
    good = c.maker.rows(day)
    c.first_id = good[0][0]
    return _csv(good, {4: c.maker.row(day)[:4], 12: [*c.maker.row(day), "EUR"]})


def _wrong_type(c: _Context, day: dt.date) -> bytes:
    good = c.maker.rows(day)
    bad = {
        3: _set(c.maker.row(day), 0, "TX-0042"),
        9: _set(c.maker.row(day), 4, "N/A"),
        15: _set(c.maker.row(day), 1, f"{day.isoformat()}T25:61:00Z"),
        18: _set(c.maker.row(day), 2, "4.5"),
    }
    return _csv(good, bad)


def _missing_column(c: _Context, day: dt.date) -> bytes:
    return _csv([r[:4] for r in c.maker.rows(day)], {}, header=TRANSACTION_COLUMNS[:4])


def _extra_column(c: _Context, day: dt.date) -> bytes:
    categories = ("grocery", "fuel", "travel", "online", "restaurant")
    good = [[*r, categories[i % len(categories)]] for i, r in enumerate(c.maker.rows(day))]
    return _csv(good, {}, header=(*TRANSACTION_COLUMNS, "merchant_category"))


def _duplicate_id_in_file(c: _Context, day: dt.date) -> bytes:
    good = c.maker.rows(day)
    conflicting = c.maker.row(day, at_second=DAY_SECONDS - 2)
    conflicting[0] = good[6][0]
    return _csv(good, {11: list(good[1]), 18: conflicting})


def _duplicate_id_across_files(c: _Context, day: dt.date) -> bytes:
    good = c.maker.rows(day)
    reused = c.maker.row(day)
    reused[0] = str(int(c.existing[c.existing.size // 2])) if c.existing.size else c.first_id
    c.facts["reused"] = reused[0]
    return _csv(good, {6: reused})


def _negative_amount(c: _Context, day: dt.date) -> bytes:
    good = c.maker.rows(day)
    good[9][4] = "0.00"
    return _csv(good, {5: _set(c.maker.row(day), 4, "-12.50"), 16: _set(c.maker.row(day), 4, "-0.01")})


def _outside_file_day(c: _Context, day: dt.date) -> bytes:
    good = c.maker.rows(day, first_second=0, last_second=DAY_SECONDS - 1)
    c.report_targets.extend([good[0][0], good[10][0]])
    bad = {
        2: _set(c.maker.row(day), 1, _iso(day - dt.timedelta(days=1), DAY_SECONDS - 1)),
        22: _set(c.maker.row(day), 1, _iso(day + dt.timedelta(days=1), 0)),
    }
    return _csv(good, bad)


def _empty_file(c: _Context, day: dt.date) -> bytes:
    return b""


def _non_utf8(c: _Context, day: dt.date) -> bytes:
    good = c.maker.rows(day)
    c.report_targets.append(good[3][0])
    lines = _csv(good, {}).split(b"\n")
    lines.insert(8, ",".join(c.maker.row(day)).encode() + b"\xa0")
    return b"\n".join(lines)


def _good_csv(c: _Context, day: dt.date) -> bytes:
    return _csv(c.maker.rows(day), {})


def _truncated_parquet(c: _Context, day: dt.date) -> bytes:
    parquet = _parquet(c.maker.rows(day))
    return parquet[: len(parquet) // 2]


def _unknown_transaction(c: _Context, day: dt.date) -> bytes:
    unknown = [str(c.maker.next_id + 1_000_000), str(c.maker.next_id + 2_000_000)]
    c.facts.update(unknown_1=unknown[0], unknown_2=unknown[1])
    reports = [
        [c.report_targets[0], _iso(day, 3_600)],
        [unknown[0], _iso(day, 4_000)],
        [c.report_targets[1], _iso(day, 5_000)],
        [c.report_targets[2], _iso(day, 6_000)],
        [unknown[1], _iso(day, 7_000)],
    ]
    return _csv(reports, {}, header=FRAUD_REPORT_COLUMNS)


WHOLE_FILE = "whole file quarantined"

CATALOGUE: tuple[Fault, ...] = (
    Fault(
        "malformed_row",
        "row 4 has 4 fields, row 12 has 6",
        "rows 4, 12 quarantined",
        rows=22,
        bad_rows=(4, 12),
        build=_malformed_row,
    ),
    Fault(
        "wrong_type",
        "id TX-0042 (row 3), amount N/A (row 9), hour 25 (row 15) and customer id 4.5 (row 18)",
        "rows 3, 9, 15, 18 quarantined",
        rows=24,
        bad_rows=(3, 9, 15, 18),
        build=_wrong_type,
    ),
    Fault(
        "missing_column", "no tx_amount column", WHOLE_FILE, rows=20, whole_file=True, build=_missing_column
    ),
    Fault(
        "extra_column",
        "an extra merchant_category column",
        "accepted, extras kept: all 20 rows, merchant_category in extras",
        rows=20,
        build=_extra_column,
    ),
    Fault(
        "duplicate_id_in_file",
        "row 11 repeats row 2; row 18 reuses row 7's id with other values",
        "rows 11, 18 quarantined, first occurrences kept",
        rows=22,
        bad_rows=(11, 18),
        build=_duplicate_id_in_file,
    ),
    Fault(
        "duplicate_id_across_files",
        "row 6 reuses transaction_id {reused} of an earlier file",
        "row 6 quarantined",
        rows=21,
        bad_rows=(6,),
        build=_duplicate_id_across_files,
    ),
    Fault(
        "negative_amount",
        "-12.50 (row 5) and -0.01 (row 16); a zero amount among the good rows",
        "rows 5, 16 quarantined",
        rows=22,
        bad_rows=(5, 16),
        build=_negative_amount,
    ),
    Fault(
        "outside_file_day",
        "row 2 one second before the file's day, row 22 at the midnight after; good rows at 00:00:00 and "
        "23:59:59",
        "rows 2, 22 quarantined",
        rows=22,
        bad_rows=(2, 22),
        build=_outside_file_day,
    ),
    Fault("empty_file", "zero bytes", WHOLE_FILE, rows=0, whole_file=True, build=_empty_file),
    Fault(
        "non_utf8",
        "row 8 ends in byte 0xA0 (a Latin-1 no-break space)",
        "row 8 quarantined",
        rows=21,
        bad_rows=(8,),
        build=_non_utf8,
    ),
    Fault(
        "bad_file_name",
        "file name is not a date",
        WHOLE_FILE,
        rows=20,
        whole_file=True,
        file_name="latest.csv",
        build=_good_csv,
    ),
    Fault(
        "path_traversal_name",
        "file name starts with '..'",
        WHOLE_FILE,
        rows=20,
        whole_file=True,
        file_name="..{day}.csv",
        build=_good_csv,
    ),
    Fault(
        "truncated_parquet",
        "a 20-row Parquet file cut to half its bytes",
        WHOLE_FILE,
        rows=20,
        whole_file=True,
        file_name="{day}.parquet",
        build=_truncated_parquet,
    ),
    Fault(
        "unknown_transaction",
        "rows 2 and 5 report transactions {unknown_1} and {unknown_2}, which do not exist; rows 1, 3 and 4 "
        "report good rows of outside_file_day and non_utf8",
        "rows 2, 5 quarantined",
        rows=5,
        bad_rows=(2, 5),
        source="fraud_reports",
        build=_unknown_transaction,
    ),
)
RULES = tuple(fault.name for fault in CATALOGUE)
CATALOGUE_DAYS = len(CATALOGUE)


def write_bad_file_catalogue(
    landing: str,
    day: dt.date,
    existing_ids: Sequence[int] | np.ndarray | None = None,
    *,
    customers: int = 5_000,
    terminals: int = 10_000,
    seed: int = 0,
) -> list[BadFile]:
    """Write the catalogue under ``landing`` from ``day`` on (entry k on day + k) and describe each file.

    Every payload is built before the first write, so a builder that fails leaves no partial catalogue.
    """
    existing = np.asarray(existing_ids if existing_ids is not None else [], dtype=np.int64)
    maker = _Maker(
        rng=np.random.default_rng(seed),
        next_id=int(existing.max()) + 1 if existing.size else 0,
        customers=customers,
        terminals=terminals,
    )
    context = _Context(maker=maker, existing=existing)
    entries: list[tuple[BadFile, bytes]] = []
    for k, fault in enumerate(CATALOGUE):
        entry_day = day + dt.timedelta(days=k)
        payload = fault.build(context, entry_day)
        file_name = fault.file_name.format(day=entry_day.isoformat())
        entry = BadFile(
            name=fault.name,
            source=fault.source,
            path=join(landing, fault.source, file_name),
            day=entry_day,
            fault=fault.fault.format_map(context.facts),
            expected_rule=fault.name,
            expected_outcome=fault.outcome,
            rows=fault.rows,
            bad_rows=fault.bad_rows,
            whole_file=fault.whole_file,
        )
        entries.append((entry, payload))
    for entry, payload in entries:
        write_file_atomic(entry.path, payload)
    return [entry for entry, _ in entries]


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
