"""One Spark session per process: a local JVM (or a cluster master), or a client of a warm Connect server.

Starting a JVM and warming its JIT costs a feature build more than a day's work. ``txguard ui`` therefore
keeps one Spark Connect server running (``connect_server_command``), ``Settings.spark_remote`` names it, and
each job's session is then a thin gRPC client of it. Both kinds of session get the same session settings
(``SESSION_CONF``); code that must work on both avoids what a Connect client lacks (``sparkContext``, RDDs):
``default_parallelism`` stands in for ``sparkContext.defaultParallelism``.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from jobs.platform.java import ensure_java_home

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SESSION_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.adaptive.enabled": "true",
}
"""Every txguard session's SQL settings, local or on the Connect server (a Connect client may set only these,
not the JVM's static settings)."""

CONNECT_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
DEFAULT_CONNECT_PORT = 15002
CONNECT_PROBE_SECONDS = 3.0
"""How long a job waits for the Connect server's port to accept before it starts a local JVM instead (the
gRPC client itself would retry an unreachable server for minutes)."""


def spark_session(
    master: str = "local[*]",
    app_name: str = "txguard",
    shuffle_partitions: int = 8,
    driver_memory: str | None = None,
    remote: str | None = None,
) -> SparkSession:
    """Get or create the process's Spark session: Arrow on, UTC, quiet logs, small shuffles for small data.

    With ``remote`` (``Settings.spark_remote``, ``sc://host:port``) the session is a client of that Spark
    Connect server: no JVM starts here, and the master and driver memory are the server's. When nothing
    accepts on the server's port, the session is local instead, with a warning on stderr: the server only
    saves the JVM's start, and a scheduled run must not fail because that cache is down. A server that
    accepts and then fails is an error like any other.

    ``driver_memory`` (``Settings.spark_driver_memory``, its default when None) counts only when this call
    starts the JVM. The settings are imported only then, so the CLI can import this module to refuse a bad
    argument without loading pydantic.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    if remote:
        if connect_server_reachable(remote):
            builder = SparkSession.builder.remote(remote)
            for key, value in session_conf(shuffle_partitions).items():
                builder = builder.config(key, value)
            return builder.getOrCreate()
        print(
            f"warning: the Spark Connect server {remote} does not accept connections; "
            f"starting a local Spark ({master}) for this job",
            file=sys.stderr,
        )
    ensure_java_home()
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in session_conf(shuffle_partitions).items():
        builder = builder.config(key, value)
    spark = (
        builder.config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", driver_memory or _default_driver_memory())
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    return spark


def session_conf(shuffle_partitions: int = 8) -> dict[str, str]:
    """``SESSION_CONF`` with the session's default number of shuffle partitions."""
    return {**SESSION_CONF, "spark.sql.shuffle.partitions": str(shuffle_partitions)}


def connect_address(url: str) -> tuple[str, int]:
    """Host and port of an ``sc://host[:port]`` URL (Spark Connect's default port when it names none)."""
    parts = urlsplit(url)
    return parts.hostname or "localhost", parts.port or DEFAULT_CONNECT_PORT


def connect_server_reachable(url: str, timeout_s: float = CONNECT_PROBE_SECONDS) -> bool:
    """Whether something accepts connections on the Connect server's port."""
    try:
        with socket.create_connection(connect_address(url), timeout=timeout_s):
            return True
    except OSError:
        return False


def is_connect(spark: SparkSession) -> bool:
    """Whether ``spark`` is a Spark Connect client (no ``sparkContext``, no RDDs)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def default_parallelism(spark: SparkSession) -> int:
    """How many tasks the session runs at once: ``sparkContext.defaultParallelism`` on a local session.

    A Connect client has no SparkContext: it reads the server's ``spark.default.parallelism`` when set, else
    the N of its ``local[N]`` master, else this machine's cores (the warm server runs beside the job).
    """
    if not is_connect(spark):
        return spark.sparkContext.defaultParallelism
    configured = spark.conf.get("spark.default.parallelism", None)
    if configured:
        return int(configured)
    local = re.fullmatch(r"local\[(\d+)(?:,\d+)?\]", spark.conf.get("spark.master", None) or "")
    return int(local.group(1)) if local else os.cpu_count() or 1


def _default_driver_memory() -> str:
    from jobs.platform.settings import DEFAULT_SPARK_DRIVER_MEMORY

    return DEFAULT_SPARK_DRIVER_MEMORY


def connect_server_command(master: str, host: str, port: int, driver_memory: str) -> list[str]:
    """``spark-submit`` of a Spark Connect server on ``host:port``, with pyspark's own Spark and jars.

    Sets ``JAVA_HOME`` in this process (``ensure_java_home``) so that the server, started with this
    environment, uses the same Java as a local session. An operation whose client is gone (a killed run) is
    interrupted after 30 s rather than Spark's 5 minutes of waiting for the client to reattach.
    """
    import pyspark

    ensure_java_home()
    confs = {
        **SESSION_CONF,
        "spark.connect.grpc.binding.address": host,
        "spark.connect.grpc.binding.port": str(port),
        "spark.connect.grpc.port.maxRetries": "0",
        "spark.connect.execute.manager.detachedTimeout": "30s",
        "spark.log.level": "WARN",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
    }
    spark_submit = os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit")
    command = [spark_submit, "--class", CONNECT_SERVER_CLASS, "--name", "txguard-spark-connect"]
    command += ["--master", master, "--driver-memory", driver_memory]
    for key, value in confs.items():
        command += ["--conf", f"{key}={value}"]
    return command
