"""One Spark session per process, configured for local runs or a cluster master by settings alone."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from jobs.platform.java import ensure_java_home
from jobs.platform.settings import DEFAULT_SPARK_DRIVER_MEMORY

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def spark_session(
    master: str = "local[*]",
    app_name: str = "txguard",
    shuffle_partitions: int = 8,
    driver_memory: str = DEFAULT_SPARK_DRIVER_MEMORY,
) -> SparkSession:
    """Get or create the process's Spark session: Arrow on, UTC, quiet logs, small shuffles for small data.

    ``driver_memory`` (``Settings.spark_driver_memory``) counts only when this call starts the JVM.
    """
    ensure_java_home()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", driver_memory)
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    return spark
