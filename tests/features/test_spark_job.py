"""Spark feature job: hand-computed edges, no leakage, parity with two independent references, bad input."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jobs.features.contract import FEATURE_SCHEMA, check_feature_partitions, contract_failures
from jobs.features.definitions import FEATURE_COLUMNS, FEATURE_SET_VERSION, HISTORY_DAYS
from jobs.features.spark_job import (
    OUTPUT_COLUMNS,
    build_features,
    compute_features,
    shuffle_partitions_for,
    spark_uri,
)
from jobs.features.tiles import days_between
from jobs.platform.layout import (
    CUSTOMER_TILES,
    RAW_TRANSACTIONS,
    TERMINAL_TILES,
    TRANSACTION_FEATURES,
    partition_uri,
)
from jobs.platform.storage import read_parquet
from jobs.simulation.simulator import SimulationConfig, simulate
from jobs.testing.reference_features import (
    duckdb_features,
    normalise,
    pandas_features,
    random_raw,
    write_raw_lake,
)
from tests.support import perturb_after

D = dt.date(2018, 5, 10)  # a Thursday
T = pd.Timestamp("2018-05-10 12:00:00", tz="UTC")
S, H, DAY = pd.Timedelta(seconds=1), pd.Timedelta(hours=1), pd.Timedelta(days=1)


def _spark_features(spark, transactions: pd.DataFrame, reports: pd.DataFrame, start, end) -> pd.DataFrame:
    result = compute_features(spark.createDataFrame(transactions), spark.createDataFrame(reports), start, end)
    return normalise(result.toPandas())


def _assert_same(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert len(actual) > 0
    pd.testing.assert_frame_equal(actual, expected, check_exact=False, rtol=1e-9, atol=1e-12)


def _hand_dataset() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Customer 1 and terminal 10 have a transaction on every window edge around T (see each row)."""
    rows = [  # transaction_id, time, customer, terminal, amount
        (1, T - 30 * DAY, 1, 50, 1.0),  # exactly 30 days before: out of the 30-day window
        (2, T - 30 * DAY + S, 1, 50, 2.0),
        (3, T - 7 * DAY, 1, 50, 4.0),  # exactly 7 days before: out of the 7-day window
        (4, T - 7 * DAY + S, 1, 50, 8.0),
        (5, T - DAY, 1, 50, 16.0),  # exactly 1 day before: out of the 1-day window
        (6, T - DAY + S, 1, 50, 32.0),
        (7, T, 1, 10, 64.0),  # the transaction under test
        (8, T, 1, 20, 128.0),  # same instant (a tie) at a terminal never seen before
        (9, T + S, 1, 10, 256.0),  # one second later: every edge moves by one second
        (20, T - 7 * DAY, 2, 10, 10.0),  # terminal 10, exactly at the delay edge: out for T
        (21, T - 7 * DAY - S, 2, 10, 10.0),
        (22, T - 7 * DAY - 2 * H, 2, 10, 10.0),  # never reported
        (23, T - 8 * DAY, 2, 10, 10.0),  # exactly delay + 1 day before: in the 1-day window
        (24, T - 8 * DAY - S, 2, 10, 10.0),
        (25, T - 37 * DAY, 2, 10, 10.0),  # exactly delay + 30 days before: in the 30-day window
        (26, T - 37 * DAY - S, 2, 10, 10.0),  # out of every window
        (30, pd.Timestamp("2018-05-10 06:59:59", tz="UTC"), 5, 30, 7.5),  # first ever, at night
        (31, pd.Timestamp("2018-05-10 07:00:00", tz="UTC"), 6, 31, 3.0),  # not night any more
        (40, pd.Timestamp("2018-05-12 00:00:00", tz="UTC"), 7, 32, 5.0),  # Saturday (Friday has none)
        (41, pd.Timestamp("2018-05-13 23:59:59", tz="UTC"), 7, 32, 9.0),  # Sunday
        (42, pd.Timestamp("2018-05-11 12:00:00", tz="UTC"), 8, 33, 0.0),  # nothing spent: ratio 1
    ]
    transactions = pd.DataFrame(
        rows, columns=["transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount"]
    )
    reports = pd.DataFrame(
        [
            (20, T - 7 * DAY + H),
            (21, T - 6 * DAY),
            (21, T - 5 * DAY),  # reported twice: counts once
            (23, T),  # reported at exactly T: known at T
            (24, T + S),  # reported one second after T: unknown at T, known at T + 1 s
            (25, T - DAY),  # reported 36 days late, still before T
            (26, T - 37 * DAY),  # a report for a transaction outside every window
            (999_999, T - 2 * DAY),  # a report for no known transaction
        ],
        columns=["transaction_id", "reported_at"],
    )
    return transactions, reports


