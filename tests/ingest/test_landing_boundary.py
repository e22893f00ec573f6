"""The landing root as a boundary, on real files: links are never followed, folders, FIFOs and devices never
opened, each quarantined by name; uploads in progress are not landing files; and a day's fraud reports are
ingested whatever became of that day's transactions file."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.ingest.boundary import NotARegularFile, entry_kind, read_regular_file
from jobs.ingest.contract import FRAUD_REPORTS, RULES, TRANSACTIONS
from jobs.ingest.day import DayResult, MissingLandingFile, ingest_days
from jobs.ingest.landing import (
    BadLandingFolder,
    is_upload_in_progress,
    list_landing,
    misnamed_files,
    plan_landing,
)
from jobs.ingest.misnamed import quarantine_misnamed
from jobs.platform.layout import partition_uri
from jobs.platform.storage import read_parquet
from tests.support import leaks

MARKER = "TOP-SECRET-c0ffee-4f1c"
HEADER = "transaction_id,tx_datetime,customer_id,terminal_id,tx_amount,note"
FIRST_DAY = dt.date(2018, 4, 1)


def day(n: int) -> dt.date:
    return dt.date(2018, 4, n)


def transactions(on: dt.date, ids: range, note: str = "ok") -> str:
    lines = [f"{i},{on.isoformat()}T10:{i % 60:02d}:00Z,{i % 3},{i % 5},{i}.25,{note}" for i in ids]
    return "\n".join([HEADER, *lines]) + "\n"


class Zone:
    """A landing zone and a lake in a temporary folder, and a secret file outside both."""

    def __init__(self, root: Path) -> None:
        self.landing = root / "landing"
        self.lake = root / "lake"
        self.outside = root / "outside"
        self.outside.mkdir()
        self.secret = self.outside / "secret.csv"
        self.secret.write_text(transactions(day(15), range(1, 4), note=MARKER))

    def path(self, source: str, name: str) -> Path:
        path = self.landing / source / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def drop(self, source: str, name: str, text: str) -> Path:
        path = self.path(source, name)
        path.write_text(text)
        return path

    def ingest(self, source: str, *days: dt.date) -> list[DayResult]:
        return ingest_days(str(self.landing), str(self.lake), source, list(days), "run-1")


@pytest.fixture
def zone(tmp_path: Path) -> Zone:
    return Zone(tmp_path)


def only_record(result: DayResult) -> dict[str, object]:
    (record,) = result.quarantine.to_pylist()
    return record


def test_a_symlink_where_a_file_should_be_is_quarantined_by_name_and_never_followed(zone: Zone) -> None:
    zone.drop(TRANSACTIONS, "2018-04-14.csv", transactions(day(14), range(10, 15)))
    link = zone.path(TRANSACTIONS, "2018-04-15.csv")
    os.symlink(zone.secret, link)
    zone.drop(TRANSACTIONS, "2018-04-16.csv", transactions(day(16), range(20, 25)))
    before, linked, after = zone.ingest(TRANSACTIONS, day(14), day(15), day(16))
    assert (before.accepted.num_rows, after.accepted.num_rows) == (5, 5)
    assert linked.rules == {"symlink": 1} and linked.accepted.num_rows == 0 and linked.rows_in == 0
    assert linked.rejected_share == 1.0 and "symlink" in RULES
    record = only_record(linked)
    assert record["row_number"] == 0 and record["raw_record"] is None
    assert record["source_file"] == str(link)
    assert record["reason"] == (
        "transactions/2018-04-15.csv is a symbolic link, not a regular file: links are never followed"
    )
    assert leaks(MARKER, zone.lake) == []
    assert MARKER not in str(linked.summary()) and str(zone.outside) not in str(linked.quarantine.to_pylist())
    assert read_parquet(linked.partition_uri).num_rows == 0


def test_a_dangling_symlink_is_a_symlink_not_a_missing_file(zone: Zone) -> None:
    os.symlink(zone.outside / "gone.csv", zone.path(TRANSACTIONS, "2018-04-15.csv"))
    (result,) = zone.ingest(TRANSACTIONS, day(15))
    assert result.rules == {"symlink": 1}


def test_a_folder_named_like_a_file_does_not_stop_a_range(zone: Zone) -> None:
    zone.drop(TRANSACTIONS, "2018-04-15.csv", transactions(day(15), range(1, 4)))
    folder = zone.path(TRANSACTIONS, "2018-04-16.csv")
    folder.mkdir()
    (folder / "data.csv").write_text(transactions(day(16), range(1, 4), note=MARKER))
    zone.drop(TRANSACTIONS, "2018-04-17.csv", transactions(day(17), range(5, 9)))
    first, refused, last = zone.ingest(TRANSACTIONS, day(15), day(16), day(17))
    assert (first.accepted.num_rows, last.accepted.num_rows) == (3, 4)
    assert refused.rules == {"not_a_regular_file": 1}
    assert only_record(refused)["reason"] == (
        "transactions/2018-04-16.csv is a directory, not a regular file: it was never opened"
    )
    assert Path(partition_uri(str(zone.lake), "raw/transactions", day(17))).exists()
    assert leaks(MARKER, zone.lake) == []


@pytest.mark.timeout(60)
def test_a_fifo_is_never_opened(zone: Zone) -> None:
    """Opening a FIFO with no writer blocks for ever: the timeout is what fails this test if it is opened."""
    os.mkfifo(zone.path(FRAUD_REPORTS, "2018-04-15.csv"))
    (result,) = zone.ingest(FRAUD_REPORTS, day(15))
    assert result.rules == {"not_a_regular_file": 1}
    assert "is a FIFO (named pipe), not a regular file" in only_record(result)["reason"]


def test_a_device_is_never_opened() -> None:
    """The machine's own ``/dev/null`` under a root of ``/``: a real character device, with no CAP_MKNOD."""
    from jobs.ingest.boundary import NotARegularFile, entry_kind, read_regular_file

    assert entry_kind("/", "dev/null") == "char_device"
    with pytest.raises(NotARegularFile, match="is a character device"):
        read_regular_file("/", "dev/null")


