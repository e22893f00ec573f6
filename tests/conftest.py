"""Shared fixtures: every test gets its own TXGUARD_HOME; one Spark session serves the whole test session;
a Dagster instance, a moto S3 server and a small trained world for the modules that need them.

Plain helpers that tests import by name are in ``tests/support.py``. Heavy engines are imported inside the
fixtures, so that a test that needs none of them does not pay for them.
"""

from __future__ import annotations

import logging
import os
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import dagster as dg
    import pandas as pd
    from botocore.client import BaseClient

    from jobs.training.trainer import TrainedModel, TrainingSet

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ["TXGUARD_HOME"] = str(Path(tempfile.gettempdir()) / f"txguard-tests-{os.getpid()}")
"""Modules read the settings as they are imported (the partitions start on the data home's first day): the
checkout's own .txguard, once ``make demo`` recorded its first day there, must not move the tests' partitions.
Each test then gets a home of its own (``txguard_home``, ``module_home``)."""


def _use_home(home: Path, patch: pytest.MonkeyPatch) -> Path:
    """Make ``home`` the data home: every other TXGUARD_* variable unset, so that each path defaults inside
    it, and Dagster's home in ``home/dagster``."""
    for name in list(os.environ):
        if name.startswith("TXGUARD_"):
            patch.delenv(name)
    patch.setenv("TXGUARD_HOME", str(home))
    patch.setenv("DAGSTER_HOME", str(home / "dagster"))
    (home / "dagster").mkdir(parents=True)
    return home


@pytest.fixture
def txguard_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh data home with every TXGUARD_* variable pointing inside it, and a Dagster home there."""
    yield _use_home(tmp_path / "txguard", monkeypatch)


@pytest.fixture(scope="module")
def module_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A data home set up as ``txguard_home`` is, shared by one module's tests: for an expensive run that
    they all read."""
    with pytest.MonkeyPatch.context() as patch:
        yield _use_home(tmp_path_factory.mktemp("home") / "txguard", patch)


@pytest.fixture(scope="session")
def spark():
    """The one Spark session of the test session (local[2], small shuffles)."""
    from jobs.platform.spark import spark_session

    session = spark_session("local[2]", app_name="txguard-tests", shuffle_partitions=4)
    yield session
    session.stop()


CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""No sandbox (tests may run as root); no background networking on a machine with no route out."""


@pytest.fixture(scope="module")
def chromium():
    """Debian's headless Chromium driven by Playwright; ``make test`` installs it (``make browser``).

    One per module, not per session: Playwright's sync API keeps an asyncio loop running in the main thread
    while it is open, and a later test that calls ``asyncio.run`` (Dagster's automation evaluator does)
    would fail depending on the order the modules ran in."""
    import shutil

    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is not installed: run `make browser` (part of `make test`)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def test_artifacts() -> Path:
    """Where tests leave files for people (screenshots): TXGUARD_TEST_ARTIFACTS, else test-artifacts/."""
    folder = Path(os.environ.get("TXGUARD_TEST_ARTIFACTS", Path(__file__).parents[1] / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def dagster_instance(txguard_home: Path) -> Iterator[dg.DagsterInstance]:
    """A Dagster instance on disk in the test's home: runs, event logs and check evaluations stay there for
    the test (and the sensors it evaluates) to read back."""
    import dagster as dg

    with dg.instance_for_test(temp_dir=str(txguard_home / "dagster")) as instance:
        yield instance


@pytest.fixture
def moto_s3(txguard_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BaseClient]:
    """A real S3 API: a moto server on 127.0.0.1 (a free port), emptied, with txguard and boto3 pointed at it
    through the environment. Yields a boto3 S3 client; ``client.meta.endpoint_url`` is the server."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "TXGUARD_S3_ENDPOINT_URL": endpoint,
        }.items():
            monkeypatch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            monkeypatch.delenv(name, raising=False)
        reset = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(reset, timeout=10).close()
        yield boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    finally:
        server.stop()


@pytest.fixture(scope="module")
def handbook_data() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A handbook-style simulation (``tests.support.handbook_transactions``) and its handbook features."""
    from tests.support import handbook_features, handbook_transactions

    tx = handbook_transactions()
    return tx, handbook_features(tx)


@pytest.fixture(scope="module")
def handbook_lake(
    handbook_data: tuple[pd.DataFrame, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory
) -> str:
    """``handbook_data`` in a lake laid out as the pipeline lays it out."""
    from tests.support import write_feature_lake

    root = tmp_path_factory.mktemp("lake")
    write_feature_lake(root, *handbook_data)
    return str(root)


@pytest.fixture(scope="module")
def training_set(handbook_lake: str) -> TrainingSet:
    """The handbook lake's latest matured window, assembled for training."""
    from jobs.training.trainer import assemble_training_set
    from tests.support import latest_window

    return assemble_training_set(handbook_lake, latest_window(handbook_lake))


@pytest.fixture(scope="module")
def trained(training_set: TrainingSet) -> TrainedModel:
    """A model trained on ``training_set`` with the fast parameters, on the CPU."""
    from jobs.training.trainer import train_model
    from tests.support import FAST

    return train_model(training_set, FAST, device="cpu")
