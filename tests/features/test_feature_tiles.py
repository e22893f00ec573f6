"""Feature tiles: a day built on tiles is the raw computation bit for bit, reads raw only its window edges,
and never trusts a tile that is missing, unreadable, of another format or older than its raw sources."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.features.definitions import FEATURE_COLUMNS, HISTORY_DAYS
from jobs.features.spark_job import build_features, compute_features
from jobs.features.tiles import (
    CUSTOMER_TILE_SCHEMA,
    HEADER_KEY,
    TERMINAL_TILE_SCHEMA,
    days_between,
    plan_build,
    write_daily_tiles,
)
from jobs.platform.layout import (
    CUSTOMER_TILES,
    RAW_TRANSACTIONS,
    REPORT_TILES,
    TERMINAL_TILES,
    TRANSACTION_FEATURES,
    partition_uri,
)
from jobs.platform.storage import read_parquet, write_parquet_atomic
from jobs.testing.reference_features import (
    duckdb_features,
    normalise,
    pandas_features,
    random_raw,
    write_raw_lake,
)
from tests.support import perturb_after

pytestmark = pytest.mark.slow
"""Each test builds weeks of days with Spark, twice (on tiles and raw): out of ``make test-fast``."""

DAY = dt.timedelta(days=1)
FIRST_DAY = dt.date(2018, 4, 1)  # of random_raw's data
BACKFILL = (dt.date(2018, 5, 1), dt.date(2018, 5, 5))
DAILY = days_between(dt.date(2018, 5, 6), dt.date(2018, 5, 9))
EDGES = (0, 1, 7, 8, 14, 30, 37)
"""Days before a target day that its windows cut: the day itself, D - w for the card windows (1, 7, 30),
D - 7 and D - 7 - w for the terminal windows."""


def _written(lake: str, days: list[dt.date]) -> pd.DataFrame:
    return normalise(
        pd.concat([read_parquet(partition_uri(lake, TRANSACTION_FEATURES, d)).to_pandas() for d in days])
    )


def _raw(spark, transactions: pd.DataFrame, reports: pd.DataFrame, start, end) -> pd.DataFrame:
    result = compute_features(spark.createDataFrame(transactions), spark.createDataFrame(reports), start, end)
    return normalise(result.toPandas())


@pytest.fixture(scope="module")
def daily_lake(spark, tmp_path_factory: pytest.TempPathFactory):
    """Adversarial data in a raw lake: a backfill, then one build per day on the tiles it left."""
    transactions, reports = random_raw(4)
    lake = str(tmp_path_factory.mktemp("tiles") / "lake")
    write_raw_lake(lake, transactions, reports)
    backfill = build_features(spark, lake, *BACKFILL)
    daily = {}
    for day in DAILY:
        plan = plan_build(lake, day, day)
        daily[day] = (plan, build_features(spark, lake, day, day))
    return transactions, reports, lake, backfill, daily


def test_daily_builds_on_tiles_equal_the_raw_computation_bit_for_bit(spark, daily_lake) -> None:
    transactions, reports, lake, _, _ = daily_lake
    days = days_between(BACKFILL[0], DAILY[-1])
    written = _written(lake, days)
    expected = _raw(spark, transactions, reports, days[0], days[-1])
    assert len(written) > 300
    pd.testing.assert_frame_equal(written, expected, check_exact=True)
    reference = duckdb_features(transactions, reports, days[0], days[-1])
    pd.testing.assert_frame_equal(written, reference, check_exact=False, rtol=1e-9, atol=1e-12)


def test_a_daily_build_reads_raw_only_its_day_and_the_window_edges(daily_lake) -> None:
    transactions, _, lake, backfill, daily = daily_lake
    assert backfill.tiles_written[CUSTOMER_TILES] == (BACKFILL[1] - FIRST_DAY).days + 1
    rows_per_day = transactions.groupby(transactions["tx_datetime"].dt.date).size()
    for day, (plan, build) in daily.items():
        assert set(plan.raw_days) == {day - o * DAY for o in EDGES if day - o * DAY >= FIRST_DAY}
        whole_card_days = set(days_between(day - 29 * DAY, day - DAY)) - set(plan.raw_days)
        whole_terminal_days = set(days_between(max(day - 36 * DAY, FIRST_DAY), day - 8 * DAY))
        assert set(plan.customer_days) == whole_card_days and len(whole_card_days) == 25
        assert set(plan.terminal_days) == whole_terminal_days - set(plan.raw_days)
        assert plan.reports_to_build == (day,) and plan.daily_tiles_to_write == (day,)
        assert build.tiles_written == {CUSTOMER_TILES: 1, TERMINAL_TILES: 1, REPORT_TILES: 1}
        assert build.stale_tiles == []
        read = build.input_partitions[RAW_TRANSACTIONS]
        assert read == len(plan.raw_days) + build.report_lookup_partitions < HISTORY_DAYS + 1
        history_rows = int(rows_per_day.reindex(days_between(day - HISTORY_DAYS * DAY, day)).sum())
        assert build.raw_rows_read[RAW_TRANSACTIONS] < 0.5 * history_rows
    after = DAILY[-1] + DAY
    plan = plan_build(lake, after, after)
    assert plan.daily_tiles_to_write == (after,) and plan.reports_to_build == (after,)


def _copy(lake: str, tmp_path: Path) -> str:
    copy = str(tmp_path / "lake")
    shutil.copytree(lake, copy)
    return copy


def test_missing_or_unreadable_tiles_fall_back_to_raw_and_are_written_again(
    spark, daily_lake, tmp_path: Path
) -> None:
    _, _, original, _, _ = daily_lake
    lake, day = _copy(original, tmp_path), DAILY[-1]
    missing, garbage, other_version = dt.date(2018, 4, 20), dt.date(2018, 4, 5), dt.date(2018, 4, 21)
    Path(partition_uri(lake, CUSTOMER_TILES, missing)).unlink()
    Path(partition_uri(lake, TERMINAL_TILES, garbage)).write_bytes(b"not a tile")
    old = pq.read_table(partition_uri(lake, TERMINAL_TILES, other_version))
    header = json.loads(old.schema.metadata[HEADER_KEY]) | {"version": "tiles-000000000000"}
    write_parquet_atomic(
        old.replace_schema_metadata({HEADER_KEY: json.dumps(header)}),
        partition_uri(lake, TERMINAL_TILES, other_version),
    )
    Path(partition_uri(lake, REPORT_TILES, day - 6 * DAY)).unlink()

    plan = plan_build(lake, day, day)
    assert {missing, garbage, other_version} <= set(plan.raw_days)
    assert plan.reports_to_build == (day - 6 * DAY,)
    assert plan.stale == (f"{TERMINAL_TILES}/{other_version.isoformat()}",)
    build = build_features(spark, lake, day, day)

    pd.testing.assert_frame_equal(_written(lake, [day]), _written(original, [day]), check_exact=True)
    assert build.tiles_written == {CUSTOMER_TILES: 3, TERMINAL_TILES: 3, REPORT_TILES: 1}
    again = plan_build(lake, day, day)
    assert set(again.raw_days) == {day - o * DAY for o in EDGES}
    assert again.reports_to_build == () and again.daily_tiles_to_write == () and again.stale == ()


def test_a_redelivered_raw_day_makes_every_tile_built_from_it_stale(
    spark, daily_lake, tmp_path: Path
) -> None:
    transactions, reports, original, _, _ = daily_lake
    lake, day, redelivered = _copy(original, tmp_path), DAILY[-1], dt.date(2018, 4, 20)
    changed = transactions.copy()
    on_day = changed["tx_datetime"].dt.date == redelivered
    changed.loc[on_day, "tx_amount"] = changed.loc[on_day, "tx_amount"] * 3 + 1
    changed.loc[on_day, "terminal_id"] = (changed.loc[on_day, "terminal_id"] + 5) % 25
    write_raw_lake(lake, changed[on_day], reports[reports["reported_at"].dt.date == redelivered],
                   days=(redelivered, redelivered))  # fmt: skip

    build = build_features(spark, lake, day, day)

    stale = set(build.stale_tiles)
    assert {f"{CUSTOMER_TILES}/2018-04-20", f"{TERMINAL_TILES}/2018-04-20"} <= stale
    # every report tile that resolved ids against that day's transactions, up to the day built
    assert {f"{REPORT_TILES}/{d.isoformat()}" for d in days_between(redelivered, day)} <= stale
    expected = _raw(spark, changed, reports, day, day)
    pd.testing.assert_frame_equal(_written(lake, [day]), expected, check_exact=True)
    before = _written(original, [day])
    columns = list(FEATURE_COLUMNS)
    assert not np.allclose(before[columns].to_numpy(float), expected[columns].to_numpy(float))


def test_tiles_built_from_later_data_never_leak_into_an_earlier_day(
    spark, daily_lake, tmp_path: Path
) -> None:
    """Every tile comes from data changed after a cutoff inside the day (the day's report tile holds the later
    reports); the day's rows up to the cutoff are the original ones bit for bit."""
    transactions, reports, original, _, _ = daily_lake
    day = DAILY[1]
    on_day = transactions[transactions["tx_datetime"].dt.date == day]
    cutoff = on_day["tx_datetime"].iloc[len(on_day) // 2]
    changed_tx, changed_reports = perturb_after(transactions, reports, cutoff, np.random.default_rng(3))
    lake = str(tmp_path / "lake")
    write_raw_lake(lake, changed_tx, changed_reports)
    build_features(spark, lake, day, day + 14 * DAY)

    build = build_features(spark, lake, day, day)

    assert build.tiles_read[CUSTOMER_TILES] > 0 and build.tiles_read[REPORT_TILES] > 0
    assert build.tiles_written[REPORT_TILES] == 0
    before, after = _written(original, [day]), _written(lake, [day])
    known = before[before["tx_datetime"] <= cutoff].reset_index(drop=True)
    pd.testing.assert_frame_equal(
        after[after["tx_datetime"] <= cutoff].reset_index(drop=True), known, check_exact=True
    )
    later = before[before["tx_datetime"] > cutoff].set_index("transaction_id")
    moved = after.set_index("transaction_id").loc[later.index, list(FEATURE_COLUMNS)]
    assert not np.allclose(moved.to_numpy(float), later[list(FEATURE_COLUMNS)].to_numpy(float))


D = dt.date(2018, 5, 10)  # a Thursday
T = pd.Timestamp("2018-05-10 12:00:00", tz="UTC")
S = pd.Timedelta(seconds=1)


def _at(days_before: int, time: str) -> pd.Timestamp:
    return pd.Timestamp(f"{D - days_before * DAY} {time}", tz="UTC")


def _tiled_hand_dataset() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Card 1 and terminal 10 have transactions on whole days inside each window (read as tiles) and on
    every edge (read raw); transaction 100 at T is under test."""
    card = [  # transaction_id, time, amount; card 1 at terminal 50
        (1, T - 30 * DAY, 1.0),  # exactly 30 days before: out
        (2, T - 30 * DAY + S, 2.0),
        (3, _at(29, "03:00:00"), 4.0),  # whole day inside the 30-day window: a tile
        (4, _at(20, "10:00:00"), 8.0),  # tile
        (5, T - 7 * DAY, 16.0),  # exactly 7 days before: out of the 7-day window
        (6, _at(6, "23:00:00"), 32.0),  # tile, inside the 7-day window
        (7, _at(2, "00:00:00"), 64.0),  # tile, its first instant
        (8, _at(1, "00:00:00"), 128.0),  # the 1-day edge day, before T - 1 day: out of the 1-day window
        (9, T - DAY + S, 256.0),
    ]
    terminal = [  # transaction_id, time; terminal 10, each on its own card
        (11, T - 7 * DAY),  # exactly the delay: out
        (12, T - 7 * DAY - S),
        (13, _at(8, "00:30:00")),  # the 1-day edge day, before T - 8 days: out of the 1-day window
        (14, T - 8 * DAY),  # exactly delay + 1 day: in
        (15, _at(10, "06:00:00")),  # tile, inside the 7-day window
        (16, _at(13, "00:00:00")),  # tile, the 7-day window's first whole day
        (17, T - 14 * DAY),  # exactly delay + 7 days: in
        (18, T - 14 * DAY - S),
        (19, _at(20, "09:00:00")),  # tile, inside the 30-day window
        (20, _at(36, "18:00:00")),  # tile, the 30-day window's first whole day
        (21, T - 37 * DAY),  # exactly delay + 30 days: in
        (22, T - 37 * DAY - S),  # out
        (23, _at(5, "10:00:00")),  # within the delay: in no risk window, a recent fraud
    ]
    rows = [(i, t, 1, 50, a) for i, t, a in card]
    rows += [(i, t, 1000 + i, 10, 10.0) for i, t in terminal]
    rows.append((100, T, 1, 10, 512.0))
    transactions = pd.DataFrame(
        rows, columns=["transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount"]
    )
    reports = pd.DataFrame(
        [
            (12, T - 6 * DAY),
            (15, _at(3, "08:00:00")),
            (15, _at(1, "09:00:00")),  # reported twice: counts once
            (14, _at(1, "00:00:00")),
            (19, T),  # reported at exactly T: known
            (20, T + S),  # one second late: unknown at T
            (16, _at(-1, "01:00:00")),  # the next day: unknown
            (23, _at(2, "12:00:00")),
        ],
        columns=["transaction_id", "reported_at"],
    )
    return transactions, reports


TILED_HAND_EXPECTED = {
    "customer_id_nb_tx_1day_window": 2,  # 9, 100
    "customer_id_nb_tx_7day_window": 5,  # 6, 7, 8, 9, 100
    "customer_id_nb_tx_30day_window": 9,  # 2 to 9, 100
    "customer_id_avg_amount_1day_window": 768 / 2,
    "customer_id_avg_amount_7day_window": 992 / 5,
    "customer_id_avg_amount_30day_window": 1022 / 9,
    "terminal_id_nb_tx_1day_window": 2,  # 12, 14
    "terminal_id_nb_tx_7day_window": 6,  # 12 to 17
    "terminal_id_nb_tx_30day_window": 10,  # 12 to 21
    "terminal_id_risk_1day_window": 2 / 2,  # 12, 14
    "terminal_id_risk_7day_window": 3 / 6,  # 12, 14, 15
    "terminal_id_risk_30day_window": 4 / 10,  # 12, 14, 15, 19
    "terminal_id_nb_reported_frauds_1day_window": 0,
    "terminal_id_nb_reported_frauds_7day_window": 1,  # 23
    "terminal_id_nb_reported_frauds_30day_window": 5,  # 12, 14, 15, 19, 23
}


def test_hand_computed_edges_hold_when_whole_days_come_from_tiles(spark, tmp_path: Path) -> None:
    transactions, reports = _tiled_hand_dataset()
    lake = str(tmp_path / "lake")
    write_raw_lake(lake, transactions, reports)
    first = build_features(spark, lake, D, D)  # no tiles yet: every day raw, and the tiles written
    plan = plan_build(lake, D, D)
    tile_days = {_at(n, "00:00").date() for n in (29, 20, 6, 2)}
    assert tile_days <= set(plan.customer_days)
    assert {_at(n, "00:00").date() for n in (10, 13, 20, 36)} <= set(plan.terminal_days)
    assert first.tiles_written[CUSTOMER_TILES] == HISTORY_DAYS  # all but D - 37, which no later day reads

    build = build_features(spark, lake, D, D)

    assert build.tiles_written == {CUSTOMER_TILES: 0, TERMINAL_TILES: 0, REPORT_TILES: 0}
    (row,) = _written(lake, [D]).to_dict("records")
    amount = 512.0
    expected = TILED_HAND_EXPECTED | {
        "tx_amount": amount,
        "tx_during_weekend": 0,
        "tx_during_night": 0,
        **{
            f"customer_id_amount_ratio_{w}day_window": amount
            / TILED_HAND_EXPECTED[f"customer_id_avg_amount_{w}day_window"]
            for w in (1, 7, 30)
        },
    }
    assert {name: row[name] for name in FEATURE_COLUMNS} == pytest.approx(expected, rel=1e-12)
    written = _written(lake, [D])
    pd.testing.assert_frame_equal(written, _raw(spark, transactions, reports, D, D), check_exact=True)
    for reference in (duckdb_features, pandas_features):
        pd.testing.assert_frame_equal(
            written, reference(transactions, reports, D, D), check_exact=False, rtol=1e-9, atol=1e-12
        )


def test_tiles_on_s3_follow_the_etag_of_their_raw_day(moto_s3) -> None:
    """A re-delivered object with other bytes makes its tiles stale; the same bytes again do not."""
    moto_s3.create_bucket(Bucket="lake")
    lake = "s3://lake/lake"
    transactions, reports = random_raw(6, days=40)
    write_raw_lake(lake, transactions, reports)
    day, whole = dt.date(2018, 5, 10), dt.date(2018, 4, 20)
    plan = plan_build(lake, day, day)
    assert whole in plan.raw_days and whole in plan.daily_tiles_to_write  # no tiles yet: read raw

    rows = transactions.assign(
        day=transactions["tx_datetime"].dt.date,
        units=(transactions["tx_amount"] * 1e6).round().astype("int64"),
    )
    rows = rows[rows["day"].isin(plan.daily_tiles_to_write)]
    customers = rows.groupby(["day", "customer_id"]).agg(n=("units", "size"), units=("units", "sum"))
    terminals = rows.groupby(["day", "terminal_id"]).agg(n=("units", "size"))
    tables = [
        pa.Table.from_pandas(frame.reset_index(), schema=schema, preserve_index=False)
        for frame, schema in ((customers, CUSTOMER_TILE_SCHEMA), (terminals, TERMINAL_TILE_SCHEMA))
    ]
    write_daily_tiles(plan, *tables)
    assert whole in plan_build(lake, day, day).customer_days

    on_day = transactions[transactions["tx_datetime"].dt.date == whole]
    write_raw_lake(lake, on_day, reports.iloc[:0], days=(whole, whole))
    assert whole in plan_build(lake, day, day).customer_days  # the same bytes: the same ETag

    write_raw_lake(lake, on_day.iloc[1:], reports.iloc[:0], days=(whole, whole))
    stale = plan_build(lake, day, day)
    assert whole in stale.raw_days and whole not in stale.customer_days
    assert f"{CUSTOMER_TILES}/{whole.isoformat()}" in stale.stale
