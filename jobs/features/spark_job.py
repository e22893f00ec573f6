"""Point-in-time transaction features (DESIGN.md §3) as a Spark job: ``compute_features`` and its entry.

The feature of a transaction at time ``t`` uses only transactions with ``tx_datetime <= t`` and fraud reports
with ``reported_at <= t``. Ties are resolved by that rule: every transaction at exactly ``t`` (the current one
and any other at the same microsecond) is in the customer windows ``(t - w, t]``; the terminal windows
``[t - 7 - w, t - 7)`` include a transaction at exactly ``t - 7 - w`` and exclude one at exactly ``t - 7``; a
report at exactly ``t`` counts. A transaction reported more than once counts once, from its first report.

Terminal risk is the subtle part: whether a transaction in the delayed window counts as fraud depends on
``t`` itself (its report may arrive after the window closed but before ``t``). Each reported transaction
``j`` counts for exactly the ``t`` in one interval: after ``tx_j + 7 days``, from ``reported_at_j`` on, and up
to ``tx_j + 7 + w days``. So it becomes two events on its terminal's timeline (+1 where the interval opens,
-1 where it closes), and the numerator is a running sum over the terminal's transactions and events sorted
together: one sort per terminal, no join of transactions against reports, whatever the report delays.
The terminal's reported frauds without the delay are the same idea: ``j`` counts from ``reported_at_j`` up to
``tx_j + w days``, as two more events on that timeline.

Run it standalone (``python -m jobs.features.spark_job --start D --end D``, or ``spark-submit jobs/features/spark_job.py ...``
with the ``jobs`` package installed or shipped with ``--py-files``) or through Dagster Pipes, which the
asset ``transaction_features`` does. The lake may be a local path or ``s3://``: Spark reads and writes an S3
lake as ``s3a://``, which needs the hadoop-aws jars on the cluster (they are not bundled with pyspark).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jobs.features.definitions import (
    FEATURE_COLUMNS,
    FEATURE_SET_VERSION,
    HISTORY_DAYS,
    KEY_COLUMNS,
    NIGHT_LAST_HOUR,
    TERMINAL_DELAY_DAYS,
    WINDOWS_DAYS,
)
from jobs.platform.layout import (
    RAW_FRAUD_REPORTS,
    RAW_TRANSACTIONS,
    TRANSACTION_FEATURES,
    dataset_uri,
    partition_uri,
)
from jobs.platform.storage import filesystem, join, write_parquet_atomic

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame, SparkSession

MICROS_PER_DAY = 86_400_000_000
OUTPUT_COLUMNS: tuple[str, ...] = (*KEY_COLUMNS, *FEATURE_COLUMNS, "feature_set_version")
TRANSACTION_COLUMNS = ("transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount")
REPORT_COLUMNS = ("transaction_id", "reported_at")

_SLOTS = 4
"""Terminal timeline order key = microseconds * _SLOTS + slot, so that events sort around transactions."""
_OPENS_AT, _TRANSACTION, _OPENS_AFTER = 0, 1, 2
"""Slots: an event that applies from its instant on, a transaction, an event that applies only after it."""

AMOUNT_UNITS = 1_000_000
"""Amounts are summed as integers of 1e-6: exact for the contract's cents (and up to six decimals)."""

SHUFFLE_BYTES_PER_PARTITION = 16 * 1024 * 1024
"""Parquet bytes read per shuffle partition (roughly 64 MiB once decoded); AQE coalesces what is left over."""


