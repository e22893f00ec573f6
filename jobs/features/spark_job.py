"""Point-in-time transaction features as a Spark job: ``compute_features`` and its entry.

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

A build (``build_features``) reads raw only its days and the days its windows cut; every whole day inside a
window comes from the daily tiles of ``jobs.features.tiles``, one weighted row per card or terminal for each
run of such days, and the reported transactions come from the report tiles. The windows are running sums of
integers, so the result is the same, bit for bit, as ``compute_features`` over the whole raw history.

Run it standalone (``python -m jobs.features.spark_job --start D --end D``, or
``spark-submit jobs/features/spark_job.py ...`` with the ``jobs`` package installed or shipped with
``--py-files``) or through Dagster Pipes, which the asset ``transaction_features`` does. The lake may be a
local path or ``s3://``: Spark reads and writes an S3 lake as ``s3a://``, which needs the hadoop-aws jars on
the cluster (they are not bundled with pyspark).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
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
from jobs.features.tiles import (
    AMOUNT_UNITS,
    CUSTOMER_TILE_SCHEMA,
    REPORT_TILE_SCHEMA,
    TERMINAL_TILE_SCHEMA,
    TilePlan,
    days_between,
    partition_rows,
    plan_build,
    report_lookup,
    write_daily_tiles,
    write_report_tiles,
)
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
from jobs.platform.spark import default_parallelism
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

SHUFFLE_BYTES_PER_PARTITION = 16 * 1024 * 1024
"""Parquet bytes read per shuffle partition (roughly 64 MiB once decoded); AQE coalesces what is left over."""


def _day_micros(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days * MICROS_PER_DAY


def compute_features(
    transactions: DataFrame, fraud_reports: DataFrame, start: dt.date, end: dt.date
) -> DataFrame:
    """Features of the transactions on days ``start..end`` (UTC), from the raw history the inputs hold.

    ``transactions`` needs TRANSACTION_COLUMNS and ``fraud_reports`` REPORT_COLUMNS; transactions from
    ``start - HISTORY_DAYS`` onward are used. Returns OUTPUT_COLUMNS, one row per transaction, in no order.
    """
    from pyspark.sql import functions as F

    rows = _transaction_rows(transactions, start, end)
    first_report = (
        fraud_reports.select(*REPORT_COLUMNS)
        .withColumn("_reported_us", F.unix_micros("reported_at"))
        .where(F.col("_reported_us") < _day_micros(end + dt.timedelta(days=1)))
        .groupBy("transaction_id")
        .agg(F.min("_reported_us").alias("_reported_us"))
    )
    reported = rows.select("transaction_id", "terminal_id", "_us").join(first_report, "transaction_id")
    return _features(rows, reported, start, end)


def _transaction_rows(transactions: DataFrame, start: dt.date, end: dt.date) -> DataFrame:
    """The history's transactions, each weighing one transaction and its amount in whole micro-units."""
    from pyspark.sql import functions as F

    if end < start:
        raise ValueError(f"feature range ends ({end}) before it starts ({start})")
    us = F.col("_us")
    history_from = _day_micros(start - dt.timedelta(days=HISTORY_DAYS))
    return (
        transactions.select(*TRANSACTION_COLUMNS)
        .withColumn("_us", F.unix_micros("tx_datetime"))
        .where((us >= history_from) & (us < _day_micros(end + dt.timedelta(days=1))))
        .withColumns(
            {
                "_n": F.lit(1).cast("long"),
                "_units": F.round(F.col("tx_amount") * AMOUNT_UNITS).cast("long"),
            }
        )
    )


