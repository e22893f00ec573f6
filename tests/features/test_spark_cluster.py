"""The same job on a real standalone Spark cluster (master + worker on 127.0.0.1) gives the local[*] table."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from jobs.features.spark_job import build_features
from jobs.features.tiles import days_between
from jobs.platform.java import ensure_java_home
from jobs.platform.layout import TRANSACTION_FEATURES, partition_uri
from jobs.platform.settings import REPO_ROOT
from jobs.platform.storage import read_parquet
from jobs.testing.reference_features import normalise, random_raw, write_raw_lake
from tests.support import free_port

pytestmark = pytest.mark.slow

START, END = dt.date(2018, 4, 20), dt.date(2018, 4, 24)


def _cluster_env(work: Path) -> dict[str, str]:
    import pyspark

    return {
        **os.environ,
        "JAVA_HOME": str(ensure_java_home()),
        "SPARK_HOME": str(Path(pyspark.__file__).parent),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(work / "logs"),
        "SPARK_WORKER_DIR": str(work / "worker"),
        "TXGUARD_SPARK_DRIVER_MEMORY": "1g",
    }


def _spark_class(env: dict[str, str], log: Path, *arguments: str) -> subprocess.Popen:
    """A Spark daemon in the foreground, in its own process group so that teardown stops all of it."""
    command = [str(Path(env["SPARK_HOME"]) / "bin" / "spark-class"), *arguments]
    with log.open("wb") as output:
        return subprocess.Popen(
            command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)


def _master_state(ui_port: int) -> dict:
    """The master's status page as JSON (workers, running and completed applications)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as response:
            return json.load(response)
    except OSError:
        return {}


@pytest.fixture
def standalone_cluster(tmp_path: Path) -> Iterator[tuple[str, int, dict[str, str]]]:
    """A master and one worker (1 core, 1 GiB) launched with pyspark's own ``bin/spark-class``."""
    env = _cluster_env(tmp_path)
    port, ui_port = free_port(), free_port()
    master_url = f"spark://127.0.0.1:{port}"
    master_options = ["--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui_port)]
    processes = [
        _spark_class(env, tmp_path / "master.log", "org.apache.spark.deploy.master.Master", *master_options)
    ]
    try:
        worker_options = ["--host", "127.0.0.1", "--cores", "1", "--memory", "1g"]
        worker_options += ["--webui-port", str(free_port()), "--work-dir", str(tmp_path / "worker")]
        worker_class = "org.apache.spark.deploy.worker.Worker"
        processes.append(
            _spark_class(env, tmp_path / "worker.log", worker_class, master_url, *worker_options)
        )
        deadline = time.monotonic() + 120
        while _master_state(ui_port).get("aliveworkers", 0) < 1:
            if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
                logs = [(tmp_path / f"{name}.log").read_text()[-2000:] for name in ("master", "worker")]
                pytest.fail("the standalone cluster did not start:\n" + "\n".join(logs))
            time.sleep(1)
        yield master_url, ui_port, env
    finally:
        for process in reversed(processes):
            _stop(process)


def _feature_table(lake: str) -> pd.DataFrame:
    days = days_between(START, END)
    return normalise(
        pd.concat([read_parquet(partition_uri(lake, TRANSACTION_FEATURES, d)).to_pandas() for d in days])
    )


def test_cluster_run_matches_local(standalone_cluster, spark, tmp_path: Path) -> None:
    master_url, ui_port, env = standalone_cluster
    transactions, reports = random_raw(5, days=30)
    cluster_lake, local_lake = str(tmp_path / "cluster_lake"), str(tmp_path / "local_lake")
    for lake in (cluster_lake, local_lake):
        write_raw_lake(lake, transactions, reports)

    command = [sys.executable, "-m", "jobs.features.spark_job", "--start", START.isoformat()]
    command += ["--end", END.isoformat(), "--lake", cluster_lake, "--master", master_url]
    job = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr[-4000:]
    summary = json.loads(job.stdout.strip().splitlines()[-1])
    assert summary["spark_master"] == master_url
    assert [app["name"] for app in _master_state(ui_port)["completedapps"]] == ["txguard-features"]

    local = build_features(spark, local_lake, START, END)

    assert summary["rows_per_day"] == local.rows_per_day and local.rows > 0
    pd.testing.assert_frame_equal(_feature_table(cluster_lake), _feature_table(local_lake), rtol=1e-12)