def test_a_symlinked_source_folder_is_not_followed(zone: Zone) -> None:
    (zone.outside / "2018-04-15.csv").write_text(transactions(day(15), range(1, 4), note=MARKER))
    zone.landing.mkdir()
    os.symlink(zone.outside, zone.landing / TRANSACTIONS)
    (result,) = zone.ingest(TRANSACTIONS, day(15))
    assert result.rules == {"symlink": 2} and result.accepted.num_rows == 0
    assert [record["reason"].split(" is ")[0] for record in result.quarantine.to_pylist()] == [
        "transactions (on the path of transactions/2018-04-15.csv)",
        "transactions (on the path of transactions/2018-04-15.parquet)",
    ]
    with pytest.raises(BadLandingFolder, match="is a symlink, not a folder"):
        list_landing(str(zone.landing))
    assert leaks(MARKER, zone.lake) == []


def test_a_file_swapped_for_a_link_is_refused_at_the_read(zone: Zone) -> None:
    """The read checks the entry itself, not an earlier listing: a listed file later replaced by a link."""
    path = zone.drop(TRANSACTIONS, "2018-04-15.csv", transactions(day(15), range(1, 3)))
    landing = str(zone.landing)
    assert entry_kind(landing, "transactions/2018-04-15.csv") == "file"
    path.unlink()
    os.symlink(zone.secret, path)
    with pytest.raises(NotARegularFile) as refused:
        read_regular_file(landing, "transactions/2018-04-15.csv")
    assert refused.value.rule == "symlink" and MARKER not in str(refused.value)


def test_badly_named_links_are_recorded_without_content_and_linked_folders_not_walked(zone: Zone) -> None:
    os.symlink(zone.secret, zone.path(TRANSACTIONS, "latest.csv"))
    os.symlink(zone.outside, zone.path(TRANSACTIONS, "archive"))
    plain = zone.drop(TRANSACTIONS, "notes.csv", "a,b\n1,2\n")
    listed = {file.name: file for file in list_landing(str(zone.landing))}
    assert set(listed) == {"latest.csv", "archive", "notes.csv"}
    assert (listed["latest.csv"].kind, listed["latest.csv"].size) == ("symlink", 0)
    assert listed["archive"].kind == "symlink"
    misnamed = misnamed_files(str(zone.landing), FIRST_DAY)
    records = {record["name"]: record for record in quarantine_misnamed(misnamed, str(zone.lake), "run-1")}
    for name in ("latest.csv", "archive"):
        record = records[name]
        assert (record["rule"], record["content"], record["content_sha256"]) == ("symlink", None, None)
        assert "is a symbolic link, not a regular file: links are never followed" in record["reason"]
    assert records["notes.csv"]["rule"] == "misnamed"
    assert Path(str(records["notes.csv"]["content"])).read_bytes() == plain.read_bytes()
    assert len(list((zone.lake / "quarantine" / "misnamed").rglob("content"))) == 1
    assert leaks(MARKER, zone.lake) == []


