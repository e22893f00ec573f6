"""The landing sensor over a real folder and over a real S3 API (moto server on 127.0.0.1): one run per new or
changed file, never one for a file already processed, bad names to the rejects asset, hundreds per tick,
links, folders and FIFOs reported (never skipped, never read), uploads in progress ignored until renamed."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import pytest

from jobs.ingest.landing import BadLandingName, LandingFile, parse_landing_name, plan_landing
from jobs.platform.layout import partition_uri, quarantine_uri
from jobs.platform.storage import read_parquet
from orchestration.defs import ingest
from orchestration.resources import TxguardSettings
from tests.support import materialize, with_settings

HEADER = "transaction_id,tx_datetime,customer_id,terminal_id,tx_amount\n"
DEFS = with_settings(ingest.defs)


def tick(cursor: str | None = None, instance: dg.DagsterInstance | None = None):
    """One sensor evaluation, its run requests resolved against the definitions (as the daemon does)."""
    context = dg.build_sensor_context(
        cursor=cursor,
        instance=instance or dg.DagsterInstance.ephemeral(),
        definitions=DEFS,
        resources={"settings": TxguardSettings()},
    )
    return ingest.landing_sensor.evaluate_tick(context)


def by_partition(data) -> dict[tuple[str, str | None], dg.RunRequest]:
    return {
        (request.asset_selection[0].path[0], request.partition_key): request for request in data.run_requests
    }


@pytest.mark.parametrize(
    ("name", "day"),
    [("2018-04-01.csv", dt.date(2018, 4, 1)), ("2018-12-31.parquet", dt.date(2018, 12, 31))],
)
def test_well_formed_names_map_to_their_day(name: str, day: dt.date) -> None:
    assert parse_landing_name(name, dt.date(2018, 4, 1)) == day


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("latest.csv", "is not YYYY-MM-DD.csv"),
        ("2018-02-30.csv", "not a calendar date"),
        ("2018-04-01.CSV", "is not YYYY-MM-DD.csv"),
        ("2018-04-01.csv.tmp", "is not YYYY-MM-DD.csv"),
        ("2018-04-01.json", "is not YYYY-MM-DD.csv"),
        ("../2018-04-01.csv", "traversal"),
        ("..2018-04-01.csv", "traversal"),
        ("sub/2018-04-01.csv", "nested path"),
        ("2018-04-01.csv/../../etc/passwd", "traversal"),
        ("2018-04-01 .csv", "is not YYYY-MM-DD.csv"),
        ("2018-04-01\n.csv", "non-printable"),
        ("2018-04-0١.csv", "non-ASCII"),
        ("2018-03-31.csv", "before the first partition"),
    ],
)
def test_anything_else_is_a_bad_name_with_a_reason(name: str, reason: str) -> None:
    with pytest.raises(BadLandingName, match=reason):
        parse_landing_name(name, dt.date(2018, 4, 1))


def put(root: Path, source: str, name: str, content: str = HEADER) -> Path:
    path = root / source / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


def test_one_run_per_new_file_and_none_for_processed_ones(txguard_home: Path) -> None:
    landing = txguard_home / "landing"
    first = put(landing, "transactions", "2018-04-01.csv")
    put(landing, "transactions", "2018-04-02.parquet")
    put(landing, "fraud_reports", "2018-04-02.csv")
    bad = put(landing, "transactions", "latest.csv")
    data = tick()
    requests = by_partition(data)
    assert set(requests) == {
        ("raw_transactions", "2018-04-01"),
        ("raw_transactions", "2018-04-02"),
        ("raw_fraud_reports", "2018-04-02"),
        ("landing_file_rejects", None),
    }
    stat = first.stat()
    assert requests["raw_transactions", "2018-04-01"].run_key == f"{first}:{stat.st_size}:{stat.st_mtime:.6f}"
    reject = requests["landing_file_rejects", None]
    assert reject.run_key == f"{bad}:{bad.stat().st_size}"
    assert reject.run_config["ops"]["landing_file_rejects"]["config"]["uris"] == [str(bad)]
    assert sorted(json.loads(data.cursor)) == [
        "fraud_reports/2018-04-02.csv",
        "transactions/2018-04-01.csv",
        "transactions/2018-04-02.parquet",
        "transactions/latest.csv",
    ]

    again = tick(data.cursor)
    assert again.run_requests == [] and again.cursor == data.cursor

    first.write_text(HEADER + "1,2018-04-01T00:00:00Z,1,1,1.00\n")
    changed = tick(again.cursor)
    assert [(r.partition_key, r.run_key) for r in changed.run_requests] == [
        ("2018-04-01", f"{first}:{first.stat().st_size}:{first.stat().st_mtime:.6f}")
    ]
    assert tick(changed.cursor).run_requests == []


def test_a_removed_file_leaves_the_cursor(txguard_home: Path) -> None:
    landing = txguard_home / "landing"
    gone = put(landing, "transactions", "2018-04-01.csv")
    put(landing, "transactions", "2018-04-02.csv")
    cursor = tick().cursor
    gone.unlink()
    assert list(json.loads(tick(cursor).cursor)) == ["transactions/2018-04-02.csv"]


def test_files_dated_after_the_last_partition_wait_for_it() -> None:
    today = dt.date(2018, 4, 10)
    files = [
        LandingFile("transactions", "2018-04-10.csv", "l/transactions/2018-04-10.csv", 5, "1"),
        LandingFile("transactions", "2018-04-12.csv", "l/transactions/2018-04-12.csv", 5, "1"),
    ]
    plan = plan_landing(files, None, dt.date(2018, 4, 1), today)
    assert [day for _, day in plan.ingest] == [today]
    assert [file.name for file in plan.waiting] == ["2018-04-12.csv"]
    assert list(json.loads(plan.cursor)) == ["transactions/2018-04-10.csv"]
    later = plan_landing(files, plan.cursor, dt.date(2018, 4, 1), dt.date(2018, 4, 12))
    assert [day for _, day in later.ingest] == [dt.date(2018, 4, 12)]


def test_hundreds_of_files_in_one_tick(txguard_home: Path) -> None:
    landing = txguard_home / "landing"
    start = dt.date(2018, 4, 1)
    for offset in range(150):
        day = (start + dt.timedelta(days=offset)).isoformat()
        put(landing, "transactions", f"{day}.csv")
        put(landing, "fraud_reports", f"{day}.parquet")
    for n in range(10):
        put(landing, "fraud_reports", f"report {n}.csv")
    began = time.perf_counter()
    data = tick()
    elapsed = time.perf_counter() - began
    requests = data.run_requests
    assert len(requests) == 310 and len({r.run_key for r in requests}) == 310
    assert sum(r.asset_selection == [dg.AssetKey("landing_file_rejects")] for r in requests) == 10
    assert elapsed < 10, f"a tick over 310 files took {elapsed:.1f}s"
    assert len(data.cursor) < 310 * 50
    assert tick(data.cursor).run_requests == []


def ingest_as_txguard_run(instance: dg.DagsterInstance, first: str, last: str) -> None:
    """Ingest ``first..last`` the way ``txguard run`` does (``run_partition_range``: one in-process range run
    recorded in ``instance``), through a job of the real ingest assets, named as the CLI's job."""
    from orchestration.runs import PIPELINE_JOB, run_partition_range

    job = dg.define_asset_job(PIPELINE_JOB, selection=[ingest.raw_transactions, ingest.raw_fraud_reports])
    defs = dg.Definitions.merge(DEFS, dg.Definitions(jobs=[job]))
    outcome = run_partition_range(defs, first, last, instance, notify=lambda _: None)
    assert outcome.success, (outcome.failed_steps, outcome.failed_checks)