def _expected(
    amount: float,
    customer: tuple,
    terminal: tuple,
    weekend: int = 0,
    night: int = 0,
    reported: tuple = (0, 0, 0),
) -> dict[str, float]:
    (n1, a1), (n7, a7), (n30, a30) = customer
    (m1, r1), (m7, r7), (m30, r30) = terminal
    ratios = [amount / a if a > 0 else 1.0 for a in (a1, a7, a30)]
    values = [amount, weekend, night, n1, n7, n30, a1, a7, a30, m1, m7, m30, r1, r7, r30, *ratios, *reported]
    return dict(zip(FEATURE_COLUMNS, values, strict=True))


NONE_SEEN = ((0, 0.0), (0, 0.0), (0, 0.0))
HAND_EXPECTED = {
    # reported frauds at terminal 10 without the delay: at T, 20 (exactly 7 days before, in) for 7 days, and
    # 20, 21, 23 (reported at exactly T) for 30; at T + 1 s, 20 has left the 7-day window and 24 (reported
    # at T + 1 s) has joined the 30-day one
    7: _expected(
        64.0,
        ((3, 224 / 3), (5, 248 / 5), (7, 254 / 7)),
        ((3, 2 / 3), (4, 2 / 4), (5, 3 / 5)),
        reported=(0, 1, 3),
    ),
    8: _expected(128.0, ((3, 224 / 3), (5, 248 / 5), (7, 254 / 7)), NONE_SEEN),
    9: _expected(
        256.0,
        ((3, 448 / 3), (5, 496 / 5), (7, 508 / 7)),
        ((3, 2 / 3), (5, 4 / 5), (5, 4 / 5)),
        reported=(0, 0, 4),
    ),
    30: _expected(7.5, ((1, 7.5), (1, 7.5), (1, 7.5)), NONE_SEEN, night=1),
    31: _expected(3.0, ((1, 3.0), (1, 3.0), (1, 3.0)), NONE_SEEN),
    40: _expected(5.0, ((1, 5.0), (1, 5.0), (1, 5.0)), NONE_SEEN, weekend=1, night=1),
    41: _expected(9.0, ((1, 9.0), (2, 7.0), (2, 7.0)), NONE_SEEN, weekend=1),
    42: _expected(0.0, ((1, 0.0), (1, 0.0), (1, 0.0)), NONE_SEEN),
}


def test_hand_computed_window_edges_agree_with_both_references(spark) -> None:
    transactions, reports = _hand_dataset()
    end = D + dt.timedelta(days=3)
    features = _spark_features(spark, transactions, reports, D, end)

    assert list(features.columns) == list(OUTPUT_COLUMNS)
    assert sorted(features["transaction_id"]) == sorted(HAND_EXPECTED)
    for row in features.to_dict("records"):
        expected = HAND_EXPECTED[row["transaction_id"]]
        actual = {name: row[name] for name in expected}
        assert actual == pytest.approx(expected, rel=1e-12), f"transaction {row['transaction_id']}"
        assert (
            row["tx_amount"]
            == transactions.set_index("transaction_id").loc[row["transaction_id"], "tx_amount"]
        )
        assert row["feature_set_version"] == FEATURE_SET_VERSION
    _assert_same(features, duckdb_features(transactions, reports, D, end))
    _assert_same(features, pandas_features(transactions, reports, D, end))