def _features(
    rows: DataFrame,
    reported: DataFrame,
    start: dt.date,
    end: dt.date,
    customer_blocks: DataFrame | None = None,
    terminal_blocks: DataFrame | None = None,
) -> DataFrame:
    """The windows over weighted rows: transactions (``_transaction_rows``) and, for the whole days a build
    read as tiles, one row per card (``customer_id, _us, _n, _units``) and per terminal
    (``terminal_id, _key, _n``) standing for many transactions. ``reported`` holds each reported transaction
    once (``transaction_id, terminal_id, _us, _reported_us``: its first report)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    us = F.col("_us")
    zero = F.lit(0).cast("long")

    # Every frame starts at the partition's first row, so Spark grows it row by row (linear in the rows):
    # a window (a, b] is "up to b" minus "up to a". A bounded sliding frame would re-aggregate the whole frame
    # at every row, which a busy terminal or card turns quadratic. Amounts are summed in whole micro-units so
    # that the difference is exact, and a feature never depends on how much history a build happened to read
    # nor on which of its days came as tiles.
    by_customer = Window.partitionBy("customer_id").orderBy("_us")
    up_to_now = by_customer.rangeBetween(Window.unboundedPreceding, Window.currentRow)
    count_to_now = F.coalesce(F.sum("_n").over(up_to_now), zero)
    units_to_now = F.sum("_units").over(up_to_now)
    customer: dict[str, Column] = {}
    for w in WINDOWS_DAYS:
        up_to_window = by_customer.rangeBetween(Window.unboundedPreceding, -w * MICROS_PER_DAY)
        count = count_to_now - F.coalesce(F.sum("_n").over(up_to_window), zero)
        units = units_to_now - F.coalesce(F.sum("_units").over(up_to_window), zero)
        customer[f"customer_id_nb_tx_{w}day_window"] = count
        average = units / (count * AMOUNT_UNITS)
        customer[f"customer_id_avg_amount_{w}day_window"] = average
        customer[f"customer_id_amount_ratio_{w}day_window"] = F.when(
            average > 0, F.col("tx_amount") / average
        ).otherwise(1.0)

    if customer_blocks is not None:
        rows = rows.unionByName(customer_blocks, allowMissingColumns=True)
    timeline = rows.withColumns(customer).where(F.col("transaction_id").isNotNull())
    timeline = timeline.withColumn("_key", us * _SLOTS + _TRANSACTION)
    if terminal_blocks is not None:
        timeline = timeline.unionByName(terminal_blocks, allowMissingColumns=True)
    timeline = timeline.unionByName(_report_events(reported), allowMissingColumns=True)

    by_terminal = Window.partitionBy("terminal_id").orderBy("_key")
    delay = TERMINAL_DELAY_DAYS * MICROS_PER_DAY
    up_to_delay = by_terminal.rangeBetween(Window.unboundedPreceding, -_SLOTS * delay - 1)
    count_to_delay = F.coalesce(F.sum("_n").over(up_to_delay), zero)
    so_far = by_terminal.rangeBetween(Window.unboundedPreceding, Window.currentRow)
    terminal: dict[str, Column] = {}
    for w in WINDOWS_DAYS:
        up_to_window = by_terminal.rangeBetween(
            Window.unboundedPreceding, -_SLOTS * (delay + w * MICROS_PER_DAY) - 1
        )
        count = count_to_delay - F.coalesce(F.sum("_n").over(up_to_window), zero)
        reported_frauds = F.coalesce(F.sum(f"_opened_{w}").over(so_far), F.lit(0))
        terminal[f"terminal_id_nb_tx_{w}day_window"] = count
        terminal[f"terminal_id_risk_{w}day_window"] = F.when(count > 0, reported_frauds / count).otherwise(
            0.0
        )
        recent = F.coalesce(F.sum(f"_recent_{w}").over(so_far), F.lit(0))
        terminal[f"terminal_id_nb_reported_frauds_{w}day_window"] = recent

    hour = F.floor(F.pmod(us, F.lit(MICROS_PER_DAY)) / 3_600_000_000)
    weekday = F.pmod(F.floor(us / MICROS_PER_DAY) + 3, F.lit(7))
    return (
        timeline.withColumns(terminal)
        .where(F.col("transaction_id").isNotNull() & (us >= _day_micros(start)))
        .withColumns(
            {
                "tx_during_weekend": (weekday >= 5).cast("int"),
                "tx_during_night": (hour <= NIGHT_LAST_HOUR).cast("int"),
                "feature_set_version": F.lit(FEATURE_SET_VERSION),
            }
        )
        .select(*OUTPUT_COLUMNS)
    )


def _report_events(reported: DataFrame) -> DataFrame:
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


def tiled_features(spark: SparkSession, plan: TilePlan) -> DataFrame:
    """The features of ``plan.start..plan.end`` from the raw days of the plan and its tiles, which must be in
    the lake (the report tiles included): the same rows, bit for bit, as ``compute_features`` over the whole
    raw history."""
    from pyspark.sql import functions as F

    start, end = plan.start, plan.end
    rows = _transaction_rows(
        _read_partitions(spark, [plan.transactions[d].uri for d in plan.raw_days], TRANSACTION_COLUMNS),
        start,
        end,
    )
    history_from = _day_micros(start - dt.timedelta(days=HISTORY_DAYS))
    target_to = _day_micros(end + dt.timedelta(days=1))
    tiles = _read_tiles(spark, plan.uris(REPORT_TILES, plan.report_days), REPORT_TILE_SCHEMA)
    reported = (
        tiles.select(
            "transaction_id",
            "terminal_id",
            F.col("tx_us").alias("_us"),
            F.col("reported_us").alias("_reported_us"),
        )
        .where((F.col("_reported_us") < target_to) & F.col("_us").between(history_from, target_to - 1))
        .groupBy("transaction_id", "terminal_id", "_us")
        .agg(F.min("_reported_us").alias("_reported_us"))
    )
    customers = _read_tiles(spark, plan.uris(CUSTOMER_TILES, plan.customer_days), CUSTOMER_TILE_SCHEMA)
    customer_blocks = customers.groupBy("customer_id", _block_start(plan.customer_blocks()).alias("_us")).agg(
        F.sum("n").alias("_n"), F.sum("units").alias("_units")
    )
    terminals = _read_tiles(spark, plan.uris(TERMINAL_TILES, plan.terminal_days), TERMINAL_TILE_SCHEMA)
    terminal_blocks = terminals.groupBy(
        "terminal_id", (_block_start(plan.terminal_blocks()) * _SLOTS + _TRANSACTION).alias("_key")
    ).agg(F.sum("n").alias("_n"))
    return _features(rows, reported, start, end, customer_blocks, terminal_blocks)


def _block_start(blocks: dict[dt.date, dt.date]) -> Column:
    """The microsecond of the first midnight of the tile's run of days (tiles carry their ``day``)."""
    from pyspark.sql import functions as F

    if not blocks:
        return F.lit(None).cast("long")
    epoch = dt.date(1970, 1, 1)
    pairs = [F.lit(v) for day, first in blocks.items() for v in ((day - epoch).days, _day_micros(first))]
    return F.element_at(F.create_map(*pairs), F.unix_date("day"))


