"""The bad-file catalogue: one file per fault, each holding exactly the bad rows it declares."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.simulation.bad_files import (
    CATALOGUE,
    CATALOGUE_DAYS,
    GOOD_ROWS,
    RULES,
    BadFile,
    write_bad_file_catalogue,
)
from jobs.simulation.simulator import FRAUD_REPORT_COLUMNS, TRANSACTION_COLUMNS

FIRST_DAY = dt.date(2018, 10, 1)
EXISTING_IDS = np.arange(0, 5_000, dtype=np.int64)
CLEAN_NAME = re.compile(r"\d{4}-\d{2}-\d{2}\.(csv|parquet)")
ROW_LEVEL = {
    "malformed_row",
    "wrong_type",
    "duplicate_id_in_file",
    "duplicate_id_across_files",
    "negative_amount",
    "outside_file_day",
    "non_utf8",
}


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BadFile]:
    root = tmp_path_factory.mktemp("landing")
    return {b.name: b for b in write_bad_file_catalogue(str(root), FIRST_DAY, EXISTING_IDS)}


def _lines(entry: BadFile) -> list[bytes]:
    return Path(entry.path).read_bytes().splitlines()


def _strict_rule(raw: bytes, day: dt.date, width: int, seen: set[int]) -> str | None:
    """An independent strict reading of one transaction row: the rule it breaks, or None."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "non_utf8"
    fields = text.split(",")
    if len(fields) != width:
        return "malformed_row"
    tx_id, stamp, customer, terminal, amount = fields[:5]
    if not all(re.fullmatch(r"\d+", v) for v in (tx_id, customer, terminal)):
        return "wrong_type"
    if not re.fullmatch(r"-?\d+\.\d{2}", amount):
        return "wrong_type"
    try:
        moment = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return "wrong_type"
    if float(amount) < 0:
        return "negative_amount"
    if moment.date() != day:
        return "outside_file_day"
    if int(tx_id) in seen:
        return "duplicate_id_in_file"
    seen.add(int(tx_id))
    if int(tx_id) in EXISTING_IDS:
        return "duplicate_id_across_files"
    return None


def _strict_reading(entry: BadFile, extra_columns: int = 0) -> dict[int, str]:
    lines = _lines(entry)
    header = lines[0].decode().split(",")
    assert header[:5] == list(TRANSACTION_COLUMNS) and len(header) == 5 + extra_columns
    seen: set[int] = set()
    rules = {
        number: _strict_rule(raw, entry.day, len(header), seen)
        for number, raw in enumerate(lines[1:], start=1)
    }
    return {number: rule for number, rule in rules.items() if rule}


def test_one_file_per_rule_on_consecutive_days_after_the_given_day(catalogue: dict[str, BadFile]) -> None:
    assert list(catalogue) == list(RULES)
    assert [b.day for b in catalogue.values()] == [
        FIRST_DAY + dt.timedelta(days=k) for k in range(CATALOGUE_DAYS)
    ]
    assert len({b.path for b in catalogue.values()}) == len(RULES)
    for entry in catalogue.values():
        assert entry.expected_rule == entry.name
        assert Path(entry.path).is_file(), entry.path
        assert entry.rows == entry.expected_accepted_rows + entry.expected_rejected_rows
        if entry.whole_file:
            assert entry.bad_rows == () and entry.expected_accepted_rows == 0
        else:
            assert all(1 <= n <= entry.rows for n in entry.bad_rows)


@pytest.mark.parametrize("name", sorted(ROW_LEVEL))
def test_row_level_faults_sit_exactly_in_the_declared_rows(catalogue: dict[str, BadFile], name: str) -> None:
    entry = catalogue[name]
    assert len(_lines(entry)) - 1 == entry.rows
    assert entry.expected_accepted_rows == GOOD_ROWS
    broken = _strict_reading(entry)
    assert broken == dict.fromkeys(entry.bad_rows, name)


def test_extra_column_rows_are_all_good(catalogue: dict[str, BadFile]) -> None:
    entry = catalogue["extra_column"]
    assert _strict_reading(entry, extra_columns=1) == {}
    assert entry.expected_rejected_rows == 0 and entry.expected_accepted_rows == GOOD_ROWS
    assert "extras kept" in entry.expected_outcome