def _day_micros(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days * MICROS_PER_DAY


def compute_features(
    transactions: DataFrame, fraud_reports: DataFrame, start: dt.date, end: dt.date
) -> DataFrame:
    """Features of the transactions on days ``start..end`` (UTC), from the history the inputs hold.

    ``transactions`` needs TRANSACTION_COLUMNS and ``fraud_reports`` REPORT_COLUMNS; transactions from
    ``start - HISTORY_DAYS`` onward are used. Returns OUTPUT_COLUMNS, one row per transaction, in no order.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if end < start:
        raise ValueError(f"feature range ends ({end}) before it starts ({start})")
    history_from = _day_micros(start - dt.timedelta(days=HISTORY_DAYS))
    target_from, target_to = _day_micros(start), _day_micros(end + dt.timedelta(days=1))
    us = F.col("_us")
    tx = (
        transactions.select(*TRANSACTION_COLUMNS)
        .withColumn("_us", F.unix_micros("tx_datetime"))
        .where((us >= history_from) & (us < target_to))
    )

    # Every frame starts at the partition's first row, so Spark grows it row by row (linear in the rows):
    # a window (a, b] is "up to b" minus "up to a". A bounded sliding frame would re-aggregate the whole frame
    # at every row, which a busy terminal or card turns quadratic. Amounts are summed in whole micro-units so
    # that the difference is exact, and a feature never depends on how much history a build happened to read.
    by_customer = Window.partitionBy("customer_id").orderBy("_us")
    up_to_now = by_customer.rangeBetween(Window.unboundedPreceding, Window.currentRow)
    amount_units = F.round(F.col("tx_amount") * AMOUNT_UNITS).cast("long")
    count_to_now, units_to_now = F.count(F.lit(1)).over(up_to_now), F.sum(amount_units).over(up_to_now)
    customer: dict[str, Column] = {}
    for w in WINDOWS_DAYS:
        up_to_window = by_customer.rangeBetween(Window.unboundedPreceding, -w * MICROS_PER_DAY)
        count = count_to_now - F.count(F.lit(1)).over(up_to_window)
        units = units_to_now - F.coalesce(F.sum(amount_units).over(up_to_window), F.lit(0))
        customer[f"customer_id_nb_tx_{w}day_window"] = count
        average = units / (count * AMOUNT_UNITS)
        customer[f"customer_id_avg_amount_{w}day_window"] = average
        customer[f"customer_id_amount_ratio_{w}day_window"] = F.when(
            average > 0, F.col("tx_amount") / average
        ).otherwise(1.0)

    timeline = (
        tx.withColumns(customer)
        .withColumn("_key", us * _SLOTS + _TRANSACTION)
        .unionByName(_report_events(tx, fraud_reports, target_to), allowMissingColumns=True)
    )

    by_terminal = Window.partitionBy("terminal_id").orderBy("_key")
    delay = TERMINAL_DELAY_DAYS * MICROS_PER_DAY
    up_to_delay = by_terminal.rangeBetween(Window.unboundedPreceding, -_SLOTS * delay - 1)
    count_to_delay = F.count("transaction_id").over(up_to_delay)
    so_far = by_terminal.rangeBetween(Window.unboundedPreceding, Window.currentRow)
    terminal: dict[str, Column] = {}
    for w in WINDOWS_DAYS:
        up_to_window = by_terminal.rangeBetween(
            Window.unboundedPreceding, -_SLOTS * (delay + w * MICROS_PER_DAY) - 1
        )
        count = count_to_delay - F.count("transaction_id").over(up_to_window)
        reported = F.coalesce(F.sum(f"_opened_{w}").over(so_far), F.lit(0))
        terminal[f"terminal_id_nb_tx_{w}day_window"] = count
        terminal[f"terminal_id_risk_{w}day_window"] = F.when(count > 0, reported / count).otherwise(0.0)
        recent = F.coalesce(F.sum(f"_recent_{w}").over(so_far), F.lit(0))
        terminal[f"terminal_id_nb_reported_frauds_{w}day_window"] = recent

    hour = F.floor(F.pmod(us, F.lit(MICROS_PER_DAY)) / 3_600_000_000)
    weekday = F.pmod(F.floor(us / MICROS_PER_DAY) + 3, F.lit(7))
    return (
        timeline.withColumns(terminal)
        .where(F.col("transaction_id").isNotNull() & (us >= target_from))
        .withColumns(
            {
                "tx_during_weekend": (weekday >= 5).cast("int"),
                "tx_during_night": (hour <= NIGHT_LAST_HOUR).cast("int"),
                "feature_set_version": F.lit(FEATURE_SET_VERSION),
            }
        )
        .select(*OUTPUT_COLUMNS)
    )


def _report_events(tx: DataFrame, fraud_reports: DataFrame, target_to: int) -> DataFrame:
    """+1/-1 events on each terminal's timeline for the times at which a reported transaction counts.

    In the risk window ``w`` (``_opened_w``), transaction ``j`` counts at ``t`` when
    ``tx_j + delay < t <= tx_j + delay + w`` and ``reported_at_j <= t``. The interval opens after
    ``tx_j + delay`` (slot _OPENS_AFTER) or at the report when that comes later (slot _OPENS_AT), and closes
    after ``tx_j + delay + w`` (slot _OPENS_AFTER); when the report arrives after the interval, ``j`` never
    counts in that window and emits nothing for it. Among the reported frauds (``_recent_w``) it counts when
    ``tx_j < t <= tx_j + w`` and ``reported_at_j <= t``: from after ``tx_j`` or at the report, whichever is
    later, to after ``tx_j + w``.
    """
    from pyspark.sql import functions as F

    first_report = (
        fraud_reports.select(*REPORT_COLUMNS)
        .withColumn("_reported_us", F.unix_micros("reported_at"))
        .where(F.col("_reported_us") < target_to)
        .groupBy("transaction_id")
        .agg(F.min("_reported_us").alias("_reported_us"))
    )
    reported = tx.select("transaction_id", "terminal_id", "_us").join(first_report, "transaction_id")
    delay = TERMINAL_DELAY_DAYS * MICROS_PER_DAY
    after_delay = F.col("_us") + delay
    reported_us = F.col("_reported_us")
    late = reported_us > after_delay
    opens = F.when(late, reported_us * _SLOTS + _OPENS_AT).otherwise(after_delay * _SLOTS + _OPENS_AFTER)
    closes = {w: after_delay + w * MICROS_PER_DAY for w in WINDOWS_DAYS}
    counts = {w: (reported_us <= closes[w]).cast("int") for w in WINDOWS_DAYS}
    recent_opens = F.when(reported_us > F.col("_us"), reported_us * _SLOTS + _OPENS_AT).otherwise(
        F.col("_us") * _SLOTS + _OPENS_AFTER
    )
    recent_ends = {w: F.col("_us") + w * MICROS_PER_DAY for w in WINDOWS_DAYS}
    recent = {w: (reported_us <= recent_ends[w]).cast("int") for w in WINDOWS_DAYS}
    fields = [f"_{kind}_{w}" for kind in ("opened", "recent") for w in WINDOWS_DAYS]

    def event(key: Column, deltas: dict[str, Column]) -> Column:
        return F.struct(key.alias("_key"), *(deltas.get(name, F.lit(0)).alias(name) for name in fields))

    events = [
        event(opens, {f"_opened_{w}": counts[w] for w in WINDOWS_DAYS}),
        event(recent_opens, {f"_recent_{w}": recent[w] for w in WINDOWS_DAYS}),
        *(event(closes[w] * _SLOTS + _OPENS_AFTER, {f"_opened_{w}": -counts[w]}) for w in WINDOWS_DAYS),
        *(event(recent_ends[w] * _SLOTS + _OPENS_AFTER, {f"_recent_{w}": -recent[w]}) for w in WINDOWS_DAYS),
    ]
    any_delta = F.greatest(*(F.abs(F.col(name)) for name in fields)) > 0
    return (
        reported.select("terminal_id", F.explode(F.array(*events)).alias("_event"))
        .select("terminal_id", "_event.*")
        .where(any_delta)
    )


def shuffle_partitions_for(input_bytes: int, parallelism: int) -> int:
    """Small partitions, in whole waves of tasks over every core (not Spark's fixed 200)."""
    needed = min(2000, math.ceil(input_bytes / SHUFFLE_BYTES_PER_PARTITION))
    return max(1, parallelism) * max(1, math.ceil(needed / max(1, parallelism)))


def days_between(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def spark_uri(uri: str) -> str:
    """The URI Spark (Hadoop) uses for a lake location: ``s3://`` is Hadoop's ``s3a://`` connector."""
    return "s3a://" + uri.removeprefix("s3://") if uri.startswith("s3://") else uri


@dataclass(frozen=True)
class FeatureBuild:
    """What a feature build read and wrote: the metadata the Dagster asset shows."""

    start: dt.date
    end: dt.date
    rows_per_day: dict[str, int]
    null_rates: dict[str, float]
    input_partitions: dict[str, int]
    input_bytes: int
    shuffle_partitions: int
    seconds: float
    missing_inputs: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(self.rows_per_day.values())

    def metadata(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "days": len(self.rows_per_day),
            "empty_days": sum(1 for n in self.rows_per_day.values() if n == 0),
            "rows_per_day": self.rows_per_day,
            "null_rates": self.null_rates,
            "max_null_rate": max(self.null_rates.values(), default=0.0),
            "feature_set_version": FEATURE_SET_VERSION,
            "input_partitions": self.input_partitions,
            "missing_input_partitions": self.missing_inputs,
            "input_bytes": self.input_bytes,
            "shuffle_partitions": self.shuffle_partitions,
            "spark_seconds": round(self.seconds, 2),
        }


def _existing_partitions(
    lake: str, dataset: str, days: Sequence[dt.date]
) -> tuple[list[str], int, list[dt.date]]:
    """The partition files of ``days`` that exist, their total size in bytes, and the days without one."""
    found, missing, size = [], [], 0
    for day in days:
        uri = partition_uri(lake, dataset, day)
        fs, path = filesystem(uri)
        try:
            size += int(fs.info(path)["size"])
        except FileNotFoundError:
            missing.append(day)
            continue
        found.append(uri)
    return found, size, missing


def _read_partitions(spark: SparkSession, uris: Sequence[str], columns: Sequence[str]) -> DataFrame:
    """The listed partition files only (never a scan of the dataset), or an empty frame when none exist."""
    from pyspark.sql.types import DoubleType, LongType, StructField, StructType, TimestampType

    types = {"tx_amount": DoubleType(), "tx_datetime": TimestampType(), "reported_at": TimestampType()}
    schema = StructType([StructField(c, types.get(c, LongType())) for c in columns])
    if not uris:
        return spark.createDataFrame([], schema)
    return spark.read.schema(schema).parquet(*(spark_uri(u) for u in uris))


def build_features(spark: SparkSession, lake: str, start: dt.date, end: dt.date) -> FeatureBuild:
    """Read the raw partitions the range needs, compute, and replace one feature partition per day."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import to_arrow_schema

    started = time.perf_counter()
    days = days_between(start, end)
    history = days_between(start - dt.timedelta(days=HISTORY_DAYS), end)
    tx_uris, tx_bytes, tx_missing = _existing_partitions(lake, RAW_TRANSACTIONS, history)
    report_uris, report_bytes, _ = _existing_partitions(lake, RAW_FRAUD_REPORTS, history)
    shuffles = shuffle_partitions_for(tx_bytes + report_bytes, spark.sparkContext.defaultParallelism)
    spark.conf.set("spark.sql.shuffle.partitions", str(shuffles))
    # Sized above in whole waves over the cores; AQE's coalescing would leave a last wave with idle cores.
    spark.conf.set("spark.sql.adaptive.coalescePartitions.enabled", "false")
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    # A few hundred named files are listed faster on the driver than by a distributed listing job.
    spark.conf.set("spark.sql.sources.parallelPartitionDiscovery.threshold", str(len(history) * 2 + 1))

    features = compute_features(
        _read_partitions(spark, tx_uris, TRANSACTION_COLUMNS),
        _read_partitions(spark, report_uris, REPORT_COLUMNS),
        start,
        end,
    )
    observation = Observation("transaction_features")
    observed = features.observe(
        observation, *(F.count_if(F.col(c).isNull()).alias(c) for c in OUTPUT_COLUMNS)
    )
    staging = join(dataset_uri(lake, TRANSACTION_FEATURES), "_staging", uuid.uuid4().hex)
    fs, staging_path = filesystem(staging)
    try:
        (
            observed.withColumn("date", F.to_date("tx_datetime"))
            .repartition("date")
            .sortWithinPartitions("date", "tx_datetime", "transaction_id")
            .write.partitionBy("date")
            .parquet(spark_uri(staging))
        )
        nulls = observation.get
        rows_per_day = _publish(lake, staging, days, to_arrow_schema(features.schema))
    finally:
        if fs.exists(staging_path):
            fs.rm(staging_path, recursive=True)
        with contextlib.suppress(OSError):
            fs.rmdir(staging_path.rsplit("/", 1)[0])
    total = sum(rows_per_day.values())
    return FeatureBuild(
        start=start,
        end=end,
        rows_per_day=rows_per_day,
        null_rates={c: nulls[c] / total if total else 0.0 for c in OUTPUT_COLUMNS},
        input_partitions={RAW_TRANSACTIONS: len(tx_uris), RAW_FRAUD_REPORTS: len(report_uris)},
        input_bytes=tx_bytes + report_bytes,
        shuffle_partitions=shuffles,
        seconds=time.perf_counter() - started,
        missing_inputs=[day.isoformat() for day in tx_missing if day >= start],
    )


def _publish(lake: str, staging: str, days: Sequence[dt.date], schema: pa.Schema) -> dict[str, int]:
    """Move each staged day file over its partition (atomic rename locally); return the rows of each day.

    Row counts come from the Parquet footers, not from another pass over the data. A day without
    transactions gets an empty file with the schema Spark wrote (nullability included, so that readers can
    concatenate days), and downstream sees that the day was built.
    """
    import pyarrow.parquet as pq

    fs, staging_path = filesystem(staging)
    rows: dict[str, int] = {}
    for day in days:
        target = partition_uri(lake, TRANSACTION_FEATURES, day)
        parts = fs.glob(f"{staging_path}/date={day.isoformat()}/*.parquet")
        if len(parts) > 1:
            raise RuntimeError(f"expected one staged file for {day}, found {len(parts)}: {parts}")
        if not parts:
            write_parquet_atomic(schema.empty_table(), target)
            rows[day.isoformat()] = 0
            continue
        with fs.open(parts[0], "rb") as handle:
            rows[day.isoformat()] = pq.ParquetFile(handle).metadata.num_rows
        target_fs, target_path = filesystem(target)
        target_fs.makedirs(target_path.rsplit("/", 1)[0], exist_ok=True)
        fs.mv(parts[0], target_path)
    return rows


@contextlib.contextmanager
def _pipes() -> Iterator[Any]:
    """Dagster Pipes' context when Dagster launched this process, else None (a standalone run)."""
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    if not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        yield None
        return
    with open_dagster_pipes() as pipes:
        yield pipes


def _pipes_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Pipes takes scalars as they are; mappings and lists must be declared as JSON."""
    return {
        key: {"raw_value": value, "type": "json"} if isinstance(value, dict | list) else value
        for key, value in metadata.items()
    }


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from jobs.platform.layout import parse_day
    from jobs.platform.settings import load_settings

    parser = argparse.ArgumentParser(prog="jobs.features.spark_job", description=__doc__.splitlines()[0])
    parser.add_argument("--start", required=True, type=parse_day, help="first day, YYYY-MM-DD")
    parser.add_argument("--end", required=True, type=parse_day, help="last day, YYYY-MM-DD (inclusive)")
    parser.add_argument("--lake", help="lake root (default: TXGUARD_LAKE_ROOT or $TXGUARD_HOME/lake)")
    parser.add_argument("--master", help="Spark master (default: TXGUARD_SPARK_MASTER or local[*])")
    args = parser.parse_args(argv)
    if args.lake is None or args.master is None:
        settings = load_settings()
        args.lake = args.lake or settings.lake
        args.master = args.master or settings.spark_master
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Build the feature partitions of ``--start..--end`` and report them to Dagster when it launched us."""
    from jobs.platform.spark import spark_session

    args = _parse_args(argv)
    with _pipes() as pipes:
        jvm_started = time.perf_counter()
        spark = spark_session(args.master, app_name="txguard-features")
        jvm_seconds = time.perf_counter() - jvm_started
        try:
            build = build_features(spark, args.lake, args.start, args.end)
        finally:
            spark.stop()
        metadata = {
            **build.metadata(),
            "spark_master": args.master,
            "session_start_seconds": round(jvm_seconds, 2),
        }
        if pipes is None:
            print(json.dumps(metadata, sort_keys=True))
        else:
            pipes.log.info(f"{build.rows} feature rows for {args.start}..{args.end}")
            pipes.report_asset_materialization(metadata=_pipes_metadata(metadata))
    return 0


if __name__ == "__main__":
    sys.exit(main())
