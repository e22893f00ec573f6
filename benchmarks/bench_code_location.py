"""Code-location load time: importing the module ``workspace.yaml`` names vs ``import dagster`` alone.

Goal: at most 1 s more than Dagster itself, because Spark, GX, MLflow and LightGBM are only imported inside
asset bodies. Each import runs in a fresh interpreter; the median of several runs is shown.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from jobs.platform.settings import REPO_ROOT

HEAVY_MODULES = ("pyspark", "great_expectations", "mlflow", "lightgbm", "dbt.cli")
REPEATS = 5


def import_seconds(statement: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True, cwd=REPO_ROOT)
    return time.perf_counter() - started


def heavy_modules_loaded() -> list[str]:
    probe = (
        "import sys, orchestration.definitions;"
        f"print(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    )
    output = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    return [m for m in output.stdout.strip().split(",") if m]


def main() -> None:
    baseline = statistics.median(import_seconds("import dagster") for _ in range(REPEATS))
    location = statistics.median(import_seconds("import orchestration.definitions") for _ in range(REPEATS))
    extra = location - baseline
    print(f"import dagster                   {baseline:6.2f} s (median of {REPEATS})")
    print(f"import orchestration.definitions {location:6.2f} s")
    verdict = "OK" if extra <= 1 else "MISSED"
    print(f"code location overhead           {extra:+6.2f} s   goal ≤ +1.00 s   {verdict}")
    print(f"heavy modules loaded at import:  {', '.join(heavy_modules_loaded()) or 'none'}")


if __name__ == "__main__":
    main()
