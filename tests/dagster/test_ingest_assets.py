"""raw_transactions and raw_fraud_reports materialized with Dagster on a temporary home: lake, quarantine,
reconciliation metadata, re-delivery, the blocking check, range runs, the misnamed-file quarantine, links and
other non-files in a file's place, and fraud reports ingested whatever became of their day's transactions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from jobs.platform.layout import partition_uri, quarantine_uri
from jobs.platform.storage import read_parquet
from orchestration.defs.ingest import CHECK_NAME, landing_file_rejects, raw_fraud_reports, raw_transactions
from orchestration.partitions import daily_partitions, single_run_backfill
from tests.support import leaks, materialize, run_in_step_processes, step_spans, with_settings

HEADER = "transaction_id,tx_datetime,customer_id,terminal_id,tx_amount"


def drop(home: Path, source: str, name: str, lines: list[str], header: str = HEADER) -> Path:
    path = home / "landing" / source / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def day_of_transactions(day: str, first_id: int, count: int, bad_amounts: int = 0) -> list[str]:
    lines = [f"{first_id + i},{day}T{i % 24:02d}:15:00Z,{i % 3},{i % 5},{10 + i}.25" for i in range(count)]
    for i in range(bad_amounts):
        lines[i] = lines[i].rsplit(",", 1)[0] + ",-1.00"
    return lines


def metadata_of(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, dict[str, object]]:
    """Each materialized partition's metadata, as plain values."""
    found = {}
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key == dg.AssetKey(asset):
            found[materialization.partition] = {k: v.value for k, v in materialization.metadata.items()}
    return found


def check_of(result: dg.ExecuteInProcessResult, asset: str) -> dg.AssetCheckEvaluation:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.asset_key == dg.AssetKey(asset)]
    assert evaluation.check_name == CHECK_NAME
    return evaluation


def lake(home: Path, dataset: str, day: str) -> pd.DataFrame:
    return read_parquet(partition_uri(str(home / "lake"), dataset, day)).to_pandas()


def quarantine(home: Path, source: str, day: str) -> pd.DataFrame:
    return read_parquet(quarantine_uri(str(home / "lake"), source, day)).to_pandas()