def test_days_ingested_by_txguard_run_are_not_requested_again(
    txguard_home: Path, dagster_instance: dg.DagsterInstance
) -> None:
    """After a headless run, a first tick (no cursor: the daemon just started) asks for nothing it ingested;
    a file replaced since, and a day never ingested, are asked for."""
    landing = txguard_home / "landing"
    days = ["2018-04-01", "2018-04-02", "2018-04-03"]
    for n, day in enumerate(days, start=1):
        put(landing, "transactions", f"{day}.csv", HEADER + f"{n},{day}T10:00:00Z,1,2,3.00\n")
        put(landing, "fraud_reports", f"{day}.csv", f"transaction_id,reported_at\n{n},{day}T11:00:00Z\n")
    ingest_as_txguard_run(dagster_instance, days[0], days[-1])
    first = tick(instance=dagster_instance)
    assert first.run_requests == []
    assert len(json.loads(first.cursor)) == 6

    replaced = put(landing, "transactions", "2018-04-02.csv", HEADER + "2,2018-04-02T10:00:00Z,1,2,30.00\n")
    new = put(landing, "transactions", "2018-04-04.csv", HEADER + "4,2018-04-04T10:00:00Z,1,2,3.00\n")
    fresh = tick(instance=dagster_instance)
    assert sorted((r.partition_key, r.run_key) for r in fresh.run_requests) == [
        ("2018-04-02", f"{replaced}:{replaced.stat().st_size}:{replaced.stat().st_mtime:.6f}"),
        ("2018-04-04", f"{new}:{new.stat().st_size}:{new.stat().st_mtime:.6f}"),
    ]


