"""Label maturity and warm-up: the pure rules on known days, then ``txguard evaluate`` on a real lake that is
missing the week of fraud reports after its test days (refused, naming them), then complete (measured)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from jobs.features.definitions import HISTORY_DAYS
from jobs.platform.layout import RAW_FRAUD_REPORTS, RAW_TRANSACTIONS
from jobs.training.evaluate import TEST_END, TEST_START
from jobs.training.maturity import (
    LABEL_DELAY_DAYS,
    first_ingested_day,
    first_model_day,
    format_days,
    missing_report_days,
    newest_report_day,
    warm_up_end,
)
from jobs.training.trainer import matured_window
from tests.support import (
    handbook_features,
    handbook_transactions,
    report_rows,
    write_feature_lake,
    write_raw_partition,
)

DAY = dt.timedelta(days=1)


def test_labels_need_the_report_days_of_the_whole_delay_after_the_last_day() -> None:
    first, last = dt.date(2018, 8, 8), dt.date(2018, 8, 14)
    assert missing_report_days(first, last, dt.date(2018, 8, 21)) == []
    assert missing_report_days(first, last, dt.date(2018, 9, 1)) == []
    missing = missing_report_days(first, last, last)
    assert missing == [last + DAY * i for i in range(1, LABEL_DELAY_DAYS + 1)]
    assert format_days(missing) == "2018-08-15..2018-08-21 (7 days)"
    assert missing_report_days(first, last, dt.date(2018, 8, 20)) == [dt.date(2018, 8, 21)]
    assert format_days([dt.date(2018, 8, 21)]) == "2018-08-21"
    assert missing_report_days(first, last, None)[0] == first + DAY


def test_warm_up_ends_when_the_features_are_whole_and_a_first_model_can_exist() -> None:
    first = dt.date(2018, 4, 1)
    model_day = first_model_day(first)
    matured_window(model_day, earliest_day=first)
    with pytest.raises(ValueError, match="not enough matured history"):
        matured_window(model_day - DAY, earliest_day=first)
    assert warm_up_end(first) == max(first + DAY * HISTORY_DAYS, model_day) == dt.date(2018, 5, 8)


def test_the_lake_says_its_first_day_and_its_newest_report_day(tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    assert first_ingested_day(lake) is None and newest_report_day(lake) is None
    write_raw_partition(lake, RAW_FRAUD_REPORTS, "2018-04-03", [])
    write_raw_partition(lake, RAW_FRAUD_REPORTS, "2018-04-05", report_rows("2018-04-05", [1]))
    write_raw_partition(lake, RAW_TRANSACTIONS, "2018-04-02", [])
    assert newest_report_day(lake) == dt.date(2018, 4, 5)
    assert first_ingested_day(lake) == dt.date(2018, 4, 2)


def reported_before(tx: pd.DataFrame, cut: pd.Timestamp) -> pd.DataFrame:
    """``tx`` as a lake holds it when the fraud reports are ingested up to ``cut`` only."""
    return tx.assign(reported_at=tx["reported_at"].where(tx["reported_at"] < cut))


@pytest.fixture(scope="module")
def summer() -> pd.DataFrame:
    """A handbook-style simulation from the production protocol's first day to the last test day."""
    return handbook_transactions(n_days=56, start=dt.date(2018, 6, 20), seed=11)


@pytest.mark.slow
def test_evaluate_refuses_immature_labels_then_measures_once_the_reports_are_in(
    summer: pd.DataFrame, txguard_home: Path
) -> None:
    from click.testing import CliRunner

    from orchestration.cli.models import evaluate

    assert summer["tx_datetime"].max().date() == TEST_END
    cut = pd.Timestamp(TEST_END + DAY, tz="UTC")
    lake = txguard_home / "lake"
    write_feature_lake(lake, reported_before(summer, cut), handbook_features(summer))
    assert newest_report_day(str(lake)) == TEST_END

    runner = CliRunner()
    refused = runner.invoke(evaluate, ["--lake", str(lake), "--device", "cpu"])
    assert refused.exit_code == 1, refused.output
    assert f"the labels of 2018-07-25..{TEST_END} are not mature" in refused.output
    assert "missing report days: 2018-08-15..2018-08-21 (7 days)" in refused.output
    assert "|" not in refused.output and "AP" not in refused.output, "no number before the labels are in"

    late = summer[summer["reported_at"] >= cut]
    for offset in range(1, LABEL_DELAY_DAYS + 1):
        day = TEST_END + DAY * offset
        rows = late[late["reported_at"].dt.date == day]
        write_raw_partition(lake, RAW_FRAUD_REPORTS, day, [
            {"transaction_id": int(t), "reported_at": r}
            for t, r in zip(rows["transaction_id"], rows["reported_at"], strict=True)
        ])  # fmt: skip
    measured = runner.invoke(evaluate, ["--lake", str(lake), "--device", "cpu"])
    assert measured.exit_code == 0, measured.output
    assert f"test {TEST_START}..{TEST_END}" in measured.output
    assert "| txguard LightGBM, handbook protocol |" in measured.output


def test_the_promotion_holdout_refuses_immature_labels(summer: pd.DataFrame, tmp_path: Path) -> None:
    from jobs.registry.release import latest_holdout
    from jobs.training.maturity import ImmatureLabels

    lake = str(tmp_path / "lake")
    behind = reported_before(summer, pd.Timestamp(TEST_END - DAY, tz="UTC"))
    write_feature_lake(lake, behind, handbook_features(summer))
    with pytest.raises(ImmatureLabels) as refused:
        latest_holdout(lake)
    message = str(refused.value)
    assert message.startswith("the promotion holdout: the labels of 2018-08-01..2018-08-07 are not mature")
    assert "the newest is 2018-08-12; missing report days: 2018-08-13..2018-08-14 (2 days)" in message