def test_no_leakage_from_after_t(spark) -> None:
    transactions, reports = random_raw(1)
    start, end = dt.date(2018, 5, 1), dt.date(2018, 5, 20)
    in_range = transactions[transactions["tx_datetime"].dt.date.between(start, end)]
    cutoff = in_range["tx_datetime"].iloc[len(in_range) // 2]
    assert (in_range["tx_datetime"] == cutoff).sum() >= 1
    changed_tx, changed_reports = perturb_after(transactions, reports, cutoff, np.random.default_rng(7))

    before = _spark_features(spark, transactions, reports, start, end)
    after = _spark_features(spark, changed_tx, changed_reports, start, end)

    known = before[before["tx_datetime"] <= cutoff].reset_index(drop=True)
    _assert_same(after[after["tx_datetime"] <= cutoff].reset_index(drop=True), known)
    later = before[before["tx_datetime"] > cutoff].set_index("transaction_id")
    moved = after.set_index("transaction_id").loc[later.index, list(FEATURE_COLUMNS)]
    assert not np.allclose(moved.to_numpy(float), later[list(FEATURE_COLUMNS)].to_numpy(float))


def test_parity_on_adversarial_data_from_the_first_day(spark) -> None:
    """Ties, exact edges, late, duplicate and orphan reports; the range starts on the data's first day."""
    transactions, reports = random_raw(0)
    start, end = dt.date(2018, 4, 1), dt.date(2018, 5, 30)
    spark_result = _spark_features(spark, transactions, reports, start, end)

    assert len(spark_result) == len(transactions)
    _assert_same(spark_result, duckdb_features(transactions, reports, start, end))
    _assert_same(spark_result, pandas_features(transactions, reports, start, end))
    first_day = spark_result[spark_result["tx_datetime"].dt.date == start]
    assert (first_day[[f"terminal_id_nb_tx_{w}day_window" for w in (1, 7, 30)]] == 0).all().all()


def test_a_day_is_the_same_built_alone_or_in_a_backfill(spark) -> None:
    """A daily run reads 37 days of history, a backfill more: the day's features must be bit-identical."""
    transactions, reports = random_raw(4)
    day = dt.date(2018, 5, 25)
    alone = _spark_features(spark, transactions, reports, day, day)
    backfill = _spark_features(spark, transactions, reports, day - dt.timedelta(days=20), day)
    on_day = backfill[backfill["tx_datetime"].dt.date == day].reset_index(drop=True)
    assert len(alone) > 0
    pd.testing.assert_frame_equal(alone, on_day, check_exact=True)


@pytest.fixture(scope="module")
def simulated_lake(spark, tmp_path_factory: pytest.TempPathFactory):
    """The simulator's data (a small handbook run) in a raw lake, with features built for days 40-59."""
    data = simulate(SimulationConfig(customers=100, terminals=200, days=60, seed=1))
    lake = str(tmp_path_factory.mktemp("simulated") / "lake")
    write_raw_lake(lake, data.transactions, data.fraud_reports)
    garbage = partition_uri(lake, RAW_TRANSACTIONS, dt.date(2018, 4, 2))
    Path(garbage).write_bytes(b"not parquet: days outside the windows must never be read")
    start, end = dt.date(2018, 5, 10), dt.date(2018, 5, 29)
    build = build_features(spark, lake, start, end)
    return data, lake, start, end, build


def test_built_partitions_match_duckdb_on_simulated_data(simulated_lake) -> None:
    data, lake, start, end, build = simulated_lake
    written = pd.concat(
        [
            read_parquet(partition_uri(lake, TRANSACTION_FEATURES, day)).to_pandas()
            for day in days_between(start, end)
        ]
    )
    reference = duckdb_features(data.transactions.to_pandas(), data.fraud_reports.to_pandas(), start, end)
    assert len(reference) > 1000
    _assert_same(normalise(written), reference)
    assert build.rows == len(reference)
    assert set(build.null_rates.values()) == {0.0}
    assert build.metadata()["feature_set_version"] == FEATURE_SET_VERSION


def test_build_reads_only_the_history_it_needs(simulated_lake) -> None:
    _, lake, start, end, build = simulated_lake
    assert build.input_partitions[RAW_TRANSACTIONS] == (end - start).days + 1 + HISTORY_DAYS
    # tiles only for the days that the days after the range will read: the range's last 36
    assert build.tiles_written[CUSTOMER_TILES] == build.tiles_written[TERMINAL_TILES] == HISTORY_DAYS - 1
    assert not list(Path(lake, TRANSACTION_FEATURES).glob("_staging/*"))


def test_written_partitions_pass_the_contract(simulated_lake) -> None:
    _, lake, start, end, build = simulated_lake
    report = check_feature_partitions(lake, days_between(start, end))
    assert report.passed, report.failures
    assert report.partitions == (end - start).days + 1 and report.rows == build.rows


def test_days_without_transactions_get_empty_partitions(spark, tmp_path: Path) -> None:
    transactions, reports = random_raw(2, days=20)
    lake = str(tmp_path / "lake")
    write_raw_lake(lake, transactions, reports)
    empty_file_day, no_file_day = dt.date(2018, 4, 21), dt.date(2018, 4, 22)
    write_raw_lake(lake, transactions.iloc[:0], reports.iloc[:0], days=(empty_file_day, empty_file_day))
    assert not Path(partition_uri(lake, RAW_TRANSACTIONS, no_file_day)).exists()

    build = build_features(spark, lake, dt.date(2018, 4, 20), no_file_day)

    assert build.rows_per_day[empty_file_day.isoformat()] == 0
    assert build.rows_per_day[no_file_day.isoformat()] == 0
    assert build.rows_per_day["2018-04-20"] == int(
        (transactions["tx_datetime"].dt.date == dt.date(2018, 4, 20)).sum()
    )
    assert build.missing_inputs == [no_file_day.isoformat()]
    tables = [
        read_parquet(partition_uri(lake, TRANSACTION_FEATURES, d)) for d in (empty_file_day, no_file_day)
    ]
    assert [t.num_rows for t in tables] == [0, 0]
    busy = read_parquet(partition_uri(lake, TRANSACTION_FEATURES, "2018-04-20"))
    assert all(t.schema == busy.schema.remove_metadata() for t in tables)
    assert check_feature_partitions(lake, [empty_file_day, no_file_day]).passed


def test_a_lake_without_any_raw_data_builds_empty_days(spark, tmp_path: Path) -> None:
    build = build_features(spark, str(tmp_path / "lake"), D, D)
    assert build.rows_per_day == {D.isoformat(): 0}
    assert read_parquet(partition_uri(str(tmp_path / "lake"), TRANSACTION_FEATURES, D)).num_rows == 0


def test_range_must_not_end_before_it_starts(spark) -> None:
    transactions, reports = _hand_dataset()
    with pytest.raises(ValueError, match="ends"):
        compute_features(
            spark.createDataFrame(transactions), spark.createDataFrame(reports), D, D - dt.timedelta(1)
        )


def _valid_frame() -> pd.DataFrame:
    transactions, reports = _hand_dataset()
    frame = duckdb_features(transactions, reports, D, D)
    assert contract_failures(frame, D).empty
    return frame


def _set(column: str, value: object):
    def corrupt(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        frame.loc[0, column] = value
        return frame

    return corrupt


@pytest.mark.parametrize(
    ("corrupt", "column", "rule"),
    [
        (_set("terminal_id_risk_7day_window", 1.5), "terminal_id_risk_7day_window", "in_range(0, 1)"),
        (
            _set("customer_id_nb_tx_1day_window", 0),
            "customer_id_nb_tx_1day_window",
            "greater_than_or_equal_to(1)",
        ),
        (
            _set("terminal_id_nb_tx_30day_window", -1),
            "terminal_id_nb_tx_30day_window",
            "greater_than_or_equal_to(0)",
        ),
        (_set("tx_during_night", 2), "tx_during_night", "isin([0, 1])"),
        (
            _set("customer_id_avg_amount_7day_window", np.nan),
            "customer_id_avg_amount_7day_window",
            "not_nullable",
        ),
        (
            _set("feature_set_version", "fs-000000000000"),
            "feature_set_version",
            "isin(['" + FEATURE_SET_VERSION,
        ),
        (_set("tx_datetime", T + DAY), "tx_datetime", "on_partition_day"),
        (_set("transaction_id", 8), "transaction_id", "field_uniqueness"),
        (_set("customer_id_nb_tx_1day_window", 6), None, "customer_id_windows_nested"),
        (lambda f: f.assign(extra=1), "transaction_id", "column_in_schema"),
        (
            lambda f: f.astype({"terminal_id_nb_tx_1day_window": "float64"}),
            "terminal_id_nb_tx_1day_window",
            "dtype",
        ),
        (lambda f: f.drop(columns="tx_amount"), None, "column_in_dataframe"),
    ],
)
def test_contract_rejects_a_bad_frame(corrupt, column, rule: str) -> None:
    failures = contract_failures(corrupt(_valid_frame()), D)
    hits = failures[failures["check"].astype(str).str.startswith(rule)]
    assert not hits.empty, failures[["column", "check"]].to_dict("records")
    if column is not None and rule != "column_in_schema":
        assert column in set(hits["column"])


def test_contract_report_names_file_row_and_rule(tmp_path: Path) -> None:
    import pyarrow as pa

    from jobs.platform.storage import write_parquet_atomic

    lake = str(tmp_path / "lake")
    frame = _valid_frame()
    frame.loc[2, "terminal_id_risk_1day_window"] = -0.25
    write_parquet_atomic(
        pa.Table.from_pandas(frame, preserve_index=False), partition_uri(lake, TRANSACTION_FEATURES, D)
    )
    report = check_feature_partitions(lake, [D, D + dt.timedelta(days=1)])
    assert not report.passed and report.partitions == 1 and report.failure_count == 2
    uri = partition_uri(lake, TRANSACTION_FEATURES, D)
    assert report.failures[0] == (
        f"{uri}, row 3, column terminal_id_risk_1day_window: rule in_range(0, 1) failed (value -0.25)"
    )
    assert report.failures[1].startswith(partition_uri(lake, TRANSACTION_FEATURES, D + dt.timedelta(days=1)))
    assert "missing" in report.failures[1]


def test_schema_covers_every_output_column() -> None:
    assert list(FEATURE_SCHEMA.columns) == list(OUTPUT_COLUMNS)


def test_shuffle_partitions_follow_the_input_size() -> None:
    assert shuffle_partitions_for(0, parallelism=2) == 2
    assert shuffle_partitions_for(40 * 1024**2, parallelism=2) == 4  # 3 partitions of data, in whole waves
    assert shuffle_partitions_for(1024**3, parallelism=2) == 64
    assert shuffle_partitions_for(10**15, parallelism=16) == 2000


def test_spark_reads_an_s3_lake_through_s3a() -> None:
    assert spark_uri("s3://bucket/lake/raw") == "s3a://bucket/lake/raw"
    assert spark_uri("/data/lake") == "/data/lake"