def test_a_day_lands_in_the_lake_with_reconciled_metadata(
    txguard_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TXGUARD_QUARANTINE_THRESHOLD", "0.5")
    drop(
        txguard_home,
        "transactions",
        "2018-04-01.csv",
        day_of_transactions("2018-04-01", 1, 40, bad_amounts=1),
    )
    drop(
        txguard_home,
        "fraud_reports",
        "2018-04-01.csv",
        ["3,2018-04-01T23:00:00Z", "777,2018-04-01T23:00:00Z"],
        header="transaction_id,reported_at",
    )
    result = materialize([raw_transactions, raw_fraud_reports], partition_key="2018-04-01")
    assert result.success
    tx = metadata_of(result, "raw_transactions")["2018-04-01"]
    assert (tx["rows_in"], tx["accepted"], tx["quarantined"]) == (40, 39, 1)
    assert tx["rules"] == {"negative_amount": 1} and tx["dagster/row_count"] == 39
    assert tx["source_file"] == str(txguard_home / "landing" / "transactions" / "2018-04-01.csv")
    assert tx["rejected_share"] == pytest.approx(1 / 40)
    assert check_of(result, "raw_transactions").passed
    run_id = result.run_id
    lake_rows = lake(txguard_home, "raw/transactions", "2018-04-01")
    assert len(lake_rows) == 39 and set(lake_rows["ingest_run_id"]) == {run_id}
    (bad,) = quarantine(txguard_home, "transactions", "2018-04-01").itertuples()
    assert (bad.row_number, bad.rule, bad.ingest_run_id) == (1, "negative_amount", run_id)
    reports = metadata_of(result, "raw_fraud_reports")["2018-04-01"]
    assert (reports["rows_in"], reports["accepted"], reports["quarantined"]) == (2, 1, 1)
    assert quarantine(txguard_home, "fraud_reports", "2018-04-01")["rule"].tolist() == ["unknown_transaction"]
    assert lake(txguard_home, "raw/fraud_reports", "2018-04-01")["transaction_id"].tolist() == [3]
    assert check_of(result, "raw_fraud_reports").passed


def test_a_redelivered_file_replaces_the_partition(txguard_home: Path) -> None:
    drop(txguard_home, "transactions", "2018-04-01.csv", day_of_transactions("2018-04-01", 1, 30))
    assert materialize([raw_transactions], partition_key="2018-04-01").success
    drop(txguard_home, "transactions", "2018-04-01.csv", day_of_transactions("2018-04-01", 1, 25))
    second = materialize([raw_transactions], partition_key="2018-04-01")
    assert second.success
    rows = lake(txguard_home, "raw/transactions", "2018-04-01")
    assert rows["transaction_id"].tolist() == list(range(1, 26))
    assert set(rows["ingest_run_id"]) == {second.run_id}
    assert metadata_of(second, "raw_transactions")["2018-04-01"]["quarantined"] == 0


def test_the_blocking_check_fails_a_partition_over_the_threshold(txguard_home: Path) -> None:
    drop(
        txguard_home,
        "transactions",
        "2018-04-01.csv",
        day_of_transactions("2018-04-01", 1, 20, bad_amounts=4),
    )
    drop(txguard_home, "fraud_reports", "2018-04-01.csv", [], header="transaction_id,reported_at")
    result = materialize([raw_transactions, raw_fraud_reports], partition_key="2018-04-01")
    assert not result.success
    evaluation = check_of(result, "raw_transactions")
    assert not evaluation.passed
    assert "2018-04-01.csv: 4 of 20 rows quarantined (20.0% > 5.0%)" in evaluation.description
    assert "negative_amount=4" in evaluation.description
    assert evaluation.metadata["failing_days"].value == ["2018-04-01"]
    assert "raw_fraud_reports" in {e.asset_key.path[0] for e in result.get_asset_materialization_events()}


def test_an_unreadable_file_fails_the_check_as_a_whole(txguard_home: Path) -> None:
    path = txguard_home / "landing" / "transactions" / "2018-04-01.parquet"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PAR1" + b"\0" * 100)
    result = materialize([raw_transactions], partition_key="2018-04-01")
    evaluation = check_of(result, "raw_transactions")
    assert not result.success and not evaluation.passed
    assert "2018-04-01.parquet: the whole file rejected (100.0% > 5.0%); top rules truncated_parquet=1" in (
        evaluation.description
    )
    assert lake(txguard_home, "raw/transactions", "2018-04-01").empty


def test_the_threshold_comes_from_the_settings(txguard_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXGUARD_QUARANTINE_THRESHOLD", "0.25")
    drop(
        txguard_home,
        "transactions",
        "2018-04-01.csv",
        day_of_transactions("2018-04-01", 1, 20, bad_amounts=4),
    )
    result = materialize([raw_transactions], partition_key="2018-04-01")
    assert result.success and check_of(result, "raw_transactions").passed


def test_a_missing_transactions_file_fails_naming_the_path(txguard_home: Path) -> None:
    result = materialize([raw_transactions], partition_key="2018-04-02")
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    error, message = failure.step_failure_data.error, ""
    while error is not None:
        message, error = message + error.message, error.cause
    assert "MissingLandingFile" in message
    assert str(txguard_home / "landing" / "transactions" / "2018-04-02.csv") in message


def test_a_day_without_reports_is_an_empty_partition(txguard_home: Path) -> None:
    drop(txguard_home, "transactions", "2018-04-01.csv", day_of_transactions("2018-04-01", 1, 5))
    result = materialize([raw_transactions, raw_fraud_reports], partition_key="2018-04-01")
    assert result.success
    assert lake(txguard_home, "raw/fraud_reports", "2018-04-01").empty
    assert metadata_of(result, "raw_fraud_reports")["2018-04-01"]["rows_in"] == 0


def test_a_range_is_one_run_with_metadata_per_day(txguard_home: Path) -> None:
    days = ["2018-04-01", "2018-04-02", "2018-04-03"]
    for n, day in enumerate(days):
        drop(txguard_home, "transactions", f"{day}.csv", day_of_transactions(day, 100 * n, 10 + n))
    drop(txguard_home, "transactions", "2018-04-03.csv", day_of_transactions("2018-04-03", 100, 12))
    result = materialize(
        [raw_transactions],
        tags={"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]},
    )
    per_day = metadata_of(result, "raw_transactions")
    assert sorted(per_day) == days
    assert [per_day[d]["rows_in"] for d in days] == [10, 11, 12]
    # the third day repeats the second day's ids 100..110: caught within the same run
    assert per_day["2018-04-03"]["rules"] == {"duplicate_id_across_files": 11}
    assert not result.success and check_of(result, "raw_transactions").metadata["failing_days"].value == [
        days[2]
    ]


def test_badly_named_files_are_copied_to_quarantine_with_their_reason(txguard_home: Path) -> None:
    bad = drop(txguard_home, "transactions", "latest.csv", day_of_transactions("2018-04-01", 1, 3))
    other = drop(txguard_home, "fraud_reports", "2018-02-30.csv", [], header="transaction_id,reported_at")
    drop(txguard_home, "transactions", "2018-04-01.csv", day_of_transactions("2018-04-01", 1, 3))
    config = dg.RunConfig(ops={"landing_file_rejects": {"config": {"uris": [str(bad)]}}})
    result = materialize([landing_file_rejects], run_config=config)
    assert result.success
    records = sorted((txguard_home / "lake" / "quarantine" / "misnamed").rglob("record.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["name"] == "latest.csv" and "not YYYY-MM-DD.csv" in record["reason"]
    assert Path(record["content"]).read_bytes() == bad.read_bytes()
    everything = materialize([landing_file_rejects])
    assert everything.success
    names = {json.loads(p.read_text())["name"] for p in (txguard_home / "lake").rglob("record.json")}
    assert names == {"latest.csv", other.name}


MARKER = "TOP-SECRET-c0ffee-9d2e"
RANGE = {
    "dagster/asset_partition_range_start": "2018-04-01",
    "dagster/asset_partition_range_end": "2018-04-02",
}


def secret_outside(home: Path) -> Path:
    """A valid landing file outside the landing root, holding the marker: following a link would ingest it."""
    path = home.parent / "outside" / "secret.csv"
    path.parent.mkdir(exist_ok=True)
    lines = [f"{line},{MARKER}" for line in day_of_transactions("2018-04-01", 1, 3)]
    path.write_text("\n".join([HEADER + ",note", *lines]) + "\n")
    return path


def everything_told(instance: dg.DagsterInstance, run_id: str) -> str:
    """Every event of the run (logs, materialization metadata, check results) as text."""
    return "\n".join(repr(entry) for entry in instance.all_logs(run_id))


def test_a_symlinked_landing_file_is_quarantined_by_name_and_nothing_of_its_target_leaks(
    txguard_home: Path,
) -> None:
    secret = secret_outside(txguard_home)
    link = txguard_home / "landing" / "transactions" / "2018-04-01.csv"
    link.parent.mkdir(parents=True)
    os.symlink(secret, link)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize([raw_transactions], partition_key="2018-04-01", instance=instance)
    evaluation = check_of(result, "raw_transactions")
    assert not result.success and not evaluation.passed
    assert "the whole file rejected (100.0% > 5.0%); top rules symlink=1" in evaluation.description
    tx = metadata_of(result, "raw_transactions")["2018-04-01"]
    assert (tx["rows_in"], tx["accepted"], tx["rules"]) == (0, 0, {"symlink": 1})
    (record,) = quarantine(txguard_home, "transactions", "2018-04-01").itertuples()
    assert (record.row_number, record.rule, record.raw_record) == (0, "symlink", None)
    assert (
        record.reason
        == "transactions/2018-04-01.csv is a symbolic link, not a regular file: links are never followed"
    )
    told = everything_told(instance, result.run_id)
    assert "symlink" in told and MARKER not in told and str(secret) not in told
    assert leaks(MARKER, txguard_home / "lake") == []


@pytest.mark.timeout(120)
def test_a_range_over_a_folder_and_a_fifo_named_like_files_completes(txguard_home: Path) -> None:
    days = ["2018-04-01", "2018-04-02", "2018-04-03", "2018-04-04"]
    drop(txguard_home, "transactions", f"{days[0]}.csv", day_of_transactions(days[0], 1, 5))
    (txguard_home / "landing" / "transactions" / f"{days[1]}.csv").mkdir()
    os.mkfifo(txguard_home / "landing" / "transactions" / f"{days[2]}.csv")
    drop(txguard_home, "transactions", f"{days[3]}.csv", day_of_transactions(days[3], 10, 5))
    result = materialize(
        [raw_transactions],
        tags={"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]},
    )
    per_day = metadata_of(result, "raw_transactions")
    assert [per_day[d]["accepted"] for d in days] == [5, 0, 0, 5]
    assert per_day[days[1]]["rules"] == per_day[days[2]]["rules"] == {"not_a_regular_file": 1}
    evaluation = check_of(result, "raw_transactions")
    assert evaluation.metadata["failing_days"].value == days[1:3]
    reasons = [quarantine(txguard_home, "transactions", d)["reason"].item() for d in days[1:3]]
    assert reasons == [
        f"transactions/{days[1]}.csv is a directory, not a regular file: it was never opened",
        f"transactions/{days[2]}.csv is a FIFO (named pipe), not a regular file: it was never opened",
    ]
    assert len(lake(txguard_home, "raw/transactions", days[3])) == 5


def reports_for(home: Path, day: str, lines: list[str]) -> None:
    drop(home, "fraud_reports", f"{day}.csv", lines, header="transaction_id,reported_at")


@pytest.mark.parametrize("fault", ["missing", "truncated"])
def test_a_days_reports_are_ingested_when_its_transactions_file_is_missing_or_unreadable(
    txguard_home: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    monkeypatch.setenv("TXGUARD_QUARANTINE_THRESHOLD", "0.5")
    drop(txguard_home, "transactions", "2018-04-01.csv", day_of_transactions("2018-04-01", 1, 10))
    if fault == "missing":
        assert materialize([raw_transactions], partition_key="2018-04-01").success
    else:
        broken = txguard_home / "landing" / "transactions" / "2018-04-02.parquet"
        broken.write_bytes(b"PAR1" + b"\0" * 100)
    reports_for(
        txguard_home,
        "2018-04-02",
        ["3,2018-04-02T08:00:00Z", "4,2018-04-02T09:00:00Z", "999,2018-04-02T10:00:00Z"],
    )
    result = materialize([raw_transactions, raw_fraud_reports], tags=RANGE)
    assert not result.success
    reports = metadata_of(result, "raw_fraud_reports")["2018-04-02"]
    assert (reports["rows_in"], reports["accepted"], reports["quarantined"]) == (3, 2, 1)
    assert reports["rows_in"] == reports["accepted"] + reports["quarantined"]
    assert reports["rules"] == {"unknown_transaction": 1}
    assert check_of(result, "raw_fraud_reports").passed
    assert lake(txguard_home, "raw/fraud_reports", "2018-04-02")["transaction_id"].tolist() == [3, 4]
    if fault == "truncated":
        assert not check_of(result, "raw_transactions").passed
        assert metadata_of(result, "raw_transactions")["2018-04-02"]["rules"] == {"truncated_parquet": 1}


@dg.asset(partitions_def=daily_partitions, backfill_policy=single_run_backfill, deps=[raw_transactions])
def built_on_transactions() -> None:
    """A stand-in for what is built on the transactions (dbt staging, features)."""


def test_a_failed_transactions_check_blocks_what_is_built_on_them_but_not_the_reports(
    txguard_home: Path,
) -> None:
    drop(
        txguard_home,
        "transactions",
        "2018-04-01.csv",
        day_of_transactions("2018-04-01", 1, 20, bad_amounts=4),
    )
    reports_for(txguard_home, "2018-04-01", [])
    result = materialize(
        [raw_transactions, raw_fraud_reports, built_on_transactions], partition_key="2018-04-01"
    )
    assert not check_of(result, "raw_transactions").passed
    materialized = {e.asset_key.path[0] for e in result.get_asset_materialization_events()}
    assert materialized == {"raw_transactions", "raw_fraud_reports"}
    started = {e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_START}
    assert started == {"raw_transactions", "raw_fraud_reports"}


def test_a_misnamed_symlink_is_recorded_by_name_without_content(txguard_home: Path) -> None:
    secret = secret_outside(txguard_home)
    link = txguard_home / "landing" / "transactions" / "latest.csv"
    link.parent.mkdir(parents=True)
    os.symlink(secret, link)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize([landing_file_rejects], instance=instance)
    assert result.success
    (materialization,) = result.get_asset_materialization_events()
    (shown,) = materialization.step_materialization_data.materialization.metadata["records"].value
    assert (shown["uri"], shown["rule"], shown["content"]) == (str(link), "symlink", None)
    assert "not YYYY-MM-DD.csv" in shown["reason"] and "links are never followed" in shown["reason"]
    (record_file,) = (txguard_home / "lake" / "quarantine" / "misnamed").rglob("record.json")
    assert [p.name for p in record_file.parent.iterdir()] == ["record.json"]
    told = everything_told(instance, result.run_id)
    assert MARKER not in told and str(secret) not in told
    assert leaks(MARKER, txguard_home / "lake") == []


def ingest_range_job() -> dg.JobDefinition:
    """Both ingest assets on the multiprocess executor, as a range backfill launched from the UI runs them."""
    defs = with_settings(
        dg.Definitions(
            assets=[raw_transactions, raw_fraud_reports],
            jobs=[dg.define_asset_job("ingest_range", partitions_def=daily_partitions)],
            executor=dg.multiprocess_executor.configured({"max_concurrent": 2}),
        )
    )
    return defs.resolve_job_def("ingest_range")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_in_a_multiprocess_range_the_reports_are_checked_after_the_runs_transactions(
    txguard_home: Path,
) -> None:
    """No graph edge orders the two steps: the ``landing`` pool (one slot) and transactions' priority do."""
    days = ["2018-04-01", "2018-04-02", "2018-04-03"]
    for n, day in enumerate(days):
        drop(txguard_home, "transactions", f"{day}.csv", day_of_transactions(day, 100 * n, 10))
    reports_for(txguard_home, days[1], [f"{i},{days[1]}T12:00:00Z" for i in range(5)])
    reports_for(txguard_home, days[2], [f"{i},{days[2]}T12:00:00Z" for i in range(100, 105)])
    records = run_in_step_processes("tests.dagster.test_ingest_assets", "ingest_range_job", days[0], days[-1])
    spans = step_spans(records)
    first, second = sorted(spans.values())
    assert spans["raw_transactions"] == first and first[1] <= second[0]
    for day in days[1:]:
        assert len(lake(txguard_home, "raw/fraud_reports", day)) == 5
        assert quarantine(txguard_home, "fraud_reports", day).empty
