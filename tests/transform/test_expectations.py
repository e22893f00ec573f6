"""The GX suites in expectations/ against real staged tables that dbt built from lake partitions.

Ten days are staged once; each bad day breaks one thing and must fail exactly the expectation named for it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd
import pytest

from jobs.platform.layout import RAW_FRAUD_REPORTS, RAW_TRANSACTIONS
from jobs.platform.settings import REPO_ROOT
from jobs.transform.dbt_windows import dbt_environment, dbt_vars, window_from_keys
from jobs.transform.expectations import (
    SUITES,
    SUITES_DIR,
    Batch,
    SuiteError,
    load_suite,
    main,
    validate_frames,
    validate_staged,
)
from tests.support import report_rows, transaction_rows, write_raw_partition

DAILY = 20
DAYS = [dt.date(2018, 4, 1) + dt.timedelta(days=n) for n in range(11)]
OUT_OF_RANGE, SPIKE, COLLAPSE, MISFILED = DAYS[7], DAYS[8], DAYS[9], DAYS[10]


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Staged tables for 2018-04-01..11 (one `dbt run` of the staging models); returns the warehouse."""
    root = tmp_path_factory.mktemp("quality")
    lake, warehouse = root / "lake", root / "warehouse" / "txguard.duckdb"
    warehouse.parent.mkdir()
    for day in DAYS:
        rows = transaction_rows(day, 3 if day == COLLAPSE else DAILY)
        if day == OUT_OF_RANGE:
            rows[4]["tx_amount"] = 50_000.0
        if day == MISFILED:
            rows[6]["tx_datetime"] = dt.datetime.combine(day, dt.time(23, 59), tzinfo=dt.UTC) + dt.timedelta(
                hours=1
            )
            rows[7]["customer_id"] = None
        write_raw_partition(lake, RAW_TRANSACTIONS, day, rows)
        earlier = transaction_rows(day - dt.timedelta(days=1), DAILY)
        reported = [row["transaction_id"] for row in earlier[: 8 if day == SPIKE else 1]]
        write_raw_partition(lake, RAW_FRAUD_REPORTS, day, report_rows(day, reported))
    env = {**os.environ, **dbt_environment(warehouse), "DBT_TARGET_PATH": str(root / "target")}
    window = window_from_keys(DAYS[0].isoformat(), DAYS[-1].isoformat())
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("dbt")),
            "run",
            "--select",
            "path:models/staging",
            "--vars",
            json.dumps(dbt_vars(window, str(lake))),
        ],
        cwd=REPO_ROOT / "dbt_project",
        env={**env, "DBT_LOG_PATH": str(root / "target")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    return warehouse


@pytest.fixture(scope="module")
def gx_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gx")


def validate(staged: Path, gx_root: Path, first: dt.date, last: dt.date | None = None):
    window = window_from_keys(first.isoformat(), (last or first).isoformat())
    return validate_staged(staged, window, gx_root, "test")


def test_suite_files_name_every_expectation() -> None:
    for name in SUITES:
        document = load_suite(name)
        assert document["name"] == name
        assert all(e["meta"]["name"] for e in document["expectations"])


def test_a_normal_window_passes_with_observed_values_and_data_docs(staged: Path, gx_root: Path) -> None:
    summaries = validate(staged, gx_root, DAYS[4], DAYS[6])
    transactions_summary, reports_summary = summaries["transactions"], summaries["fraud_reports"]
    assert transactions_summary.success and reports_summary.success
    assert transactions_summary.failed == [] and len(transactions_summary.passed) == 7
    assert transactions_summary.row_count == 3 * DAILY
    assert transactions_summary.observed_values["row_count_vs_trailing_week"] == 3 * DAILY
    assert transactions_summary.parameters["min_row_count"] == 30
    assert transactions_summary.parameters["max_row_count"] == 120
    assert transactions_summary.facts == {"trailing_daily_mean": 20.0, "trailing_days_with_data": 4}
    assert reports_summary.row_count == 3 and reports_summary.facts["fraud_rate"] == pytest.approx(3 / 60)
    page = Path(unquote(urlparse(transactions_summary.data_docs).path))
    assert page.is_file() and "tx_amount" in page.read_text()


def test_an_amount_out_of_range_fails_the_named_expectation(staged: Path, gx_root: Path) -> None:
    summary = validate(staged, gx_root, OUT_OF_RANGE)["transactions"]
    assert not summary.success
    assert summary.failed == ["tx_amount_range"]
    assert summary.observed_values["tx_amount_range"]["unexpected_count"] == 1
    (row,) = summary.unexpected_rows
    assert row["tx_amount"] == 50_000.0 and row["transaction_id"] == OUT_OF_RANGE.toordinal() * 1000 + 4


def test_one_suite_alone_reads_and_validates_only_its_source(staged: Path, gx_root: Path) -> None:
    window = window_from_keys(SPIKE.isoformat(), SPIKE.isoformat())
    summaries = validate_staged(staged, window, gx_root, "test", suites=["fraud_reports"])
    assert list(summaries) == ["fraud_reports"]
    assert summaries["fraud_reports"].failed == ["fraud_rate_band"]


def test_a_fraud_report_spike_fails_the_fraud_rate_band(staged: Path, gx_root: Path) -> None:
    summaries = validate(staged, gx_root, SPIKE)
    assert summaries["transactions"].success
    summary = summaries["fraud_reports"]
    assert summary.failed == ["fraud_rate_band"]
    assert summary.observed_values["fraud_rate_band"] == 8
    assert summary.parameters["max_fraud_reports"] == 1
    assert summary.facts["fraud_rate"] == pytest.approx(8 / DAILY)


def test_a_volume_collapse_fails_the_trailing_week_band(staged: Path, gx_root: Path) -> None:
    summary = validate(staged, gx_root, COLLAPSE)["transactions"]
    assert summary.failed == ["row_count_vs_trailing_week"]
    assert summary.observed_values["row_count_vs_trailing_week"] == 3
    assert summary.parameters["min_row_count"] == DAILY // 2


def test_misfiled_timestamps_and_missing_customers_are_named(staged: Path, gx_root: Path) -> None:
    summary = validate(staged, gx_root, MISFILED)["transactions"]
    assert sorted(summary.failed) == ["customer_id_null_rate", "tx_datetime_in_partition"]
    ids = {row["transaction_id"] for row in summary.unexpected_rows}
    assert ids == {MISFILED.toordinal() * 1000 + 6, MISFILED.toordinal() * 1000 + 7}


def test_a_multi_day_window_is_validated_as_one_batch(staged: Path, gx_root: Path) -> None:
    summary = validate(staged, gx_root, DAYS[5], OUT_OF_RANGE)["transactions"]
    assert summary.row_count == 3 * DAILY
    assert summary.failed == ["tx_amount_range"]


def test_a_suite_that_gx_cannot_apply_in_full_is_refused(tmp_path: Path, gx_root: Path) -> None:
    document = json.loads((SUITES_DIR / "transactions.json").read_text())
    document["expectations"].append(
        {"type": "expect_column_values_to_be_between", "kwargs": {}, "meta": {"name": "no_column"}}
    )
    (tmp_path / "transactions.json").write_text(json.dumps(document))
    frame = pd.DataFrame({"transaction_id": [1]})
    with pytest.raises(SuiteError, match=r"(?s)transactions\.json: .*column"):
        validate_frames({"transactions": Batch(frame, {})}, gx_root, "test", suites_dir=tmp_path)


def test_unnamed_expectations_are_refused(tmp_path: Path) -> None:
    document = json.loads((SUITES_DIR / "fraud_reports.json").read_text())
    del document["expectations"][0]["meta"]
    (tmp_path / "fraud_reports.json").write_text(json.dumps(document))
    with pytest.raises(SuiteError, match=r"meta\.name"):
        load_suite("fraud_reports", tmp_path)


def test_the_docs_command_builds_the_site(
    staged: Path, gx_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = gx_root.parent / "home"
    monkeypatch.setenv("TXGUARD_HOME", str(home))
    monkeypatch.setenv("TXGUARD_WAREHOUSE", str(staged))
    assert main(["validate", "--from", OUT_OF_RANGE.isoformat(), "--to", OUT_OF_RANGE.isoformat()]) == 1
    assert "transactions: FAILED tx_amount_range" in capsys.readouterr().out
    assert main(["docs"]) == 0
    index = Path(capsys.readouterr().out.strip())
    assert index == home / "gx" / "data_docs" / "index.html"
    assert "transactions" in index.read_text()
    assert list((home / "gx" / "data_docs" / "validations" / "transactions").rglob("*.html"))