def test_whole_file_faults(catalogue: dict[str, BadFile]) -> None:
    missing = _lines(catalogue["missing_column"])
    assert "tx_amount" not in missing[0].decode() and len(missing) - 1 == GOOD_ROWS

    assert Path(catalogue["empty_file"].path).stat().st_size == 0

    for name in ("bad_file_name", "path_traversal_name"):
        entry = catalogue[name]
        assert not CLEAN_NAME.fullmatch(Path(entry.path).name)
        assert _strict_reading(entry) == {}, "the name must be the only fault"
    assert Path(catalogue["path_traversal_name"].path).name.startswith("..")

    truncated = catalogue["truncated_parquet"]
    assert truncated.path.endswith(".parquet")
    with pytest.raises(pa.ArrowInvalid):
        pq.read_table(truncated.path)


def test_unknown_transaction_reports_only_the_declared_rows(catalogue: dict[str, BadFile]) -> None:
    entry = catalogue["unknown_transaction"]
    assert entry.source == "fraud_reports" and "/fraud_reports/" in entry.path
    lines = [line.decode() for line in _lines(entry)]
    assert lines[0] == ",".join(FRAUD_REPORT_COLUMNS)

    accepted: dict[int, dt.datetime] = {}
    for source in ("outside_file_day", "non_utf8"):
        bad = set(catalogue[source].bad_rows)
        for number, raw in enumerate(_lines(catalogue[source])[1:], start=1):
            if number not in bad:
                fields = raw.decode().split(",")
                accepted[int(fields[0])] = dt.datetime.strptime(fields[1], "%Y-%m-%dT%H:%M:%SZ")

    unknown = set()
    for number, line in enumerate(lines[1:], start=1):
        tx_id, stamp = line.split(",")
        reported = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
        assert reported.date() == entry.day
        if int(tx_id) in accepted:
            assert accepted[int(tx_id)] < reported <= accepted[int(tx_id)] + dt.timedelta(days=7)
        else:
            assert int(tx_id) not in EXISTING_IDS
            unknown.add(number)
    assert unknown == set(entry.bad_rows)


def test_the_catalogue_is_deterministic_and_stands_alone_without_existing_ids(tmp_path: Path) -> None:
    first = write_bad_file_catalogue(str(tmp_path / "a"), FIRST_DAY)
    second = write_bad_file_catalogue(str(tmp_path / "b"), FIRST_DAY)
    for a, b in zip(first, second, strict=True):
        assert Path(a.path).read_bytes() == Path(b.path).read_bytes()
    by_name = {b.name: b for b in first}
    first_id = _lines(by_name["malformed_row"])[1].split(b",")[0]
    reused = _lines(by_name["duplicate_id_across_files"])[by_name["duplicate_id_across_files"].bad_rows[0]]
    assert reused.split(b",")[0] == first_id


def test_duplicates_in_file_repeat_the_declared_rows(catalogue: dict[str, BadFile]) -> None:
    lines = _lines(catalogue["duplicate_id_in_file"])
    assert lines[11] == lines[2]
    assert lines[18].split(b",")[0] == lines[7].split(b",")[0] and lines[18] != lines[7]


def test_each_row_of_the_table_is_one_file_described_by_its_row(catalogue: dict[str, BadFile]) -> None:
    assert [fault.name for fault in CATALOGUE] == list(catalogue)
    for fault in CATALOGUE:
        entry = catalogue[fault.name]
        assert (entry.source, entry.rows, entry.bad_rows, entry.whole_file) == (
            fault.source,
            fault.rows,
            fault.bad_rows,
            fault.whole_file,
        )
        assert entry.expected_outcome == fault.outcome
        assert Path(entry.path).name == fault.file_name.format(day=entry.day.isoformat())
        assert "{" not in entry.fault and "}" not in entry.fault, entry.fault
    reused = int(_lines(catalogue["duplicate_id_across_files"])[6].split(b",")[0])
    assert f"reuses transaction_id {reused} " in catalogue["duplicate_id_across_files"].fault


def test_a_new_fault_is_one_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs.simulation import bad_files

    header = ",".join(TRANSACTION_COLUMNS).encode() + b"\n"
    extra = bad_files.Fault(
        "header_only", "a header and no rows", "nothing to accept", rows=0, build=lambda _, day: header
    )
    monkeypatch.setattr(bad_files, "CATALOGUE", (*bad_files.CATALOGUE, extra))
    written = write_bad_file_catalogue(str(tmp_path), FIRST_DAY, EXISTING_IDS)
    assert [b.name for b in written] == [*RULES, "header_only"]
    added = written[-1]
    assert added.day == FIRST_DAY + dt.timedelta(days=CATALOGUE_DAYS)
    assert Path(added.path) == tmp_path / "transactions" / f"{added.day.isoformat()}.csv"
    assert Path(added.path).read_bytes() == header
