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