def build_report_tiles(spark: SparkSession, plan: TilePlan, lookup_uris: Sequence[str]) -> None:
    """Resolve the reports of ``plan.reports_to_build`` to their transaction's terminal and time, and write
    one report tile per day. A report of day ``r`` is matched only with transactions of
    ``plan.lookup_from(r)..r``; a report that names none of them is left out (it can never count)."""
    from pyspark.sql import functions as F

    first_target = F.lit((plan.start - dt.date(1970, 1, 1)).days)
    reports = (
        _read_partitions(spark, [plan.fraud_reports[d].uri for d in plan.reports_to_build], REPORT_COLUMNS)
        .select(F.col("transaction_id").alias("_id"), F.unix_micros("reported_at").alias("reported_us"))
        .withColumn("_day", F.floor(F.col("reported_us") / MICROS_PER_DAY))
        .withColumn("_from", F.greatest(F.col("_day"), first_target) - HISTORY_DAYS)
    )
    transactions = _read_partitions(spark, lookup_uris, TRANSACTION_COLUMNS).select(
        "transaction_id", "terminal_id", F.unix_micros("tx_datetime").alias("tx_us")
    )
    tx_day = F.floor(F.col("tx_us") / MICROS_PER_DAY)
    resolved = (
        reports.join(
            transactions,
            (F.col("_id") == F.col("transaction_id")) & tx_day.between(F.col("_from"), F.col("_day")),
        )
        .groupBy(F.date_from_unix_date("_day").alias("day"), "transaction_id", "terminal_id", "tx_us")
        .agg(F.min("reported_us").alias("reported_us"))
    )
    write_report_tiles(plan, resolved.toArrow())


def write_tiles_of_raw_days(plan: TilePlan, rows: DataFrame) -> None:
    """The card and terminal tiles of the raw days whose tiles are missing or stale, from ``rows``
    (``_transaction_rows`` of those days)."""
    from pyspark.sql import functions as F

    epoch = dt.date(1970, 1, 1)
    wanted = [(d - epoch).days for d in plan.daily_tiles_to_write]
    epoch_day = F.floor(F.col("_us") / MICROS_PER_DAY).cast("int")
    of_days = rows.withColumn("_day", epoch_day).where(F.col("_day").isin(wanted))
    # One scan and one shuffle for both kinds: each row counts under its card and under its terminal.
    keys = F.array(
        F.struct(F.lit(0).alias("_kind"), F.col("customer_id").alias("_id")),
        F.struct(F.lit(1).alias("_kind"), F.col("terminal_id").alias("_id")),
    )
    both = (
        of_days.select("_day", "_n", "_units", F.explode(keys).alias("_of"))
        .groupBy(F.date_from_unix_date("_day").alias("day"), "_of._kind", "_of._id")
        .agg(F.sum("_n").alias("n"), F.sum("_units").alias("units"))
        .toArrow()
    )
    kind = both["_kind"].to_numpy()
    customers = both.filter(kind == 0).rename_columns(["day", "_kind", "customer_id", "n", "units"])
    terminals = both.filter(kind == 1).rename_columns(["day", "_kind", "terminal_id", "n", "units"])
    write_daily_tiles(plan, customers, terminals)