def test_a_demo_home_has_partitions_from_its_recorded_first_day_to_yesterday(txguard_home: Path) -> None:
    """``txguard demo`` records its first day in the home; a code location loaded there (a fresh process, as
    ``make ui`` loads it) has exactly the demo's days as partitions, so the sensor maps every demo file."""
    from jobs.platform.days import last_day, record_first_day
    from jobs.platform.settings import REPO_ROOT
    from orchestration.cli.demo import DEMO_DAYS, demo_window

    first, last = demo_window(DEMO_DAYS, last_day())
    record_first_day(txguard_home, first)
    shown = "from orchestration.partitions import daily_partitions as p; print(*p.get_partition_keys())"
    done = subprocess.run([sys.executable, "-c", shown], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    keys = done.stdout.split()
    assert (keys[0], keys[-1], len(keys)) == (first.isoformat(), last.isoformat(), DEMO_DAYS)


@pytest.fixture
def s3(moto_s3, monkeypatch: pytest.MonkeyPatch):
    """The moto S3 server with a landing bucket and a lake bucket holding txguard's landing zone and lake."""
    monkeypatch.setenv("TXGUARD_LANDING_ROOT", "s3://landing/zone")
    monkeypatch.setenv("TXGUARD_LAKE_ROOT", "s3://lake/txguard")
    moto_s3.create_bucket(Bucket="landing")
    moto_s3.create_bucket(Bucket="lake")
    return moto_s3


def test_the_sensor_over_s3_uses_etags_and_sees_changes(s3) -> None:
    s3.put_object(Bucket="landing", Key="zone/transactions/2018-04-01.csv", Body=HEADER.encode())
    s3.put_object(
        Bucket="landing", Key="zone/fraud_reports/2018-04-01.csv", Body=b"transaction_id,reported_at\n"
    )
    s3.put_object(Bucket="landing", Key="zone/transactions/../escape.csv", Body=b"x")
    data = tick()
    requests = by_partition(data)
    etag = s3.head_object(Bucket="landing", Key="zone/transactions/2018-04-01.csv")["ETag"].strip('"')
    uri = "s3://landing/zone/transactions/2018-04-01.csv"
    assert requests["raw_transactions", "2018-04-01"].run_key == f"{uri}:{len(HEADER)}:{etag}"
    assert ("raw_fraud_reports", "2018-04-01") in requests
    assert requests["landing_file_rejects", None].run_key == "s3://landing/zone/transactions/../escape.csv:1"
    assert tick(data.cursor).run_requests == []

    body = HEADER + "1,2018-04-01T00:00:00Z,1,1,1.00\n"
    s3.put_object(Bucket="landing", Key="zone/transactions/2018-04-01.csv", Body=body.encode())
    changed = tick(data.cursor)
    assert [(r.partition_key, r.run_key.split(":")[-2]) for r in changed.run_requests] == [
        ("2018-04-01", str(len(body)))
    ]
    assert tick(changed.cursor).run_requests == []


def test_s3_objects_ingested_by_txguard_run_are_requested_again_only_under_a_new_etag(
    s3, dagster_instance: dg.DagsterInstance
) -> None:
    key = "zone/transactions/2018-04-01.csv"
    s3.put_object(Bucket="landing", Key=key, Body=(HEADER + "1,2018-04-01T10:00:00Z,1,2,3.00\n").encode())
    ingest_as_txguard_run(dagster_instance, "2018-04-01", "2018-04-01")
    assert tick(instance=dagster_instance).run_requests == []
    same_size = (HEADER + "1,2018-04-01T10:00:00Z,1,2,4.00\n").encode()
    s3.put_object(Bucket="landing", Key=key, Body=same_size)
    etag = s3.head_object(Bucket="landing", Key=key)["ETag"].strip('"')
    (request,) = tick(instance=dagster_instance).run_requests
    assert request.run_key == f"s3://landing/{key}:{len(same_size)}:{etag}"


def test_hundreds_of_s3_objects_in_one_tick(s3) -> None:
    days = [(dt.date(2018, 4, 1) + dt.timedelta(days=offset)).isoformat() for offset in range(300)]
    with ThreadPoolExecutor(8) as pool:
        for day in days:
            pool.submit(
                s3.put_object, Bucket="landing", Key=f"zone/transactions/{day}.csv", Body=HEADER.encode()
            )
    began = time.perf_counter()
    data = tick()
    elapsed = time.perf_counter() - began
    assert len(data.run_requests) == 300 and elapsed < 20, f"{elapsed:.1f}s"
    assert tick(data.cursor).run_requests == []


def test_a_day_ingested_from_s3_into_an_s3_lake(s3) -> None:
    day = "2018-04-02"
    rows = "".join(f"{i},{day}T0{i}:00:00Z,1,2,{i}.50\n" for i in range(1, 6))
    s3.put_object(
        Bucket="landing", Key=f"zone/transactions/{day}.csv", Body=(HEADER + rows + "6,x,1,2,3\n").encode()
    )
    result = materialize([ingest.raw_transactions], partition_key=day)
    lake = read_parquet(partition_uri("s3://lake/txguard", "raw/transactions", day)).to_pandas()
    assert lake["transaction_id"].tolist() == [1, 2, 3, 4, 5]
    assert set(lake["source_file"]) == {f"s3://landing/zone/transactions/{day}.csv"}
    quarantined = read_parquet(quarantine_uri("s3://lake/txguard", "transactions", day)).to_pandas()
    assert quarantined[["row_number", "rule"]].values.tolist() == [[6, "wrong_type"]]
    assert not result.success  # 1 of 6 rows is over the 5 % threshold: the blocking check says so
    next_day = "2018-04-03"
    body = HEADER + f"1,{next_day}T01:00:00Z,1,2,3.00\n" + f"7,{next_day}T01:00:00Z,1,2,3.00\n"
    s3.put_object(Bucket="landing", Key=f"zone/transactions/{next_day}.csv", Body=body.encode())
    materialize([ingest.raw_transactions], partition_key=next_day)
    quarantined = read_parquet(quarantine_uri("s3://lake/txguard", "transactions", next_day)).to_pandas()
    assert quarantined["reason"].tolist() == [f"transaction_id 1 already accepted in partition {day}"]


MARKER = "TOP-SECRET-c0ffee-77aa"
RANGE_TAGS = {
    "dagster/asset_partition_range_start": "2018-04-02",
    "dagster/asset_partition_range_end": "2018-04-03",
}


@pytest.mark.timeout(120)
def test_entries_that_are_not_files_are_reported_never_skipped(txguard_home: Path) -> None:
    """Named like a landing file, a link, a folder or a FIFO runs for its day (where it is quarantined whole);
    named otherwise, it goes to the rejects; nothing of a link's target reaches a request."""
    landing = txguard_home / "landing"
    secret = txguard_home.parent / "outside.csv"
    secret.write_text(HEADER + f"1,2018-04-01T00:00:00Z,1,1,1.00,{MARKER}\n")
    (landing / "transactions").mkdir(parents=True)
    link = landing / "transactions" / "2018-04-01.csv"
    os.symlink(secret, link)
    (landing / "transactions" / "2018-04-02.csv").mkdir()
    os.mkfifo(landing / "transactions" / "2018-04-03.csv")
    misnamed = landing / "transactions" / "latest.csv"
    os.symlink(secret, misnamed)
    put(landing, "fraud_reports", "2018-04-01.csv", "transaction_id,reported_at\n")
    data = tick()
    requests = by_partition(data)
    assert set(requests) == {
        ("raw_transactions", "2018-04-01"),
        ("raw_transactions", "2018-04-02"),
        ("raw_transactions", "2018-04-03"),
        ("raw_fraud_reports", "2018-04-01"),
        ("landing_file_rejects", None),
    }
    assert requests["raw_transactions", "2018-04-01"].run_key == f"{link}:0:{os.lstat(link).st_mtime:.6f}"
    reject = requests["landing_file_rejects", None]
    assert reject.run_config["ops"]["landing_file_rejects"]["config"]["uris"] == [str(misnamed)]
    assert MARKER not in repr(data.run_requests) and str(secret) not in repr(data.run_requests)
    assert tick(data.cursor).run_requests == []


def test_uploads_in_progress_are_ignored_until_renamed(txguard_home: Path) -> None:
    landing = txguard_home / "landing"
    part = put(landing, "transactions", ".2018-04-01.csv.part", HEADER)
    for name in ("2018-04-02.csv.crdownload", "2018-04-03.csv.partial", "2018-04-04.parquet.filepart"):
        put(landing, "transactions", name)
    put(landing, "fraud_reports", "2018-04-05.csv.tmp", "transaction_id,reported_at\n")
    data = tick()
    assert data.run_requests == [] and json.loads(data.cursor) == {}
    part.write_text(HEADER + "1,2018-04-01T00:00:00Z,1,1,1.00\n")
    growing = tick(data.cursor)
    assert growing.run_requests == [] and growing.cursor == data.cursor
    done = part.rename(part.with_name("2018-04-01.csv"))
    renamed = tick(growing.cursor)
    assert [(r.partition_key, r.run_key.split(":")[0]) for r in renamed.run_requests] == [
        ("2018-04-01", str(done))
    ]
    assert materialize([ingest.landing_file_rejects]).success
    assert not (txguard_home / "lake" / "quarantine" / "misnamed").exists()


def test_a_symlinked_source_folder_stops_the_tick(txguard_home: Path) -> None:
    elsewhere = txguard_home.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "2018-04-01.csv").write_text(HEADER + f"1,2018-04-01T00:00:00Z,1,1,1.00,{MARKER}\n")
    (txguard_home / "landing").mkdir()
    os.symlink(elsewhere, txguard_home / "landing" / "transactions")
    with pytest.raises(Exception, match="transactions is a symlink, not a folder"):
        tick()


