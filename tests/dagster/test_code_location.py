"""The code location that workspace.yaml names loads, validates, keeps heavy engines out of its import, and
runs each step in a process forked from the loaded location."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from jobs.platform.settings import REPO_ROOT
from orchestration.definitions import defs, step_processes
from orchestration.runs import CHAIN_AFTER_INGEST_JOB, PIPELINE_JOB

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


def test_every_job_of_the_location_runs_on_step_processes_forked_from_the_loaded_location() -> None:
    jobs = [defs.resolve_job_def(name) for name in (PIPELINE_JOB, CHAIN_AFTER_INGEST_JOB)]
    jobs.append(defs.resolve_implicit_global_asset_job_def())  # what automation and the UI's launches use
    assert [job.executor_def for job in jobs] == [step_processes] * len(jobs)


@dg.op
def parent_process() -> int:
    return os.getppid()


def one_step_job() -> dg.JobDefinition:
    @dg.job(executor_def=step_processes)
    def report_parent_process() -> None:
        parent_process()

    return report_parent_process


def test_a_step_process_is_forked_by_the_server_not_spawned_by_the_run(
    dagster_instance: dg.DagsterInstance,
) -> None:
    job = dg.build_reconstructable_job(
        __name__, "one_step_job", reconstructor_working_directory=str(REPO_ROOT)
    )
    with dg.execute_job(job, instance=dagster_instance) as result:
        assert result.success
        step_parent = result.output_for_node("parent_process")
    server = Path(f"/proc/{step_parent}")
    assert step_parent != os.getpid()
    assert (server / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(os.getpid())
    assert "orchestration.definitions" in (server / "cmdline").read_text()  # its preloaded modules