def shuffle_partitions_for(input_bytes: int, parallelism: int) -> int:
    """Small partitions, in whole waves of tasks over every core (not Spark's fixed 200)."""
    needed = min(2000, math.ceil(input_bytes / SHUFFLE_BYTES_PER_PARTITION))
    return max(1, parallelism) * max(1, math.ceil(needed / max(1, parallelism)))


def spark_uri(uri: str) -> str:
    """The URI Spark (Hadoop) uses for a lake location: ``s3://`` is Hadoop's ``s3a://`` connector, and a
    relative path is made absolute here (a Spark Connect server would resolve it in its own directory)."""
    if uri.startswith("s3://"):
        return "s3a://" + uri.removeprefix("s3://")
    return uri if "://" in uri else os.path.abspath(uri)


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
    raw_rows_read: dict[str, int] = field(default_factory=dict)
    report_lookup_partitions: int = 0
    tiles_read: dict[str, int] = field(default_factory=dict)
    tiles_written: dict[str, int] = field(default_factory=dict)
    stale_tiles: list[str] = field(default_factory=list)

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
            "raw_rows_read": self.raw_rows_read,
            "report_lookup_partitions": self.report_lookup_partitions,
            "tiles_read": self.tiles_read,
            "tiles_written": self.tiles_written,
            "stale_tiles": self.stale_tiles,
            "input_bytes": self.input_bytes,
            "shuffle_partitions": self.shuffle_partitions,
            "spark_seconds": round(self.seconds, 2),
        }


def _read_partitions(spark: SparkSession, uris: Sequence[str], columns: Sequence[str]) -> DataFrame:
    """The listed raw files only (never a scan of the dataset), or an empty frame when none exist."""
    from pyspark.sql.types import DoubleType, LongType, StructField, StructType, TimestampType

    types = {"tx_amount": DoubleType(), "tx_datetime": TimestampType(), "reported_at": TimestampType()}
    schema = StructType([StructField(c, types.get(c, LongType())) for c in columns])
    if not uris:
        return spark.createDataFrame([], schema)
    return spark.read.schema(schema).parquet(*(spark_uri(u) for u in uris))


def _read_tiles(spark: SparkSession, uris: Sequence[str], schema: pa.Schema) -> DataFrame:
    """The listed tile files, or an empty frame when there are none."""
    from pyspark.sql.pandas.types import from_arrow_schema

    spark_schema = from_arrow_schema(schema)
    if not uris:
        return spark.createDataFrame([], spark_schema)
    return spark.read.schema(spark_schema).parquet(*(spark_uri(u) for u in uris))


