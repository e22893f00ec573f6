"""The feature job as a client of a warm Spark Connect server (``txguard spark-server``), and without one.

The job runs in its own process, as Dagster Pipes launches it: a Connect client cannot share a process with
the test session's local Spark.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from jobs.features.spark_job import _parse_args, build_features, shuffle_partitions_for
from jobs.features.tiles import days_between
from jobs.platform.layout import TRANSACTION_FEATURES, partition_uri
from jobs.platform.settings import REPO_ROOT, SettingsError, load_settings, variable
from jobs.platform.spark import connect_server_reachable
from jobs.platform.storage import read_parquet
from jobs.testing.reference_features import duckdb_features, normalise, random_raw, write_raw_lake
from orchestration.defs.features import feature_job_command
from tests.support import free_port

pytestmark = pytest.mark.slow

RANGE = (dt.date(2018, 5, 10), dt.date(2018, 5, 12))
NEXT_DAY = dt.date(2018, 5, 13)
SERVER_CORES = 2


def _environment(home: Path, **settings: str) -> dict[str, str]:
    """This environment without any txguard setting but a home of its own, a small driver and ``settings``."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith(variable(""))}
    environment[variable("home")] = str(home)
    environment[variable("spark_master")] = f"local[{SERVER_CORES}]"
    environment[variable("spark_driver_memory")] = "1g"
    environment.update({variable(name): value for name, value in settings.items()})
    return environment


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``txguard spark-server`` on a free port (local[2], 1 GiB), in its own process group; its URL."""
    work = tmp_path_factory.mktemp("spark-connect")
    port = free_port()
    url = f"sc://127.0.0.1:{port}"
    command = [os.path.join(os.path.dirname(sys.executable), "txguard"), "spark-server", "--port", str(port)]
    log = work / "server.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            command,
            env=_environment(work / "home"),
            cwd=REPO_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while not connect_server_reachable(url, timeout_s=1.0):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Spark Connect server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)


def _run_job(lake: str, start: dt.date, end: dt.date, environment: dict[str, str]) -> tuple[dict, str]:
    """The job as Pipes starts it (``feature_job_command``): its summary line and its stderr."""
    command = feature_job_command(start, end, lake, environment[variable("spark_master")])
    job = subprocess.run(command, env=environment, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stderr[-4000:]
    return json.loads(job.stdout.strip().splitlines()[-1]), job.stderr


def _features(lake: str, start: dt.date, end: dt.date) -> pd.DataFrame:
    days = days_between(start, end)
    return normalise(
        pd.concat([read_parquet(partition_uri(lake, TRANSACTION_FEATURES, d)).to_pandas() for d in days])
    )


def _assert_same(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert len(actual) > 0
    pd.testing.assert_frame_equal(actual, expected, check_exact=False, rtol=1e-9, atol=1e-12)


def test_the_job_on_the_warm_server_writes_the_local_builds_partitions(
    connect_server: str, spark, tmp_path: Path
) -> None:
    transactions, reports = random_raw(7, days=45)
    remote_lake, local_lake = str(tmp_path / "remote_lake"), str(tmp_path / "local_lake")
    for lake in (remote_lake, local_lake):
        write_raw_lake(lake, transactions, reports)
    environment = _environment(tmp_path / "home", spark_remote=connect_server)

    summary, _ = _run_job(remote_lake, *RANGE, environment)
    # The next day reads the tiles that the first build wrote through the server.
    next_summary, _ = _run_job(remote_lake, NEXT_DAY, NEXT_DAY, environment)

    assert summary["spark_connect"] == next_summary["spark_connect"] == connect_server
    assert summary["spark_master"] == f"local[{SERVER_CORES}]"
    assert summary["shuffle_partitions"] == shuffle_partitions_for(summary["input_bytes"], SERVER_CORES)
    assert sum(next_summary["tiles_read"].values()) > 0
    assert connect_server_reachable(connect_server), "a job's stop must not stop the server"

    local = build_features(spark, local_lake, *RANGE)
    local_next = build_features(spark, local_lake, NEXT_DAY, NEXT_DAY)
    assert summary["rows_per_day"] == local.rows_per_day and local.rows > 0
    assert next_summary["rows_per_day"] == local_next.rows_per_day
    for start, end in (RANGE, (NEXT_DAY, NEXT_DAY)):
        remote = _features(remote_lake, start, end)
        pd.testing.assert_frame_equal(remote, _features(local_lake, start, end), rtol=1e-12)
        _assert_same(remote, duckdb_features(transactions, reports, start, end))


def test_with_the_server_down_the_job_warns_and_runs_on_a_local_spark(tmp_path: Path) -> None:
    transactions, reports = random_raw(8, days=45)
    lake = str(tmp_path / "lake")
    write_raw_lake(lake, transactions, reports)
    down = f"sc://127.0.0.1:{free_port()}"

    summary, stderr = _run_job(lake, NEXT_DAY, NEXT_DAY, _environment(tmp_path / "home", spark_remote=down))

    assert f"warning: the Spark Connect server {down} does not accept connections" in stderr
    assert summary["spark_connect"] == "" and summary["spark_master"] == f"local[{SERVER_CORES}]"
    _assert_same(
        _features(lake, NEXT_DAY, NEXT_DAY), duckdb_features(transactions, reports, NEXT_DAY, NEXT_DAY)
    )


def test_a_spark_submit_run_ignores_the_warm_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under spark-submit the cluster that the run config names is the point: the job must not connect."""
    assert "--no-remote" in feature_job_command(*RANGE, "/lake", "yarn", "/opt/spark/bin/spark-submit")
    monkeypatch.setenv(variable("spark_remote"), "sc://127.0.0.1:1")
    arguments = ["--start", "2018-05-10", "--end", "2018-05-10"]
    assert _parse_args(arguments).remote == "sc://127.0.0.1:1"
    assert _parse_args([*arguments, "--no-remote"]).remote is None


def test_a_server_url_that_is_not_sc_is_refused_naming_the_variable() -> None:
    with pytest.raises(
        SettingsError, match=f"{variable('spark_remote')}='127.0.0.1:15002': expected .*sc://"
    ):
        load_settings(spark_remote="127.0.0.1:15002")
    assert load_settings(spark_remote="sc://spark.internal:15002").spark_remote == "sc://spark.internal:15002"