@pytest.mark.parametrize(
    ("name", "in_progress"),
    [
        (".2018-04-14.csv.part", True),
        ("2018-04-14.csv.part", True),
        ("2018-04-14.csv.PARTIAL", True),
        ("2018-04-14.csv.crdownload", True),
        ("2018-04-14.parquet.filepart", True),
        ("2018-04-14.csv.tmp", True),
        (".staging/2018-04-14.csv", True),
        ("2018-04-14.csv", False),
        ("..2018-04-14.csv", False),
        ("../2018-04-14.csv", False),
        ("latest.csv", False),
    ],
)
def test_upload_names_in_progress(name: str, in_progress: bool) -> None:
    assert is_upload_in_progress(name) is in_progress


def test_uploads_in_progress_are_neither_ingested_nor_set_aside(zone: Zone) -> None:
    for name in (".2018-04-14.csv.part", "2018-04-15.csv.crdownload", "2018-04-16.csv.partial", ".tmp/x.csv"):
        zone.drop(TRANSACTIONS, name, transactions(day(14), range(1, 3)))
    traversal = zone.drop(TRANSACTIONS, "..2018-04-17.csv", transactions(day(17), range(1, 3)))
    plan = plan_landing(list_landing(str(zone.landing)), None, FIRST_DAY, day(30))
    assert sorted(file.name for file in plan.uploading) == [
        ".2018-04-14.csv.part",
        ".tmp/x.csv",
        "2018-04-15.csv.crdownload",
        "2018-04-16.csv.partial",
    ]
    assert [file.name for file, _ in plan.rejects] == [traversal.name] and plan.ingest == []
    assert list(json.loads(plan.cursor)) == ["transactions/..2018-04-17.csv"]
    records = quarantine_misnamed(misnamed_files(str(zone.landing), FIRST_DAY), str(zone.lake), "run-1")
    assert [record["name"] for record in records] == [traversal.name]
    with pytest.raises(MissingLandingFile):
        zone.ingest(TRANSACTIONS, day(14))


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


@pytest.mark.parametrize("fault", ["missing", "truncated"])
def test_a_days_reports_are_ingested_whatever_became_of_its_transactions_file(zone: Zone, fault: str) -> None:
    zone.drop(TRANSACTIONS, "2018-04-14.csv", transactions(day(14), range(1, 6)))
    if fault == "truncated":
        table = pa.table({"transaction_id": pa.array(range(50, 80), pa.int64())})
        content = parquet_bytes(table)
        zone.path(TRANSACTIONS, "2018-04-15.parquet").write_bytes(content[: len(content) // 2])
        refused = zone.ingest(TRANSACTIONS, day(14), day(15))[1]
        assert refused.rules == {"truncated_parquet": 1}
    else:
        zone.ingest(TRANSACTIONS, day(14))
        with pytest.raises(MissingLandingFile):
            zone.ingest(TRANSACTIONS, day(14), day(15))
    reports = ["2,2018-04-15T08:00:00Z", "4,2018-04-15T09:00:00Z", "60,2018-04-15T09:30:00Z"]
    zone.drop(FRAUD_REPORTS, "2018-04-15.csv", "\n".join(["transaction_id,reported_at", *reports]) + "\n")
    earlier, reported = zone.ingest(FRAUD_REPORTS, day(14), day(15))
    assert earlier.rows_in == 0 and earlier.files == []
    assert reported.accepted.column("transaction_id").to_pylist() == [2, 4]
    assert reported.rules == {"unknown_transaction": 1}
    summary = reported.summary()
    assert summary["rows_in"] == 3 == summary["accepted"] + summary["quarantined"]
    assert read_parquet(reported.partition_uri).num_rows == 2