def test_on_s3_uploads_in_progress_are_ignored_and_a_key_prefix_is_not_a_file(s3) -> None:
    for key in ("zone/transactions/.2018-04-01.csv.part", "zone/transactions/2018-04-01.csv.crdownload"):
        s3.put_object(Bucket="landing", Key=key, Body=HEADER.encode())
    s3.put_object(Bucket="landing", Key="zone/transactions/2018-04-02.csv/", Body=b"")
    nested = "zone/fraud_reports/2018-04-03.csv/part-0"
    s3.put_object(Bucket="landing", Key=nested, Body=b"transaction_id,reported_at\n")
    data = tick()
    requests = by_partition(data)
    assert set(requests) == {
        ("raw_transactions", "2018-04-02"),
        ("raw_fraud_reports", "2018-04-03"),
        ("landing_file_rejects", None),
    }
    reject = requests["landing_file_rejects", None]
    assert reject.run_config["ops"]["landing_file_rejects"]["config"]["uris"] == [f"s3://landing/{nested}"]
    assert sorted(json.loads(data.cursor)) == [
        "fraud_reports/2018-04-03.csv",
        "fraud_reports/2018-04-03.csv/part-0",
        "transactions/2018-04-02.csv",
    ]
    assert not materialize([ingest.raw_transactions], partition_key="2018-04-02").success
    quarantined = read_parquet(quarantine_uri("s3://lake/txguard", "transactions", "2018-04-02")).to_pandas()
    assert quarantined[["row_number", "rule", "reason"]].values.tolist() == [
        [
            0,
            "not_a_regular_file",
            "transactions/2018-04-02.csv is a directory, not a regular file: it was never opened",
        ]
    ]
    reports = materialize([ingest.raw_fraud_reports], tags=RANGE_TAGS)
    done_days = [
        event.step_materialization_data.materialization
        for event in reports.get_asset_materialization_events()
    ]
    rules = {done.partition: done.metadata["rules"].value for done in done_days}
    assert rules == {"2018-04-02": {}, "2018-04-03": {"not_a_regular_file": 1}}
    rejects = materialize([ingest.landing_file_rejects])
    (materialization,) = rejects.get_asset_materialization_events()
    records = materialization.step_materialization_data.materialization.metadata["records"].value
    assert [(r["uri"], r["rule"]) for r in records] == [(f"s3://landing/{nested}", "misnamed")]
