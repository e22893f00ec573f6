"""Shared fixtures: every test gets its own TXGUARD_HOME; one Spark session serves the whole test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")


@pytest.fixture
def txguard_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh data home with every TXGUARD_* variable pointing inside it, and a Dagster home there."""
    for name in list(os.environ):
        if name.startswith("TXGUARD_"):
            monkeypatch.delenv(name)
    home = tmp_path / "txguard"
    monkeypatch.setenv("TXGUARD_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    (home / "dagster").mkdir(parents=True)
    yield home


@pytest.fixture(scope="session")
def spark():
    """The one Spark session of the test session (local[2], small shuffles)."""
    from jobs.spark import spark_session

    session = spark_session("local[2]", app_name="txguard-tests", shuffle_partitions=4)
    yield session
    session.stop()
