"""The cross-file index (jobs/ingest/lake_index.py) against a plain pandas reading of the same lake.

The index keeps each partition's ids sorted and skips partitions whose id range cannot hold an id asked for;
whatever the ranges, a lookup must give what filtering every row of the lake would: each id once, from its
earliest partition, days excluded or cut off as asked, days written by the run in place of the lake's.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from jobs.ingest.contract import RAW_TRANSACTIONS_SCHEMA
from jobs.ingest.lake_index import LakeIndexes
from jobs.platform.layout import RAW_TRANSACTIONS, partition_uri
from jobs.platform.storage import write_parquet_atomic

DAYS = [dt.date(2018, 4, 1) + dt.timedelta(days=i) for i in range(6)]


def partition(ids: np.ndarray, day: dt.date, rng: np.random.Generator) -> pa.Table:
    seconds = rng.integers(0, 86_400, len(ids))
    stamps = pd.Timestamp(day, tz="UTC") + pd.to_timedelta(seconds, unit="s")
    columns = {
        "transaction_id": pa.array(ids, pa.int64()),
        "tx_datetime": pa.array(stamps, pa.timestamp("us", tz="UTC")),
        "customer_id": pa.array(np.zeros(len(ids), np.int64)),
        "terminal_id": pa.array(np.zeros(len(ids), np.int64)),
        "tx_amount": pa.array(np.ones(len(ids))),
        "extras": pa.nulls(len(ids), pa.string()),
        "source_file": pa.array([f"{day}.csv"] * len(ids)),
        "ingest_run_id": pa.array(["earlier"] * len(ids)),
    }
    return pa.table(columns, schema=RAW_TRANSACTIONS_SCHEMA)


def brute_force(
    held: dict[str, pa.Table], ids: pd.Series, exclude: str | None, through: str | None
) -> pd.DataFrame:
    frames = [
        table.select(["transaction_id", "tx_datetime"]).to_pandas().assign(date=day)
        for day, table in held.items()
    ]
    rows = pd.concat(frames, ignore_index=True)
    rows = rows[rows["transaction_id"].isin(ids)]
    if exclude is not None:
        rows = rows[rows["date"] != exclude]
    if through is not None:
        rows = rows[rows["date"] <= through]
    return rows.sort_values("date", kind="stable").drop_duplicates("transaction_id")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lookups_match_a_scan_of_every_row(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lake = str(tmp_path / "lake")
    held: dict[str, pa.Table] = {}
    for day in DAYS[:4]:
        ids = rng.choice(np.arange(0, 400), size=60, replace=False)
        if day == DAYS[2]:
            ids = np.append(ids, ids[:3])
        held[day.isoformat()] = partition(ids, day, rng)
        write_parquet_atomic(held[day.isoformat()], partition_uri(lake, RAW_TRANSACTIONS, day))
    index = LakeIndexes.open(lake).transactions
    for day in (DAYS[1], DAYS[4], DAYS[5]):
        ids = np.sort(rng.choice(np.arange(200, 700), size=50, replace=False))
        held[day.isoformat()] = partition(ids, day, rng)
        index.replace(day.isoformat(), held[day.isoformat()])

    choices = [None, *held]
    for _ in range(30):
        asked = pd.Series(rng.choice(np.arange(-10, 720), size=int(rng.integers(0, 40))), dtype="int64")
        exclude = choices[rng.integers(len(choices))]
        through = choices[rng.integers(len(choices))]
        found = index.lookup(asked, exclude_day=exclude, through_day=through)
        expected = brute_force(held, asked, exclude, through)
        assert found["transaction_id"].tolist() == expected["transaction_id"].tolist()
        assert found["date"].tolist() == expected["date"].tolist()
        assert found["tx_datetime"].tolist() == expected["tx_datetime"].tolist()


def test_a_lookup_reads_only_the_partitions_whose_id_range_can_hold_an_asked_id(tmp_path: Path) -> None:
    """Days of ids 0-99, 100-199 and 200-299: once the index is open, a lookup of recent ids reads the last
    day's rows only, so it still answers with the older days' files gone; an old id needs their rows."""
    rng = np.random.default_rng(3)
    lake = str(tmp_path / "lake")
    for n, day in enumerate(DAYS[:3]):
        write_parquet_atomic(
            partition(np.arange(n * 100, n * 100 + 100), day, rng), partition_uri(lake, RAW_TRANSACTIONS, day)
        )
    index = LakeIndexes.open(lake).transactions
    assert index.lookup(pd.Series([250, 400]))["date"].tolist() == [DAYS[2].isoformat()]
    for day in DAYS[:2]:
        Path(partition_uri(lake, RAW_TRANSACTIONS, day)).unlink()
    assert index.lookup(pd.Series([260, 299]))["transaction_id"].tolist() == [260, 299]
    with pytest.raises(FileNotFoundError):
        index.lookup(pd.Series([50]))
