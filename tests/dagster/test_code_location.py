"""The code location that workspace.yaml names loads, validates, and keeps heavy engines out of its import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from jobs.platform.settings import REPO_ROOT

HEAVY_MODULES = ("pyspark", "great_expectations", "mlflow", "lightgbm")


def test_importing_the_location_does_not_import_heavy_engines() -> None:
    probe = (
        "import sys, orchestration.definitions;"
        f"print(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    )
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT)
    assert output.returncode == 0, output.stderr
    assert output.stdout.strip() == ""


def test_dagster_definitions_validate(txguard_home: Path) -> None:
    dagster = Path(sys.executable).with_name("dagster")
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", str(REPO_ROOT / "workspace.yaml")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
