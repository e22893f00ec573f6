"""Feature build at handbook size: the Spark job vs one DuckDB SQL query vs the handbook's pandas method.

Goals (DESIGN.md §7): Spark ≤ 2× DuckDB (the JVM start reported apart), ≥ 4× faster than pandas; a daily
partition after 180 days of history costs ≤ 1.3× the same after 45 days. All three engines read the same raw
Parquet partitions of a temporary lake, with the same cores; Spark and DuckDB write one Parquet file per day,
pandas keeps its result in memory (it is slower even so). The three results are compared as well.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from jobs.features.definitions import FEATURE_COLUMNS, HISTORY_DAYS
from jobs.features.spark_job import build_features, days_between
from jobs.platform.layout import (
    RAW_FRAUD_REPORTS,
    RAW_TRANSACTIONS,
    TRANSACTION_FEATURES,
    dataset_uri,
    partition_uri,
)
from jobs.simulation.simulator import SimulationConfig, simulate
from jobs.testing.reference_features import _normalise, duckdb_feature_query, pandas_features, write_raw_lake

INCREMENTAL_REPEATS = 3


def _timed(step, *args):
    started = time.perf_counter()
    result = step(*args)
    return result, time.perf_counter() - started


def _raw_files(lake: str, dataset: str, start: dt.date, end: dt.date) -> list[str]:
    days = days_between(start - dt.timedelta(days=HISTORY_DAYS), end)
    return [uri for day in days if Path(uri := partition_uri(lake, dataset, day)).exists()]


def duckdb_build(lake: str, start: dt.date, end: dt.date, output: Path) -> int:
    """The DuckDB query over the same raw files, written as one Parquet file per day like the Spark job."""
    import duckdb

    con = duckdb.connect()
    con.execute("set TimeZone = 'UTC'")
    tx = f"read_parquet({_raw_files(lake, RAW_TRANSACTIONS, start, end)!r})"
    reports = f"read_parquet({_raw_files(lake, RAW_FRAUD_REPORTS, start, end)!r})"
    query = duckdb_feature_query(tx, reports, start, end)
    con.execute(
        f"copy (select *, tx_datetime::date as date from ({query})) to '{output}' "
        "(format parquet, partition_by (date), overwrite_or_ignore)"
    )
    return con.execute(f"select count(*) from read_parquet('{output}/*/*.parquet')").fetchone()[0]


def pandas_build(lake: str, start: dt.date, end: dt.date) -> pd.DataFrame:
    tx = pq.read_table(_raw_files(lake, RAW_TRANSACTIONS, start, end)).to_pandas()
    reports = pq.read_table(_raw_files(lake, RAW_FRAUD_REPORTS, start, end)).to_pandas()
    return pandas_features(tx, reports, start, end)


def _max_difference(left: pd.DataFrame, right: pd.DataFrame) -> float:
    if (
        len(left) != len(right)
        or not (left["transaction_id"].to_numpy() == right["transaction_id"].to_numpy()).all()
    ):
        return float("inf")
    columns = list(FEATURE_COLUMNS)
    return float((left[columns].astype(float) - right[columns].astype(float)).abs().to_numpy().max())


def _line(label: str, value: float, unit: str, note: str = "") -> None:
    print(f"{label:<38}{value:8.2f} {unit}   {note}".rstrip(), flush=True)


def _verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def main() -> None:
    from jobs.platform.spark import spark_session

    config = SimulationConfig()
    data, seconds = _timed(simulate, config)
    start, end = config.start, config.start + dt.timedelta(days=config.days - 1)
    print(f"data: {data.transactions.num_rows:,} transactions, {data.fraud_reports.num_rows:,} reports, "
          f"{start}..{end} (simulated in {seconds:.1f} s); {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at the start")  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="txguard-bench-features-") as folder:
        lake = str(Path(folder) / "lake")
        write_raw_lake(lake, data.transactions, data.fraud_reports)
        del data

        spark, jvm_seconds = _timed(spark_session, "local[*]", "txguard-bench-features")
        build, spark_seconds = _timed(build_features, spark, lake, start, end)
        _, spark_again = _timed(build_features, spark, lake, start, end)
        rows, duckdb_seconds = _timed(duckdb_build, lake, start, end, Path(folder) / "duckdb_features")
        pandas_result, pandas_seconds = _timed(pandas_build, lake, start, end)

        written = pq.read_table(dataset_uri(lake, TRANSACTION_FEATURES), partitioning="hive").to_pandas()
        spark_result = _normalise(written)
        duckdb_result = _normalise(
            pq.read_table(Path(folder) / "duckdb_features", partitioning="hive").to_pandas()
        )
        print(f"rows: spark {build.rows:,}, duckdb {rows:,}, pandas {len(pandas_result):,}; max |difference| "
              f"spark-duckdb {_max_difference(spark_result, duckdb_result):.2e}, "
              f"spark-pandas {_max_difference(spark_result, pandas_result):.2e}")  # fmt: skip
        del written, spark_result, duckdb_result, pandas_result

        _line("spark session start (JVM)", jvm_seconds, "s", "reported apart")
        _line(
            f"spark job, {config.days} days", spark_seconds, "s", f"again in the same JVM {spark_again:.1f} s"
        )
        _line("duckdb, one SQL query", duckdb_seconds, "s")
        _line("pandas, handbook groupby-rolling", pandas_seconds, "s")
        vs_duckdb, vs_pandas = spark_seconds / duckdb_seconds, pandas_seconds / spark_seconds
        _line("spark / duckdb", vs_duckdb, "x", f"goal ≤ 2.00 x   {_verdict(vs_duckdb <= 2)}")
        _line("pandas / spark", vs_pandas, "x", f"goal ≥ 4.00 x   {_verdict(vs_pandas >= 4)}")

        late_day, early_day = start + dt.timedelta(days=180), start + dt.timedelta(days=45)
        timings = {day: [] for day in (early_day, late_day)}
        for _ in range(INCREMENTAL_REPEATS):
            for day in timings:
                timings[day].append(_timed(build_features, spark, lake, day, day)[1])
        early, late = (statistics.median(timings[day]) for day in (early_day, late_day))
        ratio = late / early
        _line(f"one day after 45 days ({early_day})", early, "s", f"median of {INCREMENTAL_REPEATS}")
        _line(f"one day after 180 days ({late_day})", late, "s")
        _line("incremental 180 / 45 days", ratio, "x", f"goal ≤ 1.30 x   {_verdict(ratio <= 1.3)}")
        spark.stop()


if __name__ == "__main__":
    main()
