"""The landing contract rule by rule: tiny bad files built here, ingested with jobs/ingest/day.py, checked.

Every test also checks the reconciliation (rows in = accepted + quarantined) through ``ingest_days``, which
refuses to write a day that does not reconcile.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.ingest.contract import (
    FRAUD_REPORTS,
    QUARANTINE_SCHEMA,
    RAW_FRAUD_REPORTS_SCHEMA,
    RAW_TRANSACTIONS_SCHEMA,
    RULES,
    TRANSACTIONS,
)
from jobs.ingest.day import DayResult, MissingLandingFile, ReconciliationError, ingest_days, reconcile
from jobs.platform.layout import partition_uri, quarantine_uri
from jobs.platform.storage import read_parquet

DAY = dt.date(2018, 4, 1)
HEADER = "transaction_id,tx_datetime,customer_id,terminal_id,tx_amount"


def tx_line(tx_id: int, when: str = "2018-04-01T10:00:00Z", amount: str = "12.50") -> str:
    return f"{tx_id},{when},{tx_id % 7},{tx_id % 11},{amount}"


def csv_bytes(*lines: str, header: str = HEADER) -> bytes:
    return ("\n".join([header, *lines]) + "\n").encode()


class Zone:
    """A landing zone and a lake in tmp_path, with helpers to drop files and ingest days."""

    def __init__(self, root: Path) -> None:
        self.landing = str(root / "landing")
        self.lake = str(root / "lake")

    def drop(self, source: str, name: str, content: bytes) -> Path:
        path = Path(self.landing) / source / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    def ingest(self, source: str, *days: dt.date, run_id: str = "run-1") -> list[DayResult]:
        return ingest_days(self.landing, self.lake, source, list(days or [DAY]), run_id)

    def one(self, source: str, content: bytes, day: dt.date = DAY, fmt: str = "csv") -> DayResult:
        self.drop(source, f"{day.isoformat()}.{fmt}", content)
        (result,) = self.ingest(source, day)
        return result

    def lake_rows(self, source: str, day: dt.date = DAY) -> pd.DataFrame:
        dataset = "raw/transactions" if source == TRANSACTIONS else "raw/fraud_reports"
        return read_parquet(partition_uri(self.lake, dataset, day)).to_pandas()

    def quarantine(self, source: str, day: dt.date = DAY) -> pd.DataFrame:
        return read_parquet(quarantine_uri(self.lake, source, day)).to_pandas()


@pytest.fixture
def zone(tmp_path: Path) -> Zone:
    return Zone(tmp_path)


def rows_by_rule(result: DayResult) -> dict[str, list[int]]:
    frame = result.quarantine.to_pandas()
    return {rule: sorted(group["row_number"].tolist()) for rule, group in frame.groupby("rule")}


def test_a_clean_file_lands_whole_with_the_lake_schema(zone: Zone) -> None:
    result = zone.one(TRANSACTIONS, csv_bytes(*(tx_line(i) for i in range(1, 6))))
    lake = read_parquet(result.partition_uri)
    assert lake.schema.equals(RAW_TRANSACTIONS_SCHEMA)
    assert lake.num_rows == 5 and result.quarantined == 0 and result.rejected_share == 0
    frame = lake.to_pandas()
    assert frame["transaction_id"].tolist() == [1, 2, 3, 4, 5]
    assert frame["tx_datetime"].iloc[0] == pd.Timestamp("2018-04-01T10:00:00Z")
    assert frame["extras"].isna().all()
    assert set(frame["source_file"]) == {str(Path(zone.landing) / "transactions" / "2018-04-01.csv")}
    assert set(frame["ingest_run_id"]) == {"run-1"}
    quarantine = read_parquet(result.quarantine_uri)
    assert quarantine.schema.equals(QUARANTINE_SCHEMA) and quarantine.num_rows == 0


def test_malformed_rows_are_quarantined_by_line_and_the_rest_accepted(zone: Zone) -> None:
    content = csv_bytes(
        tx_line(1), "2,2018-04-01T10:00:00Z,3", tx_line(3), tx_line(4) + ",extra,field", tx_line(5)
    )
    result = zone.one(TRANSACTIONS, content)
    assert rows_by_rule(result) == {"malformed_row": [2, 4]}
    quarantine = zone.quarantine(TRANSACTIONS).set_index("row_number")
    assert quarantine.loc[2, "raw_record"] == "2,2018-04-01T10:00:00Z,3"
    assert "expected 5 fields, found 3" in quarantine.loc[2, "reason"]
    assert "found 7" in quarantine.loc[4, "reason"]
    assert zone.lake_rows(TRANSACTIONS)["transaction_id"].tolist() == [1, 3, 5]
    assert result.rows_in == 5


def test_a_stray_quote_does_not_swallow_the_next_lines(zone: Zone) -> None:
    content = csv_bytes(tx_line(1), '2,"2018-04-01T10:00:00Z,3,4,5.00', tx_line(3), tx_line(4))
    result = zone.one(TRANSACTIONS, content)
    assert rows_by_rule(result) == {"malformed_row": [2]}
    assert zone.lake_rows(TRANSACTIONS)["transaction_id"].tolist() == [1, 3, 4]


def test_quoted_fields_with_commas_are_values_not_malformed(zone: Zone) -> None:
    header = HEADER + ",merchant"
    result = zone.one(
        TRANSACTIONS, csv_bytes(tx_line(1) + ',"Shop, Inc."', tx_line(2) + ",Plain", header=header)
    )
    assert result.quarantined == 0
    assert zone.lake_rows(TRANSACTIONS)["extras"].tolist() == [
        '{"merchant":"Shop, Inc."}',
        '{"merchant":"Plain"}',
    ]


def test_wrong_types_name_the_column_and_value(zone: Zone) -> None:
    content = csv_bytes(
        tx_line(1),
        "TX-2,2018-04-01T10:00:00Z,1,1,1.00",
        "3,2018-04-01T25:00:00Z,1,1,1.00",
        "4,2018-04-01T10:00:00Z,4.5,1,1.00",
        "5,2018-04-01T10:00:00Z,1,,1.00",
        "6,2018-04-01T10:00:00Z,1,1,N/A",
        "7,2018-04-01T10:00:00Z,1,1,1e400",
        tx_line(8),
    )
    result = zone.one(TRANSACTIONS, content)
    assert rows_by_rule(result) == {"wrong_type": [2, 3, 4, 5, 6, 7]}
    reasons = zone.quarantine(TRANSACTIONS).set_index("row_number")["reason"]
    assert reasons[2] == "transaction_id='TX-2' is not a whole number"
    assert "tx_datetime='2018-04-01T25:00:00Z' is not an ISO-8601 timestamp" in reasons[3]
    assert "customer_id='4.5'" in reasons[4]
    assert reasons[5] == "terminal_id is empty"
    assert "tx_amount='N/A' is not a decimal number" in reasons[6]
    assert zone.lake_rows(TRANSACTIONS)["transaction_id"].tolist() == [1, 8]


def test_a_missing_column_rejects_the_whole_file_row_by_row(zone: Zone) -> None:
    header = "transaction_id,tx_datetime,customer_id,terminal_id"
    lines = [f"{i},2018-04-01T10:00:00Z,1,1" for i in range(1, 4)]
    result = zone.one(TRANSACTIONS, csv_bytes(*lines, header=header))
    assert rows_by_rule(result) == {"missing_column": [1, 2, 3]}
    assert result.accepted.num_rows == 0 and result.rejected_share == 1.0
    quarantine = zone.quarantine(TRANSACTIONS)
    assert quarantine["reason"].str.contains("missing column(s) tx_amount", regex=False).all()
    assert quarantine["raw_record"].tolist() == lines
    assert zone.lake_rows(TRANSACTIONS).empty


def test_a_missing_column_in_a_file_without_rows_leaves_one_row_zero_record(zone: Zone) -> None:
    result = zone.one(FRAUD_REPORTS, b"transaction_id\n")
    assert rows_by_rule(result) == {"missing_column": [0]}
    assert result.rows_in == 0 and result.rejected_share == 1.0


def test_extra_columns_are_accepted_and_kept_as_json(zone: Zone) -> None:
    header = HEADER + ",merchant_category,channel"
    result = zone.one(TRANSACTIONS, csv_bytes(tx_line(1) + ",5411,web", tx_line(2) + ",,pos", header=header))
    assert result.quarantined == 0 and result.extras_columns == ["merchant_category", "channel"]
    assert result.summary()["extras_columns"] == ["merchant_category", "channel"]
    extras = zone.lake_rows(TRANSACTIONS)["extras"].tolist()
    assert [json.loads(e) for e in extras] == [
        {"merchant_category": "5411", "channel": "web"},
        {"merchant_category": "", "channel": "pos"},
    ]


def test_duplicate_ids_in_a_file_keep_only_the_first_copy(zone: Zone) -> None:
    content = csv_bytes(tx_line(1), tx_line(2), tx_line(1, amount="9.99"), tx_line(3), tx_line(1), tx_line(2))
    result = zone.one(TRANSACTIONS, content)
    assert rows_by_rule(result) == {"duplicate_id_in_file": [3, 5, 6]}
    reasons = zone.quarantine(TRANSACTIONS).set_index("row_number")["reason"]
    assert "repeats row 1" in reasons[3] and "repeats row 2" in reasons[6]
    lake = zone.lake_rows(TRANSACTIONS)
    assert lake["transaction_id"].tolist() == [1, 2, 3] and lake["tx_amount"].iloc[0] == 12.5


def test_ids_accepted_in_another_partition_are_duplicates_but_a_redelivery_is_not(zone: Zone) -> None:
    zone.one(TRANSACTIONS, csv_bytes(tx_line(1), tx_line(2)))
    next_day = DAY + dt.timedelta(days=1)
    content = csv_bytes(tx_line(2, "2018-04-02T09:00:00Z"), tx_line(3, "2018-04-02T09:00:00Z"))
    result = zone.one(TRANSACTIONS, content, day=next_day)
    assert rows_by_rule(result) == {"duplicate_id_across_files": [1]}
    reason = zone.quarantine(TRANSACTIONS, next_day)["reason"].iloc[0]
    assert reason == "transaction_id 2 already accepted in partition 2018-04-01"
    (again,) = zone.ingest(TRANSACTIONS, DAY)
    assert again.quarantined == 0 and again.accepted.num_rows == 2


def test_duplicates_across_the_days_of_one_range_run_are_caught(zone: Zone) -> None:
    next_day = DAY + dt.timedelta(days=1)
    zone.drop(TRANSACTIONS, "2018-04-01.csv", csv_bytes(tx_line(1), tx_line(2)))
    zone.drop(TRANSACTIONS, "2018-04-02.csv", csv_bytes(tx_line(2, "2018-04-02T01:00:00Z")))
    first, second = zone.ingest(TRANSACTIONS, DAY, next_day)
    assert first.quarantined == 0 and rows_by_rule(second) == {"duplicate_id_across_files": [1]}


def test_negative_amounts_and_sub_cent_precision_are_quarantined(zone: Zone) -> None:
    content = csv_bytes(
        tx_line(1, amount="-12.50"),
        tx_line(2, amount="0.00"),
        tx_line(3, amount="1.005"),
        tx_line(4, amount="0.29"),
        tx_line(5, amount="3.1"),
        tx_line(6, amount="-0.001"),
        tx_line(7, amount="12.500"),
    )
    result = zone.one(TRANSACTIONS, content)
    assert rows_by_rule(result) == {"negative_amount": [1, 6], "amount_precision": [3]}
    reasons = zone.quarantine(TRANSACTIONS).set_index("row_number")["reason"]
    assert "negative" in reasons[6] and "more than 2 decimal places" in reasons[6]
    assert zone.lake_rows(TRANSACTIONS)["tx_amount"].tolist() == [0.0, 0.29, 3.1, 12.5]


def test_timestamps_outside_the_files_day_are_quarantined(zone: Zone) -> None:
    content = csv_bytes(
        tx_line(1, "2018-03-31T23:59:59Z"),
        tx_line(2, "2018-04-01T00:00:00Z"),
        tx_line(3, "2018-04-01T23:59:59Z"),
        tx_line(4, "2018-04-02T00:00:00Z"),
        tx_line(5, "2018-04-01T01:30:00+02:00"),
        tx_line(6, "2018-04-01T12:00:00"),
    )
    result = zone.one(TRANSACTIONS, content)
    assert rows_by_rule(result) == {"outside_file_day": [1, 4, 5]}
    reasons = zone.quarantine(TRANSACTIONS).set_index("row_number")["reason"]
    assert reasons[5] == "tx_datetime 2018-03-31T23:30:00+00:00 is outside the file's UTC day 2018-04-01"
    assert zone.lake_rows(TRANSACTIONS)["transaction_id"].tolist() == [2, 3, 6]


def test_an_empty_file_leaves_an_empty_partition_and_one_record(zone: Zone) -> None:
    result = zone.one(TRANSACTIONS, b"")
    assert rows_by_rule(result) == {"empty_file": [0]}
    assert result.rows_in == 0 and result.rejected_share == 0.0
    lake = read_parquet(result.partition_uri)
    assert lake.num_rows == 0 and lake.schema.equals(RAW_TRANSACTIONS_SCHEMA)
    header_only = zone.one(TRANSACTIONS, (HEADER + "\r\n").encode())
    assert rows_by_rule(header_only) == {"empty_file": [0]}
    assert zone.quarantine(TRANSACTIONS)["raw_record"].tolist() == [HEADER]


def test_a_byte_order_mark_is_not_part_of_the_first_column_name(zone: Zone) -> None:
    result = zone.one(TRANSACTIONS, b"\xef\xbb\xbf" + csv_bytes(tx_line(1)))
    assert result.quarantined == 0 and result.accepted.num_rows == 1
    assert rows_by_rule(zone.one(TRANSACTIONS, b"\xef\xbb\xbf\r\n")) == {"empty_file": [0]}


def test_only_the_lines_with_non_utf8_bytes_are_quarantined(zone: Zone) -> None:
    lines = [tx_line(i).encode() for i in range(1, 6)]
    lines[1] = b"2,2018-04-01T10:00:00Z,1,1,12.50\xa0"
    lines[3] = b"4,2018-04-01T10:00:00Z,1,1,caf\xc3"
    content = b"\r\n".join([(HEADER + ",note").encode(), *(line + b",ok" for line in lines)]) + b"\r\n"
    content = content.replace(b"\xa0,ok", b",\xa0ok").replace(b"caf\xc3,ok", b"1.00,caf\xc3")
    result = zone.one(TRANSACTIONS, content)
    assert rows_by_rule(result) == {"non_utf8": [2, 4]}
    quarantine = zone.quarantine(TRANSACTIONS).set_index("row_number")
    assert quarantine.loc[2, "raw_record"] == repr(b"2,2018-04-01T10:00:00Z,1,1,12.50,\xa0ok")
    assert "0xa0" in quarantine.loc[2, "reason"] or "\\xa0" in quarantine.loc[2, "reason"]
    assert zone.lake_rows(TRANSACTIONS)["transaction_id"].tolist() == [1, 3, 5]


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def typed_transactions(ids: list[int], day: str = "2018-04-01") -> pa.Table:
    stamps = pd.to_datetime([f"{day}T10:00:00Z"] * len(ids), utc=True)
    return pa.table(
        {
            "transaction_id": pa.array(ids, pa.int64()),
            "tx_datetime": pa.array(stamps, pa.timestamp("us", tz="UTC")),
            "customer_id": pa.array([1] * len(ids), pa.int64()),
            "terminal_id": pa.array([2] * len(ids), pa.int64()),
            "tx_amount": pa.array([1.25] * len(ids), pa.float64()),
            "channel": pa.array(["web"] * len(ids)),
        }
    )


def test_parquet_files_follow_the_same_contract(zone: Zone) -> None:
    table = typed_transactions([1, 2, 3, 3])
    table = table.set_column(4, "tx_amount", pa.array([1.25, -1.0, 2.0, 2.0]))
    result = zone.one(TRANSACTIONS, parquet_bytes(table), fmt="parquet")
    assert rows_by_rule(result) == {"negative_amount": [2], "duplicate_id_in_file": [4]}
    quarantine = zone.quarantine(TRANSACTIONS).set_index("row_number")
    assert json.loads(quarantine.loc[2, "raw_record"])["tx_amount"] == -1.0
    lake = zone.lake_rows(TRANSACTIONS)
    assert lake["transaction_id"].tolist() == [1, 3] and lake["extras"].tolist() == ['{"channel":"web"}'] * 2


def test_parquet_with_text_columns_is_parsed_like_csv(zone: Zone) -> None:
    table = pa.table(
        {
            "transaction_id": ["1", "x"],
            "tx_datetime": ["2018-04-01T10:00:00Z", "2018-04-01T11:00:00Z"],
            "customer_id": ["1", "1"],
            "terminal_id": ["2", "2"],
            "tx_amount": ["3.50", "1"],
        }
    )
    result = zone.one(TRANSACTIONS, parquet_bytes(table), fmt="parquet")
    assert rows_by_rule(result) == {"wrong_type": [2]}
    assert zone.lake_rows(TRANSACTIONS)["tx_amount"].tolist() == [3.5]


def test_a_truncated_or_unreadable_parquet_file_is_quarantined_whole(zone: Zone) -> None:
    content = parquet_bytes(typed_transactions(list(range(1, 21))))
    result = zone.one(TRANSACTIONS, content[: len(content) // 2], fmt="parquet")
    assert rows_by_rule(result) == {"truncated_parquet": [0]}
    assert result.rejected_share == 1.0 and result.accepted.num_rows == 0
    record = zone.quarantine(TRANSACTIONS).iloc[0]
    assert "cannot read Parquet" in record["reason"] and "sha256" in record["raw_record"]
    garbage = zone.one(
        TRANSACTIONS, b"this is not parquet at all", day=DAY + dt.timedelta(days=1), fmt="parquet"
    )
    assert rows_by_rule(garbage) == {"unreadable_file": [0]}


def test_fraud_reports_need_a_known_earlier_transaction(zone: Zone) -> None:
    zone.one(TRANSACTIONS, csv_bytes(tx_line(1, "2018-04-01T08:00:00Z"), tx_line(2, "2018-04-01T20:00:00Z")))
    next_day = DAY + dt.timedelta(days=1)
    zone.one(TRANSACTIONS, csv_bytes(tx_line(3, "2018-04-02T08:00:00Z")), day=next_day)
    reports = csv_bytes(
        "1,2018-04-01T09:00:00Z",
        "2,2018-04-01T19:00:00Z",
        "3,2018-04-01T23:00:00Z",
        "99,2018-04-01T12:00:00Z",
        "1,2018-04-01T10:00:00Z",
        header="transaction_id,reported_at",
    )
    result = zone.one(FRAUD_REPORTS, reports)
    assert rows_by_rule(result) == {
        "duplicate_id_in_file": [5],
        "unknown_transaction": [3, 4],
        "report_before_transaction": [2],
    }
    reasons = zone.quarantine(FRAUD_REPORTS).set_index("row_number")["reason"]
    assert reasons[4] == "no accepted transaction 99 on or before 2018-04-01"
    assert reasons[2] == "reported at 2018-04-01T19:00:00Z, before its transaction at 2018-04-01T20:00:00Z"
    lake = read_parquet(result.partition_uri)
    assert lake.schema.equals(RAW_FRAUD_REPORTS_SCHEMA) and lake.column("transaction_id").to_pylist() == [1]


def test_a_transaction_reported_again_on_a_later_day_is_a_duplicate(zone: Zone) -> None:
    zone.one(TRANSACTIONS, csv_bytes(tx_line(1, "2018-04-01T08:00:00Z")))
    zone.one(FRAUD_REPORTS, csv_bytes("1,2018-04-01T09:00:00Z", header="transaction_id,reported_at"))
    later = DAY + dt.timedelta(days=3)
    again = zone.one(
        FRAUD_REPORTS, csv_bytes("1,2018-04-04T09:00:00Z", header="transaction_id,reported_at"), later
    )
    assert rows_by_rule(again) == {"duplicate_id_across_files": [1]}


def test_a_missing_transactions_file_names_the_expected_paths(zone: Zone) -> None:
    with pytest.raises(MissingLandingFile) as error:
        zone.ingest(TRANSACTIONS, DAY)
    message = str(error.value)
    assert str(Path(zone.landing) / "transactions" / "2018-04-01.csv") in message and ".parquet" in message
    assert not Path(partition_uri(zone.lake, "raw/transactions", DAY)).exists()


def test_a_day_without_fraud_reports_is_an_empty_partition(zone: Zone) -> None:
    (result,) = zone.ingest(FRAUD_REPORTS, DAY)
    assert result.files == [] and result.rows_in == 0 and result.quarantine.num_rows == 0
    assert "no file; expected" in result.summary()["source_file"]
    assert read_parquet(result.partition_uri).num_rows == 0


def test_a_redelivered_file_replaces_its_partition_and_its_quarantine(zone: Zone) -> None:
    zone.one(TRANSACTIONS, csv_bytes(tx_line(1), tx_line(2, amount="-1.00"), tx_line(3)))
    assert len(zone.quarantine(TRANSACTIONS)) == 1
    zone.one(TRANSACTIONS, csv_bytes(tx_line(1), tx_line(2), tx_line(3), tx_line(4)))
    assert zone.lake_rows(TRANSACTIONS)["transaction_id"].tolist() == [1, 2, 3, 4]
    assert zone.quarantine(TRANSACTIONS).empty


def test_every_row_is_accounted_for_and_a_broken_count_is_refused(zone: Zone) -> None:
    content = csv_bytes(
        tx_line(1), "x", tx_line(2, amount="-5"), tx_line(1), tx_line(3, "2018-04-03T00:00:00Z")
    )
    result = zone.one(TRANSACTIONS, content)
    summary = result.summary()
    assert summary["rows_in"] == 5 == summary["accepted"] + summary["quarantined"]
    assert summary["rules"] == {
        "malformed_row": 1,
        "negative_amount": 1,
        "outside_file_day": 1,
        "duplicate_id_in_file": 1,
    }
    assert set(summary["rules"]) <= set(RULES)
    result.rows_in += 1
    with pytest.raises(ReconciliationError, match="rows_in 6 != accepted 1"):
        reconcile(result)


def test_a_day_of_twenty_thousand_rows_is_ingested_quickly(zone: Zone) -> None:
    """A guard against per-row Python: 20k rows with a sprinkling of bad ones, in well under a few seconds."""
    rng = np.random.default_rng(0)
    n = 20_000
    seconds = rng.integers(0, 86_400, n)
    stamps = (pd.Timestamp("2018-04-01", tz="UTC") + pd.to_timedelta(seconds, unit="s")).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    amounts = np.round(rng.gamma(2, 30, n), 2)
    lines = [
        f"{i},{s},{i % 5000},{i % 10000},{a:.2f}" for i, s, a in zip(range(n), stamps, amounts, strict=True)
    ]
    for row in range(100, n, 1000):
        lines[row] = lines[row].rsplit(",", 1)[0]
    zone.drop(TRANSACTIONS, "2018-04-01.csv", csv_bytes(*lines))
    started = time.perf_counter()
    (result,) = zone.ingest(TRANSACTIONS, DAY)
    elapsed = time.perf_counter() - started
    assert result.quarantined == 20 and result.accepted.num_rows == n - 20
    assert elapsed < 5, f"{elapsed:.1f}s for {n} rows"


def test_the_bad_file_catalogue_ends_where_it_says(tmp_path: Path) -> None:
    """Each landing-named file of the bad-file catalogue (jobs/simulation/bad_files.py) ingests as documented:
    whole-file faults leave nothing accepted, row faults quarantine exactly the listed rows."""
    from jobs.ingest.landing import BadLandingName, misnamed_files, parse_landing_name
    from jobs.ingest.misnamed import quarantine_misnamed
    from jobs.simulation import bad_files

    zone = Zone(tmp_path)
    first = dt.date(2018, 4, 1)
    catalogue = bad_files.write_bad_file_catalogue(zone.landing, first, customers=50, terminals=100)
    for entry in sorted(catalogue, key=lambda e: (e.source != TRANSACTIONS, e.day)):
        name = Path(entry.path).name
        try:
            day = parse_landing_name(name)
        except BadLandingName:
            assert entry.expected_rule in {"bad_file_name", "path_traversal_name"}, entry
            continue
        (result,) = zone.ingest(entry.source, day)
        accepted = result.accepted.num_rows
        if entry.whole_file:
            assert accepted == 0, entry
            assert entry.expected_rule in result.rules, (entry, result.rules)
        elif entry.expected_rule == "extra_column":
            assert result.quarantined == 0 and result.extras_columns, entry
        else:
            quarantined = sorted(result.quarantine.to_pandas()["row_number"].tolist())
            assert quarantined == sorted(entry.bad_rows), (entry, result.quarantine.to_pandas())
            assert set(result.rules) == {entry.expected_rule}, (entry, result.rules)
            assert accepted == entry.expected_accepted_rows, entry
    misnamed = {file.name: file for file, _ in misnamed_files(zone.landing, first)}
    expected = {Path(e.path).name for e in catalogue if e.expected_rule.endswith("name")}
    assert set(misnamed) == expected
    for record in quarantine_misnamed(misnamed_files(zone.landing, first), zone.lake, "run-1"):
        assert Path(str(record["content"])).read_bytes() == Path(str(record["uri"])).read_bytes()