def build_features(spark: SparkSession, lake: str, start: dt.date, end: dt.date) -> FeatureBuild:
    """Compute the range from its raw days and tiles, and replace one feature partition per day.

    Report tiles that are missing or stale are built first. After the features, the card and terminal tiles
    that were missing or stale are written, from the raw rows read: those this build wanted, and those of its
    last days that later days will want (a daily run writes its own day's).
    """
    from pyspark.sql import Observation
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import to_arrow_schema

    if end < start:
        raise ValueError(f"feature range ends ({end}) before it starts ({start})")
    started = time.perf_counter()
    days = days_between(start, end)
    plan = plan_build(lake, start, end)
    lookup = report_lookup(plan)
    report_uris = [plan.fraud_reports[d].uri for d in plan.reports_to_build]
    tx_days = sorted(set(plan.raw_days) | set(lookup.days))
    input_bytes = (
        sum(plan.transactions[d].size for d in tx_days)
        + sum(plan.fraud_reports[d].size for d in plan.reports_to_build)
        + plan.tile_bytes
    )
    shuffles = shuffle_partitions_for(input_bytes, default_parallelism(spark))
    spark.conf.set("spark.sql.shuffle.partitions", str(shuffles))
    # Sized above in whole waves over the cores; AQE's coalescing would leave a last wave with idle cores.
    spark.conf.set("spark.sql.adaptive.coalescePartitions.enabled", "false")
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    # A few hundred named files are listed faster on the driver than by a distributed listing job.
    files = len(tx_days) + len(report_uris) + len(plan.report_days)
    files += len(plan.customer_days) + len(plan.terminal_days)
    spark.conf.set("spark.sql.sources.parallelPartitionDiscovery.threshold", str(files + 1))

    if plan.reports_to_build:
        build_report_tiles(spark, plan, lookup.uris)
    features = tiled_features(spark, plan)
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
    if plan.daily_tiles_to_write:
        raw_rows = _read_partitions(
            spark, [plan.transactions[d].uri for d in plan.daily_tiles_to_write], TRANSACTION_COLUMNS
        )
        write_tiles_of_raw_days(plan, _transaction_rows(raw_rows, start, end))
    total = sum(rows_per_day.values())
    return FeatureBuild(
        start=start,
        end=end,
        rows_per_day=rows_per_day,
        null_rates={c: nulls[c] / total if total else 0.0 for c in OUTPUT_COLUMNS},
        input_partitions={RAW_TRANSACTIONS: len(tx_days), RAW_FRAUD_REPORTS: len(report_uris)},
        input_bytes=input_bytes,
        shuffle_partitions=shuffles,
        seconds=time.perf_counter() - started,
        missing_inputs=[day.isoformat() for day in days if day not in plan.transactions],
        raw_rows_read={
            RAW_TRANSACTIONS: partition_rows([plan.transactions[d].uri for d in tx_days]),
            RAW_FRAUD_REPORTS: lookup.report_rows,
        },
        report_lookup_partitions=len(set(lookup.days) - set(plan.raw_days)),
        tiles_read={
            CUSTOMER_TILES: len(plan.customer_days),
            TERMINAL_TILES: len(plan.terminal_days),
            REPORT_TILES: len(plan.report_days),
        },
        tiles_written={
            CUSTOMER_TILES: len(plan.daily_tiles_to_write),
            TERMINAL_TILES: len(plan.daily_tiles_to_write),
            REPORT_TILES: len(plan.reports_to_build),
        },
        stale_tiles=list(plan.stale),
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
    from jobs.platform.settings import SettingsError, load_settings

    parser = argparse.ArgumentParser(prog="jobs.features.spark_job", description=__doc__.splitlines()[0])
    parser.add_argument("--start", required=True, type=parse_day, help="first day, YYYY-MM-DD")
    parser.add_argument("--end", required=True, type=parse_day, help="last day, YYYY-MM-DD (inclusive)")
    parser.add_argument("--lake", help="lake root (default: TXGUARD_LAKE_ROOT or $TXGUARD_HOME/lake)")
    parser.add_argument("--master", help="Spark master (default: TXGUARD_SPARK_MASTER or local[*])")
    parser.add_argument(
        "--remote", help="Spark Connect server, sc://host:port (default: TXGUARD_SPARK_REMOTE, else none)"
    )
    parser.add_argument(
        "--no-remote", action="store_true", help="ignore TXGUARD_SPARK_REMOTE: run on --master (spark-submit)"
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as error:
        parser.error(str(error))
    args.lake = args.lake or settings.lake
    args.master = args.master or settings.spark_master
    args.remote = None if args.no_remote else args.remote or settings.spark_remote
    args.driver_memory = settings.spark_driver_memory
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Build the feature partitions of ``--start..--end`` and report them to Dagster when it launched us."""
    from jobs.platform.processes import die_with_parent
    from jobs.platform.spark import is_connect, spark_session

    die_with_parent()
    args = _parse_args(argv)
    with _pipes() as pipes:
        jvm_started = time.perf_counter()
        spark = spark_session(
            args.master, app_name="txguard-features", driver_memory=args.driver_memory, remote=args.remote
        )
        jvm_seconds = time.perf_counter() - jvm_started
        connected = is_connect(spark)
        try:
            master = spark.conf.get("spark.master")
            build = build_features(spark, args.lake, args.start, args.end)
        finally:
            spark.stop()
        metadata = {
            **build.metadata(),
            "spark_master": master,
            "spark_connect": args.remote if connected else "",
            "session_start_seconds": round(jvm_seconds, 2),
        }
        if pipes is None:
            print(json.dumps(metadata, sort_keys=True))
        else:
            if args.remote and not connected:
                pipes.log.warning(f"Spark Connect server {args.remote} unreachable: ran on a local Spark")
            pipes.log.info(f"{build.rows} feature rows for {args.start}..{args.end}")
            pipes.report_asset_materialization(metadata=_pipes_metadata(metadata))
    return 0


if __name__ == "__main__":
    sys.exit(main())
