"""Feature build: the Spark job on tiles vs one DuckDB SQL query vs the handbook's pandas method.

Size: ``TXGUARD_BENCH_SCALE`` (F, default 1) times the handbook's 5,000 cards and 10,000 terminals over its
183 days, so about F times its 1.75 M transactions. All engines read the same raw Parquet partitions of a
temporary lake, with the same cores; Spark and DuckDB write one Parquet file per day, pandas keeps its result
in memory (it runs only up to F = 1). The results are compared as well.

Goals: a backfill of every day (Spark, writing its tiles as it goes) within 3× DuckDB at F = 10, the JVM start
reported apart, timed in a fresh JVM (as the pipeline runs it) and in a warm one on a lake without tiles (at
other sizes the ratios are printed without a verdict); a daily build of day 180 within 1.2×
the same at day 45. A daily build is timed as a day arrives: its own tiles removed first, the earlier days'
tiles in place; it reads raw only its day, its window edges and the days that hold the transactions its
reports name. Each prints the raw rows it read, next to the 38 days a build without tiles reads.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from jobs.features.definitions import FEATURE_COLUMNS, HISTORY_DAYS
from jobs.features.spark_job import build_features
from jobs.features.tiles import days_between
from jobs.platform.layout import (
    CUSTOMER_TILES,
    RAW_FRAUD_REPORTS,
    RAW_TRANSACTIONS,
    REPORT_TILES,
    TERMINAL_TILES,
    TRANSACTION_FEATURES,
    dataset_uri,
    partition_uri,
)
from jobs.simulation.simulator import SimulationConfig, simulate
from jobs.testing.reference_features import duckdb_feature_query, normalise, pandas_features, write_raw_lake

DAILY_REPEATS = 3
BACKFILL_GOAL_SCALE = 10.0


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
    print(f"{label:<42}{value:8.2f} {unit}   {note}".rstrip(), flush=True)


def _verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def _arrives(lake: str, day: dt.date) -> None:
    """Forget the day's own tiles, as when its files have just landed."""
    for dataset in (CUSTOMER_TILES, TERMINAL_TILES, REPORT_TILES):
        Path(partition_uri(lake, dataset, day)).unlink(missing_ok=True)


def _history_rows(lake: str, day: dt.date) -> int:
    files = _raw_files(lake, RAW_TRANSACTIONS, day, day)
    return sum(pq.read_metadata(uri).num_rows for uri in files)


def main() -> None:
    from jobs.platform.spark import spark_session

    scale = float(os.environ.get("TXGUARD_BENCH_SCALE", "1"))
    config = SimulationConfig(customers=round(5_000 * scale), terminals=round(10_000 * scale))
    data, seconds = _timed(simulate, config)
    start, end = config.start, config.end
    print(f"data: F = {scale:g}, {data.transactions.num_rows:,} transactions, "
          f"{data.fraud_reports.num_rows:,} reports, {start}..{end} (simulated in {seconds:.1f} s); "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="txguard-bench-features-") as folder:
        lake = str(Path(folder) / "lake")
        write_raw_lake(lake, data.transactions, data.fraud_reports)
        del data

        spark, jvm_seconds = _timed(spark_session, "local[*]", "txguard-bench-features")
        build, spark_seconds = _timed(build_features, spark, lake, start, end)
        again, spark_again = _timed(build_features, spark, lake, start, end)
        for dataset in (CUSTOMER_TILES, TERMINAL_TILES, REPORT_TILES):
            shutil.rmtree(dataset_uri(lake, dataset))
        rebuilt, spark_warm = _timed(build_features, spark, lake, start, end)
        rows, duckdb_seconds = _timed(duckdb_build, lake, start, end, Path(folder) / "duckdb_features")
        with_pandas = scale <= 1
        if with_pandas:
            pandas_result, pandas_seconds = _timed(pandas_build, lake, start, end)

        written = pq.read_table(dataset_uri(lake, TRANSACTION_FEATURES), partitioning="hive").to_pandas()
        spark_result = normalise(written)
        duckdb_result = normalise(
            pq.read_table(Path(folder) / "duckdb_features", partitioning="hive").to_pandas()
        )
        compared = f"rows: spark {build.rows:,}, duckdb {rows:,}; max |difference| spark-duckdb " + (
            f"{_max_difference(spark_result, duckdb_result):.2e}"
        )
        if with_pandas:
            compared += f", spark-pandas {_max_difference(spark_result, pandas_result):.2e}"
            del pandas_result
        print(compared, flush=True)
        del written, spark_result, duckdb_result

        _line("spark session start (JVM)", jvm_seconds, "s", "reported apart")
        tiles = sum(build.tiles_written.values())
        _line(f"spark backfill, {config.days} days", spark_seconds, "s", f"{tiles:,} tiles written")
        again_written = sum(again.tiles_written.values())
        _line("spark backfill again, same JVM", spark_again, "s", f"{again_written} tiles written")
        tiles = sum(rebuilt.tiles_written.values())
        _line("spark backfill, same JVM, no tiles", spark_warm, "s", f"{tiles:,} tiles written")
        _line("duckdb, one SQL query", duckdb_seconds, "s")
        goal = f"goal ≤ 3.00 x at F = {BACKFILL_GOAL_SCALE:g}"
        for label, seconds in (("fresh JVM", spark_seconds), ("warm, no tiles", spark_warm)):
            ratio = seconds / duckdb_seconds
            verdict = f"   {_verdict(ratio <= 3)}" if scale == BACKFILL_GOAL_SCALE else " (not this size)"
            _line(f"spark backfill ({label}) / duckdb", ratio, "x", goal + verdict)
        if with_pandas:
            _line("pandas, handbook groupby-rolling", pandas_seconds, "s")
            vs_pandas = pandas_seconds / spark_seconds
            _line("pandas / spark backfill", vs_pandas, "x", f"goal ≥ 4.00 x   {_verdict(vs_pandas >= 4)}")

        early_day, late_day = start + dt.timedelta(days=45), start + dt.timedelta(days=180)
        timings: dict[dt.date, list[float]] = {early_day: [], late_day: []}
        reads = {}
        for _ in range(DAILY_REPEATS):
            for day in timings:
                _arrives(lake, day)
                reads[day], seconds = _timed(build_features, spark, lake, day, day)
                timings[day].append(seconds)
        for day in timings:
            daily = reads[day]
            raw_rows = daily.raw_rows_read[RAW_TRANSACTIONS]
            _line(
                f"one day at day {(day - start).days} ({day})",
                statistics.median(timings[day]),
                "s",
                f"median of {DAILY_REPEATS}; raw rows read {raw_rows:,} of {_history_rows(lake, day):,} "
                f"({daily.input_partitions[RAW_TRANSACTIONS]} days, {daily.report_lookup_partitions} of them "
                f"for its reports), {daily.raw_rows_read[RAW_FRAUD_REPORTS]:,} reports, "
                f"{sum(daily.tiles_read.values())} tiles",
            )
        ratio = statistics.median(timings[late_day]) / statistics.median(timings[early_day])
        _line("daily, day 180 / day 45", ratio, "x", f"goal ≤ 1.20 x   {_verdict(ratio <= 1.2)}")
        spark.stop()


if __name__ == "__main__":
    main()
